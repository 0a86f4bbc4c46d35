"""The bundle format both sides share: what stp-export writes and what stp-build, stp-run and stp-bench read.

Torch-free (json, hashlib, numpy; onnxruntime only inside `ort`, imported when a session is opened), so an
appliance with numpy, cv2 and one inference library reads bundles without the exporter's dependencies.

Modules (one job each):
- `manifest`    read / validate / write `model.json`, typed accessors (thresholds, head settings, preprocessing)
- `files`       sha256 of bundle files, the "this file belongs to this bundle" checks, engine file -> manifest
- `graphs`      input / output names and shapes of every graph, declared once; ops the fp16 graph keeps in fp32
- `preprocess`  the `Preprocess` value: input size, mean / std, resampler, colour order, window geometry
- `engine_keys` engine build settings, input profiles and the cache keys a built engine must carry
- `ort`         the ONNX Runtime session factory (providers, the fp16 CPU workaround) and graph runners
- `compare`     output comparison (centred cosine, max abs / rel) for export gates and `stp-run --check`
- `serving`     the graphs as an inference server hosts them (tensors, identity parameters) and the client's check
- `probe`       the accuracy-gate probe scene cut into encoder batches (cv2 and `windows`, like the runtime)
- `gates`       the accuracy gates every engine passes, at export (stp-export) and on the target (stp-build)
"""
