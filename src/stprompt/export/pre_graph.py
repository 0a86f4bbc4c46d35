"""The preprocessing graph a GPU engine runs before the encoder: uint8 BGR crops in, CLIP-normalised float32 out.

The host's share of a sampled frame on a GPU appliance is mostly writing its 50 crops as float32 (30 MB; the
normalisation is ~5 of the ~7 ms it takes to cut them, a uint8 copy 0.6 ms), and the same 30 MB then cross PCIe.
With this graph built into its own plan (`model.pre.plan`) and chained before the encoder on the device, the host
cuts uint8 crops and sends a quarter of the bytes. The arithmetic is the host kernels' (`stprompt.windows.
normalize`): float32(pixel) * gain[c] + bias[c], BGR -> RGB, NHWC -> NCHW.
"""

from __future__ import annotations

import os

import numpy as np

from ..bundle.graphs import PRE_INPUT, PRE_OUTPUT
from ..bundle.preprocess import Preprocess

PRE_OPSET = 17


def write_pre_graph(path: str | os.PathLike, pre: Preprocess) -> None:
    """[N, S, S, 3] uint8 BGR `pixels` -> [N, 3, S, S] float32 RGB `images` with `pre`'s gain / bias, N dynamic."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    s = pre.size
    rgb = np.array([2, 1, 0], np.int64)  # RGB channel c is BGR channel 2 - c
    gain = np.asarray(pre.gain, np.float32).reshape(1, 3, 1, 1)
    bias = np.asarray(pre.bias, np.float32).reshape(1, 3, 1, 1)
    nodes = [
        helper.make_node("Cast", [PRE_INPUT], ["as_float"], to=TensorProto.FLOAT),
        helper.make_node("Gather", ["as_float", "rgb"], ["rgb_last"], axis=3),
        helper.make_node("Transpose", ["rgb_last"], ["planes"], perm=[0, 3, 1, 2]),
        helper.make_node("Mul", ["planes", "gain"], ["scaled"]),
        helper.make_node("Add", ["scaled", "bias"], [PRE_OUTPUT]),
    ]
    graph = helper.make_graph(
        nodes,
        "stprompt_preprocess",
        [helper.make_tensor_value_info(PRE_INPUT, TensorProto.UINT8, ["n", s, s, 3])],
        [helper.make_tensor_value_info(PRE_OUTPUT, TensorProto.FLOAT, ["n", 3, s, s])],
        initializer=[numpy_helper.from_array(rgb, "rgb"), numpy_helper.from_array(gain, "gain"),
                     numpy_helper.from_array(bias, "bias")],  # fmt: skip
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", PRE_OPSET)], producer_name="stprompt")
    model.ir_version = 8  # readable by ONNX Runtime >= 1.14 and TensorRT 10's parser
    onnx.checker.check_model(model)
    with open(path, "wb") as fh:
        fh.write(model.SerializeToString())


def fuse_pre_graph(pre: bytes, encoder: bytes, out: str | os.PathLike, name: str = "the encoder graph") -> None:
    """One graph `pixels` (uint8 BGR crops) -> `embeddings`: the preprocessing graph in front of an encoder graph,
    for a server that hosts the encoder as one model (Triton): clients then send a quarter of the bytes and skip
    the normalisation, and the numbers are the two graphs' own. The graphs come as bytes (the caller checked their
    sha256 on the same bytes); `name` names the encoder graph in the one-line UserError when they cannot be
    joined."""
    import onnx
    from onnx import compose

    from ..errors import UserError

    pre, encoder = onnx.load_from_string(pre), onnx.load_from_string(encoder)
    pre.ir_version = encoder.ir_version  # the preprocessing graph uses nothing newer than IR 8 needs
    # the preprocessing graph's own tensors get a prefix; its input (pixels) and its output (the encoder's input)
    # keep their names, which is what joins the two
    pre = compose.add_prefix(pre, "stp_pre/", rename_inputs=False, rename_outputs=False)
    try:
        fused = compose.merge_models(pre, encoder, io_map=[(PRE_OUTPUT, PRE_OUTPUT)], producer_name="stprompt",
                                     doc_string="stprompt: model.pre.onnx in front of the image encoder")  # fmt: skip
        onnx.checker.check_model(fused)
    except (ValueError, onnx.checker.ValidationError) as err:
        raise UserError(f"{name}: cannot put the preprocessing graph in front of it: "
                        f"{str(err).splitlines()[0]}") from None  # fmt: skip
    with open(out, "wb") as fh:
        fh.write(fused.SerializeToString())
