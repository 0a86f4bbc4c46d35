"""Synthetic surveillance videos with labelled, boxed anomalies (`stp-synth`).

Why: the demo and the end-to-end tests need real video files whose ground truth is known exactly, made
in seconds on a laptop, with nothing to download. The data must not flatter the model, so it imitates
what makes real benchmarks hard rather than what makes them easy:

- a few fixed camera scenes (`n_scenes`, drawn once per seed: sky, buildings and walls with windows or
  bricks, trees, far sidewalk, a two-lane road, near sidewalk, a plaza) shared by train and test, as
  UCF-Crime / ShanghaiTech repeat their cameras; every video picks one scene;
- normal activity in every video: walking people (head, torso, swinging arms and legs, varied clothes,
  perspective-scaled, 1.0-1.6 m/s) and vehicles (cars and vans with windows and wheels, 7-14 m/s) on the
  road lanes; sensor noise (gaussian, sigma ~2.5 grey levels) and a slow global brightness flicker;
- anomalies are SMALL and LOCAL (typically 3-10 % of the frame) and last 25-60 % of the video:
  "Fighting" (two people jittering close together, limbs flailing), "Arson" (a growing, flickering
  red/orange/yellow fire with dark smoke at the foot of a building), "RoadAccidents" (a car swerves into
  the other lane, both collide and stop, one rotated, debris, hazard lights), "Explosion" (a short bright
  expanding disc, then a dark smoke cloud, flying debris and a scorch mark). Anomalous videos keep their
  normal activity; fighters and crashing cars walk / drive in before and leave after the interval as
  ordinary people and cars, so neither their presence nor motion alone marks an anomaly.

Ground truth is exact: every anomaly primitive is drawn into the frame and into a mask at once, and the
box of a frame is the bounding rectangle of that mask ([x1, y1, x2, y2], x2/y2 exclusive pixel edges),
one box per anomaly event per frame inside its interval. Everything is seeded: one seed, one dataset.
"""

from __future__ import annotations

import abc
import json
import math
import multiprocessing
import os
import queue
import re
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import cv2
import numpy as np

from ..errors import UserError
from ..fileio import atomic_write_json
from .annotations import NORMAL, Annotations, Video

CLASSES = [NORMAL, "Fighting", "Arson", "RoadAccidents", "Explosion"]
MARKER = "stp-synth.json"  # written next to annotations.json; marks a folder as stp-synth output
VIDEO_NAME = re.compile(r"^(train|test)_\d+_[A-Za-z]+\.mp4$")

_SHIFT = 4  # cv2 fixed-point bits: sub-pixel positions give smooth motion
_ONE = 1 << _SHIFT
_AA = cv2.LINE_AA

Color = tuple[int, int, int]
Pt = tuple[float, float]
Pts = list[Pt]


# ------------------------------------------------------------------------------------------------------
# drawing helpers: everything drawn for an anomaly also goes into a mask, which defines its box
# ------------------------------------------------------------------------------------------------------
def _fx(v: float) -> int:
    return math.floor(v * _ONE + 0.5)


def _fpt(x: float, y: float) -> tuple[int, int]:
    return math.floor(x * _ONE + 0.5), math.floor(y * _ONE + 0.5)


