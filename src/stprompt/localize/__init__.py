"""Training-free spatial localization (SPEC.md): query bank, window heat maps, fusion and boxes.

`heat` is numpy-only (the runtime uses it without torch); `queries` encodes texts with CLIP.
"""
