"""Synthetic anomalies, generated on the fly from normal images (DRAEM's anomaly source, with
procedural textures standing in for a texture dataset: nothing is downloaded).

A corrupted sample is ``image * (1 - m) + (beta * image + (1 - beta) * texture) * m``:

- ``m``: a binary mask, Perlin noise (lattice 2**k per axis, k random) thresholded at the
  quantile that leaves a coverage drawn log-uniformly in [min_coverage, max_coverage]; or, for a
  share ``scar_share`` of the anomalies, a scar: a thin band with ragged edges around a random
  polyline (scratches, cracks, frayed edges: the elongated defects a blob does not resemble;
  CutPaste's "scar" augmentation, Li et al. CVPR 2021), at most ``SCAR_MAX_COVERAGE`` of the
  image so that it stays thin;
- ``beta``: the opacity of the original inside the mask, uniform in [0, max_opacity];
- ``texture``: one of Perlin colour noise, stripes, checkers (random period, angle and two
  colours), a homogeneous colour, or a shifted, possibly flipped copy of another normal image.

Every draw comes from ``numpy.random.default_rng([seed, stream, epoch, index])``, so a sample is
the same for the same seed, epoch and item, whatever the order or worker that asks for it.
Pixels outside the mask are never changed. Images are float (H, W, C) in model input space;
procedural textures are drawn in [0, 1] and mapped onto the image's own value range, so z-scored
inputs get textures of their own scale.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

TRAIN_STREAM = 0
VAL_STREAM = 1
SAMPLES_PER_CELL = 16  # Perlin noise is evaluated on this many points per cell and axis
TEXTURES = ("perlin", "stripes", "checkers", "colour", "shifted")
SCAR_MAX_COVERAGE = 0.05  # a scar's area share, at most (its length is 0.3-0.9 of the side)
SCAR_RAGGEDNESS = 2.0  # pixels: how far the band's edge wanders off a constant width


@dataclass(frozen=True)
class AnomalySettings:
    """How anomalies are drawn (the ``DraemConfig`` knobs of the same names)."""

    probability: float = 0.5
    min_coverage: float = 0.005
    max_coverage: float = 0.25
    max_opacity: float = 0.8
    scar_share: float = 0.0


def perlin_noise(rng: np.random.Generator, shape: tuple[int, int], res: tuple[int, int]) -> np.ndarray:
    """2-D gradient (Perlin) noise, float32 (H, W) in about [-0.7, 0.7], on a ``res`` lattice.

    Evaluated at ``SAMPLES_PER_CELL`` points per lattice cell and resized bilinearly to
    ``shape`` (the noise is smooth inside a cell, so this matches the exact evaluation to within
    the interpolation error, at a fraction of the cost for large images).
    """
    height, width = shape
    ry, rx = res
    cy, cx = min(SAMPLES_PER_CELL, max(1, height // ry)), min(SAMPLES_PER_CELL, max(1, width // rx))
    angles = rng.uniform(0, 2 * np.pi, (ry + 1, rx + 1))
    grads = np.stack([np.cos(angles), np.sin(angles)], axis=-1).astype(np.float32)
    fy = ((np.arange(ry * cy) % cy + 0.5) / cy).astype(np.float32)[:, None]  # in-cell position
    fx = ((np.arange(rx * cx) % cx + 0.5) / cx).astype(np.float32)[None, :]
    iy = (np.arange(ry * cy) // cy)[:, None]
    ix = (np.arange(rx * cx) // cx)[None, :]

    def corner(dy: int, dx: int) -> np.ndarray:
        g = grads[iy + dy, ix + dx]
        return g[..., 0] * (fy - dy) + g[..., 1] * (fx - dx)

    def fade(t: np.ndarray) -> np.ndarray:
        return t * t * t * (t * (t * 6 - 15) + 10)

    wy, wx = fade(fy), fade(fx)
    top = corner(0, 0) * (1 - wx) + corner(0, 1) * wx
    bottom = corner(1, 0) * (1 - wx) + corner(1, 1) * wx
    noise = (top * (1 - wy) + bottom * wy).astype(np.float32)
    if noise.shape != (height, width):
        noise = cv2.resize(noise, (width, height), interpolation=cv2.INTER_LINEAR)
    return noise


def fractal_noise(rng: np.random.Generator, shape: tuple[int, int], octaves: int = 3) -> np.ndarray:
    """Sum of Perlin octaves (lattice doubling, amplitude halving), rescaled to [0, 1]."""
    base = int(rng.integers(1, 4))
    total = np.zeros(shape, np.float32)
    for octave in range(octaves):
        res = min(base * 2**octave, max(1, min(shape) // 2))
        total += perlin_noise(rng, shape, (res, res)) / 2**octave
    low, high = float(total.min()), float(total.max())
    return (total - low) / max(high - low, 1e-6)


def anomaly_mask(
    rng: np.random.Generator, shape: tuple[int, int], min_coverage: float, max_coverage: float
) -> np.ndarray:
    """Binary float32 mask (H, W) from thresholded Perlin noise; its area share is within
    [min_coverage, max_coverage] (up to one pixel), drawn log-uniformly."""
    top = max(0, int(math.log2(max(1, min(shape) // 4))))
    res = (2 ** int(rng.integers(0, min(top, 4) + 1)), 2 ** int(rng.integers(0, min(top, 4) + 1)))
    noise = perlin_noise(rng, shape, res)
    return _highest(noise, _coverage_pixels(rng, shape, min_coverage, max_coverage))


def _highest(field: np.ndarray, n_on: int) -> np.ndarray:
    """Binary float32 mask of ``field``'s ``n_on`` highest values (H, W) (ties at the cut all
    count: the fields here are continuous noise, so there are none in practice)."""
    flat = field.ravel()
    cut = np.partition(flat, flat.size - n_on)[flat.size - n_on]  # the n_on-th highest value
    return (field >= cut).astype(np.float32)


def _coverage_pixels(
    rng: np.random.Generator, shape: tuple[int, int], low: float, high: float
) -> int:
    """A pixel count whose share of ``shape`` is drawn log-uniformly in [low, high]."""
    coverage = math.exp(rng.uniform(math.log(low), math.log(high)))
    return int(np.clip(round(coverage * shape[0] * shape[1]), 1, shape[0] * shape[1]))


def scar_mask(
    rng: np.random.Generator, shape: tuple[int, int], min_coverage: float, max_coverage: float
) -> np.ndarray:
    """Binary float32 mask (H, W): the pixels nearest a random polyline (a random walk of 2-5
    segments, 0.3-0.9 of the shorter side long, starting inside the image), their distance
    jittered by Perlin noise so the edges are ragged. Its area share is drawn log-uniformly in
    [min_coverage, min(max_coverage, SCAR_MAX_COVERAGE)] (min_coverage when that is larger)."""
    height, width = shape
    side = min(shape)
    n_on = _coverage_pixels(rng, shape, min_coverage,
                            max(min_coverage, min(max_coverage, SCAR_MAX_COVERAGE)))
    segments = int(rng.integers(2, 6))
    step = rng.uniform(0.3, 0.9) * side / segments
    point = rng.uniform((0, 0), (width - 1, height - 1))
    angle = rng.uniform(0, 2 * np.pi)
    points = [point]
    for _ in range(segments):
        angle += rng.normal(0, 0.5)
        point = point + step * np.array([np.cos(angle), np.sin(angle)])
        points.append(point)
    canvas = np.full(shape, 255, np.uint8)
    cv2.polylines(canvas, [np.round(np.array(points)).astype(np.int32)], False, 0, thickness=1)
    distance = cv2.distanceTransform(canvas, cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    lattice = max(1, side // 8)
    # continuous jitter: also breaks the distance's many ties, so the cut leaves n_on pixels
    field = distance + SCAR_RAGGEDNESS * perlin_noise(rng, shape, (lattice, lattice))
    return _highest(-field, n_on)  # the n_on pixels nearest the line


def _two_colours(rng: np.random.Generator, channels: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.uniform(0, 1, channels).astype(np.float32), rng.uniform(0, 1, channels).astype(np.float32)


def _rotated_coords(rng: np.random.Generator, shape: tuple[int, int]) -> np.ndarray:
    """Pixel coordinates (u, v) along a random pair of axes, each (H, W) float32."""
    theta = rng.uniform(0, np.pi)
    cos, sin = np.float32(np.cos(theta)), np.float32(np.sin(theta))
    yy = np.arange(shape[0], dtype=np.float32)[:, None]
    xx = np.arange(shape[1], dtype=np.float32)[None, :]
    return xx * cos + yy * sin, yy * cos - xx * sin


def procedural_texture(
    rng: np.random.Generator, kind: str, shape: tuple[int, int], channels: int
) -> np.ndarray:
    """A texture float32 (H, W, C) in [0, 1]: ``perlin``, ``stripes``, ``checkers`` or ``colour``."""
    c1, c2 = _two_colours(rng, channels)
    side = min(shape)
    if kind == "colour":
        weight = np.zeros(shape, np.float32)
    elif kind == "perlin":
        weight = fractal_noise(rng, shape)
    elif kind == "stripes":
        u, _ = _rotated_coords(rng, shape)
        period = rng.uniform(3, max(4, side / 4))
        weight = 0.5 + 0.5 * np.sin(2 * np.pi * u / period)
    elif kind == "checkers":
        u, v = _rotated_coords(rng, shape)
        cell = rng.uniform(2, max(3, side / 8))
        weight = ((np.floor(u / cell) + np.floor(v / cell)) % 2).astype(np.float32)
    else:
        raise ValueError(f"unknown texture {kind!r}; expected one of {TEXTURES}")
    return (c1 + (c2 - c1) * weight[..., None]).astype(np.float32)


def shifted_copy(rng: np.random.Generator, other: np.ndarray) -> np.ndarray:
    """Another normal image (H, W, C), rolled by a random offset and maybe flipped."""
    height, width = other.shape[:2]
    out = np.roll(other, (int(rng.integers(height // 4, height - height // 4 + 1)),
                          int(rng.integers(width // 4, width - width // 4 + 1))), axis=(0, 1))
    if rng.random() < 0.5:
        out = out[:, ::-1]
    if rng.random() < 0.5:
        out = out[::-1]
    return np.ascontiguousarray(out, dtype=np.float32)


def corrupt(
    rng: np.random.Generator, image: np.ndarray, other: np.ndarray | None,
    settings: AnomalySettings,
) -> tuple[np.ndarray, np.ndarray]:
    """(corrupted image float32 (H, W, C), mask float32 (H, W)); with probability
    ``1 - settings.probability`` the image comes back unchanged with an empty mask."""
    image = np.asarray(image, np.float32)
    height, width, channels = image.shape
    if rng.random() >= settings.probability:
        return image.copy(), np.zeros((height, width), np.float32)
    # scar_share 0 draws nothing here, so its samples are those of the blob-only generator
    scar = settings.scar_share > 0 and rng.random() < settings.scar_share
    draw_mask = scar_mask if scar else anomaly_mask
    mask = draw_mask(rng, (height, width), settings.min_coverage, settings.max_coverage)
    kinds = TEXTURES if other is not None else TEXTURES[:-1]
    kind = kinds[int(rng.integers(len(kinds)))]
    if kind == "shifted":
        texture = shifted_copy(rng, other)
    else:
        low, high = float(image.min()), float(image.max())
        span = high - low if high - low > 1e-6 else 1.0
        texture = low + span * procedural_texture(rng, kind, (height, width), channels)
    beta = rng.uniform(0, settings.max_opacity)
    m = mask[..., None]
    corrupted = image * (1 - m) + (beta * image + (1 - beta) * texture) * m
    return corrupted.astype(np.float32), mask


class SyntheticAnomalies(Dataset):
    """Wraps a dataset of normal images (C, H, W) tensors; item ``i`` -> one tensor
    (2C + 1, h, w): [corrupted image, clean image, mask] stacked on the channel axis (one
    tensor, so ``fit``'s batch handling is the same as for every family).

    ``epoch`` (set by the training module at each epoch start) varies the draws; ``stream``
    separates train from val draws; ``crop``: random crops of this side (train only).
    """

    def __init__(
        self, images: Dataset, settings: AnomalySettings, seed: int, stream: int = TRAIN_STREAM,
        crop: int | None = None,
    ) -> None:
        self.images = images
        self.settings = settings
        self.seed = seed
        self.stream = stream
        self.crop = crop
        self.epoch = 0

    def __len__(self) -> int:
        return len(self.images)

    def _crop(self, rng: np.random.Generator, image: np.ndarray) -> np.ndarray:
        height, width = image.shape[:2]
        if self.crop is None or (self.crop >= height and self.crop >= width):
            return image
        ch, cw = min(self.crop, height), min(self.crop, width)
        y, x = int(rng.integers(0, height - ch + 1)), int(rng.integers(0, width - cw + 1))
        return image[y : y + ch, x : x + cw]

    def __getitem__(self, i: int) -> torch.Tensor:
        rng = np.random.default_rng([self.seed, self.stream, self.epoch, i])
        image = self._crop(rng, self.images[i].permute(1, 2, 0).numpy())
        other = None
        if len(self.images) > 1:
            j = (i + 1 + int(rng.integers(len(self.images) - 1))) % len(self.images)
            other = self.images[j].permute(1, 2, 0).numpy()
            other = self._crop(rng, other) if other.shape != image.shape else other
            other = other if other.shape == image.shape else None
        corrupted, mask = corrupt(rng, image, other, self.settings)
        packed = np.concatenate([corrupted, image, mask[..., None]], axis=2)
        return torch.from_numpy(np.ascontiguousarray(packed.transpose(2, 0, 1)))


def unpack(batch: torch.Tensor, channels: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """A batch (B, 2C + 1, H, W) of ``SyntheticAnomalies`` -> (corrupted, clean, mask (B, 1, H, W))."""
    return batch[:, :channels], batch[:, channels : 2 * channels], batch[:, 2 * channels :]
