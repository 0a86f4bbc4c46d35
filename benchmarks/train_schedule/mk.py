"""Make the controlled feature stores the train-schedule measurements use (64 training videos, seeds 0-2; 48 videos).

STP_MEAS_DIR=meas python benchmarks/train_schedule/mk.py
"""

import os

from stprompt.clip.loader import load_clip
from stprompt.data.feature_synth import make_feature_dataset

WORK = os.environ.get("STP_MEAS_DIR", "meas")  # where the stores, checkpoints and JSON go

c = load_clip("stp-tiny")
for seed in (0, 1, 2):
    make_feature_dataset(f"{WORK}/ctrl{seed}", dim=c.dim, clip="stp-tiny", clip_sha256=c.sha256, seed=seed)
make_feature_dataset(f"{WORK}/ctrl48", n_train=48, dim=c.dim, clip="stp-tiny", clip_sha256=c.sha256, seed=0)
