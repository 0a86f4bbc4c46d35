"""Reduced-precision variants of the fp32 encoder graph, made with onnx / onnxruntime tooling.

fp16: weights and most activations in fp16, with the ops that overflow or lose too much in fp16 kept in
fp32 (LayerNorm statistics and softmax reductions: the known ViT FP16 collapse), I/O stays float32.
int8 (CPU): ONNX Runtime dynamic quantization, QInt8 MatMul/Gemm weights, activations quantized per call.
Both are gated against the fp32 PyTorch encoder before they enter a bundle (see `gates`).
"""

from __future__ import annotations

import os

from ..bundle.graphs import FP32_OPS  # the op families fp16 graphs and engines keep in fp32

INT8_OPS = ("MatMul", "Gemm")


def convert_fp16(src: str | os.PathLike, dst: str | os.PathLike, keep_fp32: tuple[str, ...] = FP32_OPS) -> None:
    """fp32 ONNX -> fp16 ONNX with float32 inputs/outputs and `keep_fp32` ops (plus ORT's defaults) in fp32."""
    import onnx
    from onnxruntime.transformers.float16 import DEFAULT_OP_BLOCK_LIST, convert_float_to_float16
    from onnxruntime.transformers.onnx_model import OnnxModel

    model = convert_float_to_float16(
        onnx.load(os.fspath(src)),
        keep_io_types=True,
        op_block_list=sorted(set(DEFAULT_OP_BLOCK_LIST) | set(keep_fp32)),
    )
    wrapped = OnnxModel(model)
    wrapped.topological_sort()  # the converter appends its I/O casts at the end; the checker wants order
    onnx.save(wrapped.model, os.fspath(dst))


def quantize_int8(src: str | os.PathLike, dst: str | os.PathLike, per_channel: bool = False) -> None:
    """fp32 ONNX -> dynamic int8 ONNX (QInt8 MatMul/Gemm weights) for ONNX Runtime on CPU."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(
        os.fspath(src),
        os.fspath(dst),
        weight_type=QuantType.QInt8,
        op_types_to_quantize=list(INT8_OPS),
        per_channel=per_channel,
    )
