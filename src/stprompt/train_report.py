"""What stp-train tells the user about a run: the warning when the classification loss never left chance, and
the loss-curve picture written beside the checkpoint."""

from __future__ import annotations

import io
import math
from pathlib import Path

import numpy as np

CHANCE = math.log(2)  # L_class of a model that says 0.5 everywhere, on half-normal, half-anomalous batches
# "not moved": the mean L_class of the run's last tenth is above ln 2 - 0.05. On the controlled stores the paper's
# 10 steps end at 0.645-0.698 (test AUC 0.45-0.58, untrained) and 250 steps at 0.045-0.131 (AUC 0.90-0.97).
CHANCE_MARGIN = 0.05


def chance_warning(class_losses: list[float]) -> str | None:
    """The warning when L_class ended where a model that cannot tell the classes apart sits: ln 2 (on balanced
    batches, predicting 0.5 everywhere scores exactly that). Judged on the mean of the last tenth of the steps."""
    if not class_losses:
        return None
    tail = class_losses[-max(1, math.ceil(len(class_losses) / 10)) :]
    mean = float(np.mean(tail))
    if mean < CHANCE - CHANCE_MARGIN:
        return None
    return (
        f"the classification loss is still at chance ({mean:.3f} over the last {len(tail)} of {len(class_losses)} "
        f"steps; ln 2 = {CHANCE:.3f}): the model has not learned to tell anomalous from normal videos; train longer "
        "(--steps) or check the training labels"
    )


def plot_losses(path: Path, losses: dict[str, list[float]], alpha: float, beta: float,
                val_steps: list[int], val_auc: list[float]) -> bool:  # fmt: skip
    """Write the loss-curve PNG atomically; False when matplotlib is missing. Top: the weighted terms of the loss
    on a log scale (the paper's L_const is ~20x the rest at first); bottom: L_class against ln 2, where a model
    that has not learned sits, and the validation AUC."""
    try:
        import matplotlib
    except ImportError:
        return False
    from .fileio import atomic_write_bytes

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    x = np.arange(1, len(losses["loss"]) + 1)
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 5.2), dpi=100, sharex=True)
    terms = [("loss", 1.0, "black"), ("class", 1.0, "tab:orange"), ("align", alpha, "tab:blue"),
             ("const", beta, "tab:green")]  # fmt: skip
    for key, weight, color in terms:
        values = weight * np.asarray(losses[key], np.float64)
        if values.any():
            name = key if key == "loss" else f"L_{key}" if weight == 1.0 else f"{weight:g} L_{key}"
            top.plot(x, np.where(values > 0, values, np.nan), label=name, color=color, lw=1)
    top.set_yscale("log")
    top.set_ylabel("loss (log)")
    top.legend(loc="upper right", fontsize=7)
    if np.asarray(losses["class"]).any():
        bottom.plot(x, losses["class"], color="tab:orange", lw=1, label="L_class")
    bottom.axhline(CHANCE, color="gray", ls=":", lw=1, label="ln 2: chance")
    bottom.set_ylabel("L_class")
    bottom.set_ylim(bottom=0)
    bottom.set_xlabel("optimizer step")
    bottom.set_xlim(1, max(len(x), 2))
    handles, labels = bottom.get_legend_handles_labels()
    if val_steps:
        right = bottom.twinx()
        right.plot(val_steps, val_auc, "o-", color="tab:red", ms=3, lw=1, label="validation AUC (video-level)")
        right.set_ylim(0, 1.02)
        right.set_ylabel("validation AUC")
        more = right.get_legend_handles_labels()
        handles, labels = handles + more[0], labels + more[1]
    bottom.legend(handles, labels, loc="lower left", fontsize=7)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    plt.close(fig)
    atomic_write_bytes(path, buf.getvalue())
    return True
