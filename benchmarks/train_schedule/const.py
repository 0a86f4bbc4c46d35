"""Measure: L_const sum (Eq. 9) vs pair mean on the controlled data, 3 seeds, two schedules."""

import contextlib
import io
import json
import os
import statistics
import time

from stprompt import evaluate, train

WORK = os.environ.get("STP_MEAS_DIR", "meas")  # where the stores, checkpoints and JSON go

SETTINGS = {"test_learning": ["--epochs", "20", "--batch", "16", "--lr", "1e-3"], "default": []}
res = []
for seed in (0, 1, 2):
    root = f"{WORK}/ctrl{seed}"
    for setting, flags in SETTINGS.items():
        for form in ("sum", "mean"):
            out = f"{WORK}/const-{seed}-{setting}-{form}.pt"
            t0 = time.perf_counter()
            run = train.train(
                train.FeatureStore.open(root),
                train.build_parser().parse_args(
                    [root, "--out", out, "--seed", str(seed), "--const-form", form, "--quiet", "--threads", "1", *flags]
                ),
            )
            s = time.perf_counter() - t0
            buf = io.StringIO()
            with contextlib.redirect_stdout(buf), contextlib.redirect_stderr(io.StringIO()):
                evaluate.main([root, "--ckpt", out])
            r = json.loads(buf.getvalue())
            L = run.losses
            row = {
                "seed": seed,
                "setting": setting,
                "form": form,
                "steps": run.step,
                "auc": r["auc"],
                "auc_c": r["auc_c"],
                "per_class_min": min(r["per_class_auc"].values()),
                "step1": {k: L[k][0] for k in L},
                "last": {k: L[k][-1] for k in L},
                "train_s": round(s, 1),
            }
            res.append(row)
            print(json.dumps(row), flush=True)
with open(f"{WORK}/const.json", "w") as fh:
    json.dump(res, fh, indent=1)
for setting in SETTINGS:
    for form in ("sum", "mean"):
        rows = [r for r in res if r["setting"] == setting and r["form"] == form]
        for key in ("auc", "auc_c", "per_class_min"):
            v = [r[key] for r in rows]
            print(
                setting, form, key, f"{statistics.fmean(v):.3f} +- {statistics.stdev(v):.3f}", [round(x, 3) for x in v]
            )
