"""An export as a standard NVIDIA Triton Inference Server model repository, so a GPU pool serves the encoder.

- `repository`: the model configs (tensors and the bundle's identity from `stprompt.bundle.serving`, dynamic
  batching, instances, TensorRT options), the copied graphs, a README and, for TensorRT plans, the build script
  that runs on the server (a plan only loads on the TensorRT version and GPU it was built with);
- `cli`: `stp-triton BUNDLE/model.json --out REPO`.

Torch-free, and Triton-free: it writes text and copies files; tritonclient is only the tests' (and stp-run's).
"""
