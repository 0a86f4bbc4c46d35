"""Which ONNX operators TensorRT 10's ONNX parser takes, and a per-graph report of the ops a bundle uses.

Source: onnx/onnx-tensorrt `docs/operators.md`, "Operator Support Matrix", as published for TensorRT 10.15
("supports operators in the inclusive range of opset 9 to opset 24"); TensorRT 10.0's table names opsets 9-20.
JetPack 6.1/6.2 ships TensorRT 10.3, whose table I could not read: operators marked Y in the 10.15 table but
absent or N in the TensorRT 9.2 table (`NEWER_THAN_9_2`) are treated as unsupported, so a pass here holds for
every TensorRT 10.x. The restrictions checked are the ones that bite exported graphs: inputs that must be
build-time constants (reduction axes, squeeze/unsqueeze axes, TopK's K) and TopK's K < 3840 with sorted=1.
"""

from __future__ import annotations

import os
from collections import Counter
from dataclasses import dataclass, field

TRT_DOC = "onnx/onnx-tensorrt docs/operators.md (TensorRT 10.15 table; 10.0: opsets 9-20)"
MAX_OPSET = 20  # TensorRT 10.0's upper opset bound (10.15: 24)

# fmt: off
TRT10_OPS = frozenset(
    [
        "Abs", "Acos", "Acosh", "Add", "And", "ArgMax", "ArgMin", "Asin", "Asinh", "Atan", "Atanh", "AveragePool",
        "BatchNormalization", "Cast", "CastLike", "Ceil", "Celu", "Clip", "Concat", "Constant", "ConstantOfShape",
        "Conv", "ConvTranspose", "Cos", "Cosh", "CumSum", "DepthToSpace", "DequantizeLinear", "Div", "Dropout",
        "Einsum", "Elu", "Equal", "Erf", "Exp", "Expand", "EyeLike", "Flatten", "Floor", "Gather", "GatherElements",
        "GatherND", "Gemm", "GlobalAveragePool", "GlobalLpPool", "GlobalMaxPool", "Greater", "GreaterOrEqual",
        "GridSample", "GroupNormalization", "GRU", "HardSigmoid", "HardSwish", "Hardmax", "Identity", "If",
        "ImageScaler", "InstanceNormalization", "IsInf", "IsNaN", "LayerNormalization", "LeakyRelu", "Less",
        "LessOrEqual", "Log", "LogSoftmax", "Loop", "LRN", "LSTM", "LpNormalization", "LpPool", "MatMul", "Max",
        "MaxPool", "Mean", "MeanVarianceNormalization", "Min", "Mod", "Mul", "Neg", "NonMaxSuppression", "NonZero",
        "Not", "OneHot", "Or", "Pad", "ParametricSoftplus", "Pow", "PRelu", "QuantizeLinear", "RandomNormal",
        "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Range", "Reciprocal", "ReduceL1", "ReduceL2",
        "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean", "ReduceMin", "ReduceProd", "ReduceSum",
        "ReduceSumSquare", "Relu", "Reshape", "Resize", "ReverseSequence", "RNN", "RoiAlign", "Round", "ScaledTanh",
        "Scan", "Scatter", "ScatterElements", "ScatterND", "Selu", "Shape", "Shrink", "Sigmoid", "Sign", "Sin",
        "Sinh", "Size", "Slice", "Softmax", "Softplus", "Softsign", "SpaceToDepth", "Split", "Sqrt", "Squeeze", "Sub",
        "Sum", "Tan", "Tanh", "ThresholdedRelu", "Tile", "TopK", "Transpose", "Trilu", "Unsqueeze", "Upsample",
        "Where", "Xor",
    ]
)
# fmt: on
# Y in the 10.15 table, not in 9.2's: may be missing from TensorRT 10.3 (JetPack 6), so not relied upon.
NEWER_THAN_9_2 = frozenset(
    [
        "Attention",
        "BlackmanWindow",
        "DeformConv",
        "Gelu",
        "HammingWindow",
        "HannWindow",
        "Mish",
        "RMSNormalization",
        "RotaryEmbedding",
        "STFT",
        "TensorScatter",
    ]
)

# op -> index of the input TensorRT needs as a build-time constant
_CONSTANT_INPUTS = {
    **{op: 1 for op in ("ReduceL1", "ReduceL2", "ReduceLogSum", "ReduceLogSumExp", "ReduceMax", "ReduceMean")},
    **{op: 1 for op in ("ReduceMin", "ReduceProd", "ReduceSum", "ReduceSumSquare", "Squeeze", "Unsqueeze", "TopK")},
}
TOPK_MAX = 3840


@dataclass
class OpReport:
    """Op types of one graph and what TensorRT 10 would refuse."""

    name: str
    opset: int
    counts: dict[str, int]
    unsupported: list[str] = field(default_factory=list)
    restrictions: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.unsupported and not self.restrictions and self.opset <= MAX_OPSET

    def lines(self) -> list[str]:
        ops = ", ".join(f"{op} x{n}" for op, n in sorted(self.counts.items()))
        verdict = "all supported by TensorRT 10" if self.ok else "NOT buildable with TensorRT 10"
        out = [f"{self.name}: opset {self.opset}, {len(self.counts)} op types, {verdict}", f"  ops: {ops}"]
        if self.opset > MAX_OPSET:
            out.append(f"  opset {self.opset} > {MAX_OPSET} (TensorRT 10.0's upper bound)")
        out += [f"  unsupported op: {op}" for op in self.unsupported]
        out += [f"  restriction: {r}" for r in self.restrictions]
        return out


def _constants(graph) -> dict:
    """Names of tensors with values known at build time: initializers and Constant node outputs."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    for node in graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def check_graph(model_or_path, name: str | None = None) -> OpReport:
    """OpReport of an ONNX model (path or ModelProto); subgraphs of If/Loop/Scan are not descended into."""
    import onnx

    if isinstance(model_or_path, (str, os.PathLike)):
        name = name or os.path.basename(os.fspath(model_or_path))
        model = onnx.load(os.fspath(model_or_path), load_external_data=False)
    else:
        model = model_or_path
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    counts = Counter(node.op_type for node in model.graph.node)
    foreign = {n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx")}
    unsupported = sorted({op for op in counts if op not in TRT10_OPS or op in NEWER_THAN_9_2} | foreign)
    constants = _constants(model.graph)
    restrictions = []
    for node in model.graph.node:
        index = _CONSTANT_INPUTS.get(node.op_type)
        has_input = index is not None and len(node.input) > index and node.input[index]
        if has_input and node.input[index] not in constants:
            restrictions.append(f"{node.op_type} {node.name!r}: input {index} must be a build-time constant")
        if node.op_type == "TopK":
            k = constants.get(node.input[1]) if len(node.input) > 1 else None
            if k is not None and int(k.reshape(-1)[0]) >= TOPK_MAX:
                restrictions.append(f"TopK {node.name!r}: K = {int(k.reshape(-1)[0])} >= {TOPK_MAX}")
            if any(a.name == "sorted" and a.i == 0 for a in node.attribute):
                restrictions.append(f"TopK {node.name!r}: sorted must be 1")
    return OpReport(name=name or model.graph.name, opset=opset, counts=dict(counts), unsupported=unsupported,
                    restrictions=restrictions)  # fmt: skip
