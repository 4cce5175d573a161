"""Error map -> heat map: the post-processing chain shared by evaluation and serving.

Each step is a knob in ``EvaluateConfig`` (params.yaml ``evaluate``):

1. ``mask_predicted_error``: optional (``use_error_head``): subtract the model's own predicted
   error (its 1-filter error head) from the error map and clip at 0, so regions the model always
   reconstructs badly (edges, texture) stop looking anomalous.
2. ``median_blur``: removes isolated hot pixels. ``cv2.medianBlur`` only takes float32 up to
   kernel 5; for larger kernels the map is quantized to uint8 against its own maximum. A median
   commutes with a monotonic map, so the result is exact up to ``max / 510`` per pixel.
3. ``apply_roi``: optional region of interest (x, y, w, h in map pixels); outside is zeroed so
   it can neither raise the image score nor light up the heat map.
4. ``binarize``: pixel threshold, then connected components smaller than ``min_area`` pixels
   are dropped (``cv2.connectedComponentsWithStats``).
5. ``overlay``: JET colormap (blue = low, red = high) blended on the input image; ``Detector``
   draws it at the input's own resolution (``map_to_input``).

The image score is a summary of the smoothed (continuous) map: ``mean``, ``max`` or the mean of
the top ``topk_fraction`` of its pixels (``image_score``). Everything works on batches
(N, H, W) with numpy/OpenCV calls per frame only where OpenCV needs 2-D input.
"""

from __future__ import annotations

import math
from collections import deque

import cv2
import numpy as np
import torch

from vigil.config import EvaluateConfig

Roi = tuple[int, int, int, int]

#: cv2.medianBlur accepts float32 input only for these kernel sizes.
_FLOAT_MEDIAN_KERNELS = (1, 3, 5)
#: Blend weight of the colored heat map over the input image in ``overlay``.
OVERLAY_ALPHA = 0.45


def _as_batch(maps: np.ndarray) -> tuple[np.ndarray, bool]:
    array = np.asarray(maps, dtype=np.float32)
    if array.ndim == 2:
        return array[None], True
    if array.ndim != 3:
        raise ValueError(f"expected an error map (H, W) or a batch (N, H, W), got {array.shape}")
    return array, False


def mask_predicted_error(error: np.ndarray, predicted: np.ndarray) -> np.ndarray:
    """``max(error - predicted, 0)``; both (H, W) or (N, H, W) float32."""
    error = np.asarray(error, dtype=np.float32)
    predicted = np.asarray(predicted, dtype=np.float32)
    if error.shape != predicted.shape:
        raise ValueError(
            f"predicted error shape {predicted.shape} does not match error map {error.shape}"
        )
    return np.maximum(error - predicted, 0.0, dtype=np.float32)


def median_blur(maps: np.ndarray, kernel: int) -> np.ndarray:
    """Median filter each map; (H, W) or (N, H, W) float32 in, same shape float32 out.

    ``kernel`` must be odd. Kernels 1-5 filter the float map directly; larger ones filter a
    uint8 copy scaled to the map's own [0, max] (negative values are clipped to 0 first: error
    maps are non-negative) and scale back. A map holding NaN or inf comes back all NaN, so its
    score is NaN and the metrics reject it naming the split.
    """
    if kernel < 1 or kernel % 2 == 0:
        raise ValueError(f"evaluate.median_blur must be an odd kernel size >= 1, got {kernel}")
    batch, single = _as_batch(maps)
    if kernel == 1:
        out = batch.copy()
    elif kernel in _FLOAT_MEDIAN_KERNELS:
        out = np.stack([cv2.medianBlur(np.ascontiguousarray(m), kernel) for m in batch])
    else:
        out = np.empty_like(batch)
        for i, m in enumerate(batch):
            top = float(m.max())
            if not math.isfinite(top):
                out[i] = np.nan  # a broken map stays visibly broken; metrics name the split
                continue
            if top <= 0.0:
                out[i] = 0.0
                continue
            quantized = cv2.convertScaleAbs(np.maximum(m, 0.0), alpha=255.0 / top)
            out[i] = cv2.medianBlur(quantized, kernel).astype(np.float32) * (top / 255.0)
    return out[0] if single else out


