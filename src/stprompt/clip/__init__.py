"""CLIP loading, image and text encoding. Import submodules directly: `stprompt.clip.constants` is
torch-free (the runtime uses it), the others need torch and open_clip."""
