"""Inference backends behind one interface (`base.Backend`): ONNX Runtime, TensorRT, OpenVINO, the PyTorch reference.

- `base`        the interface the Detector calls, shared input checks, the one encoder-batch split
- `ort`         ONNX Runtime (CPU, CUDA, TensorRT execution providers)
- `trt`         TensorRT 10 / 11 plans; `cuda_memory`: device buffers through cuda-python or pycuda
- `openvino`    OpenVINO IR on the CPU (bf16 hint or NNCF INT8, built by stp-build --openvino), heads on ONNX Runtime
- `torch_ref`   the PyTorch reference (CPU fp32 / bf16, CUDA fp16 with windows cut on the GPU)
- `triton`      the encoder on a Triton Inference Server (gRPC), the heads here on ONNX Runtime
- `open`        open the backend an engine file's suffix names, with its verified manifest; `parity`

Each library is imported only when its backend is opened: the runtime runs on appliances without torch.
"""

from ...bundle.membership import bundle_manifest_for
from .base import Backend
from .open import open_backend, parity

__all__ = ["Backend", "bundle_manifest_for", "open_backend", "parity"]
