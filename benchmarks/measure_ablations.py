"""Paper Tables 5 and 6 on the controlled feature generator: frame AUC of every ablation variant, over seeds.

    python benchmarks/measure_ablations.py [--seeds 0,1,2] [--out benchmarks/results/ablations-controlled.json]

Why here: on the controlled features (stprompt.data.feature_synth) the anomaly is planted in a few moving
windows of x_patch, so the table says what each spatial / temporal variant can recover when the truth is known.
Per seed s: the dataset of `make_feature_dataset(seed=s)` (defaults, D = the stp-tiny CLIP's) and
`stp-train --seed s` with tests/test_learning.py's settings, then `stp-eval` on its test split. Table 5 varies
--spatial with the distance adapter, Table 6 varies --temporal with SA2; their shared default row is one run.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from stprompt import evaluate, train
from stprompt.clip.loader import load_clip
from stprompt.data.feature_synth import make_feature_dataset
from stprompt.model.config import SPATIAL, TEMPORAL

TRAIN_ARGS = ["--epochs", "20", "--batch", "16", "--lr", "1e-3", "--quiet"]  # tests/test_learning.py's
ROOT = Path(__file__).resolve().parents[1]


def variants() -> list[tuple[str, str]]:
    """(spatial, temporal) of every row of both tables, the default once."""
    rows = [(s, "distance") for s in SPATIAL] + [("sa2", t) for t in TEMPORAL if t != "distance"]
    return list(dict.fromkeys(rows))


def run(features: Path, out: Path, spatial: str, temporal: str, seed: int, threads: int) -> dict:
    flags = ["--spatial", spatial, "--temporal", temporal, "--seed", str(seed), "--threads", str(threads)]
    t0 = time.perf_counter()
    assert train.main([str(features), "--out", str(out), *TRAIN_ARGS, *flags]) == 0
    train_s = time.perf_counter() - t0
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert evaluate.main([str(features), "--ckpt", str(out)]) == 0
    report = json.loads(buf.getvalue())
    return {"auc": report["auc"], "auc_c": report["auc_c"], "train_s": round(train_s, 1)}


def summary(values: list[float]) -> dict:
    return {"mean": round(statistics.fmean(values), 4), "std": round(statistics.stdev(values), 4) if len(values) > 1
            else 0.0, "min": round(min(values), 4), "max": round(max(values), 4)}  # fmt: skip


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", default="0,1,2")
    p.add_argument("--threads", type=int, default=0, help="torch CPU threads per training (0 = torch's default)")
    p.add_argument("--out", default=str(ROOT / "benchmarks/results/ablations-controlled.json"))
    args = p.parse_args()
    seeds = [int(s) for s in args.seeds.split(",")]
    clip = load_clip("stp-tiny")
    runs: dict[tuple[str, str], list[dict]] = {v: [] for v in variants()}
    t_start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            features = Path(tmp) / f"features-{seed}"
            make_feature_dataset(features, dim=clip.dim, clip="stp-tiny", clip_sha256=clip.sha256, seed=seed)
            for spatial, temporal in runs:
                r = run(features, Path(tmp) / "model.pt", spatial, temporal, seed, args.threads)
                runs[(spatial, temporal)].append({"seed": seed, **r})
                print(f"seed {seed} spatial {spatial:17s} temporal {temporal:20s} AUC {r['auc']:.4f} "
                      f"C-branch {r['auc_c']:.4f} ({r['train_s']} s)", file=sys.stderr)  # fmt: skip
    rows = []
    for (spatial, temporal), per_seed in runs.items():
        tables = ([5] if temporal == "distance" else []) + ([6] if spatial == "sa2" else [])
        rows.append({
            "tables": tables, "spatial": spatial, "temporal": temporal,
            "auc": summary([r["auc"] for r in per_seed]), "auc_c": summary([r["auc_c"] for r in per_seed]),
            "runs": per_seed,
        })  # fmt: skip
    commit = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "HEAD"], capture_output=True, text=True).stdout
    doc = {
        "what": "frame AUC (A-branch `auc`, C-branch `auc_c`) of stp-eval on the controlled features' test split",
        "dataset": {
            "generator": "stprompt.data.feature_synth.make_feature_dataset",
            "defaults": True,
            "dim": clip.dim,
            "seed": "= the run's seed",
        },  # fmt: skip
        "train_args": TRAIN_ARGS + ["--seed", "<seed>"],
        "seeds": seeds,
        "rows": rows,
        "seconds": round(time.perf_counter() - t_start, 1),
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "git_head": commit.strip() + " (plus this working tree's changes)",
    }
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(doc, indent=1) + "\n")
    print(args.out)


if __name__ == "__main__":
    main()
