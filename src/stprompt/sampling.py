"""Which frames become snippets: one rule for extraction, the runtime, `stp-run --check` and the video reader.

SPEC.md: snippet k samples frame k*stride + stride//2 (the manifest's `sampling.offset`), and covers frames
k*stride .. (k+1)*stride - 1; the tail shorter than `stride` is dropped. Pure integer arithmetic, no imports.
"""

from __future__ import annotations

import numpy as np


def sample_offset(stride: int) -> int:
    """Snippet k samples frame k*stride + stride//2 (SPEC.md)."""
    return stride // 2


def is_sampled(index: int, stride: int, offset: int | None = None) -> bool:
    """True for the frame a snippet samples: index = k*stride + offset."""
    return index % stride == (sample_offset(stride) if offset is None else offset)


def next_sampled(index: int, stride: int, offset: int | None = None) -> int:
    """The sampled frame index of the snippet after the one frame `index` belongs to (live sources that dropped
    a snippet's sampled frame take the next frame they get instead)."""
    offset = sample_offset(stride) if offset is None else offset
    return ((index - offset) // stride + 1) * stride + offset


def snippet_last_frame(sampled_index: int, stride: int, offset: int | None = None) -> int:
    """The last native frame of the snippet whose sampled frame is `sampled_index`: a snippet is complete (scored
    as offline) only once it has been seen; the tail shorter than `stride` is dropped."""
    offset = sample_offset(stride) if offset is None else offset
    return ((sampled_index - offset) // stride + 1) * stride - 1


def snippet_frame_indices(n_frames: int, stride: int) -> np.ndarray:
    """Native frame index of each snippet: k*stride + stride//2, dropping the tail shorter than stride."""
    return np.arange(n_frames // stride, dtype=np.int64) * stride + sample_offset(stride)
