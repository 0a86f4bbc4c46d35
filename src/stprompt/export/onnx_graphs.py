"""Export the two graphs of a bundle: the CLIP image encoder and the temporal head.

Encoder: the TorchScript (legacy) exporter, opset 17 (one LayerNormalization node per LN), fp32 weights on
CPU, with PyTorch's fused MultiheadAttention fast path off (the tracer cannot export the fused kernel).

Head: the dynamo exporter with a symbolic T. The legacy tracer cannot keep T symbolic here: the banded
adapter's depthwise kernel is built as `kernel.expand(d, 1, -1)` from `x.shape`, which the tracer turns into a
convolution "of unknown kernel shape", and SA2's `torch.arange(t)` would be frozen. The dynamo exporter
traces the unchanged `STPromptHead.forward`, so the graph cannot drift from the PyTorch head.
"""

from __future__ import annotations

import contextlib
import io
import os
import warnings

import torch
from torch import nn

from ..bundle.graphs import (
    ENCODER_INPUTS,
    ENCODER_OUTPUTS,
    HEAD_FEATURES_INPUTS,
    HEAD_INPUTS,
    HEAD_LAYER_INPUTS,
    HEAD_LAYER_OUTPUTS,
    HEAD_OUTPUTS,
    HEAD_SCORES_INPUTS,
)
from ..model.head import STPromptHead

ENCODER_OPSET = 17
HEAD_OPSET = 18  # the dynamo exporter's native opset; TensorRT 10 parses opsets 9-20 (10.0) and later
_EXAMPLE_T = 53  # trace length: unlike every static dimension (49 windows, D, 1 + C, K, 2R + 1)


class EncoderGraph(nn.Module):
    """images [N, 3, 224, 224] (CLIP-normalised) -> projected CLS embeddings [N, D], not L2-normalised."""

    def __init__(self, clip_model: nn.Module):
        super().__init__()
        self.clip = clip_model

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.clip.encode_image(images)


