"""Synthetic FEATURES with a known truth, to prove the learning machinery without CLIP or videos.

Why: on real (or rendered) videos nobody knows how separable the anomalies are in feature space, so a
low AUC cannot tell a bug from hard data. Here the anomaly is planted in feature space with the structure
STPrompt relies on (local, moving, dynamic content that the frame-level feature hardly shows), so a
correct SA2 + head must find it and a broken one cannot. Construction (all defaults are parameters):

- An orthonormal basis of R^dim gives one "object" direction g (people, cars: normal activity) and one
  direction u_c per anomaly class, orthogonal to each other. Backgrounds hold neither
  (`clean_background`: a street is not a fire).
- Scenes: each of `n_scenes` cameras has a scene vector and a 7x7 grid of background window vectors
  (half shared scene look, half per-window content, like sky vs road) and its own noise level
  (x U(1 - spread, 1 + spread)). Every video picks a scene, train and test share them.
- x_clip[k] = scene vector + a per-video offset + strong per-snippet noise (`clip_noise`, 1.0 per
  channel) + only a faint trace of what happens in the windows (`clip_trace` = 0.1 x their signal).
- x_patch[k, i, j] = background window + a slow per-window random walk (`jitter`) + noise (`patch_noise`)
  + objects:
  * normal objects, in every video (`normal_objects` = 1-4): `object_signal` x g x U(0.6, 1.4) plus a
    small identity vector, each in one window that glides across the grid at `object_speed` = 0.3-1.0
    windows per snippet, bouncing off the edges: normal things move, motion alone is not an anomaly;
  * the anomaly, in anomalous videos only, during one contiguous snippet interval covering
    `anomaly_span` = 25-60 % of the video: a cluster of `anomaly_windows` = 1-4 adjacent windows whose
    centre jumps erratically (random walk, `anomaly_step` = 0.8 windows per snippet), carrying
    strength x (u_c + 0.5 g) with strength = `patch_signal` x U(0.6, 1.4), plus a per-snippet flicker
    (gaussian, `flicker` x strength per channel) as fire or a fight would have.
- The harder variant (`preset="hard"`, the values in `HARD`; off by default) adds what real footage has and the
  default store lacks: in every video, normal or anomalous, `distractors` = 1-2 erratic normal objects, each
  built like the anomaly (same span, cluster, random walk, strength and flicker, so SA2's top-K picks them as
  readily) but carrying strength x (g + 0.5 w) with w a unit identity direction orthogonal to g and every u_c:
  only the content names the anomaly, not the motion; and a per-video random walk of the frame embedding
  (`clip_drift` = 0.2 per channel per snippet added to x_clip), which lets a head memorise which stretch of
  each training video was anomalous instead of learning what an anomaly looks like.
- Everything is multiplied by `scale` at the end (the SA2 softmax has no temperature, so the feature
  scale sets how peaked it is).

With the defaults (3 seeds, logistic regression on snippets of the train split, snippet ROC AUC on the
test split; multinomial over the classes, score = 1 - p(normal)): x_clip alone ~0.58; x_clip + SA2
(top-12 windows by ||2x[i]-x[i-1]-x[i+1]||, softmax-weighted sum) ~0.94; the motion magnitude alone
(max Mo per snippet) ~0.90. Anomalies do move more than normal objects, as in real footage; what SA2
adds over motion is the content of the moving windows, and it is the content that names the class.

With `preset="hard"` (same protocol, D = 64, seeds 0 / 1): x_clip alone ~0.57 / 0.60; x_clip + SA2 ~0.83 / 0.87, the
strongly supervised ceiling of a linear read-out; SA2's most-moving window is the anomaly's in 59 / 67 % of the
anomalous snippets (93 / 95 % by default).

Annotations: video label = class name, anomalies = [(k0 * stride, k1 * stride)] (native frames, end
exclusive). With `with_boxes`, boxes = the anomaly windows' union on a nominal 224x224 frame at each
anomalous snippet's sampled frame (k * stride + stride // 2); off by default because FeatureStore rewrites
its JSON index per video and boxes make that quadratic. Each npz also holds `planted` [T, 7, 7] int8
(0 background, 1 normal object, 2 anomaly), the exact localization truth. Deterministic for a seed.
"""

