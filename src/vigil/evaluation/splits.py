"""Scoring the prepared splits with the detector: one ``SplitScores`` per split.

Video clips are scored frame by frame through ``Detector.score_clips`` (the same step and moving
average as a live stream); frames the family cannot score yet (a clip's first frame for a
next-frame predictor) have no score and are left out of the metrics (``scored``).
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np
from sklearn.metrics import roc_auc_score

from vigil.data.prepared import PreparedDataset
from vigil.detector import Detector
from vigil.evaluation import pixel_metrics as PM


@dataclass(frozen=True)
class SplitScores:
    """Scores of one split, aligned row by row (video: clips concatenated in time order)."""

    split: str
    rows: np.ndarray  # (N,) row indices into the prepared arrays
    labels: np.ndarray  # (N,) 0/1
    defects: list[str]
    scores: np.ndarray  # (N,) float64; NaN where unscored
    raw: np.ndarray  # (N,) float64 unsmoothed (== scores for images)
    maps: np.ndarray  # (N, H, W) float32
    scored: np.ndarray  # (N,) bool: the detector gave this item a score
    clips: list[tuple[str, int, int]] = field(default_factory=list)  # (name, start, stop)


def score_split(detector: Detector, data: PreparedDataset, split: str) -> SplitScores:
    """Score every item of ``split``; video clips frame by frame with carried state."""
    labels_by_row = np.array([it.label for it in data.items], dtype=np.int64)
    defects_by_row = [it.defect for it in data.items]
    clips: list[tuple[str, int, int]] = []
    if data.modality == "video":
        groups = data.videos(split)
        rows = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
        parts = detector.score_clips([np.asarray(data.frames[g]) for g in groups])
        start = 0
        for group in groups:
            clips.append((str(data.items[int(group[0])].video), start, start + len(group)))
            start += len(group)
        h, w = data.size
        raw = np.concatenate([p.raw for p in parts]) if parts else np.zeros(0)
        scores = np.concatenate([p.scores for p in parts]) if parts else np.zeros(0)
        maps = np.concatenate([p.maps for p in parts]) if parts else np.zeros((0, h, w), np.float32)
        valid = np.concatenate([p.valid for p in parts]) if parts else np.zeros(0, bool)
    else:
        rows = data.indices(split)
        scored = detector.score_prepared(np.asarray(data.frames[rows]))
        raw, scores, maps, valid = scored.raw, scored.scores, scored.maps, scored.valid
    return SplitScores(
        split=split,
        rows=rows,
        labels=labels_by_row[rows],
        defects=[defects_by_row[r] for r in rows],
        scores=scores,
        raw=raw,
        maps=maps,
        scored=valid,
        clips=clips,
    )


def split_auroc(split: SplitScores) -> float | None:
    """AUROC of the split's finite scores of scored items; None unless both classes are there."""
    ok = split.scored & np.isfinite(split.scores)
    labels = split.labels[ok]
    if labels.size == 0 or labels.min() == labels.max():
        return None
    return float(roc_auc_score(labels, split.scores[ok]))


def pixel_metrics(data: PreparedDataset, split: SplitScores) -> dict[str, float]:
    """Pixel AUROC and AUPRO of the split's maps over its items that are normal or carry a
    mask; empty when no scored anomaly has a mask."""
    has_mask = np.array([data.items[int(r)].has_mask for r in split.rows], dtype=bool)
    keep = split.scored & ((split.labels == 0) | has_mask)
    if not (has_mask & (split.labels == 1) & split.scored).any():
        return {}
    masks = np.asarray(data.masks[split.rows[keep]])
    if not masks.any():
        return {}
    maps = split.maps[keep]
    return {"pixel_auroc": PM.pixel_auroc(masks, maps), "aupro": PM.aupro(masks, maps)}


def hash_test_split(data: PreparedDataset) -> str:
    """sha256 over the test items' content hashes and labels, in row order.

    Unlike ``data.content_hash`` (every prepared item and the params), it changes only when the
    test split itself does, so new normal training data keeps champion comparisons possible.
    """
    digest = hashlib.sha256()
    for row in data.indices("test"):
        item = data.items[int(row)]
        digest.update(f"{item.sha256}\0{item.label}\n".encode())
    return digest.hexdigest()