class _Pen:
    """Draws on a BGR frame and, when a mask is given, marks the same pixels in the mask."""

    def __init__(self, img: np.ndarray, mask: np.ndarray | None = None):
        self.img = img
        self.mask = mask

    def poly(self, pts: Pts, color: Color) -> None:
        p = np.array([(math.floor(a * _ONE + 0.5), math.floor(b * _ONE + 0.5)) for a, b in pts], np.int32)
        cv2.fillConvexPoly(self.img, p, color, _AA, _SHIFT)
        if self.mask is not None:
            cv2.fillConvexPoly(self.mask, p, 255, _AA, _SHIFT)

    def line(self, a: Pt, b: Pt, color: Color, thick: int) -> None:
        pa, pb = _fpt(*a), _fpt(*b)
        cv2.line(self.img, pa, pb, color, thick, _AA, _SHIFT)
        if self.mask is not None:
            cv2.line(self.mask, pa, pb, 255, thick, _AA, _SHIFT)

    def circle(self, c: Pt, r: float, color: Color) -> None:
        pc, pr = _fpt(*c), max(_fx(r), _ONE // 2)
        cv2.circle(self.img, pc, pr, color, -1, _AA, _SHIFT)
        if self.mask is not None:
            cv2.circle(self.mask, pc, pr, 255, -1, _AA, _SHIFT)

    def ellipse(self, c: Pt, axes: Pt, color: Color) -> None:
        ax = (max(_fx(axes[0]), _ONE // 2), max(_fx(axes[1]), _ONE // 2))
        cv2.ellipse(self.img, _fpt(*c), ax, 0, 0, 360, color, -1, _AA, _SHIFT)
        if self.mask is not None:
            cv2.ellipse(self.mask, _fpt(*c), ax, 0, 0, 360, 255, -1, _AA, _SHIFT)

    def soft_circle(self, c: Pt, r: float, color: Color, alpha: float) -> None:
        """A translucent disc (smoke), blended inside its own small region of interest.

        Nearly transparent puffs are skipped rather than drawn invisibly, so boxes stay tight.
        """
        if alpha < 0.08:
            return
        h, w = self.img.shape[:2]
        x0, y0 = max(0, int(c[0] - r) - 2), max(0, int(c[1] - r) - 2)
        x1, y1 = min(w, int(c[0] + r) + 3), min(h, int(c[1] + r) + 3)
        if x1 <= x0 or y1 <= y0:
            return
        m = np.zeros((y1 - y0, x1 - x0), np.uint8)
        cv2.circle(m, _fpt(c[0] - x0, c[1] - y0), max(_fx(r), _ONE // 2), 255, -1, _AA, _SHIFT)
        a = m.astype(np.float32)[..., None] * (alpha / 255.0)
        roi = self.img[y0:y1, x0:x1]
        roi[:] = (roi * (1.0 - a) + np.asarray(color, np.float32) * a + 0.5).astype(np.uint8)
        if self.mask is not None:
            np.maximum(self.mask[y0:y1, x0:x1], m, out=self.mask[y0:y1, x0:x1])


def _rot(pts: Pts, angle: float, x: float, y: float, flip: int = 1) -> Pts:
    """Mirror local points by `flip`, rotate them by `angle` and move the origin to (x, y).

    Plain Python on purpose: shapes have 2-14 points, where numpy's per-call overhead dominates.
    """
    if angle == 0.0:
        return [(flip * a + x, b + y) for a, b in pts]
    c, s = math.cos(angle), math.sin(angle)
    return [(flip * a * c - b * s + x, flip * a * s + b * c + y) for a, b in pts]


# ------------------------------------------------------------------------------------------------------
# people and vehicles
# ------------------------------------------------------------------------------------------------------
SKIN: list[Color] = [(140, 180, 225), (105, 145, 200), (70, 100, 150), (50, 70, 110), (170, 200, 235)]
HAIR: list[Color] = [(20, 20, 25), (30, 45, 70), (60, 90, 140), (150, 150, 150), (40, 60, 90)]
SHIRT: list[Color] = [
    (40, 40, 200),
    (200, 90, 30),
    (50, 160, 60),
    (220, 220, 220),
    (30, 30, 30),
    (0, 190, 230),
    (140, 60, 140),
    (120, 120, 120),
    (180, 130, 60),
    (60, 90, 200),
    (90, 160, 200),
    (160, 40, 40),
]
PANTS: list[Color] = [(90, 50, 20), (40, 40, 40), (110, 100, 90), (140, 90, 40), (60, 70, 90), (20, 20, 20)]
CAR: list[Color] = [
    (235, 235, 235),
    (190, 190, 185),
    (35, 35, 35),
    (40, 40, 190),
    (170, 80, 30),
    (40, 90, 40),
    (30, 200, 230),
    (110, 110, 115),
    (130, 30, 30),
]


@dataclass
class _Look:
    skin: Color
    hair: Color
    shirt: Color
    pants: Color

    @staticmethod
    def random(rng: np.random.Generator) -> _Look:
        def pick(pal: list[Color]) -> Color:
            base = np.asarray(pal[rng.integers(len(pal))], np.float64) + rng.normal(0, 12, 3)
            return tuple(int(v) for v in np.clip(base, 0, 255))  # type: ignore[return-value]

        return _Look(pick(SKIN), pick(HAIR), pick(SHIRT), pick(PANTS))


def _draw_person(
    pen: _Pen,
    x: float,
    y: float,
    h: float,
    look: _Look,
    legs: tuple[float, float],
    arms: tuple[float, float],
    face: int = 1,
    lean: float = 0.0,
) -> None:
    """An upright figure standing at foot point (x, y), `h` pixels tall.

    Limb angles are radians from hanging straight down, positive = towards `face` (+1 right, -1 left).
    """
    hip_y, sh_y = -0.47 * h, -0.79 * h
    leg_len, arm_len = 0.47 * h, 0.36 * h
    local = [
        (-0.04 * h, hip_y),
        (0.04 * h, hip_y),  # 0, 1 hips
        (-0.04 * h + face * leg_len * math.sin(legs[0]), hip_y + leg_len * math.cos(legs[0])),
        (0.04 * h + face * leg_len * math.sin(legs[1]), hip_y + leg_len * math.cos(legs[1])),
        (-0.13 * h, sh_y),
        (0.13 * h, sh_y),
        (0.11 * h, hip_y + 0.02 * h),
        (-0.11 * h, hip_y + 0.02 * h),
        (-0.1 * h, sh_y + 0.02 * h),
        (0.1 * h, sh_y + 0.02 * h),  # 8, 9 shoulders
        (-0.1 * h + face * arm_len * math.sin(arms[0]), sh_y + 0.02 * h + arm_len * math.cos(arms[0])),
        (0.1 * h + face * arm_len * math.sin(arms[1]), sh_y + 0.02 * h + arm_len * math.cos(arms[1])),
        (0.0, -0.895 * h),  # 12 head centre
        (0.0, -0.93 * h),  # 13 hair
    ]
    pt = _rot(local, face * lean, x, y)
    limb = max(1, int(round(0.085 * h)))
    pen.line(pt[0], pt[2], look.pants, limb)
    pen.line(pt[1], pt[3], look.pants, limb)
    pen.poly(pt[4:8], look.shirt)
    arm = max(1, int(round(0.065 * h)))
    pen.line(pt[8], pt[10], look.shirt, arm)
    pen.line(pt[9], pt[11], look.shirt, arm)
    pen.circle(pt[12], 0.1 * h, look.skin)
    pen.ellipse(pt[13], (0.09 * h, 0.055 * h), look.hair)


def _walk_pose(phase: float) -> tuple[tuple[float, float], tuple[float, float]]:
    s = math.sin(phase)
    return (0.45 * s, -0.45 * s), (-0.4 * s, 0.4 * s)


class _Vehicle:
    """A car or van in side view; its shapes are built once, in local coordinates (origin: ground centre)."""

    def __init__(self, length: float, color: Color, van: bool):
        self.color, self.van = color, van
        self.set_length(length)

    @staticmethod
    def random(rng: np.random.Generator, person_h: float) -> _Vehicle:
        van = bool(rng.random() < 0.25)
        length = person_h * (rng.uniform(2.6, 2.9) if van else rng.uniform(2.2, 2.5))
        base = np.asarray(CAR[rng.integers(len(CAR))], np.float64) + rng.normal(0, 10, 3)
        color = tuple(int(v) for v in np.clip(base, 0, 255))
        return _Vehicle(length, color, van)  # type: ignore[arg-type]

    def set_length(self, length: float) -> None:
        L = self.length = length
        H = self.height = L * (0.42 if self.van else 0.34)
        if self.van:
            cabin = [(-0.48 * L, -0.6 * H), (0.47 * L, -0.6 * H), (0.36 * L, -H), (-0.47 * L, -H)]
            win = [
                [(0.06 * L, -0.66 * H), (0.4 * L, -0.66 * H), (0.33 * L, -0.93 * H), (0.06 * L, -0.93 * H)],
                [(-0.4 * L, -0.66 * H), (0.0, -0.66 * H), (0.0, -0.93 * H), (-0.4 * L, -0.93 * H)],
            ]
        else:
            cabin = [(-0.33 * L, -0.6 * H), (0.25 * L, -0.6 * H), (0.12 * L, -H), (-0.24 * L, -H)]
            win = [
                [(0.0, -0.65 * H), (0.2 * L, -0.65 * H), (0.1 * L, -0.94 * H), (0.0, -0.94 * H)],
                [
                    (-0.28 * L, -0.65 * H),
                    (-0.03 * L, -0.65 * H),
                    (-0.03 * L, -0.94 * H),
                    (-0.21 * L, -0.94 * H),
                ],
            ]
        body = [(-L / 2, -0.17 * H), (L / 2, -0.17 * H), (L / 2, -0.62 * H), (-L / 2, -0.62 * H)]
        sill = [(-L / 2, -0.17 * H), (L / 2, -0.17 * H), (L / 2, -0.3 * H), (-L / 2, -0.3 * H)]
        glass: Color = (95, 80, 60)
        shade: Color = tuple(int(c * 0.7) for c in self.color)  # type: ignore[assignment]
        self.shapes: list[tuple[Pts, Color]] = [(cabin, self.color), (body, self.color), (sill, shade)]
        self.shapes += [(w, glass) for w in win]
        self.wheels: Pts = [(-0.3 * L, -0.15 * H), (0.3 * L, -0.15 * H)]
        self.lamps: Pts = [(0.48 * L, -0.5 * H), (-0.48 * L, -0.5 * H)]

    def draw(
        self, pen: _Pen, x: float, y: float, face: int, angle: float = 0.0, lights: bool = False
    ) -> None:
        """(x, y) is the ground point under the vehicle's centre; `face` +1 drives right, -1 left."""
        H = self.height
        for pts, color in self.shapes:
            pen.poly(_rot(pts, angle, x, y, face), color)
        for c in _rot(self.wheels, angle, x, y, face):
            pen.circle(c, 0.16 * H, (25, 25, 25))
            pen.circle(c, 0.07 * H, (150, 150, 150))
        lamps = _rot(self.lamps, angle, x, y, face)
        pen.circle(lamps[0], 0.05 * H + 0.3, (190, 240, 250))
        pen.circle(lamps[1], 0.05 * H + 0.3, (40, 40, 200))
        if lights:  # hazard lights
            for c in lamps:
                pen.circle(c, 0.09 * H + 0.5, (0, 170, 255))


# ------------------------------------------------------------------------------------------------------
# scenes
# ------------------------------------------------------------------------------------------------------
@dataclass
class _Scene:
    background: np.ndarray
    horizon: int
    road: tuple[int, int]
    lanes: tuple[float, float]  # ground y of the far and the near lane
    lane_dir: tuple[int, int]  # driving direction of each lane
    walk_bands: list[tuple[float, float]]  # ranges of foot y where people walk
    buildings: list[tuple[int, int, int, int]]  # x1, y1, x2, y2 (bottom at the horizon)

    def person_h(self, y: float) -> float:
        """Perspective: people are taller the lower their feet are in the frame."""
        h = self.background.shape[0]
        f = min(max((y - self.horizon) / (h - self.horizon), 0.0), 1.0)
        return h * (0.06 + 0.15 * f)


def _jitter(rng: np.random.Generator, color: Color, sd: float = 12) -> Color:
    c = np.clip(np.asarray(color, np.float64) + rng.normal(0, sd, 3), 0, 255)
    return tuple(int(v) for v in c)  # type: ignore[return-value]


def _make_scene(rng: np.random.Generator, width: int, height: int) -> _Scene:
    """One camera view, drawn procedurally; the layout decides where people, cars and anomalies go."""
    W, H = width, height
    img = np.zeros((H, W, 3), np.uint8)
    hy = int(H * rng.uniform(0.27, 0.37))
    road0 = hy + int(H * rng.uniform(0.07, 0.11))
    road1 = road0 + int(H * rng.uniform(0.19, 0.24))
    near1 = max(road1 + 2, min(H - 10, road1 + int(H * rng.uniform(0.06, 0.09))))

    # sky: vertical gradient, sometimes overcast
    top = np.array(_jitter(rng, (200, 150, 90) if rng.random() < 0.6 else (175, 170, 165), 15), np.float64)
    bottom = np.array(_jitter(rng, (230, 210, 190), 10), np.float64)
    ramp = np.linspace(0, 1, hy)[:, None]
    img[:hy] = (top * (1 - ramp) + bottom * ramp).astype(np.uint8)[:, None, :]
    for _ in range(rng.integers(0, 4)):
        cx, cy = rng.uniform(0, W), rng.uniform(0, hy * 0.6)
        cv2.ellipse(
            img,
            (int(cx), int(cy)),
            (int(rng.uniform(15, 40)), int(rng.uniform(4, 9))),
            0,
            0,
            360,
            _jitter(rng, (235, 235, 235), 5),
            -1,
            _AA,
        )

    # ground layers
    plaza = (60, 120, 70) if rng.random() < 0.5 else (150, 160, 165)
    img[hy:] = _jitter(rng, plaza, 10)
    img[hy:road0] = _jitter(rng, (175, 180, 185), 8)
    img[road0:road1] = _jitter(rng, (80, 80, 82), 6)
    img[road1:near1] = _jitter(rng, (170, 175, 180), 8)
    cv2.line(img, (0, road0), (W, road0), (210, 210, 210), 1)
    cv2.line(img, (0, road1), (W, road1), (210, 210, 210), 1)
    mid = (road0 + road1) // 2
    dash = max(6, W // 24)
    for x in range(0, W, 2 * dash):
        cv2.line(img, (x, mid), (x + dash, mid), (220, 225, 230), max(1, H // 160))
    for x in range(0, W, max(8, W // 20)):  # sidewalk tiles
        cv2.line(img, (x, road1), (x - (near1 - road1) // 2, near1), (150, 155, 160), 1)

    # buildings and walls along the horizon
    buildings: list[tuple[int, int, int, int]] = []
    x = int(-rng.uniform(0, 0.1) * W)
    while x < W:
        bw = int(rng.uniform(0.12, 0.3) * W)
        if rng.random() < 0.15:  # a gap showing the sky
            x += int(rng.uniform(0.03, 0.08) * W)
            continue
        bh = int(rng.uniform(0.1, 0.3) * H)
        x1, y1, x2, y2 = x, max(0, hy - bh), min(W, x + bw), hy
        col = _jitter(
            rng, [(120, 140, 170), (90, 100, 150), (170, 170, 165), (110, 120, 125)][rng.integers(4)]
        )
        cv2.rectangle(img, (x1, y1), (x2 - 1, y2), col, -1)
        dark = tuple(int(c * 0.75) for c in col)
        if rng.random() < 0.3:  # brick wall
            for yy in range(y2 - 3, y1, -4):
                cv2.line(img, (x1, yy), (x2, yy), dark, 1)
        else:
            step = int(rng.uniform(7, 11) * H / 240)
            win = max(2, step // 2)
            for yy in range(y1 + step // 2, y2 - step, step):
                for xx in range(x1 + step // 2, x2 - win, step):
                    lit = rng.random() < 0.2
                    cv2.rectangle(
                        img, (xx, yy), (xx + win, yy + win), (120, 200, 230) if lit else (70, 60, 50), -1
                    )
        cv2.line(img, (x1, y1), (x2, y1), dark, 2)
        buildings.append((max(0, x1), y1, x2, y2))
        x += bw

    # trees on both sidewalks
    for _ in range(rng.integers(2, 6)):
        ty = rng.uniform(hy + 2, road0 - 1) if rng.random() < 0.6 else rng.uniform(road1 + 2, near1)
        tx = rng.uniform(0, W)
        th = (0.06 + 0.15 * (ty - hy) / (H - hy)) * H * rng.uniform(1.8, 2.6)
        cv2.rectangle(
            img,
            (int(tx - th * 0.04), int(ty - th * 0.5)),
            (int(tx + th * 0.04), int(ty)),
            _jitter(rng, (40, 60, 90)),
            -1,
        )
        green = _jitter(rng, (40, 110, 50), 15)
        for _ in range(3):
            cv2.circle(
                img,
                (int(tx + rng.uniform(-0.12, 0.12) * th), int(ty - th * rng.uniform(0.65, 0.8))),
                int(th * rng.uniform(0.18, 0.26)),
                _jitter(rng, green, 10),
                -1,
                _AA,
            )

    # static texture so that surfaces are not flat colour
    tex = cv2.GaussianBlur(rng.normal(0, 7, (H, W)).astype(np.float32), (3, 3), 0)
    img = np.clip(img.astype(np.float32) + tex[..., None], 0, 255).astype(np.uint8)

    lanes = (road0 + 0.45 * (road1 - road0), road0 + 0.92 * (road1 - road0))
    d = 1 if rng.random() < 0.5 else -1
    bands = [(hy + 2.0, road0 - 1.0), (road1 + 2.0, near1 - 1.0), (near1 + 4.0, H - 3.0)]
    bands = [(lo, max(hi, lo + 1.0)) for lo, hi in bands]  # tiny frames: keep every band non-empty
    return _Scene(img, hy, (road0, road1), lanes, (d, -d), bands, buildings)


# ------------------------------------------------------------------------------------------------------
# normal activity
# ------------------------------------------------------------------------------------------------------
Drawable = tuple[float, Callable[[_Pen], None]]  # (depth = foot y, draw)


@dataclass
class _Walker:
    x0: float
    y0: float
    vx: float  # px / frame
    vy: float
    band: tuple[float, float]
    look: _Look
    phase0: float
    omega: float  # leg phase per frame
    face: int

    def at(self, scene: _Scene, t: int, width: int) -> Drawable:
        lo, hi = self.band
        span = max(hi - lo, 1e-3)
        yy = (self.y0 - lo + self.vy * t) % (2 * span)
        y = lo + (yy if yy <= span else 2 * span - yy)  # bounce inside the band
        h = scene.person_h(y)
        m = 2 * h
        x = (self.x0 + self.vx * t) % (width + 2 * m) - m
        legs, arms = _walk_pose(self.phase0 + self.omega * t)
        return y, lambda pen: _draw_person(pen, x, y, h, self.look, legs, arms, self.face)


@dataclass
class _Traffic:
    vehicle: _Vehicle
    lane: int
    x0: float
    v: float  # px / frame, signed
    period: float

    def at(self, scene: _Scene, t: int, width: int) -> Drawable | None:
        L = self.vehicle.length
        s = (self.x0 + abs(self.v) * t) % self.period - L
        if s > width + L:
            return None
        x = s if self.v > 0 else width - s
        y = scene.lanes[self.lane]
        face = 1 if self.v > 0 else -1
        return y, lambda pen: self.vehicle.draw(pen, x, y, face)


def _walk_speed(rng: np.random.Generator, h: float, fps: float) -> float:
    """Walking speed in px/frame for a person `h` px tall (1.0-1.6 m/s, 1.7 m tall)."""
    return rng.uniform(1.0, 1.6) * h / 1.7 / fps


def _make_normal(rng: np.random.Generator, scene: _Scene, width: int, fps: float) -> list:
    actors: list = []
    for _ in range(rng.integers(4, 10)):
        band = scene.walk_bands[rng.choice(3, p=[0.35, 0.35, 0.3])]
        y0 = rng.uniform(*band)
        h = scene.person_h(y0)
        speed = _walk_speed(rng, h, fps)
        face = 1 if rng.random() < 0.5 else -1
        vy = rng.normal(0, 0.15) * speed if band is scene.walk_bands[2] else 0.0
        omega = 2 * math.pi * 0.95 * (speed * fps / h * 1.7 / 1.3) / fps
        actors.append(
            _Walker(
                rng.uniform(0, width),
                y0,
                face * speed,
                vy,
                band,
                _Look.random(rng),
                rng.uniform(0, 2 * math.pi),
                omega,
                face,
            )
        )
    for _ in range(rng.integers(2, 6)):
        lane = int(rng.integers(2))
        veh = _Vehicle.random(rng, scene.person_h(scene.lanes[lane]))
        v = rng.uniform(7, 14) * veh.length / 4.5 / fps * scene.lane_dir[lane]
        period = width + 2 * veh.length + rng.uniform(0.3, 2.5) * width
        actors.append(_Traffic(veh, lane, rng.uniform(0, period), v, period))
    return actors


# ------------------------------------------------------------------------------------------------------
# anomalies: each draws its in-interval frames through a masked pen and may add ordinary actors outside
# ------------------------------------------------------------------------------------------------------
class _Anomaly(abc.ABC):
    def __init__(self, start: int, end: int):
        self.start, self.end = start, end

    def normal_at(self, t: int) -> list[Drawable]:
        """Participants that look ordinary outside the interval (walking in, driving away)."""
        return []

    @abc.abstractmethod
    def draw(self, pen: _Pen, t: int, rng: np.random.Generator) -> None:
        """Draw the anomaly of frame t (inside its interval) through the masked pen."""


class _Fighting(_Anomaly):
    """Two or three people brawling: erratic, fast jitter of bodies and limbs, arms up, kicks."""

    def __init__(self, rng, scene: _Scene, width: int, fps: float, start: int, end: int):
        super().__init__(start, end)
        band = scene.walk_bands[1 if rng.random() < 0.3 else 2]  # in the foreground, as cameras are placed
        self.y = rng.uniform(*band)
        self.h = scene.person_h(self.y) * rng.uniform(1.0, 1.15)
        self.cx = rng.uniform(0.15, 0.85) * width
        n = 3 if rng.random() < 0.4 else 2
        gap = 0.45 * self.h
        self.slots = [(i - (n - 1) / 2) * gap for i in range(n)]  # x offsets from the centre
        self.looks = [_Look.random(rng) for _ in range(n)]
        self.speed = _walk_speed(rng, self.h, fps)
        self.omega = 2 * math.pi * 1.0 / fps
        self.drift = 0.0
        self.width = width

    def _walker(self, x: float, face: int, t: int, who: int) -> Drawable | None:
        if not -2 * self.h < x < self.width + 2 * self.h:
            return None
        legs, arms = _walk_pose(self.omega * t + who)
        h, y, look = self.h, self.y, self.looks[who]
        return y, lambda pen: _draw_person(pen, x, y, h, look, legs, arms, face)

    def normal_at(self, t: int) -> list[Drawable]:
        """Before: they walk in from both sides; after: they walk off in the opposite directions."""
        if self.start <= t < self.end:
            return []
        out = []
        for who, dx in enumerate(self.slots):
            side = -1 if dx < 0 or (dx == 0 and who % 2) else 1
            if t < self.start:
                out.append(self._walker(self.cx + dx + side * self.speed * (self.start - t), -side, t, who))
            else:
                x = self.cx + self.drift + dx + side * self.speed * (t - self.end + 1)
                out.append(self._walker(x, side, t, who))
        return [o for o in out if o is not None]

    def draw(self, pen: _Pen, t: int, rng: np.random.Generator) -> None:
        h = self.h
        self.drift = float(np.clip(self.drift + rng.normal(0, 0.04 * h), -0.6 * h, 0.6 * h))
        squeeze = rng.uniform(0.65, 1.25)
        for who, dx in enumerate(self.slots):
            face = -1 if dx > 0 else 1 if dx < 0 else int(rng.choice([-1, 1]))
            x = self.cx + self.drift + dx * squeeze + rng.normal(0, 0.07 * h)
            y = self.y + rng.normal(0, 0.02 * h)
            legs = (rng.uniform(-0.6, 0.7), rng.uniform(-0.6, 0.9))  # kicks
            arms = (rng.uniform(0.6, 2.2), rng.uniform(-0.3, 2.0))  # punches, arms up
            _draw_person(pen, x, y, h, self.looks[who], legs, arms, face, lean=rng.uniform(-0.15, 0.35))


class _Arson(_Anomaly):
    """A fire at the foot of a building: grows, flickers (new flame tongues each frame), smokes, dies down."""

    def __init__(self, rng, scene: _Scene, width: int, fps: float, start: int, end: int):
        super().__init__(start, end)
        b = scene.buildings[rng.integers(len(scene.buildings))] if scene.buildings else None
        lo, hi = (b[0], b[2]) if b is not None and b[2] - b[0] > 0.1 * width else (0.15 * width, 0.85 * width)
        self.w = width * rng.uniform(0.09, 0.14)
        self.cx = float(
            np.clip(
                rng.uniform(lo + self.w / 2, max(lo + self.w / 2, hi - self.w / 2)), self.w, width - self.w
            )
        )
        self.base = scene.horizon + rng.uniform(1, 4)
        self.hf = min(self.w * rng.uniform(1.1, 1.4), 0.8 * self.base)
        self.puffs = [(rng.uniform(-0.3, 0.3), rng.uniform(0, 1)) for _ in range(6)]
        self.life = max(4, int(1.6 * fps))

    def draw(self, pen: _Pen, t: int, rng: np.random.Generator) -> None:
        n = self.end - self.start
        p = (t - self.start) / max(n - 1, 1)
        grow = 0.3 + 0.7 * min(1.0, p / 0.25)
        if p > 0.85:
            grow *= 1 - (p - 0.85) / 0.15 * 0.5
        w, hf, base, cx = self.w * grow, self.hf * grow, self.base, self.cx
        # smoke behind the flames, rising and fading
        for ox, ph in self.puffs:
            age = ((t - self.start) / self.life + ph) % 1.0
            sy = base - hf * (0.7 + 0.7 * age)
            r = w * (0.25 + 0.25 * age)
            pen.soft_circle(
                (cx + ox * w + age * 0.2 * w, sy), r, (50, 50, 55), 0.75 * (1 - age) * min(1, grow * 2)
            )
        pen.ellipse((cx, base - 0.12 * hf), (0.55 * w, 0.18 * hf), (20, 90, 230))
        for color, scale in (
            ((30, 40, 210), 1.0),
            ((0, 130, 255), 0.75),
            ((40, 215, 255), 0.5),
            ((170, 245, 255), 0.28),
        ):
            for _ in range(4):
                x = cx + rng.uniform(-0.35, 0.35) * w * scale
                tw = w * scale * rng.uniform(0.3, 0.5)
                th = hf * scale * rng.uniform(0.6, 1.0)
                tri = [(x - tw / 2, base), (x + tw / 2, base), (x + rng.normal(0, 0.1) * w, base - th)]
                pen.poly(tri, color)


class _Accident(_Anomaly):
    """Car B swerves into car A's lane; they collide, stop (B rotated, debris, hazard lights), then leave."""

    def __init__(self, rng, scene: _Scene, width: int, fps: float, start: int, end: int):
        super().__init__(start, end)
        self.scene, self.width = scene, width
        self.near = scene.lanes[1]
        self.far = scene.lanes[0]
        self.d = scene.lane_dir[1]  # car A drives in the near lane in direction d, car B comes the other way
        self.a = _Vehicle.random(rng, scene.person_h(self.near))
        self.b = _Vehicle.random(rng, scene.person_h(self.far))
        self.b.set_length(self.a.length * rng.uniform(0.9, 1.05))
        self.cx = rng.uniform(0.35, 0.65) * width
        self.va = rng.uniform(7, 12) * self.a.length / 4.5 / fps
        self.vb = rng.uniform(7, 12) * self.b.length / 4.5 / fps
        self.swerve = max(1, min(int(round(0.3 * fps)), (end - start) // 4))
        self.hit = start + self.swerve
        self.angle = rng.choice([-1, 1]) * rng.uniform(0.2, 0.4)
        self.angle_a = rng.normal(0, 0.06)
        self.yb = self.near - rng.uniform(0.15, 0.4) * (self.near - self.far)
        L = self.a.length
        self.debris = [
            (
                rng.uniform(-0.35, 0.35) * L,
                rng.uniform(-0.12, 0.03) * L,
                rng.uniform(0.02, 0.045) * L,
                rng.uniform(0, math.pi),
            )
            for _ in range(rng.integers(4, 9))
        ]
        self.blink = max(2, int(0.3 * fps))

    def _pos(self, t: int) -> tuple[float, float, float, float]:
        """Centres of A and B (B's y too) at frame t; both stop at the collision frame."""
        d, La, Lb = self.d, self.a.length, self.b.length
        xa_hit = self.cx - d * La * 0.45
        xb_hit = self.cx + d * Lb * 0.42
        if t < self.hit:
            dt = self.hit - t
            xa, xb = xa_hit - d * self.va * dt, xb_hit + d * self.vb * dt
            s = min(1.0, max(0.0, 1 - (t - self.start) / self.swerve)) if t >= self.start else 1.0
            yb = self.yb + (self.far - self.yb) * s
        elif t < self.end:
            xa, xb, yb = xa_hit, xb_hit, self.yb
        else:
            dt = t - self.end + 1
            xa, xb, yb = xa_hit + d * self.va * dt * 0.5, xb_hit - d * self.vb * dt * 0.5, self.yb
        return xa, self.near, xb, yb

    def normal_at(self, t: int) -> list[Drawable]:
        if self.hit <= t < self.end:
            return []
        xa, ya, xb, yb = self._pos(t)
        out: list[Drawable] = []
        m = self.a.length
        if -m < xa < self.width + m:  # car A drives normally until the impact
            out.append((ya, lambda pen: self.a.draw(pen, xa, ya, self.d)))
        if -m < xb < self.width + m and not self.start <= t < self.hit:  # B's swerve is the anomaly
            out.append((yb, lambda pen: self.b.draw(pen, xb, yb, -self.d)))
        return out

    def draw(self, pen: _Pen, t: int, rng: np.random.Generator) -> None:
        xa, ya, xb, yb = self._pos(t)
        crashed = t >= self.hit
        shake = rng.normal(0, 0.02 * self.a.length) if crashed and t < self.hit + 4 else 0.0
        lights = crashed and ((t - self.hit) // self.blink) % 2 == 1
        if not crashed:  # B swerves into A's lane; A is still ordinary traffic (normal_at)
            self.b.draw(pen, xb, yb, -self.d, self.angle * 0.3 * (t - self.start) / self.swerve)
            return
        parts = [
            (yb, lambda: self.b.draw(pen, xb + shake, yb, -self.d, self.angle, lights)),
            (ya, lambda: self.a.draw(pen, xa - shake, ya, self.d, self.angle_a, lights)),
        ]
        for _, fn in sorted(parts, key=lambda p: p[0]):
            fn()
        if crashed:
            for dx, dy, r, a in self.debris:
                sq = [(-r, -r * 0.6), (r, -r * 0.6), (r, r * 0.6), (-r, r * 0.6)]
                pen.poly(_rot(sq, a, self.cx + dx, self.near + dy), (60, 60, 65))


class _Explosion(_Anomaly):
    """A short expanding flash, then a rising, thinning smoke cloud, flying debris and a scorch mark."""

    def __init__(self, rng, scene: _Scene, width: int, fps: float, start: int, end: int):
        super().__init__(start, end)
        H = scene.background.shape[0]
        if rng.random() < 0.5:
            self.cy = rng.uniform(*scene.road)
        else:
            self.cy = rng.uniform(*scene.walk_bands[2])
        f = (self.cy - scene.horizon) / (H - scene.horizon)
        self.R = H * rng.uniform(0.08, 0.12) * (0.8 + 0.5 * f)
        self.cx = rng.uniform(0.15, 0.85) * width
        self.flash = max(3, min(10, int(round(0.3 * fps))))
        R = self.R
        self.puffs = [
            (
                rng.uniform(-0.55, 0.55) * R,
                rng.uniform(-0.3, 0.3) * R,
                rng.uniform(0.35, 0.55) * R,
                int(rng.uniform(40, 75)),
            )
            for _ in range(rng.integers(6, 10))
        ]
        self.debris = [
            (
                rng.uniform(-math.pi, 0),
                rng.uniform(0.6, 1.3) * R,
                rng.uniform(0.3, 0.9) * R,
                rng.uniform(0.04, 0.08) * R + 0.5,
                rng.uniform(0.2, 0.5) * fps,
            )
            for _ in range(rng.integers(6, 12))
        ]

    def draw(self, pen: _Pen, t: int, rng: np.random.Generator) -> None:
        R, cx, cy = self.R, self.cx, self.cy
        k = t - self.start
        n = self.end - self.start
        c = (cx, cy - 0.5 * R)
        if k >= 1:
            pen.ellipse((cx, cy), (0.8 * R, 0.18 * R), (30, 35, 35))  # scorch mark
        if k >= 0.6 * self.flash:
            q = (k - 0.6 * self.flash) / max(1, n - 0.6 * self.flash)
            rise = 0.5 * R * q
            for ox, oy, r, g in self.puffs:
                pen.soft_circle(
                    (cx + ox, c[1] + oy - rise), r * (1 + 0.5 * q), (g, g, g + 5), 0.85 - 0.45 * q
                )
        for ang, dist, hop, size, fly in self.debris:
            s = min(1.0, k / fly)
            x = cx + math.cos(ang) * dist * s
            y = cy - 0.1 * R + math.sin(ang) * 0.25 * dist * s - 4 * hop * s * (1 - s)
            sq = [(-size, -size), (size, -size), (size, size), (-size, size)]
            pen.poly(_rot(sq, ang + k * 0.5 * (1 - s), x, y), (40, 40, 45))
        if k < self.flash:
            p = (k + 1) / self.flash
            r = R * (0.35 + 0.65 * p) * rng.uniform(0.95, 1.05)
            fade = 1.0 if p < 0.6 else 1.0 - (p - 0.6) / 0.4 * 0.5
            pen.circle(c, r, (0, int(150 * fade), int(255 * fade)))
            pen.circle(c, 0.72 * r, (int(60 * fade), int(225 * fade), int(255 * fade)))
            pen.circle(c, 0.45 * r * fade, (235, 250, 255))
        elif k < n / 2:  # embers in the smoke
            for _ in range(4):
                pen.circle(
                    (cx + rng.normal(0, 0.35 * R), c[1] + rng.normal(0, 0.25 * R)),
                    0.04 * R + 0.5,
                    (0, 140, 255),
                )


_ANOMALIES: dict[str, type[_Anomaly]] = {
    "Fighting": _Fighting,
    "Arson": _Arson,
    "RoadAccidents": _Accident,
    "Explosion": _Explosion,
}


# ------------------------------------------------------------------------------------------------------
# sensor model and the video loop
# ------------------------------------------------------------------------------------------------------
@dataclass
class _Noise:
    """A bank of gaussian noise frames cut at random offsets: sensor noise at the cost of two cv2 adds."""

    pos: np.ndarray
    neg: np.ndarray
    pad: int = 16

    @staticmethod
    def make(rng: np.random.Generator, width: int, height: int, sigma: float = 2.5) -> _Noise:
        pad = 16
        k = int(np.clip(2e7 // ((width + pad) * (height + pad) * 3), 4, 16))
        n = rng.normal(0, sigma, (k, height + pad, width + pad, 3)).round()
        return _Noise(np.clip(n, 0, 255).astype(np.uint8), np.clip(-n, 0, 255).astype(np.uint8), pad)

    def apply(self, frame: np.ndarray, rng: np.random.Generator) -> None:
        h, w = frame.shape[:2]
        i = int(rng.integers(len(self.pos)))
        dy, dx = (int(v) for v in rng.integers(0, self.pad, 2))
        cv2.add(frame, self.pos[i, dy : dy + h, dx : dx + w], dst=frame)
        cv2.subtract(frame, self.neg[i, dy : dy + h, dx : dx + w], dst=frame)


class _Writer:
    """mp4v encoding in a background thread: cv2 releases the GIL, so it overlaps with the drawing."""

    def __init__(self, path: Path, fps: float, width: int, height: int):
        self.path = path
        self.writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"mp4v"), float(fps), (width, height))
        if not self.writer.isOpened():
            raise UserError(f"OpenCV cannot write {path} (mp4v)")
        self.queue: queue.Queue[np.ndarray | None] = queue.Queue(maxsize=8)
        self.error: Exception | None = None
        self.thread = threading.Thread(target=self._run, name=f"stp-synth-{path.name}", daemon=True)
        self.thread.start()

    def _run(self) -> None:
        while (frame := self.queue.get()) is not None:
            if self.error is None:  # after a failure keep draining so that write() never blocks
                try:
                    self.writer.write(frame)
                except cv2.error as err:
                    self.error = err

    def write(self, frame: np.ndarray) -> None:
        self.queue.put(frame)

    def close(self) -> None:
        self.queue.put(None)
        self.thread.join()
        self.writer.release()
        if self.error is not None:
            raise RuntimeError(f"writing {self.path} failed: {self.error}")


@dataclass
class _Plan:
    split: str
    index: int
    label: str
    scene: int
    seed: np.random.SeedSequence
    name: str = ""
    anomalies: list[tuple[int, int]] = field(default_factory=list)


def _render(plan: _Plan, scene: _Scene, noise: _Noise, path: Path, n_frames: int, fps: float) -> Video:
    rng = np.random.default_rng(plan.seed)
    H, W = scene.background.shape[:2]
    actors = _make_normal(rng, scene, W, fps)
    anomaly: _Anomaly | None = None
    if plan.label != NORMAL:
        length = int(round(rng.uniform(0.25, 0.6) * n_frames))
        length = min(max(length, 2), n_frames)
        start = int(rng.integers(0, n_frames - length + 1))
        anomaly = _ANOMALIES[plan.label](rng, scene, W, fps, start, start + length)
    boxes: dict[int, list[list[float]]] = {}
    gain = 0.0
    writer = _Writer(path, fps, W, H)
    mask = np.zeros((H, W), np.uint8)
    try:
        for t in range(n_frames):
            frame = scene.background.copy()
            pen = _Pen(frame)
            items: list[Drawable] = []
            for a in actors:
                d = a.at(scene, t, W)
                if d is not None:
                    items.append(d)
            if anomaly is not None:
                items.extend(anomaly.normal_at(t))
            items.sort(key=lambda it: it[0])
            for _, fn in items:
                fn(pen)
            if anomaly is not None and anomaly.start <= t < anomaly.end:
                mask[:] = 0
                anomaly.draw(_Pen(frame, mask), t, rng)
                x, y, w, h = cv2.boundingRect(mask)
                if w == 0 or h == 0:  # cannot happen by construction; the annotation would lie
                    raise RuntimeError(f"{plan.label} drew nothing at frame {t} of {path.name}")
                boxes[t] = [[float(x), float(y), float(x + w), float(y + h)]]
            gain = 0.9 * gain + rng.normal(0, 0.006)  # slow brightness flicker (auto-exposure)
            cv2.convertScaleAbs(
                frame, dst=frame, alpha=1.0 + gain + rng.normal(0, 0.003), beta=rng.normal(0, 0.8)
            )
            noise.apply(frame, rng)
            writer.write(frame)
    finally:
        writer.close()
    spans = [(anomaly.start, anomaly.end)] if anomaly is not None else []
    return Video(
        path=f"videos/{plan.name}", split=plan.split, labels=[plan.label], anomalies=spans, boxes=boxes
    )


_WORKER_STATE: tuple[list[_Scene], _Noise, Path, int, float] | None = None


def _worker_init(scenes: list[_Scene], noise: _Noise, vdir: Path, n_frames: int, fps: float) -> None:
    global _WORKER_STATE
    _WORKER_STATE = (scenes, noise, vdir, n_frames, fps)


def _worker_render(plan: _Plan) -> Video:
    assert _WORKER_STATE is not None
    scenes, noise, vdir, n_frames, fps = _WORKER_STATE
    return _render(plan, scenes[plan.scene], noise, vdir / plan.name, n_frames, fps)


def _render_all(
    plans: list[_Plan],
    scenes: list[_Scene],
    noise: _Noise,
    vdir: Path,
    n_frames: int,
    fps: float,
    workers: int | None,
) -> list[Video]:
    """Render every video, in worker processes when that pays (each video has its own seed: same output)."""
    if workers is None:
        small = len(plans) * n_frames * scenes[0].background.size < 3e8  # ~1 s of work
        workers = 1 if small else min(os.cpu_count() or 1, len(plans), 8)
    if workers <= 1 or len(plans) <= 1:
        return [_render(p, scenes[p.scene], noise, vdir / p.name, n_frames, fps) for p in plans]
    ctx = multiprocessing.get_context("spawn")  # never fork a process that may hold torch / CUDA threads
    with ProcessPoolExecutor(
        workers, mp_context=ctx, initializer=_worker_init, initargs=(scenes, noise, vdir, n_frames, fps)
    ) as pool:
        return list(pool.map(_worker_render, plans))


def _labels(n: int, anomaly_fraction: float) -> list[str]:
    """Round-robin over the anomaly classes so each split holds every class where counts allow."""
    n_anom = int(round(n * anomaly_fraction))
    if n >= 2 and 0 < anomaly_fraction < 1:
        n_anom = min(max(n_anom, 1), n - 1)
    classes = CLASSES[1:]
    return [NORMAL] * (n - n_anom) + [classes[i % len(classes)] for i in range(n_anom)]


def _check(name: str, value: float, low: float) -> None:
    if value < low:
        raise UserError(f"{name} must be >= {low:g}, got {value:g}")


def generate(
    out_dir: str | os.PathLike,
    *,
    n_train: int = 16,
    n_test: int = 8,
    n_frames: int = 192,
    width: int = 320,
    height: int = 240,
    fps: float = 25.0,
    n_scenes: int = 3,
    anomaly_fraction: float = 0.5,
    seed: int = 0,
    workers: int | None = None,
) -> Annotations:
    """Write `out_dir/videos/<split>_<idx>_<label>.mp4` and `out_dir/annotations.json`; same seed, same data.

    Old `videos/<split>_<idx>_<label>.mp4` files that the new dataset does not contain are removed, so a
    rerun into the same folder never leaves stale videos behind. `workers` processes render videos in
    parallel (default: one per CPU, in-process for tiny datasets); the output does not depend on it.
    """
    _check("n_train (--train)", n_train, 0)
    _check("n_test (--test)", n_test, 0)
    if n_train + n_test == 0:
        raise UserError("nothing to generate: n_train + n_test is 0")
    _check("n_frames (--frames)", n_frames, 8)
    _check("width", width, 64)
    _check("height", height, 48)
    _check("fps", fps, 1)
    _check("n_scenes (--scenes)", n_scenes, 1)
    if not 0.0 <= anomaly_fraction <= 1.0:
        raise UserError(f"anomaly_fraction must be in [0, 1], got {anomaly_fraction:g}")
    width, height = int(width) // 2 * 2, int(height) // 2 * 2  # mp4v wants even sizes
    t0 = time.perf_counter()
    out = Path(out_dir)
    vdir = out / "videos"
    vdir.mkdir(parents=True, exist_ok=True)

    root = np.random.SeedSequence(int(seed))
    scene_seq, noise_seq, plan_seq, *video_seqs = root.spawn(3 + n_train + n_test)
    scenes = [_make_scene(np.random.default_rng(s), width, height) for s in scene_seq.spawn(n_scenes)]
    noise = _Noise.make(np.random.default_rng(noise_seq), width, height)
    plan_rng = np.random.default_rng(plan_seq)

    plans: list[_Plan] = []
    for split, n in (("train", n_train), ("test", n_test)):
        labels = _labels(n, anomaly_fraction)
        plan_rng.shuffle(labels)
        digits = max(3, len(str(max(n - 1, 0))))
        # Normal and anomalous videos each cycle through the scenes, so no scene is mostly anomalous:
        # otherwise a small training set teaches "this camera means anomaly" (scene/label confounding).
        offset = {False: int(plan_rng.integers(n_scenes)), True: int(plan_rng.integers(n_scenes))}
        seen = {False: 0, True: 0}
        for i, label in enumerate(labels):
            group = label != NORMAL
            scene = (offset[group] + seen[group]) % n_scenes
            seen[group] += 1
            plan = _Plan(split, i, label, scene, video_seqs[len(plans)])
            plan.name = f"{split}_{i:0{digits}d}_{label}.mp4"
            plans.append(plan)

    videos = _render_all(plans, scenes, noise, vdir, n_frames, fps, workers)
    keep = {p.name for p in plans}
    for old in vdir.iterdir():
        if VIDEO_NAME.match(old.name) and old.name not in keep:
            old.unlink()
    ann = Annotations(classes=list(CLASSES), fps=float(fps), videos=videos, root=out)
    ann.save(out / "annotations.json")
    params = dict(
        n_train=n_train,
        n_test=n_test,
        n_frames=n_frames,
        width=width,
        height=height,
        fps=fps,
        n_scenes=n_scenes,
        anomaly_fraction=anomaly_fraction,
        seed=seed,
    )
    atomic_write_json(
        out / MARKER,
        {"generator": "stp-synth", "params": params, "seconds": round(time.perf_counter() - t0, 3)},
    )
    return ann


def is_synth_output(folder: str | os.PathLike) -> bool:
    """True when `folder` was written by `generate` (it may then be overwritten without --force)."""
    p = Path(folder) / MARKER
    if not p.is_file():
        return False
    try:
        return json.loads(p.read_text(encoding="utf-8")).get("generator") == "stp-synth"
    except (OSError, ValueError, AttributeError):
        return False
