"""``capsules``: two-tone capsules on a textured conveyor belt, in MVTec AD layout.

Normal images: one capsule per image at a random position and orientation, size jittered by about
10 %, colored with one pair from ``NORMAL_PALETTE`` (slightly jittered), shaded as a lit cylinder
with a specular glare stripe and a soft shadow, on a belt with horizontal slats (random phase, as
the belt moves), grain and mottling, under mildly varying gain, gradient and white balance.

Defects (each with a pixel mask, 255 = anomalous):

- ``foreign_object``: a metal ring, a screw or debris (rust flake, paper) on the belt or capsule.
- ``crack``: a dark jagged crack across the capsule (with a branch), clipped to the capsule.
- ``miscolor``: one half of the capsule in a color outside the palette (green, purple, teal).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from vigil.config import CapsulesGen
from vigil.data.synthetic._common import (
    DATASET_CAPSULES,
    grain,
    item_rng,
    smooth_noise,
    to_uint8,
    write_png,
)

DEFECTS = ("foreign_object", "crack", "miscolor")

# BGR colors of the two halves (cap, body) of a normal capsule.
_IVORY = (222, 232, 240)
_RED = (45, 45, 195)
_BLUE = (150, 75, 35)
_YELLOW = (60, 200, 235)
NORMAL_PALETTE = ((_RED, _IVORY), (_BLUE, _IVORY), (_RED, _YELLOW))
# Colors no normal capsule has, for ``miscolor``.
OFF_PALETTE = ((70, 175, 40), (150, 40, 135), (175, 160, 25))

_SPLIT_STREAM = {"train": 1, "test": 2}
# Capsules come down a feeder onto the belt roughly centered and aligned with the slats.
_CENTER_JITTER = 0.12  # of the image size, each axis
_ANGLE_JITTER_DEG = 30.0
_BELT_BGR = np.array([72.0, 78.0, 74.0], np.float32)


@dataclass(frozen=True)
class Capsule:
    """Geometry of one capsule: center (px), axis angle (rad), half-length of the axis, radius."""

    cx: float
    cy: float
    angle: float
    half_length: float
    radius: float


def render_capsule_image(
    rng: np.random.Generator, size: int, defect: str = "good"
) -> tuple[np.ndarray, np.ndarray]:
    """One image and its mask.

    Returns ``image`` uint8 (size, size, 3) BGR and ``mask`` uint8 (size, size), 255 where the
    ``defect`` is (all zero for ``good``).
    """
    if defect != "good" and defect not in DEFECTS:
        raise ValueError(f"unknown capsule defect {defect!r} (known: good, {', '.join(DEFECTS)})")
    image = _belt(rng, size)
    capsule = _random_capsule(rng, size)
    light = _light_direction(rng)
    colors = [np.array(c, np.float32) + rng.normal(0, 6, 3) for c in _palette_pair(rng)]
    mask = np.zeros((size, size), np.uint8)
    if defect == "miscolor":
        half = int(rng.integers(2))
        colors[half] = np.array(OFF_PALETTE[rng.integers(len(OFF_PALETTE))], np.float32)
        colors[half] += rng.normal(0, 6, 3)
    alpha, halves = _draw_capsule(image, capsule, colors, light)
    if defect == "miscolor":
        mask[(alpha > 0.5) & (halves == half)] = 255
    elif defect == "crack":
        _draw_crack(rng, image, mask, capsule, alpha)
    elif defect == "foreign_object":
        _draw_foreign_object(rng, image, mask, size)
    _apply_lighting(rng, image)
    image += rng.normal(0, 2.0, image.shape).astype(np.float32)  # sensor noise
    return to_uint8(image), mask


def _palette_pair(rng: np.random.Generator) -> list[tuple[int, int, int]]:
    return list(NORMAL_PALETTE[rng.integers(len(NORMAL_PALETTE))])


def _belt(rng: np.random.Generator, size: int) -> np.ndarray:
    """float32 (size, size, 3): rubber belt with slats every ~size/6 px, grain and mottling."""
    period = size / 6.0
    phase = rng.uniform(0, period)
    y = (np.arange(size, dtype=np.float32) + phase) % period
    groove_w = max(1.5, size / 80)
    slat = np.where(y < groove_w, -22.0, 0.0) + np.where(
        (y >= groove_w) & (y < 2 * groove_w), 8.0, 0.0
    )
    slat_index = np.floor((np.arange(size) + phase) / period).astype(int)
    slat = slat + rng.normal(0, 3.0, slat_index.max() + 1)[slat_index]
    shade = (
        slat[:, None] + 7.0 * grain(rng, size) + 5.0 * smooth_noise(rng, size, size / 8)
    ).astype(np.float32)
    base = _BELT_BGR + rng.normal(0, 3, 3).astype(np.float32)
    return base[None, None, :] + shade[:, :, None]


def _random_capsule(rng: np.random.Generator, size: int) -> Capsule:
    half_length = size * rng.uniform(0.15, 0.18)
    radius = size * rng.uniform(0.085, 0.1)
    cx, cy = size * (0.5 + rng.uniform(-_CENTER_JITTER, _CENTER_JITTER, 2))
    angle = np.deg2rad(rng.uniform(-_ANGLE_JITTER_DEG, _ANGLE_JITTER_DEG))
    return Capsule(cx, cy, angle, half_length, radius)


def _light_direction(rng: np.random.Generator) -> np.ndarray:
    azimuth = np.deg2rad(225 + rng.normal(0, 12))  # from the upper left, jittered
    vec = np.array([np.cos(azimuth), np.sin(azimuth), 1.1]) * np.array([0.6, 0.6, 1.0])
    return (vec / np.linalg.norm(vec)).astype(np.float32)


def _capsule_frame(capsule: Capsule, size: int) -> tuple[np.ndarray, np.ndarray]:
    """Per-pixel coordinates (u along the axis, v across it), float32 (size, size) each."""
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    dx, dy = xx + 0.5 - capsule.cx, yy + 0.5 - capsule.cy
    c, s = np.cos(capsule.angle), np.sin(capsule.angle)
    return dx * c + dy * s, -dx * s + dy * c


def _draw_capsule(
    image: np.ndarray, capsule: Capsule, colors: list[np.ndarray], light: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """Shade the capsule into ``image`` (in place) over a soft shadow.

    Returns ``alpha`` float32 (H, W) coverage in [0, 1] and ``halves`` int (H, W): 0 where
    u < 0 (first color), 1 elsewhere.
    """
    size = image.shape[0]
    u, v = _capsule_frame(capsule, size)
    du = np.sign(u) * np.maximum(np.abs(u) - capsule.half_length, 0)
    dist = np.sqrt(du * du + v * v)
    alpha = np.clip(capsule.radius - dist + 0.5, 0, 1)

    # Soft shadow on the belt, cast away from the light.
    shift = -light[:2] / max(light[2], 1e-3) * capsule.radius * 0.35
    matrix = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
    shadow = cv2.warpAffine(alpha, matrix, (size, size))
    shadow = cv2.GaussianBlur(shadow, (0, 0), capsule.radius * 0.3)
    image *= (1.0 - 0.45 * shadow)[:, :, None]

    # Surface normal of a rounded cylinder, in image axes.
    r = capsule.radius
    nu, nv = du / r, v / r
    nz = np.sqrt(np.clip(1.0 - nu * nu - nv * nv, 0, 1))
    c, s = np.cos(capsule.angle), np.sin(capsule.angle)
    nx, ny = nu * c - nv * s, nu * s + nv * c
    lambert = np.clip(nx * light[0] + ny * light[1] + nz * light[2], 0, 1)
    half_vec = light + np.array([0, 0, 1], np.float32)
    half_vec /= np.linalg.norm(half_vec)
    spec = np.clip(nx * half_vec[0] + ny * half_vec[1] + nz * half_vec[2], 0, 1) ** 14

    halves = (u >= 0).astype(np.int64)
    albedo = np.where(halves[:, :, None] == 0, colors[0], colors[1])
    seam = 1.0 - 0.25 * np.clip(1.2 - np.abs(u), 0, 1)  # the joint between the two halves
    surface = albedo * (0.35 + 0.7 * lambert * seam)[:, :, None] + 150.0 * spec[:, :, None]
    a = alpha[:, :, None]
    image *= 1.0 - a
    image += a * surface
    return alpha, halves


def _draw_crack(
    rng: np.random.Generator,
    image: np.ndarray,
    mask: np.ndarray,
    capsule: Capsule,
    alpha: np.ndarray,
) -> None:
    """A dark jagged crack across the capsule, plus a branch; ``mask`` gets its pixels."""
    size = image.shape[0]
    r = capsule.radius
    u0 = rng.uniform(-0.85, 0.85) * capsule.half_length
    steps = int(rng.integers(6, 10))
    vs = np.linspace(-1.3 * r, 1.3 * r, steps)
    us = u0 + np.cumsum(rng.normal(0, 0.22 * r, steps))
    c, s = np.cos(capsule.angle), np.sin(capsule.angle)

    def to_px(pu: np.ndarray, pv: np.ndarray) -> np.ndarray:
        xs = capsule.cx + pu * c - pv * s
        ys = capsule.cy + pu * s + pv * c
        return np.round(np.stack([xs, ys], 1) * 16).astype(np.int32)

    layer = np.zeros((size, size), np.uint8)
    thickness = max(2, round(size / 32))
    cv2.polylines(layer, [to_px(us, vs)], False, 255, thickness, cv2.LINE_8, shift=4)
    k = int(rng.integers(2, steps - 2))
    branch_v = vs[k] + np.cumsum(rng.normal(0, 0.2 * r, 3))
    branch_u = us[k] + np.sign(rng.normal()) * np.cumsum(rng.uniform(0.2, 0.35, 3) * r)
    branch = to_px(np.r_[us[k], branch_u], np.r_[vs[k], branch_v])
    cv2.polylines(layer, [branch], False, 255, max(1, thickness - 1), cv2.LINE_8, shift=4)
    layer[alpha < 0.6] = 0
    crack = layer > 0
    image[crack] = image[crack] * 0.18 + 8.0
    mask[crack] = 255


def _draw_foreign_object(
    rng: np.random.Generator, image: np.ndarray, mask: np.ndarray, size: int
) -> None:
    """A ring, a screw or a debris blob somewhere on the belt or the capsule."""
    kind = ("ring", "screw", "debris")[rng.integers(3)]
    center = rng.uniform(0.15 * size, 0.85 * size, 2)
    layer = np.zeros((size, size), np.uint8)
    if kind == "ring":
        radius = size * rng.uniform(0.08, 0.12)
        axes = (round(radius * 16), round(radius * rng.uniform(0.6, 1.0) * 16))
        thickness = max(2, round(size / 24))
        ctr = tuple(np.round(center * 16).astype(int))
        angle = float(rng.uniform(0, 180))
        cv2.ellipse(layer, ctr, axes, angle, 0, 360, 255, thickness, cv2.LINE_8, 4)
        metal = rng.uniform(150, 200) + rng.normal(0, 8, 3)
        _paint(image, layer, metal, grain_rng=rng, texture=10.0)
    elif kind == "screw":
        length = size * rng.uniform(0.25, 0.35)
        width = max(3.0, size * rng.uniform(0.05, 0.065))
        direction = rng.uniform(0, 2 * np.pi)
        d = np.array([np.cos(direction), np.sin(direction)])
        start, end = center - d * length / 2, center + d * length / 2
        cv2.line(layer, _px(start), _px(end), 255, round(width), cv2.LINE_8, 4)
        cv2.circle(layer, _px(start), round(width * 1.2 * 16), 255, -1, cv2.LINE_8, 4)
        metal = rng.uniform(120, 170) + rng.normal(0, 6, 3)
        _paint(image, layer, metal, grain_rng=rng, texture=6.0)
        # Thread: dark notches across the shaft.
        normal = np.array([-d[1], d[0]])
        for t in np.arange(0.25, 1.0, 3.0 / length):
            p = start + d * length * t
            a, b = p - normal * width * 0.7, p + normal * width * 0.7
            cv2.line(image, _px(a), _px(b), (60, 60, 60), 1, cv2.LINE_8, 4)
    else:
        radius = size * rng.uniform(0.07, 0.11)
        n = int(rng.integers(7, 12))
        angles = np.sort(rng.uniform(0, 2 * np.pi, n))
        radii = radius * rng.uniform(0.6, 1.0, n)
        pts = center + np.stack([np.cos(angles), np.sin(angles)], 1) * radii[:, None]
        cv2.fillPoly(layer, [np.round(pts * 16).astype(np.int32)], 255, cv2.LINE_8, 4)
        # Rust flakes or bits of packaging paper: both stand out from the rubber belt.
        dirt = np.array(((35, 85, 165), (175, 200, 215))[rng.integers(2)], np.float32)
        dirt += rng.normal(0, 8, 3)
        _paint(image, layer, dirt, grain_rng=rng, texture=8.0)
    mask[layer > 0] = 255


def _px(point: np.ndarray) -> tuple[int, int]:
    """A float (x, y) as fixed-point ints for OpenCV drawing with shift=4."""
    return round(float(point[0]) * 16), round(float(point[1]) * 16)


def _paint(
    image: np.ndarray,
    layer: np.ndarray,
    color: np.ndarray,
    grain_rng: np.random.Generator,
    texture: float,
) -> None:
    """Fill the pixels of ``layer`` with ``color`` plus a little grain."""
    where = layer > 0
    tex = texture * grain(grain_rng, image.shape[0], 0.8)
    image[where] = np.asarray(color, np.float32)[None, :] + tex[where][:, None]


def _apply_lighting(rng: np.random.Generator, image: np.ndarray) -> None:
    """Mild global gain, a linear gradient and a white-balance shift (in place)."""
    size = image.shape[0]
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size - 0.5
    theta = rng.uniform(0, 2 * np.pi)
    gradient = 1.0 + rng.uniform(-0.1, 0.1) * (xx * np.cos(theta) + yy * np.sin(theta))
    gain = rng.uniform(0.9, 1.1) * (1.0 + rng.normal(0, 0.025, 3))
    image *= gradient[:, :, None] * gain[None, None, :].astype(np.float32)


def _name(index: int, count: int) -> str:
    return f"{index:0{max(3, len(str(count - 1)))}d}"


def generate_capsules(root: Path | str, cfg: CapsulesGen, seed: int) -> dict[str, int]:
    """Write the dataset into ``root`` (MVTec AD layout); returns image counts per folder.

    ``train/good/NNN.png``, ``test/good/NNN.png``, ``test/<defect>/NNN.png`` and
    ``ground_truth/<defect>/NNN_mask.png``. Item i of a folder depends only on (seed, folder, i).
    """
    root = Path(root)
    plan = [("train", "good", cfg.n_train), ("test", "good", cfg.n_test_good)]
    plan += [("test", defect, cfg.n_test_per_defect) for defect in DEFECTS]
    counts: dict[str, int] = {}
    for split, defect, count in plan:
        folder = root / split / defect
        folder.mkdir(parents=True, exist_ok=True)
        if defect != "good":
            (root / "ground_truth" / defect).mkdir(parents=True, exist_ok=True)
        defect_stream = 0 if defect == "good" else 1 + DEFECTS.index(defect)
        for i in range(count):
            rng = item_rng(seed, DATASET_CAPSULES, _SPLIT_STREAM[split], defect_stream, i)
            image, mask = render_capsule_image(rng, cfg.image_size, defect)
            name = _name(i, count)
            write_png(folder / f"{name}.png", image)
            if defect != "good":
                write_png(root / "ground_truth" / defect / f"{name}_mask.png", mask)
        counts[f"{split}/{defect}"] = count
    return counts