class HeadGraph(nn.Module):
    """One video, all snippets valid: x_clip [T, D], x_patch [T, 49, D] -> score [T], score_c [T], probs [T, 1+C].

    The learned prompt embeddings are a buffer, so they become constants of the graph (no text encoder at
    run time). Calls the unchanged `STPromptHead.forward` with batch 1 and an all-ones mask.
    """

    def __init__(self, head: STPromptHead, prompts: torch.Tensor):
        super().__init__()
        self.head = head.eval()
        self.register_buffer("prompts", prompts.detach().to(torch.float32).clone())

    def forward(self, x_clip: torch.Tensor, x_patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xc, xp = x_clip.unsqueeze(0), x_patch.unsqueeze(0)
        out = self.head(xc, xp, torch.ones_like(xc[..., 0]), self.prompts)
        return out.score[0], out.score_c[0], out.probs[0]


class HeadFeaturesGraph(HeadGraph):
    """The head after SA2: x_clip [T, D], x_as [T, D] -> score [T], score_c [T], probs [T, 1+C].

    A stream computes x_AS once per snippet (kernels.sa2) and keeps a ring buffer of [T, D] features, so the
    head's input is 49x smaller than with x_patch; `STPromptHead.forward_features` is the same code path.
    """

    def forward(self, x_clip: torch.Tensor, x_as: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        xc, xa = x_clip.unsqueeze(0), x_as.unsqueeze(0)
        out = self.head.forward_features(xc, xa, torch.ones_like(xc[..., 0]), self.prompts)
        return out.score[0], out.score_c[0], out.probs[0]


class HeadLayerGraph(nn.Module):
    """Adapter layer i after its band attention, snippet by snippet: attended [N, D] -> layer_out [N, D].

    `AdapterLayer.forward` is `pointwise(attend(x))`; the attention has no parameters (a fixed band over the
    layer's input), so a stream computes it itself and runs only this graph on the rows it needs."""

    def __init__(self, layer: nn.Module):
        super().__init__()
        self.layer = layer.eval()

    def forward(self, attended: torch.Tensor) -> torch.Tensor:
        return self.layer.pointwise(attended)


class HeadScoresGraph(HeadGraph):
    """Both branches from the last adapter layer's output: x_clip [N, D], x_adapted [N, D] -> score [N],
    score_c [N], probs [N, 1+C] (`STPromptHead.outputs`, the code path of `forward_features`)."""

    def forward(self, x_clip: torch.Tensor, x_adapted: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        out = self.head.outputs(x_clip.unsqueeze(0), x_adapted.unsqueeze(0), self.prompts)
        return out.score[0], out.score_c[0], out.probs[0]


@contextlib.contextmanager
def _quiet_export():
    """The exporters print progress and deprecation chatter; a CLI prints its own summary instead."""
    with warnings.catch_warnings(), contextlib.redirect_stdout(io.StringIO()):
        warnings.simplefilter("ignore")
        yield


def export_encoder(clip_model: nn.Module, path: str | os.PathLike, batch: int = 2) -> None:
    """Write the image encoder ONNX (N dynamic) to `path`."""
    graph = EncoderGraph(clip_model).eval().float().cpu()
    size = getattr(clip_model.visual, "image_size", 224)  # the model's own input size (Preprocess.size)
    h, w = size if isinstance(size, (tuple, list)) else (size, size)
    example = torch.zeros(batch, 3, int(h), int(w))
    fastpath = torch.backends.mha.get_fastpath_enabled()
    torch.backends.mha.set_fastpath_enabled(False)
    try:
        with torch.no_grad(), _quiet_export():
            torch.onnx.export(
                graph,
                (example,),
                os.fspath(path),
                input_names=list(ENCODER_INPUTS),
                output_names=list(ENCODER_OUTPUTS),
                dynamic_axes={ENCODER_INPUTS[0]: {0: "N"}, ENCODER_OUTPUTS[0]: {0: "N"}},
                opset_version=ENCODER_OPSET,
                do_constant_folding=True,
                dynamo=False,
            )
    finally:
        torch.backends.mha.set_fastpath_enabled(fastpath)


def export_head(head: STPromptHead, prompts: torch.Tensor, path: str | os.PathLike, after_sa2: bool = False) -> None:
    """Write the temporal head ONNX (T dynamic, prompts baked in) to `path`; `after_sa2`: inputs x_clip, x_as."""
    graph = (HeadFeaturesGraph if after_sa2 else HeadGraph)(head, prompts).eval().float().cpu()
    d = head.cfg.dim
    gen = torch.Generator().manual_seed(0)
    second = (_EXAMPLE_T, d) if after_sa2 else (_EXAMPLE_T, 49, d)
    example = (torch.randn(_EXAMPLE_T, d, generator=gen), torch.randn(*second, generator=gen))
    names = HEAD_FEATURES_INPUTS if after_sa2 else HEAD_INPUTS
    t = torch.export.Dim("T", min=1, max=1 << 20)
    with torch.no_grad(), _quiet_export():
        program = torch.onnx.export(
            graph,
            example,
            input_names=list(names),
            output_names=list(HEAD_OUTPUTS),
            dynamic_shapes={names[0]: {0: t}, names[1]: {0: t}},
            opset_version=HEAD_OPSET,
            dynamo=True,
            verbose=False,
        )
        program.save(os.fspath(path))


def _export_rows(graph: nn.Module, example: tuple[torch.Tensor, ...], names: tuple[str, ...],
                 outputs: tuple[str, ...], path: str | os.PathLike) -> None:  # fmt: skip
    """A snippet-wise graph: every input and output has the rows dimension N first (the only dynamic one).
    The TorchScript exporter keeps N symbolic here: nothing is built from a shape (no kernel, no arange)."""
    rows = {name: {0: "N"} for name in (*names, *outputs)}
    with torch.no_grad(), _quiet_export():
        torch.onnx.export(graph.eval().float().cpu(), example, os.fspath(path), input_names=list(names),
                          output_names=list(outputs), dynamic_axes=rows, opset_version=ENCODER_OPSET,
                          do_constant_folding=True, dynamo=False)  # fmt: skip


def export_head_stages(head: STPromptHead, prompts: torch.Tensor, layer_paths: list[str | os.PathLike],
                       scores_path: str | os.PathLike) -> None:  # fmt: skip
    """Write the head's snippet-wise graphs: one per adapter layer (`layer_paths`, in order) and the scores."""
    if len(layer_paths) != len(head.adapter):
        raise ValueError(f"{len(layer_paths)} layer paths for {len(head.adapter)} adapter layers")
    gen = torch.Generator().manual_seed(0)
    d = head.cfg.dim
    for layer, path in zip(head.adapter, layer_paths, strict=True):
        example = (torch.randn(_EXAMPLE_T, d, generator=gen),)
        _export_rows(HeadLayerGraph(layer), example, HEAD_LAYER_INPUTS, HEAD_LAYER_OUTPUTS, path)
    example = (torch.randn(_EXAMPLE_T, d, generator=gen), torch.randn(_EXAMPLE_T, d, generator=gen))
    _export_rows(HeadScoresGraph(head, prompts), example, HEAD_SCORES_INPUTS, HEAD_OUTPUTS, scores_path)