from __future__ import annotations

import os

import numpy as np

from ..errors import UserError
from .annotations import NORMAL, Video
from .features import FeatureStore

CLASS_NAMES = [
    "Fighting",
    "Arson",
    "RoadAccidents",
    "Explosion",
    "Shooting",
    "Robbery",
    "Vandalism",
    "Stealing",
]
GRID = 7
WINDOW = 32  # scale-A window size on the 224x224 frame (SPEC.md)
_CLUSTERS = [
    [(0, 0)],
    [(0, 0), (0, 1)],
    [(0, 0), (1, 0)],
    [(0, 0), (0, 1), (1, 0)],
    [(0, 0), (0, 1), (1, 0), (1, 1)],
]


# preset="hard": every video holds erratic normal objects that SA2 picks as readily as the anomaly, and the frame
# embedding drifts on its own (module docstring). Measured in benchmarks/measure_generalisation.py.
HARD = {"distractors": (1, 2), "clip_drift": 0.2}
PRESETS = {"default": {}, "hard": HARD}
_PLAIN = {"distractors": (0, 0), "clip_drift": 0.0}  # make_feature_dataset's own defaults for them


def feature_classes(n_classes: int) -> list[str]:
    """["normal", "Fighting", ...]: readable names (the prompt learner feeds them to a text encoder)."""
    names = CLASS_NAMES[:n_classes] + [f"class{i + 1}" for i in range(len(CLASS_NAMES), n_classes)]
    return [NORMAL, *names]


def _walk(
    rng: np.random.Generator, n: int, start: np.ndarray, step: float, lo: float, hi: float
) -> np.ndarray:
    """Positions of a bounded random walk with gaussian steps (reflected at the edges)."""
    pos = np.empty((n, 2))
    p = start.astype(np.float64).copy()
    for k in range(n):
        pos[k] = p
        p = p + rng.normal(0, step, 2)
        p = np.where(p < lo, 2 * lo - p, p)
        p = np.where(p > hi, 2 * hi - p, p)
        p = np.clip(p, lo, hi)
    return pos


def _glide(rng: np.random.Generator, n: int, speed: tuple[float, float]) -> np.ndarray:
    """Positions of an object moving in a straight line at constant speed, bouncing off the grid edges."""
    angle = rng.uniform(0, 2 * np.pi)
    v = rng.uniform(*speed) * np.array([np.cos(angle), np.sin(angle)])
    raw = rng.uniform(0, GRID - 1, 2)[None, :] + np.arange(n)[:, None] * v[None, :]
    period = 2 * (GRID - 1)
    m = np.mod(raw, period)
    return np.where(m > GRID - 1, period - m, m)


