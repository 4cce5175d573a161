"""Pixel-level metrics of anomaly maps against ground-truth masks: pixel AUROC, the PRO curve
and AUPRO (Bergmann et al.), and the pixel threshold for heat-map masks."""

from __future__ import annotations

import math

import cv2
import numpy as np
from sklearn import metrics as skm

from vigil.evaluation.metrics import MetricsInputError

#: AUPRO integrates the per-region-overlap curve up to this false-positive rate (MVTec AD).
AUPRO_MAX_FPR = 0.3
#: Pixel metrics subsample to at most this many pixels (deterministic stride) to bound memory.
MAX_PIXELS = 4_000_000


def _pixel_arrays(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    masks = np.asarray(masks)
    maps = np.asarray(maps, dtype=np.float32)
    if masks.shape != maps.shape or maps.ndim != 3:
        raise MetricsInputError(
            f"pixel metrics need masks and maps of the same (N, H, W) shape, got {masks.shape} "
            f"and {maps.shape}"
        )
    if not np.isfinite(maps).all():
        raise MetricsInputError("test split: anomaly maps contain NaN or inf values")
    return (masks > 0), maps


def pixel_auroc(masks: np.ndarray, maps: np.ndarray) -> float:
    """ROC AUC over all pixels; masks uint8 (N, H, W) {0,1}, maps float (N, H, W).

    Images with more than ``MAX_PIXELS`` pixels in total are subsampled with a fixed stride.
    """
    truth, maps = _pixel_arrays(masks, maps)
    y, s = truth.ravel(), maps.ravel()
    if y.size > MAX_PIXELS:
        step = math.ceil(y.size / MAX_PIXELS)
        y, s = y[::step], s[::step]
    if y.all() or not y.any():
        raise MetricsInputError("test split: pixel AUROC needs both anomalous and normal pixels")
    return float(skm.roc_auc_score(y, s))


def pro_curve(masks: np.ndarray, maps: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Exact per-region-overlap curve: (fpr, pro), one point per distinct map value, ascending fpr.

    PRO(t) = mean over ground-truth regions (8-connected components of each mask) of the
    fraction of the region's pixels with ``map >= t``; FPR(t) = fraction of normal pixels with
    ``map >= t``. Sorting all pixels once by value and cumulating per-pixel weights
    (1 / (n_regions * region area) inside regions, 1 / n_normal outside) gives both curves at
    every threshold without a threshold loop.
    """
    truth, maps = _pixel_arrays(masks, maps)
    region_weight = np.zeros(maps.shape, dtype=np.float64)
    n_regions = 0
    for i, mask in enumerate(truth):
        if not mask.any():
            continue
        count, labels, stats, _ = cv2.connectedComponentsWithStats(
            mask.astype(np.uint8), connectivity=8
        )
        areas = stats[:, cv2.CC_STAT_AREA].astype(np.float64)
        inverse = np.zeros(count)
        inverse[1:] = 1.0 / areas[1:]
        region_weight[i] = inverse[labels]
        n_regions += count - 1
    n_normal = int((~truth).sum())
    if n_regions == 0 or n_normal == 0:
        raise MetricsInputError("test split: AUPRO needs anomalous regions and normal pixels")
    values = maps.ravel()
    order = np.argsort(-values, kind="stable")
    values = values[order]
    pro = np.cumsum(region_weight.ravel()[order]) / n_regions
    fpr = np.cumsum((~truth).ravel()[order]) / n_normal
    last_of_tie = np.r_[np.flatnonzero(np.diff(values) != 0), values.size - 1]
    return np.r_[0.0, fpr[last_of_tie]], np.r_[0.0, pro[last_of_tie]]


def aupro(masks: np.ndarray, maps: np.ndarray, max_fpr: float = AUPRO_MAX_FPR) -> float:
    """Area under the PRO curve for FPR in [0, ``max_fpr``], divided by ``max_fpr`` (0..1)."""
    fpr, pro = pro_curve(masks, maps)
    end = np.interp(max_fpr, fpr, pro)
    keep = fpr <= max_fpr
    x = np.r_[fpr[keep], max_fpr]
    y = np.r_[pro[keep], end]
    return float(np.trapezoid(y, x) / max_fpr)


def pixel_threshold(normal_maps: np.ndarray, quantile: float) -> float:
    """``quantile`` of all pixels of normal (validation) maps: the heat-map mask threshold."""
    values = np.asarray(normal_maps, dtype=np.float32).ravel()
    if values.size == 0:
        raise MetricsInputError("val split: no normal maps to set the pixel threshold from")
    if not np.isfinite(values).all():
        raise MetricsInputError("val split: anomaly maps contain NaN or inf values")
    if values.size > MAX_PIXELS:
        values = values[:: math.ceil(values.size / MAX_PIXELS)]
    return float(np.quantile(values, quantile))


# --- video -----------------------------------------------------------------------------------
