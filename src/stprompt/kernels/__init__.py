"""Numba kernels for the runtime hot paths, each paired with a NumPy/OpenCV reference.

The references define the exact expected output and are what the tests compare against; the kernels are what the
runtime calls. Importing this package pulls in only NumPy, Numba and OpenCV -- never torch -- so the deployed
appliance can use it without the training stack.
"""

from stprompt.kernels import boxes, motion, normalize, sa2
from stprompt.kernels.boxes import boxes_reference, extract_boxes
from stprompt.kernels.motion import window_change, window_change_reference
from stprompt.kernels.sa2 import sa2_reference, sa2_sequence, sa2_step

__all__ = ["boxes_reference", "extract_boxes", "sa2_reference", "sa2_sequence", "sa2_step", "warmup",
           "window_change", "window_change_reference"]  # fmt: skip


def warmup() -> None:
    """Compile (or load from NUMBA_CACHE_DIR) every runtime kernel now, not on the first frame or first alarm."""
    boxes.warmup()
    sa2.warmup()
    motion.warmup()
    normalize.warmup()
