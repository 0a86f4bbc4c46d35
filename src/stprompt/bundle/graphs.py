"""Input and output names of a bundle's graphs, declared once for the exporter, the gates, builders and backends.

The exporter (`stprompt.export.onnx_graphs`) names the graphs' tensors with these constants; everything that
feeds a graph (ONNX Runtime, TensorRT profiles and buffers, Triton configs) reads them from here, so a renamed
tensor is one edit and never a string literal retyped in five rooms.
"""

from __future__ import annotations

ENCODER_INPUT = "images"  # [N, 3, S, S] float32, CLIP-normalised RGB (S = the bundle's preprocess size)
ENCODER_OUTPUT = "embeddings"  # [N, D] float32, projected CLS, not L2-normalised
ENCODER_INPUTS = (ENCODER_INPUT,)
ENCODER_OUTPUTS = (ENCODER_OUTPUT,)
# the preprocessing graph run on the device before the encoder: uint8 crops in, the encoder's input out
PRE_INPUT = "pixels"  # [N, S, S, 3] uint8 BGR, as cv2 cuts them (a quarter of the float32 crops' bytes)
PRE_OUTPUT = ENCODER_INPUT  # [N, 3, S, S] float32, CLIP-normalised RGB: pixel * gain[c] + bias[c]

X_CLIP, X_PATCH, X_AS = "x_clip", "x_patch", "x_as"
HEAD_INPUTS = (X_CLIP, X_PATCH)  # x_clip [T, D], x_patch [T, 49, D]
HEAD_FEATURES_INPUTS = (X_CLIP, X_AS)  # the head after SA2: x_clip [T, D], x_as [T, D]
HEAD_OUTPUTS = ("score", "score_c", "probs")  # [T], [T], [T, 1 + C]
# the head in snippet-wise stages, for streams that compute each snippet's layer outputs once
# (runtime.incremental): adapter layer i after its band attention, and both branches after the last layer
LAYER_INPUT, LAYER_OUTPUT = "attended", "layer_out"  # [N, D] -> [N, D], N rows (snippets) of any positions
X_ADAPTED = "x_adapted"  # the last adapter layer's output (x_clip + x_as when the head has no adapter)
HEAD_LAYER_INPUTS, HEAD_LAYER_OUTPUTS = (LAYER_INPUT,), (LAYER_OUTPUT,)
HEAD_SCORES_INPUTS = (X_CLIP, X_ADAPTED)  # [N, D], [N, D] -> HEAD_OUTPUTS for those N snippets

# the inputs of each graph role (the manifest's `files` roles)
ROLE_INPUTS = {
    "encoder": ENCODER_INPUTS,
    "encoder_fp16": ENCODER_INPUTS,
    "encoder_int8": ENCODER_INPUTS,
    "encoder_pre": (PRE_INPUT,),
    "head": HEAD_INPUTS,
    "head_features": HEAD_FEATURES_INPUTS,
    "head_scores": HEAD_SCORES_INPUTS,
}



def head_layer_role(index: int) -> str:
    """The manifest role of adapter layer `index`'s snippet-wise graph (head_layer0, head_layer1, ...)."""
    return f"head_layer{index}"


# ONNX op types the fp16 encoder keeps in fp32 (ViT LayerNorm / softmax overflow in fp16); TensorRT fp16 builds
# pin the same families. Part of the bundle format: the manifest records it under precision.fp32_ops.
FP32_OPS = (
    "LayerNormalization",
    "Softmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceL2",
    "Pow",
    "Sqrt",
    "Exp",
)  # not Erf: GELU stays fp16 so TensorRT can fuse it into the MLP matmul
