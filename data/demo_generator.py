"""Procedurally generated person re-ID dataset in the Market-1501 file layout.

This is the engine's *embedded default dataset*: no download is needed, only
numpy and Pillow.  :func:`generate_demo_market` draws cartoon pedestrians seen
by several cameras and writes them to disk exactly like Market-1501::

    root/bounding_box_train/0001_c1s1_012345_01.jpg
    root/query/0129_c3s1_045678_02.jpg
    root/bounding_box_test/0129_c5s1_098765_01.jpg
    root/bounding_box_test/0000_c2s1_000123_01.jpg     (distractor, pid 0)
    root/bounding_box_test/-1_c4s1_000456_03.jpg       (junk, pid -1)

so the ordinary Market-1501 loader, identity sampler and re-ID evaluator run on
it unchanged.  :func:`ensure_demo_market` is the cached entry point used on
first use (generate once into a temporary sibling folder, rename atomically,
re-use afterwards).

What the generator varies
-------------------------
* **Per identity (fixed):** upper-clothing colour and pattern (plain,
  horizontal stripes, vertical stripes, checks, logo block on the chest),
  sleeve length, lower clothing (trousers, shorts, skirt) and its colour, shoe
  colour, skin tone, hair colour and length, hat, body proportions (height,
  build, leg length, head size) and an accessory (backpack or a shoulder bag on
  one side) with its colour.  Colours are drawn from a shared palette with a
  small per-identity jitter, so many identities share "red top, dark
  trousers"-like combinations and must be told apart by the whole outfit.
* **Per camera (fixed):** background (wall/floor colours, horizon height,
  wall texture: bricks / panels / windows / foliage / gradient, floor
  texture: tiles / paving / crosswalk / plain), lighting (colour cast,
  brightness, contrast, gamma, saturation, a directional illumination
  gradient), typical person scale in the detector box, sensor quality
  (resolution, blur, noise) and which way people usually face it.
* **Per image (random):** horizontal offset, lean, stride, arm swing,
  facing (front / back / side: the back view shows the backpack and hides
  the chest logo and face), scale jitter, detector-box misalignment,
  background crop and clutter (posters, far-away pedestrians, benches),
  occluders in some images (car, pole, another pedestrian, a bush), blur and
  noise.

Everything is deterministic: every random decision comes from
``numpy.random.Generator(PCG64(SeedSequence([seed, ...])))`` keyed by what is
being drawn (identity, camera, image), so generation order does not matter and
the same seed gives byte-identical JPEG files (fixed encoder settings; with the
same numpy/Pillow/libjpeg build) whether rendered serially or in worker
processes.

Difficulty (default sizes, seeds 0 and 1): an untrained torchvision resnet18
(global-average-pooled features, cosine distance) reaches about 10-13 %
rank-1 under the re-ID protocol and whole-image colour histograms about 2 %,
while a small CNN trained for a few epochs on ``bounding_box_train`` gets
far above that (about 70 % rank-1 after 5 epochs) - the camera backgrounds
and lighting matter, the clothes decide.
"""

from __future__ import annotations

import colorsys
import json
import math
import multiprocessing as mp
import os
import shutil
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import Any, Union

import numpy as np
from PIL import Image, ImageChops, ImageDraw

__all__ = [
    "DEFAULT_DEMO_PARAMS",
    "GENERATOR_VERSION",
    "MARKER_NAME",
    "SPLIT_DIRS",
    "generate_demo_market",
    "ensure_demo_market",
    "read_demo_marker",
]

#: Bumped whenever the rendering changes, so a cached tree made by an older
#: generator is recognised as "different parameters".
GENERATOR_VERSION = 1

#: Marker file written last into a finished tree (parameters + counts).
MARKER_NAME = ".demo_complete.json"

#: Split name -> Market-1501 folder name.
SPLIT_DIRS: Mapping[str, str] = MappingProxyType(
    {"train": "bounding_box_train", "query": "query", "gallery": "bounding_box_test"}
)

#: Default generation parameters (everything except ``root`` and ``seed``).
DEFAULT_DEMO_PARAMS: Mapping[str, int] = MappingProxyType(
    {
        "num_train_ids": 128,
        "num_test_ids": 100,
        "images_per_id": 12,
        "num_cameras": 6,
        "height": 128,
        "width": 64,
        "num_distractors": 100,
        "num_junk": 50,
    }
)

PathLike = Union[str, "os.PathLike[str]"]
Color = tuple[int, int, int]

_SS = 2  # supersampling factor for drawing (antialiasing)
_JPEG_KW = dict(quality=90, subsampling=2, optimize=False, progressive=False)  # fixed encoder settings

# Seed-sequence tags (keep stable: changing them changes every image).
_T_ID, _T_CAM, _T_IMG, _T_LAYOUT, _T_FRAMES = 11, 12, 13, 14, 15
_PID_DISTRACTOR, _PID_JUNK = 0, -1
_EXTRA_BASE, _NUM_EXTRAS = 1_000_000, 96
_GRAD_BINS = 9  # quantised per-image jitter of the camera's illumination-gradient direction


# --------------------------------------------------------------------------- #
# random helpers
# --------------------------------------------------------------------------- #
def _rng(seed: int, *key: int) -> np.random.Generator:
    """Independent generator for ``key`` (non-negative ints) under ``seed``."""
    return np.random.Generator(np.random.PCG64(np.random.SeedSequence([int(seed), *key])))


def _choice(rng: np.random.Generator, items: Sequence[Any], p: Sequence[float] | None = None) -> Any:
    """One item of ``items`` (weights ``p``, need not sum to 1); cheap for short lists."""
    if p is None:
        return items[int(rng.integers(0, len(items)))]
    x = rng.random() * float(sum(p))
    acc = 0.0
    for item, w in zip(items, p):
        acc += float(w)
        if x < acc:
            return item
    return items[-1]


def _jitter_color(rng: np.random.Generator, rgb: Color, dh: float = 0.025, ds: float = 0.12, dv: float = 0.12) -> Color:
    h, s, v = colorsys.rgb_to_hsv(*(c / 255.0 for c in rgb))
    h = (h + rng.uniform(-dh, dh)) % 1.0
    s = min(1.0, max(0.0, s * (1 + rng.uniform(-ds, ds))))
    v = min(1.0, max(0.0, v * (1 + rng.uniform(-dv, dv))))
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return (int(round(r * 255)), int(round(g * 255)), int(round(b * 255)))


def _shade(rgb: Color, f: float) -> Color:
    return tuple(min(255, max(0, int(c * f + 0.5))) for c in rgb)  # type: ignore[return-value]


def _mix(a: Color, b: Color, t: float) -> Color:
    return tuple(int(round(x * (1 - t) + y * t)) for x, y in zip(a, b))  # type: ignore[return-value]


