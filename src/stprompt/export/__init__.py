"""Checkpoint -> deployment bundle: ONNX graphs, reduced-precision variants, accuracy gates, manifest.

Modules (one job each):
- `options`     what stp-export decides (precisions, gates, build settings, thresholds) and the output stem
- `onnx_graphs` export the CLIP image encoder and the temporal head to ONNX (torch)
- `precision`   fp16 and dynamic-int8 variants of the encoder graph (onnx / onnxruntime tooling)
- `probe`       the deterministic procedural scene the accuracy gates encode (numpy, cv2)
- `gates`       gate records of exported graphs against the PyTorch reference (numpy, onnxruntime)
- `trt_ops`     ONNX operators TensorRT 10 parses, and a per-graph report
- `bundle`      stp-export's work: write graphs, gate them, write the manifest (through `stprompt.bundle`)
- `cli`         the `stp-export` command

The bundle format itself (manifest, hashes, graph names, engine keys, preprocessing) is `stprompt.bundle`;
building engines on the target is `stprompt.engines`.
"""
