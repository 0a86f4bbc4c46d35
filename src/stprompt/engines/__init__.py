"""Bundle -> target engines, built on the target: TensorRT plans (`tensorrt`, `stp-build`).

Torch-free: reads bundles through `stprompt.bundle` (manifest, engine keys, graph names) and imports the engine
library (tensorrt, cuda-python) only inside the functions that build. The TensorRT, Triton and OpenVINO targets
extend this room.
"""