# --------------------------------------------------------------------------- #
# palettes
# --------------------------------------------------------------------------- #
_TOP_COLORS: dict[str, Color] = {
    "black": (28, 28, 32),
    "white": (232, 232, 226),
    "grey": (128, 128, 132),
    "charcoal": (68, 68, 74),
    "navy": (32, 42, 95),
    "blue": (40, 90, 195),
    "lightblue": (135, 175, 225),
    "red": (195, 32, 38),
    "maroon": (112, 28, 40),
    "pink": (232, 140, 172),
    "orange": (238, 128, 38),
    "yellow": (236, 208, 58),
    "green": (40, 132, 62),
    "olive": (112, 112, 52),
    "beige": (198, 178, 132),
    "brown": (112, 72, 42),
    "purple": (112, 60, 152),
    "teal": (30, 140, 142),
}
_TOP_P = [10, 8, 6, 5, 6, 6, 4, 6, 3, 3, 3, 3, 4, 2, 3, 3, 3, 2]
_BOTTOM_COLORS: dict[str, Color] = {
    "black": (30, 30, 34),
    "denim": (58, 80, 125),
    "navy": (35, 42, 80),
    "grey": (112, 112, 116),
    "charcoal": (62, 62, 68),
    "khaki": (180, 160, 115),
    "brown": (98, 66, 40),
    "white": (225, 225, 218),
    "lightdenim": (110, 140, 185),
    "olive": (95, 98, 55),
    "red": (170, 35, 40),
    "beige": (205, 190, 150),
}
_BOTTOM_P = [14, 12, 6, 6, 5, 5, 3, 2, 4, 2, 1, 2]
_SHOE_COLORS: list[Color] = [(25, 25, 28), (235, 235, 235), (95, 60, 35), (120, 120, 125), (180, 40, 40), (40, 70, 160)]
_SHOE_P = [10, 7, 4, 3, 1, 1]
_SKIN_TONES: list[Color] = [
    (250, 218, 190),
    (236, 192, 160),
    (214, 170, 130),
    (182, 132, 96),
    (142, 98, 66),
    (96, 64, 44),
]
_HAIR_COLORS: list[Color] = [(20, 18, 18), (52, 36, 26), (96, 64, 38), (205, 172, 105), (150, 150, 150), (130, 62, 30)]
_HAIR_P = [10, 8, 4, 3, 1, 1]
_ACC_COLORS: list[Color] = [
    (25, 25, 30),
    (60, 60, 66),
    (35, 50, 110),
    (150, 30, 35),
    (110, 75, 40),
    (200, 190, 170),
    (40, 110, 60),
    (220, 120, 40),
    (220, 210, 60),
    (120, 70, 150),
]


# --------------------------------------------------------------------------- #
# identities
# --------------------------------------------------------------------------- #
def _make_identity(rng: np.random.Generator) -> dict[str, Any]:
    """All fixed appearance attributes of one person."""
    top_name = _choice(rng, list(_TOP_COLORS), _TOP_P)
    top = _jitter_color(rng, _TOP_COLORS[top_name])
    pattern = _choice(rng, ["plain", "hstripes", "vstripes", "checks", "logo"], [34, 20, 12, 14, 20])
    # second colour contrasting with the first
    while True:
        sec_name = _choice(rng, list(_TOP_COLORS), _TOP_P)
        if sec_name != top_name:
            break
    top2 = _jitter_color(rng, _TOP_COLORS[sec_name])
    lower_kind = _choice(rng, ["trousers", "shorts", "skirt"], [70, 15, 15])
    bottom = _jitter_color(rng, _BOTTOM_COLORS[_choice(rng, list(_BOTTOM_COLORS), _BOTTOM_P)])
    acc = _choice(rng, ["none", "backpack", "bag"], [40, 35, 25])
    hat = bool(rng.random() < 0.15)
    return {
        "top": top,
        "top2": top2,
        "pattern": pattern,
        "n_stripes": int(rng.integers(2, 5)),
        "logo_shape": _choice(rng, ["rect", "circle", "band"]),
        "long_sleeves": bool(rng.random() < 0.55),
        "long_top": bool(rng.random() < 0.3),
        "lower_kind": lower_kind,
        "bottom": bottom,
        "legwear": _choice(rng, ["skin", "dark"]) if lower_kind != "trousers" else "none",
        "shoes": _jitter_color(rng, _choice(rng, _SHOE_COLORS, _SHOE_P), dv=0.08),
        "skin": _jitter_color(rng, _choice(rng, _SKIN_TONES), dh=0.01, ds=0.06, dv=0.05),
        "hair": _jitter_color(rng, _choice(rng, _HAIR_COLORS, _HAIR_P), dv=0.1),
        "hair_len": _choice(rng, ["short", "medium", "long"], [50, 25, 25]),
        "hat": hat,
        "hat_color": _jitter_color(rng, _choice(rng, _ACC_COLORS)),
        "acc": acc,
        "acc_color": _jitter_color(rng, _choice(rng, _ACC_COLORS)),
        "bag_side": 1 if rng.random() < 0.5 else -1,
        "height": float(rng.uniform(0.9, 1.05)),
        "build": float(rng.uniform(0.85, 1.2)),
        "leg": float(rng.uniform(0.44, 0.52)),
        "head": float(rng.uniform(0.92, 1.1)),
    }


# --------------------------------------------------------------------------- #
# cameras
# --------------------------------------------------------------------------- #
def _make_camera(rng: np.random.Generator, cam_index: int) -> dict[str, Any]:
    """Fixed view properties of camera ``cam_index`` (0-based)."""
    # colour cast: a hue direction and a strength, applied as per-channel gains
    cast_h = rng.uniform(0, 1)
    cast_s = rng.uniform(0.05, 0.12)
    cr, cg, cb = colorsys.hsv_to_rgb(cast_h, 1.0, 1.0)
    gains = np.array([cr, cg, cb], dtype=np.float64)
    gains = 1.0 + cast_s * (gains - gains.mean()) * 1.6
    wall_h = rng.uniform(0, 1)
    wall = colorsys.hsv_to_rgb(wall_h, rng.uniform(0.04, 0.22), rng.uniform(0.45, 0.75))
    floor = colorsys.hsv_to_rgb((wall_h + rng.uniform(0.2, 0.8)) % 1, rng.uniform(0.0, 0.15), rng.uniform(0.4, 0.62))
    facing = rng.dirichlet([2.0, 2.0, 1.2])
    return {
        "index": cam_index,
        "gains": gains.astype(np.float64),
        "brightness": float(rng.uniform(0.86, 1.12)),
        "contrast": float(rng.uniform(0.9, 1.08)),
        "gamma": float(rng.uniform(0.9, 1.1)),
        "saturation": float(rng.uniform(0.85, 1.08)),
        "grad_dir": float(rng.uniform(0, 2 * math.pi)),
        "grad_amp": float(rng.uniform(0.0, 0.15)),
        "wall": tuple(int(c * 255) for c in wall),
        "floor": tuple(int(c * 255) for c in floor),
        "horizon": float(rng.uniform(0.45, 0.72)),
        "wall_tex": _choice(rng, ["bricks", "panels", "windows", "foliage", "gradient"]),
        "floor_tex": _choice(rng, ["tiles", "paving", "crosswalk", "plain"]),
        "scale": float(rng.uniform(0.76, 0.9)),
        "res": float(rng.uniform(0.5, 1.0)),
        "blur": float(rng.uniform(0.0, 0.7)),  # folded into the resolution loss at render time
        "noise": float(rng.uniform(2.0, 8.0)),
        "facing_p": facing,
        "clutter": float(rng.uniform(0.5, 2.5)),
    }


def _rand_color(
    rng: np.random.Generator, smin: float = 0.0, smax: float = 0.9, vmin: float = 0.15, vmax: float = 0.95
) -> Color:
    r, g, b = colorsys.hsv_to_rgb(rng.uniform(0, 1), rng.uniform(smin, smax), rng.uniform(vmin, vmax))
    return (int(r * 255), int(g * 255), int(b * 255))