def make_feature_dataset(
    out_dir: str | os.PathLike,
    *,
    preset: str = "default",
    n_train: int = 64,
    n_test: int = 32,
    length: tuple[int, int] = (24, 64),
    dim: int = 32,
    n_scenes: int = 3,
    anomaly_fraction: float = 0.5,
    n_classes: int = 4,
    stride: int = 4,
    seed: int = 0,
    patch_signal: float = 6.0,
    anomaly_windows: tuple[int, int] = (1, 4),
    anomaly_span: tuple[float, float] = (0.25, 0.6),
    anomaly_step: float = 0.8,
    flicker: float = 0.15,
    object_signal: float = 5.0,
    normal_objects: tuple[int, int] = (1, 4),
    object_speed: tuple[float, float] = (0.3, 1.0),
    clip_trace: float = 0.1,
    clip_noise: float = 1.0,
    clip_drift: float = 0.0,
    distractors: tuple[int, int] = (0, 0),
    patch_noise: float = 0.3,
    jitter: float = 0.05,
    spread: float = 0.4,
    clean_background: bool = True,
    scale: float = 1.0,
    with_boxes: bool = False,
    clip: str = "synthetic-features",
    clip_sha256: str = "0" * 64,
) -> FeatureStore:
    """Write a FeatureStore of planted anomalies (see the module docstring for the construction).

    `preset` ("default" or "hard") supplies `distractors` and `clip_drift`; passing either explicitly with a
    preset that sets it is refused, so a call says one thing.
    """
    if preset not in PRESETS:
        raise UserError(f"preset must be one of {sorted(PRESETS)}, got {preset!r}")
    chosen = PRESETS[preset]
    given = {"distractors": distractors, "clip_drift": clip_drift}
    clash = [k for k in chosen if given[k] != _PLAIN[k]]
    if clash:
        raise UserError(f"preset {preset!r} sets {', '.join(clash)}; drop the preset or the argument")
    distractors = tuple(chosen.get("distractors", distractors))
    clip_drift = float(chosen.get("clip_drift", clip_drift))
    if n_classes < 1:
        raise UserError(f"n_classes must be >= 1, got {n_classes}")
    if dim < n_classes + 1:
        raise UserError(f"dim must be at least n_classes + 1 = {n_classes + 1}, got {dim}")
    if not 3 <= length[0] <= length[1]:
        raise UserError(f"length must be (min, max) snippets with 3 <= min <= max, got {length}")
    if not 1 <= anomaly_windows[0] <= anomaly_windows[1] <= 4:
        raise UserError(f"anomaly_windows must lie within 1..4, got {anomaly_windows}")
    if clip_drift < 0 or not 0 <= distractors[0] <= distractors[1]:
        raise UserError(f"need clip_drift >= 0 and 0 <= distractors min <= max, got {clip_drift}, {distractors}")
    if n_train < 0 or n_test < 0 or n_train + n_test == 0 or n_scenes < 1 or stride < 1:
        raise UserError("need n_train, n_test >= 0 (not both 0), n_scenes >= 1 and stride >= 1")
    classes = feature_classes(n_classes)
    root = np.random.SeedSequence(int(seed))
    world_seq, plan_seq, *video_seqs = root.spawn(2 + n_train + n_test)
    world = np.random.default_rng(world_seq)

    basis, _ = np.linalg.qr(world.normal(size=(dim, dim)))
    g = basis[:, 0]
    u = basis[:, 1 : 1 + n_classes].T  # [C, D]
    scene_vec = world.normal(size=(n_scenes, dim))
    bg = 0.5 * scene_vec[:, None, None, :] + world.normal(size=(n_scenes, GRID, GRID, dim)) * np.sqrt(0.75)
    content = basis[:, : 1 + n_classes]  # object + anomaly directions
    if clean_background:  # backgrounds hold no object / anomaly content (CLIP: a street is not a fire)
        scene_vec -= scene_vec @ content @ content.T
        bg -= bg @ content @ content.T
    scene_noise = world.uniform(1 - spread, 1 + spread, n_scenes)  # cameras differ in noise

    store = FeatureStore.create(
        out_dir,
        clip=clip,
        clip_sha256=clip_sha256,
        dim=dim,
        stride=stride,
        scale_b=False,
        classes=classes,
        fps=25.0,
    )
    plan = np.random.default_rng(plan_seq)
    vi = 0
    for split, n in (("train", n_train), ("test", n_test)):
        n_anom = int(round(n * anomaly_fraction))
        if n >= 2 and 0 < anomaly_fraction < 1:
            n_anom = min(max(n_anom, 1), n - 1)
        labels = [NORMAL] * (n - n_anom) + [classes[1 + i % n_classes] for i in range(n_anom)]
        plan.shuffle(labels)
        digits = max(3, len(str(max(n - 1, 0))))
        for i, label in enumerate(labels):
            rng = np.random.default_rng(video_seqs[vi])
            vi += 1
            T = int(rng.integers(length[0], length[1] + 1))
            s = int(rng.integers(n_scenes))
            # background: scene windows + slow per-window drift + noise
            drift = np.cumsum(rng.normal(0, jitter, (T, GRID, GRID, dim)), axis=0)
            x_patch = bg[s][None] + drift + rng.normal(0, patch_noise * scene_noise[s], (T, GRID, GRID, dim))
            x_clip = scene_vec[s][None] + rng.normal(0, 0.3, dim)[None] + rng.normal(0, clip_noise, (T, dim))
            planted = np.zeros((T, GRID, GRID), np.int8)
            for _ in range(int(rng.integers(normal_objects[0], normal_objects[1] + 1))):
                ident = rng.normal(0, 0.3, dim)
                pos = np.rint(_glide(rng, T, object_speed)).astype(int)
                amp = object_signal * rng.uniform(1 - spread, 1 + spread) * (1 + 0.1 * rng.normal(size=T))
                vec = amp[:, None] * g[None] + ident[None]
                x_patch[np.arange(T), pos[:, 0], pos[:, 1]] += vec
                x_clip += clip_trace * vec
                planted[np.arange(T), pos[:, 0], pos[:, 1]] = 1
            anomalies: list[tuple[int, int]] = []
            boxes: dict[int, list[list[float]]] = {}
            if label != NORMAL:
                c = classes.index(label) - 1
                span = min(T, max(2, int(round(rng.uniform(*anomaly_span) * T))))
                k0 = int(rng.integers(0, T - span + 1))
                k1 = k0 + span
                m = int(rng.integers(anomaly_windows[0], anomaly_windows[1] + 1))
                shape = [q for q in _CLUSTERS if len(q) == m]
                offsets = np.array(shape[rng.integers(len(shape))])
                centre = _walk(rng, span, rng.uniform(0, GRID - 2, 2), anomaly_step, 0.0, GRID - 2.0)
                strength = patch_signal * rng.uniform(1 - spread, 1 + spread)
                for j, k in enumerate(range(k0, k1)):
                    cells = np.clip(np.rint(centre[j]).astype(int)[None] + offsets, 0, GRID - 1)
                    amp = strength * (1 + 0.1 * rng.normal())
                    vec = amp * (u[c] + 0.5 * g)
                    for r, q in {tuple(x) for x in cells}:
                        x_patch[k, r, q] += vec + rng.normal(0, flicker * strength, dim)
                        planted[k, r, q] = 2
                    x_clip[k] += clip_trace * vec
                    if with_boxes:
                        rows, cols = np.nonzero(planted[k] == 2)
                        x1, y1, x2, y2 = cols.min(), rows.min(), cols.max() + 1, rows.max() + 1
                        boxes[k * stride + stride // 2] = [[float(v * WINDOW) for v in (x1, y1, x2, y2)]]
                anomalies = [(k0 * stride, k1 * stride)]
            # the harder variant's extras draw last, so the default datasets stay exactly what they were
            for _ in range(int(rng.integers(distractors[0], distractors[1] + 1)) if distractors[1] else 0):
                span = min(T, max(2, int(round(rng.uniform(*anomaly_span) * T))))
                k0 = int(rng.integers(0, T - span + 1))
                m = int(rng.integers(anomaly_windows[0], anomaly_windows[1] + 1))
                shape = [q for q in _CLUSTERS if len(q) == m]
                offsets = np.array(shape[rng.integers(len(shape))])
                centre = _walk(rng, span, rng.uniform(0, GRID - 2, 2), anomaly_step, 0.0, GRID - 2.0)
                strength = patch_signal * rng.uniform(1 - spread, 1 + spread)
                ident = rng.normal(size=dim)
                ident -= content @ (content.T @ ident)
                ident /= np.linalg.norm(ident)
                for j, k in enumerate(range(k0, k0 + span)):
                    cells = np.clip(np.rint(centre[j]).astype(int)[None] + offsets, 0, GRID - 1)
                    vec = strength * (1 + 0.1 * rng.normal()) * (g + 0.5 * ident)
                    for r, q in {tuple(x) for x in cells}:
                        x_patch[k, r, q] += vec + rng.normal(0, flicker * strength, dim)
                        planted[k, r, q] = max(planted[k, r, q], 1)
                    x_clip[k] += clip_trace * vec
            if clip_drift:
                x_clip += np.cumsum(rng.normal(0, clip_drift, (T, dim)), axis=0)
            video = Video(
                path=f"{split}_{i:0{digits}d}_{label}.mp4",
                split=split,
                labels=[label],
                anomalies=anomalies,
                boxes=boxes,
            )
            arrays = {
                "x_clip": (scale * x_clip).astype(np.float32),
                "x_patch": (scale * x_patch).astype(np.float32),
                "frames": (np.arange(T, dtype=np.int64) * stride + stride // 2),
                "planted": planted,
            }
            store.write(video, arrays, n_frames=T * stride)
    return store
