"""Bundle -> target engines, built on the target: TensorRT plans (`tensorrt`), OpenVINO IR (`openvino`; its INT8
calibration crops in `calibration`, the accuracy gates every OpenVINO engine passes in `gates`), and `stp-build`
(`build_cli`).

Torch-free: reads bundles through `stprompt.bundle` (manifest, engine keys, graph names) and imports the engine
libraries (tensorrt, cuda-python, openvino, nncf) only inside the functions that build. The gates reuse the export's
torch-free probe scene and gate records (`stprompt.bundle.probe`, `stprompt.bundle.gates`).
"""
