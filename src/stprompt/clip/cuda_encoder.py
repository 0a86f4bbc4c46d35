"""CLIP image encoding on an NVIDIA GPU in PyTorch: fp16 autocast, SDPA attention, CUDA graphs per batch bucket.

Why each piece:

* fp16 under autocast, not ``model.half()``: autocast keeps LayerNorm and softmax in fp32 (the FP16 LayerNorm
  collapse in DEPLOY-NOTES.md) while every matmul runs on tensor cores.
* Attention: open_clip calls ``nn.MultiheadAttention(need_weights=False)``, which PyTorch serves with
  ``scaled_dot_product_attention`` (flash / memory-efficient kernels); nothing to patch.
* CUDA graphs: a ViT-B/16 batch is ~150 kernel launches per layer group; replaying a captured graph removes the
  launch overhead that dominates small batches. Shapes must be fixed, so batches are padded up to a bucket
  (powers of two and whole sampled frames, up to max_batch) and one graph is captured per bucket the first time it
  is needed, each into a static input buffer that incoming crops are copied into (preallocated, no per-call
  allocation). All graphs share one memory pool: they never run concurrently and every output is copied out right
  after its replay, so their intermediates may overlap (an 8 GB Jetson cannot hold one pool per bucket).
"""

from __future__ import annotations

import numpy as np
import torch

from ..errors import UserError

CUDA_PRECISIONS = ("fp16", "bf16", "fp32")
_DTYPES = {"fp16": torch.float16, "bf16": torch.bfloat16, "fp32": torch.float32}


def buckets(max_batch: int, per_frame: int = 50) -> list[int]:
    """Batch sizes graphs are captured for: powers of two, whole sampled frames (1 + 49 crops each), max_batch.

    A batch runs in the smallest bucket that holds it; whole frames get an exact fit, gated frames (fewer crops)
    and localization's 16 scale-B crops a power of two.
    """
    sizes = {max_batch}
    b = 1
    while b < max_batch:
        sizes.add(b)
        b *= 2
    sizes.update(range(per_frame, max_batch, per_frame))
    return sorted(sizes)


class CudaImageEncoder:
    """Projected CLS embeddings of CLIP-normalised crops on a CUDA device; returns float32 numpy on the host."""

    def __init__(self, model: torch.nn.Module, precision: str = "fp16", max_batch: int = 64, graphs: bool = True,
                 device: str = "cuda") -> None:  # fmt: skip
        if precision not in CUDA_PRECISIONS:
            raise UserError(f"unknown CUDA precision {precision!r}; choose from {', '.join(CUDA_PRECISIONS)}")
        if not torch.cuda.is_available():
            raise UserError("the PyTorch CUDA backend needs an NVIDIA GPU and a CUDA build of torch; none found")
        self.device = torch.device(device)
        self.model = model.to(self.device).eval()
        self.dtype = _DTYPES[precision]
        self.precision = precision
        self.max_batch = int(max_batch)
        self.graphs_enabled = graphs
        self.buckets = buckets(self.max_batch)
        self.dim = int(model.visual.output_dim)
        self._graphs: dict[int, tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]] = {}
        self._pool = torch.cuda.graph_pool_handle() if graphs else None

    def _forward(self, x: torch.Tensor) -> torch.Tensor:
        # no autocast weight cache: a cached cast made during capture would be freed under the graph (torch docs)
        with torch.autocast("cuda", dtype=self.dtype, enabled=self.dtype != torch.float32, cache_enabled=False):
            return self.model.encode_image(x).float()

    def _graph(self, bucket: int) -> tuple[torch.cuda.CUDAGraph, torch.Tensor, torch.Tensor]:
        if bucket not in self._graphs:
            static_in = torch.zeros((bucket, 3, 224, 224), device=self.device)
            side = torch.cuda.Stream(self.device)
            side.wait_stream(torch.cuda.current_stream(self.device))
            with torch.cuda.stream(side), torch.inference_mode():
                for _ in range(2):  # warm-up on a side stream, as torch.cuda.graphs requires
                    self._forward(static_in)
            torch.cuda.current_stream(self.device).wait_stream(side)
            graph = torch.cuda.CUDAGraph()
            with torch.inference_mode(), torch.cuda.graph(graph, pool=self._pool):
                static_out = self._forward(static_in)
            self._graphs[bucket] = (graph, static_in, static_out)
        return self._graphs[bucket]

    @torch.inference_mode()
    def encode_tensor(self, images: torch.Tensor) -> torch.Tensor:
        """[N, 3, 224, 224] float32 (host or device) -> [N, D] float32 on the device."""
        outs = []
        for start in range(0, images.shape[0], self.max_batch):
            chunk = images[start : start + self.max_batch].to(self.device, non_blocking=True)
            n = chunk.shape[0]
            if not self.graphs_enabled:
                outs.append(self._forward(chunk))
                continue
            bucket = next(b for b in self.buckets if b >= n)
            graph, static_in, static_out = self._graph(bucket)
            static_in[:n].copy_(chunk)
            if n < bucket:
                static_in[n:].zero_()
            graph.replay()
            outs.append(static_out[:n].clone())
        if not outs:
            return torch.zeros((0, self.dim), device=self.device)
        return torch.cat(outs)

    def __call__(self, images: np.ndarray | torch.Tensor) -> np.ndarray:
        x = torch.from_numpy(np.ascontiguousarray(images)) if isinstance(images, np.ndarray) else images
        return self.encode_tensor(x).cpu().numpy()
