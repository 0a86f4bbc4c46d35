"""Measure: class loss and test frame AUC vs optimizer steps at the paper's lr 1e-4, batch 64 (controlled data)."""

import contextlib
import io
import json
import math
import os
import shutil
import sys
import time
from pathlib import Path

from stprompt import evaluate, train
from stprompt.checkpoint import Checkpoint

WORK = os.environ.get("STP_MEAS_DIR", "meas")  # where the stores, checkpoints and JSON go

STEPS = [10, 30, 60, 100, 150, 200, 250, 300, 400]
orig = Checkpoint.save


def save(self, path):
    orig(self, path)
    if self.optimizer_state is not None and self.training["step"] in STEPS:
        shutil.copy(path, f"{path}.step{self.training['step']}")


Checkpoint.save = save


def ev(root, ck):
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
        assert evaluate.main([str(root), "--ckpt", str(ck)]) == 0
    r = json.loads(buf.getvalue())
    return r["auc"], r["auc_c"]


res = {}
for name in sys.argv[1:]:
    root = Path(f"{WORK}/{name}")
    out = Path(f"{WORK}/{name}-sched.pt")
    t0 = time.perf_counter()
    run = train.train(
        train.FeatureStore.open(root),
        train.build_parser().parse_args(
            [
                str(root),
                "--out",
                str(out),
                "--steps",
                str(max(STEPS)),
                "--save-every",
                "10",
                "--quiet",
                "--threads",
                "1",
            ]
        ),
    )
    cl = run.losses["class"]
    first = next(
        (i + 1 for i in range(len(cl)) if sum(cl[i : i + 10]) / len(cl[i : i + 10]) < math.log(2) - 0.02), None
    )
    row = {
        "train_s": round(time.perf_counter() - t0, 1),
        "first_step_10mean_below": first,
        "class_at": {
            s: round(sum(cl[s - max(1, math.ceil(s / 10)) : s]) / max(1, math.ceil(s / 10)), 4) for s in STEPS
        },
        "auc_at": {s: [round(x, 4) for x in ev(root, f"{out}.step{s}")] for s in STEPS},
    }
    res[name] = row
    print(name, json.dumps(row), flush=True)
with open(f"{WORK}/sched-{'-'.join(sys.argv[1:])}.json", "w") as fh:
    json.dump(res, fh, indent=1)
