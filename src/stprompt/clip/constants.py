"""CLIP preprocessing constants (torch-free, shared by extraction, training and the runtime)."""

IMAGE_SIZE = 224
MEAN_RGB = (0.48145466, 0.4578275, 0.40821073)
STD_RGB = (0.26862954, 0.26130258, 0.27577711)
N_CTX = 8  # CoOp learnable context length (SPEC.md: l = 8)