def _make_panorama(rng: np.random.Generator, cam: dict[str, Any], pw: int, ph: int) -> Image.Image:
    """A wide background strip for one camera; images crop from it."""
    img = Image.new("RGB", (pw, ph), cam["wall"])
    d = ImageDraw.Draw(img)
    hy = int(ph * cam["horizon"])
    wall, floor = cam["wall"], cam["floor"]
    tex = cam["wall_tex"]
    if tex == "bricks":
        bh = max(4, int(ph * rng.uniform(0.035, 0.06)))
        bw = bh * int(rng.integers(2, 4))
        mortar = _shade(wall, rng.choice([0.8, 1.2]) * rng.uniform(0.95, 1.05))
        d.rectangle([0, 0, pw, hy], fill=mortar)
        for r, y in enumerate(range(0, hy, bh)):
            off = (bw // 2) * (r % 2)
            for x in range(-off, pw, bw):
                d.rectangle([x + 1, y + 1, x + bw - 2, y + bh - 2], fill=_shade(wall, rng.uniform(0.93, 1.07)))
    elif tex == "panels":
        x = 0
        while x < pw:
            w = int(rng.integers(ph // 10, ph // 3))
            d.rectangle([x, 0, x + w, hy], fill=_shade(wall, rng.uniform(0.85, 1.15)))
            d.line([x, 0, x, hy], fill=_shade(wall, 0.75), width=2)
            x += w
    elif tex == "windows":
        glass = _mix(wall, _rand_color(rng, 0.1, 0.35, 0.25, 0.6), 0.6)
        ww, wh = int(ph * rng.uniform(0.12, 0.22)), int(ph * rng.uniform(0.1, 0.2))
        gap = int(ph * rng.uniform(0.04, 0.1))
        for y in range(gap, hy - wh // 2, wh + gap):
            for x in range(gap // 2, pw, ww + gap):
                d.rectangle([x, y, x + ww, min(y + wh, hy)], fill=_shade(glass, rng.uniform(0.85, 1.15)))
    elif tex == "foliage":
        base_g = (int(rng.integers(75, 105)), int(rng.integers(100, 130)), int(rng.integers(70, 95)))
        d.rectangle([0, 0, pw, hy], fill=_shade(base_g, 0.7))
        for _ in range(int(pw * hy / 150)):
            x, y = rng.uniform(0, pw), rng.uniform(-5, hy)
            r = rng.uniform(3, 10)
            d.ellipse([x - r, y - r, x + r, y + r], fill=_shade(base_g, rng.uniform(0.8, 1.2)))
        # sky strip above foliage
        d.rectangle([0, 0, pw, int(hy * rng.uniform(0.1, 0.35))], fill=_rand_color(rng, 0.05, 0.35, 0.7, 1.0))
    else:  # gradient
        for y in range(0, hy, 2):
            d.rectangle([0, y, pw, y + 2], fill=_shade(wall, 0.75 + 0.5 * y / max(hy, 1)))
    # floor
    d.rectangle([0, hy, pw, ph], fill=floor)
    ftex = cam["floor_tex"]
    if ftex == "tiles":
        ts = int(ph * rng.uniform(0.06, 0.12))
        line = _shade(floor, rng.uniform(0.75, 0.9))
        for y in range(hy, ph, ts):
            d.line([0, y, pw, y], fill=line, width=2)
        for x in range(0, pw, ts):
            d.line([x, hy, x, ph], fill=line, width=2)
    elif ftex == "paving":
        for _ in range(int(pw * (ph - hy) / 60)):
            x, y = rng.uniform(0, pw), rng.uniform(hy, ph)
            s = rng.uniform(2, 6)
            d.rectangle([x, y, x + s, y + s * 0.6], fill=_shade(floor, rng.uniform(0.88, 1.12)))
    elif ftex == "crosswalk":
        sw = int(ph * rng.uniform(0.05, 0.09))
        white = _mix(floor, (225, 225, 220), 0.5)
        for x in range(0, pw, 2 * sw):
            d.rectangle([x, hy + (ph - hy) // 4, x + sw, ph], fill=white)
    # skirting / kerb line at the horizon
    d.rectangle([0, hy - 2, pw, hy + 2], fill=_shade(floor, rng.uniform(0.7, 1.3)))
    return img


# --------------------------------------------------------------------------- #
# drawing people
# --------------------------------------------------------------------------- #
_ARCS: dict[tuple[float, float, int], list[tuple[float, float]]] = {}


def _arc(a0: float, a1: float, n: int) -> list[tuple[float, float]]:
    """Unit-circle points from angle a0 to a1 (cached)."""
    key = (a0, a1, n)
    pts = _ARCS.get(key)
    if pts is None:
        pts = [(math.cos(a0 + (a1 - a0) * i / n), math.sin(a0 + (a1 - a0) * i / n)) for i in range(n + 1)]
        if len(_ARCS) < 256:
            _ARCS[key] = pts
    return pts


class _Body:
    """Maps person coordinates to canvas pixels.

    Person coordinates: ``x`` to the person's right (in units of body height),
    ``h`` height above the feet (units of body height).  ``mirror`` flips x
    (back view / facing left); ``lean`` shears with height.
    """

    def __init__(self, draw: ImageDraw.ImageDraw, cx: float, fy: float, u: float, lean: float, mirror: int):
        self.d, self.cx, self.fy, self.u, self.lean, self.m = draw, cx, fy, u, lean, mirror

    def pt(self, x: float, h: float) -> tuple[float, float]:
        return (self.cx + (x * self.m + self.lean * h) * self.u, self.fy - h * self.u)

    def poly(self, pts: Sequence[tuple[float, float]], fill: Color) -> None:
        cx, fy, u, m, lean = self.cx, self.fy, self.u, self.m, self.lean
        self.d.polygon([(cx + (x * m + lean * h) * u, fy - h * u) for x, h in pts], fill=fill)

    def ellipse(
        self,
        x: float,
        h: float,
        rx: float,
        rh: float,
        fill: Color,
        a0: float = 0.0,
        a1: float = 2 * math.pi,
        n: int = 16,
    ) -> None:
        self.poly([(x + rx * c, h + rh * s) for c, s in _arc(a0, a1, n)], fill)

    def quad(self, q: Sequence[tuple[float, float]], s0: float, s1: float, t0: float, t1: float, fill: Color) -> None:
        """Sub-rectangle [s0,s1]x[t0,t1] (s: left->right, t: top->bottom) of quad TL,TR,BR,BL."""
        (ax, ah), (bx, bh), (cx_, ch), (dx, dh) = q

        def P(s: float, t: float) -> tuple[float, float]:
            tx, th = ax + (bx - ax) * s, ah + (bh - ah) * s
            bx2, bh2 = dx + (cx_ - dx) * s, dh + (ch - dh) * s
            return (tx + (bx2 - tx) * t, th + (bh2 - th) * t)

        self.poly([P(s0, t0), P(s1, t0), P(s1, t1), P(s0, t1)], fill)

    def limb(self, x0: float, h0: float, x1: float, h1: float, w0: float, w1: float, fill: Color) -> None:
        dx, dh = x1 - x0, h1 - h0
        L = math.hypot(dx, dh) or 1e-6
        nx, nh = -dh / L, dx / L
        self.poly(
            [
                (x0 + nx * w0 / 2, h0 + nh * w0 / 2),
                (x1 + nx * w1 / 2, h1 + nh * w1 / 2),
                (x1 - nx * w1 / 2, h1 - nh * w1 / 2),
                (x0 - nx * w0 / 2, h0 - nh * w0 / 2),
            ],
            fill,
        )


def _draw_person(
    draw: ImageDraw.ImageDraw,
    ident: dict[str, Any],
    cx: float,
    fy: float,
    u: float,
    facing: str,
    lean: float,
    stride: float,
    swing: float,
    arm_out: float,
    mirror: int = 1,
) -> None:
    """Draw one pedestrian standing with feet at (cx, fy) and height u pixels.

    ``facing`` is "front", "back" or "side"; for side views ``mirror`` gives
    the walking direction.
    """
    I = ident  # noqa: E741 (the identity's appearance, used on most lines below)
    if facing == "back":
        mirror = -1
    B = _Body(draw, cx, fy, u, lean, mirror)
    b = I["build"]
    head_r = 0.062 * I["head"]
    h_head = 1.0 - head_r
    h_sh = 1.0 - 2 * head_r - 0.025
    h_hip = I["leg"]
    side = facing == "side"
    sw = (0.15 if side else 0.26) * b  # shoulder width
    ww = (0.14 if side else 0.22) * b  # waist width
    lw = 0.095 * b  # leg width
    skin, top, top2, bottom = I["skin"], I["top"], I["top2"], I["bottom"]
    acc, accc = I["acc"], I["acc_color"]
    bag_side_p = I["bag_side"]  # person's own left/right; the back view's mirror moves it to the other image side

    # ---- things behind the body
    if acc == "backpack" and side:
        B.poly(
            [
                (-sw / 2 - 0.09 * b, h_sh - 0.03),
                (-sw / 2 + 0.02, h_sh - 0.02),
                (-sw / 2 + 0.02, h_hip + 0.1),
                (-sw / 2 - 0.1 * b, h_hip + 0.12),
            ],
            accc,
        )
    if I["hair_len"] == "long" and facing != "back":
        hx = 0.02 if side else 0.0
        hw = head_r * (1.1 if side else 1.25)
        B.poly(
            [(-hw - hx, h_head), (hw - hx, h_head), (hw - hx * 3, h_sh - 0.1), (-hw - hx * 3, h_sh - 0.1)], I["hair"]
        )

    # ---- legs
    legwear = I["legwear"]
    leg_col_lower = bottom if I["lower_kind"] == "trousers" else (skin if legwear == "skin" else (35, 32, 38))
    h_knee = h_hip * 0.5
    if side:
        feet = [(stride, 0.0), (-stride, 0.0)]
        hips = [(0.01, h_hip), (-0.01, h_hip)]
    else:
        feet = [(-0.055 * b - stride * 0.35, 0.0), (0.055 * b + stride * 0.35, 0.0)]
        hips = [(-ww / 2 + lw / 2, h_hip), (ww / 2 - lw / 2, h_hip)]
    for (hx, hh), (fx, fh) in zip(hips, feet):
        kx = (hx + fx) / 2
        if I["lower_kind"] == "trousers":
            B.limb(hx, hh + 0.02, fx, fh + 0.03, lw, lw * 0.8, bottom)
        else:
            B.limb(hx, hh + 0.02, fx, fh + 0.03, lw * 0.8, lw * 0.6, leg_col_lower)
            if I["lower_kind"] == "shorts":
                B.limb(hx, hh + 0.02, kx, h_knee + 0.03, lw * 1.05, lw * 0.95, bottom)
    # shoes
    for fx, _ in feet:
        dx = 0.03 if side else 0.0
        B.ellipse(fx + dx, 0.018, 0.05 * b + (0.015 if side else 0), 0.022, I["shoes"])
    if I["lower_kind"] == "skirt":
        flare = 0.06 if not side else 0.04
        B.poly(
            [
                (-ww / 2, h_hip + 0.04),
                (ww / 2, h_hip + 0.04),
                (ww / 2 + flare, h_knee + 0.02),
                (-ww / 2 - flare, h_knee + 0.02),
            ],
            bottom,
        )

    # ---- torso (upper clothing)
    h_bot = h_hip - (0.08 if I["long_top"] else 0.0)
    torso = [
        (-sw / 2, h_sh),
        (sw / 2, h_sh),
        (ww / 2 + (0.015 if I["long_top"] else 0), h_bot),
        (-ww / 2 - (0.015 if I["long_top"] else 0), h_bot),
    ]
    if not side:
        # rounded shoulders
        B.ellipse(-sw / 2 + 0.03, h_sh - 0.03, 0.035 * b, 0.035, top)
        B.ellipse(sw / 2 - 0.03, h_sh - 0.03, 0.035 * b, 0.035, top)
    B.poly(torso, top)
    pat = I["pattern"]
    n = I["n_stripes"]
    if pat == "hstripes":
        k = 2 * n + 1
        for i in range(1, k, 2):
            B.quad(torso, 0, 1, i / k, (i + 1) / k, top2)
    elif pat == "vstripes":
        k = 2 * n + 1
        for i in range(1, k, 2):
            B.quad(torso, i / k, (i + 1) / k, 0, 1, top2)
    elif pat == "checks":
        k = n + 2
        for i in range(k):
            for j in range(k):
                if (i + j) % 2:
                    B.quad(torso, i / k, (i + 1) / k, j / k, (j + 1) / k, top2)
    elif pat == "logo" and facing == "front":
        shape = I["logo_shape"]
        if shape == "rect":
            B.quad(torso, 0.28, 0.72, 0.15, 0.5, top2)
        elif shape == "circle":
            B.ellipse(0.0, h_sh - (h_sh - h_hip) * 0.32, 0.055 * b, 0.055, top2)
        else:
            B.quad(torso, 0.0, 1.0, 0.25, 0.45, top2)
    elif pat == "logo" and side and I["logo_shape"] == "band":
        B.quad(torso, 0.0, 1.0, 0.25, 0.45, top2)

    # neck
    B.poly([(-0.025, h_sh + 0.02), (0.025, h_sh + 0.02), (0.025, h_sh - 0.01), (-0.025, h_sh - 0.01)], skin)

    # ---- accessories on the body
    if acc == "backpack":
        if facing == "back":
            B.poly(
                [
                    (-sw * 0.42, h_sh - 0.02),
                    (sw * 0.42, h_sh - 0.02),
                    (sw * 0.45, h_hip + 0.06),
                    (-sw * 0.45, h_hip + 0.06),
                ],
                accc,
            )
            B.quad(
                [
                    (-sw * 0.42, h_sh - 0.02),
                    (sw * 0.42, h_sh - 0.02),
                    (sw * 0.45, h_hip + 0.06),
                    (-sw * 0.45, h_hip + 0.06),
                ],
                0.1,
                0.9,
                0.05,
                0.3,
                _shade(accc, 0.7),
            )
        elif facing == "front":
            for s in (-1, 1):
                B.limb(s * sw * 0.3, h_sh, s * sw * 0.33, h_sh - 0.2, 0.025, 0.025, accc)
        else:
            B.limb(-0.01, h_sh, 0.0, h_sh - 0.2, 0.025, 0.025, accc)
    if acc == "bag" and not side:
        # strap from the opposite shoulder to the bag at the hip on bag_side
        B.limb(-bag_side_p * sw * 0.35, h_sh, bag_side_p * ww * 0.45, h_hip + 0.07, 0.02, 0.02, _shade(accc, 0.8))

    # ---- arms
    arm_len = (h_sh - h_hip) * 1.08
    aw = 0.065 * b
    if side:
        arms = [(0.0, swing)]
    else:
        arms = [(-sw / 2 + aw * 0.35, -arm_out - swing * 0.3), (sw / 2 - aw * 0.35, arm_out - swing * 0.3)]
    for ax, ang in arms:
        # ang: rotation of the arm from vertical; positive moves the hand to +x
        ex = ax + math.sin(ang) * arm_len
        eh = h_sh - 0.01 - math.cos(ang) * arm_len
        B.limb(ax, h_sh - 0.01, ex, eh, aw, aw * 0.8, skin)
        t = 1.0 if I["long_sleeves"] else 0.45
        B.limb(ax, h_sh - 0.01, ax + (ex - ax) * t, h_sh - 0.01 + (eh - h_sh + 0.01) * t, aw * 1.08, aw * 0.9, top)
        B.ellipse(ex, eh - 0.01, aw * 0.45, 0.025, skin)

    # shoulder bag body (over the arm, at the hip)
    if acc == "bag":
        if side:
            bx = 0.0
        else:
            bx = bag_side_p * (ww / 2 + 0.045)
        B.poly(
            [
                (bx - 0.055, h_hip + 0.1),
                (bx + 0.055, h_hip + 0.1),
                (bx + 0.06, h_hip - 0.02),
                (bx - 0.06, h_hip - 0.02),
            ],
            accc,
        )
        if side:
            B.limb(-0.01, h_sh, bx, h_hip + 0.1, 0.02, 0.02, _shade(accc, 0.8))

    # ---- head & hair
    hr_x = head_r * (0.82 if not side else 0.8)
    hair = I["hair"]
    if facing == "back":
        B.ellipse(0, h_head, hr_x, head_r, hair)
        if I["hair_len"] in ("medium", "long"):
            bot = h_sh - (0.12 if I["hair_len"] == "long" else 0.0)
            B.poly([(-hr_x * 1.1, h_head), (hr_x * 1.1, h_head), (hr_x * 1.05, bot), (-hr_x * 1.05, bot)], hair)
    else:
        B.ellipse(0, h_head, hr_x, head_r, skin)
        if side:
            # hair over the back half and the top
            B.ellipse(-0.008, h_head + 0.01, hr_x * 1.02, head_r * 0.95, hair, a0=math.pi * 0.45, a1=math.pi * 1.55)
            B.ellipse(0, h_head + head_r * 0.25, hr_x * 1.02, head_r * 0.8, hair, a0=0.0, a1=math.pi)
            if I["hair_len"] != "short":
                bot = h_sh - (0.1 if I["hair_len"] == "long" else 0.0)
                B.poly([(-hr_x * 1.05, h_head), (-hr_x * 0.1, h_head), (-hr_x * 0.2, bot), (-hr_x * 1.05, bot)], hair)
        else:
            B.ellipse(0, h_head + head_r * 0.28, hr_x * 1.05, head_r * 0.8, hair, a0=0.0, a1=math.pi)
            if I["hair_len"] != "short":
                bot = h_sh - (0.1 if I["hair_len"] == "long" else 0.0)
                for s in (-1, 1):
                    B.poly(
                        [
                            (s * hr_x * 1.05, h_head + 0.02),
                            (s * hr_x * 0.7, h_head + 0.02),
                            (s * hr_x * 0.75, bot),
                            (s * hr_x * 1.1, bot),
                        ],
                        hair,
                    )
            # eyes (front only) - a tiny hint of a face
            for s in (-1, 1):
                B.ellipse(s * hr_x * 0.4, h_head - head_r * 0.05, 0.008, 0.007, (40, 30, 30), n=6)
    if I["hat"]:
        hc = I["hat_color"]
        B.ellipse(0, h_head + head_r * 0.35, hr_x * 1.1, head_r * 0.72, hc, a0=0.0, a1=math.pi)
        brim = (0.02, hr_x * 1.6) if side else (-hr_x * 1.25, hr_x * 1.25)
        B.poly(
            [
                (brim[0], h_head + head_r * 0.38),
                (brim[1], h_head + head_r * 0.38),
                (brim[1], h_head + head_r * 0.22),
                (brim[0], h_head + head_r * 0.22),
            ],
            _shade(hc, 0.8),
        )


def _sample_pose(rng: np.random.Generator, cam: dict[str, Any] | None) -> dict[str, Any]:
    p = cam["facing_p"] if cam is not None else [0.4, 0.35, 0.25]
    facing = _choice(rng, ["front", "back", "side"], p)
    return {
        "facing": facing,
        "mirror": 1 if rng.random() < 0.5 else -1,
        "lean": float(rng.uniform(-0.06, 0.06)),
        "stride": float(rng.uniform(0.0, 0.13)) if facing == "side" else float(rng.uniform(0.0, 0.08)),
        "swing": float(rng.uniform(-0.45, 0.45)),
        "arm_out": float(rng.uniform(0.02, 0.2)),
    }


# --------------------------------------------------------------------------- #
# clutter and occluders
# --------------------------------------------------------------------------- #
def _draw_clutter(
    rng: np.random.Generator,
    draw: ImageDraw.ImageDraw,
    cam: dict[str, Any],
    cw: int,
    ch: int,
    box: tuple[float, float, float, float],
    extras: Sequence[dict[str, Any]],
) -> None:
    """Background objects behind the main person (``extras``: passers-by to pick from)."""
    bx0, by0, bw, bh = box
    hy = ch * cam["horizon"]
    n = int(rng.poisson(cam["clutter"]))
    for _ in range(n):
        kind = _choice(rng, ["poster", "person", "bench", "box"], [3, 4, 1, 2])
        if kind == "poster":
            w, h = rng.uniform(0.15, 0.5) * bw, rng.uniform(0.1, 0.35) * bh
            x, y = rng.uniform(0, cw - w), rng.uniform(0, max(1.0, hy - h))
            draw.rectangle([x, y, x + w, y + h], fill=_rand_color(rng))
            if rng.random() < 0.6:
                draw.rectangle([x + w * 0.15, y + h * 0.2, x + w * 0.85, y + h * 0.5], fill=_rand_color(rng))
        elif kind == "person":
            other = extras[int(rng.integers(0, len(extras)))]
            pose = _sample_pose(rng, None)
            u = rng.uniform(0.3, 0.6) * bh
            fy = hy + rng.uniform(0.0, 0.25) * (ch - hy)
            _draw_person(
                draw,
                other,
                rng.uniform(0, cw),
                fy,
                u,
                pose["facing"],
                pose["lean"],
                pose["stride"],
                pose["swing"],
                pose["arm_out"],
                pose["mirror"],
            )
        elif kind == "bench":
            w = rng.uniform(0.4, 0.9) * bw
            x, y = rng.uniform(-w / 2, cw - w / 2), hy + rng.uniform(0.0, 0.15) * bh
            col = _rand_color(rng, 0.0, 0.5, 0.2, 0.6)
            draw.rectangle([x, y - 0.12 * bh, x + w, y - 0.09 * bh], fill=col)
            draw.rectangle([x, y - 0.07 * bh, x + w, y - 0.05 * bh], fill=col)
            draw.rectangle([x + 2, y - 0.05 * bh, x + 5, y], fill=_shade(col, 0.6))
            draw.rectangle([x + w - 5, y - 0.05 * bh, x + w - 2, y], fill=_shade(col, 0.6))
        else:
            w, h = rng.uniform(0.1, 0.3) * bw, rng.uniform(0.05, 0.2) * bh
            x, y = rng.uniform(0, cw - w), hy + rng.uniform(-0.05, 0.2) * bh
            draw.rectangle([x, y - h, x + w, y], fill=_rand_color(rng, 0.0, 0.6, 0.2, 0.8))


def _draw_occluder(
    rng: np.random.Generator,
    draw: ImageDraw.ImageDraw,
    cx: float,
    fy: float,
    u: float,
    box: tuple[float, float, float, float],
    extras: Sequence[dict[str, Any]],
) -> None:
    bx0, by0, bw, bh = box
    kind = _choice(rng, ["car", "pole", "person", "bush"], [3, 3, 3, 2])
    side = 1 if rng.random() < 0.5 else -1
    if kind == "car":
        col = _rand_color(rng, 0.0, 0.8, 0.2, 0.9)
        top = fy - u * rng.uniform(0.3, 0.5)
        x_in = cx + side * u * rng.uniform(-0.05, 0.12)  # inner edge of the car
        x_out = x_in + side * bw * 1.5
        x0, x1 = sorted((x_in, x_out))
        draw.rounded_rectangle([x0, top, x1, fy + bh * 0.2], radius=max(2, int(u * 0.05)), fill=col)
        draw.rectangle([x0 + 3, top + u * 0.03, x1 - 3, top + u * 0.1], fill=_shade(col, 0.35))
        wx = x_in + side * u * 0.12
        r = u * 0.09
        draw.ellipse([wx - r, fy - r * 0.8, wx + r, fy + r * 1.2], fill=(20, 20, 22))
    elif kind == "pole":
        w = bw * rng.uniform(0.08, 0.18)
        x = cx + rng.uniform(-0.2, 0.2) * bw
        col = _rand_color(rng, 0.0, 0.6, 0.2, 0.8)
        draw.rectangle([x - w / 2, by0 - bh, x + w / 2, by0 + 2 * bh], fill=col)
        draw.rectangle([x - w / 2, by0 - bh, x - w / 4, by0 + 2 * bh], fill=_shade(col, 1.3))
    elif kind == "person":
        other = extras[int(rng.integers(0, len(extras)))]
        pose = _sample_pose(rng, None)
        ou = u * rng.uniform(0.95, 1.15)
        ox = cx + side * bw * rng.uniform(0.35, 0.6)
        _draw_person(
            draw,
            other,
            ox,
            fy + u * rng.uniform(0.0, 0.1),
            ou,
            pose["facing"],
            pose["lean"],
            pose["stride"],
            pose["swing"],
            pose["arm_out"],
            pose["mirror"],
        )
    else:  # bush / planter
        g = (int(rng.integers(20, 80)), int(rng.integers(80, 150)), int(rng.integers(20, 70)))
        h = u * rng.uniform(0.2, 0.4)
        x = cx + side * bw * rng.uniform(0.1, 0.35)
        for _ in range(14):
            r = u * rng.uniform(0.06, 0.12)
            px, py = x + rng.uniform(-0.25, 0.25) * bw, fy - rng.uniform(0, h)
            draw.ellipse([px - r, py - r, px + r, py + r], fill=_shade(g, rng.uniform(0.7, 1.3)))


# --------------------------------------------------------------------------- #
# one image
# --------------------------------------------------------------------------- #
class _Scene:
    """Per-generation constants: cameras, panoramas, canvas geometry."""

    def __init__(self, seed: int, num_cameras: int, height: int, width: int):
        self.seed, self.height, self.width = seed, height, width
        self.bw, self.bh = width * _SS, height * _SS  # nominal detector box (canvas pixels)
        self.cw, self.ch = int(self.bw * 1.6), int(self.bh * 1.3)
        self.bx0, self.by0 = (self.cw - self.bw) // 2, (self.ch - self.bh) // 2
        self.cams = [_make_camera(_rng(seed, _T_CAM, c), c) for c in range(num_cameras)]
        # passers-by for background clutter and occluders (not dataset identities)
        self.extras = [_make_identity(_rng(seed, _T_ID, _EXTRA_BASE + k)) for k in range(_NUM_EXTRAS)]
        self.panos = []
        for c, cam in enumerate(self.cams):
            pano = _make_panorama(_rng(seed, _T_CAM, c, 1), cam, self.cw * 3, self.ch)
            self.panos.append((pano, pano.transpose(Image.Transpose.FLIP_LEFT_RIGHT)))
        h, w = height, width
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
        self._yy, self._xx = (yy / max(h - 1, 1) - 0.5), (xx / max(w - 1, 1) - 0.5)
        # a fixed sensor-noise field per camera; images take random crops of it
        self._noise = [
            np.rint(_rng(seed, _T_CAM, c, 2).standard_normal((2 * h, 2 * w, 3)) * cam["noise"]).astype(np.int16)
            for c, cam in enumerate(self.cams)
        ]
        self._grad_cache: dict[tuple[int, int], tuple[Image.Image, float]] = {}

    def _background(self, rng: np.random.Generator, cam_i: int) -> Image.Image:
        pano = self.panos[cam_i][int(rng.random() < 0.5)]  # as is, or mirrored
        x0 = int(rng.integers(0, pano.width - self.cw + 1))
        return pano.crop((x0, 0, x0 + self.cw, self.ch))

    def render(
        self, rng: np.random.Generator, cam_i: int, ident: dict[str, Any] | None, mode: str = "person"
    ) -> Image.Image:
        """Render one detector crop.  ``mode``: person / distractor / junk."""
        cam = self.cams[cam_i]
        canvas = self._background(rng, cam_i)
        draw = ImageDraw.Draw(canvas)
        box = (self.bx0, self.by0, self.bw, self.bh)
        _draw_clutter(rng, draw, cam, self.cw, self.ch, box, self.extras)

        scale = cam["scale"] * rng.uniform(0.93, 1.07)
        fill = 1.0
        if ident is not None:
            fill = ident["height"]
        u = self.bh * scale * fill
        fy = self.by0 + self.bh * rng.uniform(0.94, 0.99)
        cx = self.bx0 + self.bw * (0.5 + rng.uniform(-0.09, 0.09))
        # detector box misalignment (whole canvas pixels, so the crop is exact)
        bx = self.bx0 + int(round(self.bw * rng.uniform(-0.07, 0.07)))
        by = self.by0 + int(round(self.bh * rng.uniform(-0.04, 0.04)))
        if mode == "person":
            assert ident is not None
            pose = _sample_pose(rng, cam)
            _draw_person(
                draw,
                ident,
                cx,
                fy,
                u,
                pose["facing"],
                pose["lean"],
                pose["stride"],
                pose["swing"],
                pose["arm_out"],
                pose["mirror"],
            )
            if rng.random() < 0.3:
                _draw_occluder(rng, draw, cx, fy, u, box, self.extras)
        elif mode == "distractor":
            # a badly localised detection: part of a person, or just background objects
            if ident is not None and rng.random() < 0.7:
                pose = _sample_pose(rng, cam)
                ox = cx + self.bw * rng.choice([-1, 1]) * rng.uniform(0.3, 0.55)
                oy = fy + self.bh * rng.uniform(-0.1, 0.35)
                _draw_person(
                    draw,
                    ident,
                    ox,
                    oy,
                    u * rng.uniform(0.8, 1.4),
                    pose["facing"],
                    pose["lean"],
                    pose["stride"],
                    pose["swing"],
                    pose["arm_out"],
                    pose["mirror"],
                )
            else:
                _draw_occluder(rng, draw, cx, fy, u, box, self.extras)
        else:  # junk: a fragment (head/legs only) or a person at a wildly wrong scale
            if ident is not None:
                pose = _sample_pose(rng, cam)
                if rng.random() < 0.5:
                    uu = u * rng.uniform(1.8, 3.0)
                    oy = fy + (uu - u) * rng.uniform(0.0, 1.0)
                else:
                    uu = u * rng.uniform(0.25, 0.45)
                    oy = fy - self.bh * rng.uniform(0.0, 0.3)
                _draw_person(
                    draw,
                    ident,
                    cx,
                    oy,
                    uu,
                    pose["facing"],
                    pose["lean"],
                    pose["stride"],
                    pose["swing"],
                    pose["arm_out"],
                    pose["mirror"],
                )
        img = canvas.crop((bx, by, bx + self.bw, by + self.bh)).reduce(_SS)

        # ---- sensor: resolution and blur (camera-specific, plus motion/focus blur in some images)
        blur = cam["blur"] + rng.uniform(0.0, 0.6) * (rng.random() < 0.35)
        res = min(1.0, cam["res"] * rng.uniform(0.9, 1.15)) / (1.0 + blur)
        if res < 0.95:
            lw, lh = max(4, int(round(self.width * res))), max(8, int(round(self.height * res)))
            img = img.resize((lw, lh), Image.Resampling.BILINEAR).resize(
                (self.width, self.height), Image.Resampling.BILINEAR
            )

        # ---- lighting: saturation, illumination gradient, then one lookup table per channel for
        #      colour cast x brightness, contrast and gamma; finally sensor noise
        sat = cam["saturation"] * rng.uniform(0.92, 1.08)
        img = Image.blend(img.convert("L").convert("RGB"), img, float(sat))
        grad_img, gmax = self._gradient(cam_i, int(rng.integers(0, _GRAD_BINS)))
        img = ImageChops.multiply(img, grad_img)
        gains = cam["gains"] * (1.0 + rng.uniform(-0.04, 0.04, size=3))
        con = cam["contrast"] * rng.uniform(0.94, 1.06)
        bright = cam["brightness"] * rng.uniform(0.9, 1.1)
        gam = cam["gamma"] * rng.uniform(0.95, 1.05)
        v = np.arange(256, dtype=np.float64)[None, :] / 255.0 * (gains[:, None] * gmax)
        lut = np.rint(255.0 * np.clip(((v - 0.5) * con + 0.5) * bright, 0.0, 1.0) ** gam).astype(np.int16)
        src = np.asarray(img)
        noise = self._noise[cam_i]
        ny = int(rng.integers(0, noise.shape[0] - self.height + 1))
        nx = int(rng.integers(0, noise.shape[1] - self.width + 1))
        a = noise[ny : ny + self.height, nx : nx + self.width].copy()
        for c in range(3):
            a[..., c] += lut[c][src[..., c]]
        np.clip(a, 0, 255, out=a)
        return Image.fromarray(a.astype(np.uint8), "RGB")

    def _gradient(self, cam_i: int, k: int) -> tuple[Image.Image, float]:
        """Illumination gradient image (scaled to max 255) and its maximum gain, cached."""
        key = (cam_i, k)
        if key not in self._grad_cache:
            cam = self.cams[cam_i]
            ang = cam["grad_dir"] + (k / max(_GRAD_BINS - 1, 1) - 0.5) * 0.6
            g = 1.0 + cam["grad_amp"] * (math.cos(ang) * self._xx + math.sin(ang) * self._yy)
            gmax = float(g.max())
            gi = Image.fromarray(np.rint(g / gmax * 255.0).astype(np.uint8), "L").convert("RGB")
            self._grad_cache[key] = (gi, gmax)
        return self._grad_cache[key]


# --------------------------------------------------------------------------- #
# layout (which image goes where)
# --------------------------------------------------------------------------- #
def _frames(seed: int, pid_code: int, cam: int, n: int) -> list[tuple[int, int]]:
    """``n`` increasing (frame, bbox-index) pairs for one pid in one camera."""
    r = _rng(seed, _T_FRAMES, pid_code, cam)
    step = max(2, min(80, 999_999 // (n + 1)))  # frames must stay 6-digit
    f = int(r.integers(0, max(1, min(120_000, 999_999 - n * step))))
    out = []
    for _ in range(n):
        f += int(r.integers(1, step))
        out.append((f, int(r.integers(1, 5))))
    return out


def _fname(pid: int, cam: int, frame: int, idx: int) -> str:
    pid_s = "-1" if pid == -1 else f"{pid:04d}"
    return f"{pid_s}_c{cam + 1}s1_{frame:06d}_{idx:02d}.jpg"


def _plan(seed: int, p: Mapping[str, int]) -> list[tuple[str, str, int, int, tuple[int, ...]]]:
    """List of (split, filename, pid, cam, image-key) for every image."""
    C, K = p["num_cameras"], p["images_per_id"]
    jobs: list[tuple[str, str, int, int, tuple[int, ...]]] = []
    ntr, nte = p["num_train_ids"], p["num_test_ids"]
    max_cams = min(C, K)
    for pid in range(1, ntr + nte + 1):
        r = _rng(seed, _T_LAYOUT, pid)
        ncam = int(r.integers(2, max_cams + 1))
        cams = sorted(int(c) for c in r.choice(C, size=ncam, replace=False))
        # every camera gets one image, the rest spread at random (uneven, like real tracks)
        counts = np.ones(ncam, dtype=np.int64)
        extra = r.multinomial(K - ncam, r.dirichlet(np.full(ncam, 1.5)))
        counts += extra
        is_test = pid > ntr
        for c, n in zip(cams, counts):
            n = int(n)
            nq = 1 if is_test else 0  # one query per camera the test id appears in
            fr = _frames(seed, pid, c, n + nq)
            qpos = int(r.integers(0, n + nq)) if is_test else -1
            for k, (f, idx) in enumerate(fr):
                split = "query" if k == qpos else ("gallery" if is_test else "train")
                jobs.append((split, _fname(pid, c, f, idx), pid, c, (pid, c, k)))
    for pid, num in ((_PID_DISTRACTOR, p["num_distractors"]), (_PID_JUNK, p["num_junk"])):
        if num <= 0:
            continue
        code = 0 if pid == 0 else 1
        r = _rng(seed, _T_LAYOUT, 100000 + code)
        cams = r.integers(0, C, size=num)
        per_cam = np.bincount(cams, minlength=C)
        for c in range(C):
            for k, (f, idx) in enumerate(_frames(seed, 100000 + code, c, int(per_cam[c]))):
                jobs.append(("gallery", _fname(pid, c, f, idx), pid, c, (100000 + code, c, k)))
    return jobs


# --------------------------------------------------------------------------- #
# rendering jobs (serially or in forked worker processes)
# --------------------------------------------------------------------------- #
_Job = tuple[str, str, int, int, tuple[int, ...]]
_WORKER_STATE: dict[str, Any] = {}


def _render_jobs(root: str, params: Mapping[str, int], jobs: Sequence[_Job]) -> None:
    """Render and write ``jobs``; every image depends only on (seed, its key), not on the order."""
    key = (params["seed"], params["num_cameras"], params["height"], params["width"])
    if _WORKER_STATE.get("key") != key:
        _WORKER_STATE.clear()
        _WORKER_STATE.update(key=key, scene=_Scene(*key), idents={})
    scene: _Scene = _WORKER_STATE["scene"]
    idents: dict[int, dict[str, Any]] = _WORKER_STATE["idents"]
    seed = params["seed"]
    out = Path(root)
    for split, fname, pid, cam, ikey in jobs:
        rng = _rng(seed, _T_IMG, *ikey)
        if pid >= 1:
            ident = idents.get(pid)
            if ident is None:
                ident = idents[pid] = _make_identity(_rng(seed, _T_ID, pid))
            img = scene.render(rng, cam, ident, "person")
        else:
            # a random passer-by who is not one of the dataset's identities
            img = scene.render(rng, cam, _make_identity(rng), "distractor" if pid == _PID_DISTRACTOR else "junk")
        img.save(out / SPLIT_DIRS[split] / fname, format="JPEG", **_JPEG_KW)


def _render_chunk(args: tuple[str, dict[str, int], list[_Job]]) -> None:
    root, params, jobs = args
    _render_jobs(root, params, jobs)


def _num_workers(workers: int | None, n_jobs: int) -> int:
    if workers is not None:
        return max(1, int(workers))
    if n_jobs < 400 or "fork" not in mp.get_all_start_methods():
        return 1
    try:
        ncpu = len(os.sched_getaffinity(0))  # type: ignore[attr-defined]
    except (AttributeError, OSError):
        ncpu = os.cpu_count() or 1
    return max(1, min(ncpu, 8))


def _render_parallel(root: str, params: Mapping[str, int], jobs: Sequence[_Job], n_workers: int) -> None:
    """Render in ``n_workers`` forked processes (falls back to serial where fork is unavailable)."""
    if "fork" not in mp.get_all_start_methods():
        _render_jobs(root, params, jobs)
        return
    n_chunks = n_workers * 6
    size = -(-len(jobs) // n_chunks)
    chunks = [(root, dict(params), list(jobs[k : k + size])) for k in range(0, len(jobs), size)]
    with mp.get_context("fork").Pool(n_workers) as pool:
        pool.map(_render_chunk, chunks, chunksize=1)  # one chunk per task: the load stays balanced


# --------------------------------------------------------------------------- #
# public API
# --------------------------------------------------------------------------- #
def _full_params(seed: int, sizes: Mapping[str, Any]) -> dict[str, int]:
    unknown = set(sizes) - set(DEFAULT_DEMO_PARAMS)
    if unknown:
        raise TypeError(f"unknown demo-dataset parameter(s): {sorted(unknown)}; known: {sorted(DEFAULT_DEMO_PARAMS)}")
    p = dict(DEFAULT_DEMO_PARAMS)
    p.update({k: int(v) for k, v in sizes.items()})
    p["seed"] = int(seed)
    if p["seed"] < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    if not 2 <= p["num_cameras"] <= 9:
        raise ValueError(f"num_cameras must be in 2..9 (one digit in Market-1501 names), got {p['num_cameras']}")
    if p["num_train_ids"] < 1 or p["num_test_ids"] < 1:
        raise ValueError("num_train_ids and num_test_ids must be >= 1")
    if p["num_train_ids"] + p["num_test_ids"] > 9999:
        raise ValueError("num_train_ids + num_test_ids must be <= 9999 (4-digit Market-1501 pids)")
    if p["images_per_id"] < 2:
        raise ValueError("images_per_id must be >= 2 (each id is seen by at least two cameras)")
    if p["height"] < 16 or p["width"] < 8:
        raise ValueError("height must be >= 16 and width >= 8")
    if p["num_distractors"] < 0 or p["num_junk"] < 0:
        raise ValueError("num_distractors and num_junk must be >= 0")
    return p


def _write_marker(root: Path, params: Mapping[str, int], counts: Mapping[str, Any]) -> None:
    tmp = root / (MARKER_NAME + ".tmp")
    tmp.write_text(
        json.dumps(
            {"generator_version": GENERATOR_VERSION, "params": dict(params), "counts": counts}, indent=2, sort_keys=True
        )
    )
    os.replace(tmp, root / MARKER_NAME)


def generate_demo_market(
    root: PathLike,
    seed: int = 0,
    num_train_ids: int = DEFAULT_DEMO_PARAMS["num_train_ids"],
    num_test_ids: int = DEFAULT_DEMO_PARAMS["num_test_ids"],
    images_per_id: int = DEFAULT_DEMO_PARAMS["images_per_id"],
    num_cameras: int = DEFAULT_DEMO_PARAMS["num_cameras"],
    height: int = DEFAULT_DEMO_PARAMS["height"],
    width: int = DEFAULT_DEMO_PARAMS["width"],
    num_distractors: int = DEFAULT_DEMO_PARAMS["num_distractors"],
    num_junk: int = DEFAULT_DEMO_PARAMS["num_junk"],
    workers: int | None = None,
) -> dict[str, Any]:
    """Write a synthetic Market-1501-style dataset under ``root``.

    Identities ``1..num_train_ids`` go to ``bounding_box_train``;
    identities ``num_train_ids+1 .. num_train_ids+num_test_ids`` go to
    ``query`` / ``bounding_box_test``.  Every identity is seen by 2 to
    ``min(num_cameras, images_per_id)`` cameras with ``images_per_id`` images
    in total (train) or in the gallery (test), at least one per camera.  Each
    test identity has one query image per camera it appears in, so every query
    has a same-identity gallery image from a different camera.
    ``bounding_box_test`` also receives ``num_distractors`` images with pid 0
    (``0000_...``) and ``num_junk`` with pid -1 (``-1_...``).

    ``root`` must not exist or be empty.  The marker file :data:`MARKER_NAME`
    (parameters and counts) is written last.

    Args:
        root: output folder.
        seed: master seed; the same seed gives byte-identical files.
        num_train_ids, num_test_ids, images_per_id, num_cameras: sizes.
        height, width: image size in pixels (Market-1501 uses 128 x 64).
        num_distractors, num_junk: pid-0 and pid -1 images in the gallery.
        workers: rendering processes; ``None`` uses the available CPUs
            (forked workers, Linux/macOS) for large trees, ``1`` renders in
            this process.  The output does not depend on it.

    Returns:
        ``{"root": str, "train": {...}, "query": {...}, "gallery": {...}}``
        where each split maps to ``{"ids", "images", "cameras"}``; ``ids``
        counts real identities (pid >= 1), ``images`` counts every file of the
        folder; the gallery entry also has ``"distractors"`` and ``"junk"``.
    """
    params = _full_params(
        seed,
        dict(
            num_train_ids=num_train_ids,
            num_test_ids=num_test_ids,
            images_per_id=images_per_id,
            num_cameras=num_cameras,
            height=height,
            width=width,
            num_distractors=num_distractors,
            num_junk=num_junk,
        ),
    )
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise ValueError(f"demo dataset output folder {str(root)!r} exists and is not an empty directory")
    for d in SPLIT_DIRS.values():
        (root / d).mkdir(parents=True, exist_ok=True)

    jobs = _plan(params["seed"], params)
    n_workers = _num_workers(workers, len(jobs))
    if n_workers <= 1:
        _render_jobs(str(root), params, jobs)
    else:
        _render_parallel(str(root), params, jobs, n_workers)

    stats: dict[str, dict[str, set]] = {s: {"ids": set(), "cams": set()} for s in SPLIT_DIRS}
    n_img = {s: 0 for s in SPLIT_DIRS}
    n_distr = n_junk = 0
    for split, _fn, pid, cam, _key in jobs:
        if pid >= 1:
            stats[split]["ids"].add(pid)
        elif pid == _PID_DISTRACTOR:
            n_distr += 1
        else:
            n_junk += 1
        stats[split]["cams"].add(cam + 1)
        n_img[split] += 1

    counts: dict[str, Any] = {"root": str(root)}
    for s in SPLIT_DIRS:
        counts[s] = {"ids": len(stats[s]["ids"]), "images": n_img[s], "cameras": len(stats[s]["cams"])}
    counts["gallery"]["distractors"] = n_distr
    counts["gallery"]["junk"] = n_junk
    marker_counts = {k: v for k, v in counts.items() if k != "root"}
    _write_marker(root, params, marker_counts)
    return counts


def _read_marker(root: Path) -> dict[str, Any] | None:
    m = root / MARKER_NAME
    if not m.is_file():
        return None
    try:
        return json.loads(m.read_text())
    except (OSError, ValueError):
        return {}


def _check_existing(root: Path, params: Mapping[str, int]) -> bool:
    """True if ``root`` is a finished tree with ``params``; False if absent/empty; raise otherwise."""
    if not root.exists():
        return False
    if not root.is_dir():
        raise ValueError(f"demo dataset folder {str(root)!r} exists but is not a directory")
    marker = _read_marker(root)
    if marker is None:
        if any(root.iterdir()):
            raise ValueError(
                f"demo dataset folder {str(root)!r} is not empty and has no {MARKER_NAME} marker "
                "(not a finished demo dataset); refusing to touch it - pick another folder or remove it yourself"
            )
        return False
    old = dict(marker.get("params") or {})
    old_version = marker.get("generator_version")
    diffs = [
        f"{k}: folder has {old.get(k)!r}, requested {params[k]!r}" for k in sorted(params) if old.get(k) != params[k]
    ]
    if old_version != GENERATOR_VERSION:
        diffs.append(f"generator_version: folder has {old_version!r}, current {GENERATOR_VERSION!r}")
    if diffs:
        raise ValueError(
            f"demo dataset folder {str(root)!r} was generated with different parameters ("
            + "; ".join(diffs)
            + "); use another folder or remove it yourself"
        )
    return True


def read_demo_marker(root: PathLike) -> dict[str, Any] | None:
    """The marker of a finished demo tree (``generator_version``, ``params``, ``counts``), or None."""
    return _read_marker(Path(root))


def ensure_demo_market(root: PathLike, seed: int = 0, **sizes: int) -> Path:
    """Return ``root`` holding a complete demo dataset, generating it if needed.

    * ``root`` complete (marker present) with the same seed/sizes: returned at
      once, nothing is rewritten.
    * ``root`` missing or empty: the tree is generated into a temporary
      sibling folder and renamed into place atomically, so an interrupted run
      never leaves a half tree under ``root``.
    * ``root`` non-empty without the marker, or made with different
      parameters: :class:`ValueError` naming the folder and the problem (the
      folder is never deleted).

    ``sizes`` are any of :data:`DEFAULT_DEMO_PARAMS` (unspecified ones take the
    defaults).
    """
    root = Path(root).expanduser().absolute()
    params = _full_params(seed, sizes)
    if _check_existing(root, params):
        return root
    root.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{root.name}.partial-", dir=root.parent))
    try:
        gen_kw = {k: v for k, v in params.items() if k != "seed"}
        generate_demo_market(tmp, seed=params["seed"], **gen_kw)
        os.chmod(tmp, 0o755)  # mkdtemp makes it private
        try:
            if root.exists():
                root.rmdir()  # only succeeds if still empty
            os.rename(tmp, root)
        except OSError:
            # someone else finished first (or filled the folder): accept theirs if it matches
            if _check_existing(root, params):
                shutil.rmtree(tmp, ignore_errors=True)
                return root
            raise
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return root