def apply_roi(maps: np.ndarray, roi: Roi | None) -> np.ndarray:
    """Zero everything outside ``roi`` = (x, y, w, h) in map pixels; None returns the input."""
    if roi is None:
        return maps
    x, y, w, h = (int(v) for v in roi)
    height, width = np.asarray(maps).shape[-2:]
    if w <= 0 or h <= 0 or x < 0 or y < 0 or x + w > width or y + h > height:
        raise ValueError(f"roi {roi} (x, y, w, h) does not fit in a {width}x{height} map")
    out = np.zeros_like(maps)
    out[..., y : y + h, x : x + w] = maps[..., y : y + h, x : x + w]
    return out


def smooth_map(
    maps: np.ndarray, cfg: EvaluateConfig, predicted_error: np.ndarray | None = None
) -> np.ndarray:
    """Steps 1-3 of the chain: error maps (H, W) or (N, H, W) -> smoothed maps, float32.

    ``predicted_error`` (same shape) is used only when ``cfg.use_error_head``.
    """
    maps = np.asarray(maps, dtype=np.float32)
    if cfg.use_error_head and predicted_error is not None:
        maps = mask_predicted_error(maps, predicted_error)
    maps = median_blur(maps, cfg.median_blur)
    return apply_roi(maps, cfg.roi)


def image_score(maps: np.ndarray, cfg: EvaluateConfig) -> np.ndarray | float:
    """Summary of each map: (H, W) -> float, (N, H, W) -> float64 (N,).

    ``mean`` and ``max`` as named; ``topk_mean`` averages the ``ceil(topk_fraction * H * W)``
    largest pixels (at least one), which is robust to a single hot pixel yet still sees a small
    defect that a whole-image mean would dilute.
    """
    batch, single = _as_batch(maps)
    flat = batch.reshape(batch.shape[0], math.prod(batch.shape[1:]))  # N may be 0
    if cfg.summary == "mean":
        scores = flat.mean(axis=1, dtype=np.float64)
    elif cfg.summary == "max":
        scores = flat.max(axis=1).astype(np.float64)
    else:
        k = max(1, math.ceil(cfg.topk_fraction * flat.shape[1]))
        # torch.topk, not np.partition: blurred maps are quantized (few distinct values) and
        # numpy's introselect degrades on ties (~10 ms vs ~0.4 ms for a 256x256 map).
        top = torch.from_numpy(np.ascontiguousarray(flat)).topk(k, dim=1, sorted=False).values
        scores = top.double().mean(dim=1).numpy()
    return float(scores[0]) if single else scores


def trailing_mean(raw: np.ndarray, window: int) -> np.ndarray:
    """One clip's raw frame scores (T,), NaN where unscored -> (T,) float64: at each frame the
    mean of the last ``window`` finite scores up to it (NaN before the first). ``Detector.stream``
    computes the same one frame at a time."""
    raw = np.asarray(raw, dtype=np.float64)
    out = np.full(raw.shape, np.nan)
    recent: deque[float] = deque(maxlen=window)
    for t, value in enumerate(raw):
        if math.isfinite(value):
            recent.append(float(value))
        if recent:
            out[t] = sum(recent) / len(recent)
    return out


def binarize(maps: np.ndarray, threshold: float, min_area: int) -> np.ndarray:
    """Pixels >= ``threshold``, minus connected blobs (8-connected) under ``min_area`` pixels.

    (H, W) or (N, H, W) float -> uint8 of the same shape in {0, 1}.
    """
    batch, single = _as_batch(maps)
    masks = (batch >= threshold).astype(np.uint8)
    if min_area > 1:
        for i, mask in enumerate(masks):
            count, labels, stats, _ = cv2.connectedComponentsWithStats(mask, connectivity=8)
            if count <= 1:
                continue
            keep = stats[:, cv2.CC_STAT_AREA] >= min_area
            keep[0] = False  # label 0 is the background
            masks[i] = keep[labels].astype(np.uint8)
    return masks[0] if single else masks


