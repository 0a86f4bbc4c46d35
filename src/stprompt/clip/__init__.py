"""CLIP loading, image and text encoding (torch and open_clip). The image preprocessing a CLIP model prescribes
is read by `loader.clip_preprocess` into a torch-free `stprompt.bundle.preprocess.Preprocess`."""
