"""Deployment bundle: ONNX export, reduced-precision variants, accuracy gates, manifest, TensorRT build.

Modules (one job each):
- `manifest`   read/validate/write `model.json` and verify file hashes (torch-free: the runtime uses it)
- `onnx_graphs` export the CLIP image encoder and the temporal head to ONNX (torch)
- `precision`  fp16 and dynamic-int8 variants of the encoder graph (onnx / onnxruntime tooling)
- `probe`      the deterministic procedural scene the accuracy gates encode (numpy, cv2)
- `gates`      accuracy gates of exported graphs against the PyTorch reference (numpy, onnxruntime)
- `trt_ops`    ONNX operators TensorRT 10 parses, and a per-graph report
- `trt_build`  TensorRT engine build on the target, cache key, trtexec command (tensorrt imported lazily)
- `bundle`     `stp-export`'s work: checkpoint -> bundle files + manifest
- `cli`        the `stp-export` command;  `build_cli`: the `stp-build` command

Nothing heavy is imported here, so `from stprompt.export.manifest import load_manifest` stays torch-free.
"""