def _two_or_three_dims(image: np.ndarray) -> np.ndarray:
    """A uint8 image as (H, W) gray or (H, W, 3) color; anything else is a ValueError."""
    image = np.asarray(image)
    if image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 image, got {image.dtype}")
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[..., 0]
    if image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3):
        return image
    raise ValueError(f"expected an image (H, W), (H, W, 1) or (H, W, 3), got {image.shape}")


def to_bgr(image: np.ndarray) -> np.ndarray:
    """Prepared frames are RGB (H, W, 3) or gray (H, W, 1) / (H, W): -> uint8 BGR (H, W, 3)."""
    image = _two_or_three_dims(image)
    code = cv2.COLOR_GRAY2BGR if image.ndim == 2 else cv2.COLOR_RGB2BGR
    return cv2.cvtColor(image, code)


def colorize(heat: np.ndarray, vmax: float) -> np.ndarray:
    """Map (H, W) float -> uint8 BGR (H, W, 3) with JET: 0 is blue, ``vmax`` and above red."""
    if not vmax > 0:
        raise ValueError(f"vmax must be > 0, got {vmax}")
    scaled = cv2.convertScaleAbs(np.clip(heat, 0.0, vmax), alpha=255.0 / vmax)
    return cv2.applyColorMap(scaled, cv2.COLORMAP_JET)


def overlay(
    image: np.ndarray, heat: np.ndarray, vmax: float, alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
    """Blend the JET-colored ``heat`` (H, W) over ``image`` uint8 (H, W, C) RGB/gray -> BGR.

    Resizes the map to the image when their sizes differ (a map at model resolution shown on a
    larger input).
    """
    base = to_bgr(image)
    heat = np.asarray(heat, dtype=np.float32)
    if heat.shape != base.shape[:2]:
        heat = cv2.resize(heat, (base.shape[1], base.shape[0]), interpolation=cv2.INTER_LINEAR)
    return overlay_bgr(base, heat, vmax, alpha)


def bgr_input(image: np.ndarray) -> np.ndarray:
    """A decoded input as OpenCV reads it (gray (H, W[, 1]) or BGR (H, W, 3)) -> BGR uint8."""
    image = _two_or_three_dims(image)
    return cv2.cvtColor(image, cv2.COLOR_GRAY2BGR) if image.ndim == 2 else image


def map_to_input(
    anomaly_map: np.ndarray, size: tuple[int, int], roi: Roi | None = None
) -> np.ndarray:
    """A map at model resolution (h, w) -> float32 (H, W) in the input's pixels: resized to the
    whole input, or into ``roi`` = (x, y, w, h) of the input when preprocessing cropped one
    (zero outside it)."""
    height, width = size
    anomaly_map = np.asarray(anomaly_map, dtype=np.float32)
    if roi is None:
        return cv2.resize(anomaly_map, (width, height), interpolation=cv2.INTER_LINEAR)
    x, y, w, h = (int(v) for v in roi)
    w, h = min(w, width - x), min(h, height - y)
    out = np.zeros((height, width), np.float32)
    if w > 0 and h > 0:
        out[y : y + h, x : x + w] = cv2.resize(anomaly_map, (w, h), interpolation=cv2.INTER_LINEAR)
    return out


def overlay_bgr(
    base: np.ndarray, heat: np.ndarray, vmax: float, alpha: float = OVERLAY_ALPHA
) -> np.ndarray:
    """Blend the JET-colored ``heat`` (H, W) over a BGR uint8 image (H, W, 3) of the same size."""
    return cv2.addWeighted(colorize(heat, vmax), alpha, base, 1.0 - alpha, 0.0)
