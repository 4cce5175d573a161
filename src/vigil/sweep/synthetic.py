"""Synthetic evidence for a normal-only image dataset: anomalies pasted into the val images.

When no labelled anomaly exists (a line's usual start: ``train/good`` and nothing else), the
sweep's objective and evaluate's ``synthetic_*`` metrics are measured on the val images (normal,
never trained on) and on a copy of each into which one synthetic anomaly was pasted by the DRAEM
family's generator (``vigil.models.draem.anomalies``: a Perlin-noise mask, a procedural texture
or a shifted copy of another val image, a random opacity). Pixels outside the mask are untouched.

Reproducible: image ``i``'s anomaly is drawn from ``default_rng([seed, SYNTHETIC_STREAM, 0, i])``
with the prepared data's split seed (``manifest.params.split.seed``), so the same prepared data
gives the same synthetic set in the sweep, in evaluate and on any machine.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from vigil.data.prepared import PreparedDataset
from vigil.models.draem.anomalies import AnomalySettings, corrupt

SYNTHETIC_STREAM = 7  # separates these draws from the family's train (0) and val (1) streams
#: Every val copy gets an anomaly; coverage and opacity as the family's defaults.
SETTINGS = AnomalySettings(probability=1.0)

EVIDENCE_LABELLED = "labelled"
EVIDENCE_SYNTHETIC = "synthetic"
EVIDENCE_NONE = "none"


@dataclass(frozen=True)
class SyntheticSet:
    """The val images, then one corrupted copy of each (row ``n + i`` is image ``i`` corrupted)."""

    frames: np.ndarray  # uint8 (2N, H, W, C)
    masks: np.ndarray  # bool (2N, H, W): the pasted region, all False on the clean half
    labels: np.ndarray  # int64 (2N,): 0 for the clean half, 1 for the corrupted half

    def __len__(self) -> int:
        return int(self.labels.size)


def split_seed(data: PreparedDataset) -> int:
    """The prepared data's split seed (``manifest.params.split.seed``; 0 when absent)."""
    return int(((data.manifest.get("params") or {}).get("split") or {}).get("seed", 0))


def synthetic_val(data: PreparedDataset, seed: int | None = None) -> SyntheticSet:
    """The synthetic set of ``data``'s val split (an image dataset); ``seed`` defaults to the
    split seed. Raises ValueError when the dataset is not an image dataset or val is empty."""
    if data.modality != "image":
        raise ValueError(f"{data.root}: synthetic anomalies are for image datasets only")
    rows = data.indices("val")
    if rows.size == 0:
        raise ValueError(f"{data.root}: the val split is empty: no images to paste anomalies into")
    seed = split_seed(data) if seed is None else int(seed)
    clean = np.asarray(data.frames[rows])  # (N, H, W, C) uint8
    n, height, width = clean.shape[:3]
    corrupted = np.empty_like(clean)
    masks = np.zeros((2 * n, height, width), dtype=bool)
    for i in range(n):
        rng = np.random.default_rng([seed, SYNTHETIC_STREAM, 0, i])
        other = clean[(i + 1) % n].astype(np.float32) if n > 1 else None
        image, mask = corrupt(rng, clean[i].astype(np.float32), other, SETTINGS)
        corrupted[i] = np.clip(np.rint(image), 0, 255).astype(np.uint8)
        masks[n + i] = mask > 0
    frames = np.concatenate([clean, corrupted])
    labels = np.r_[np.zeros(n, np.int64), np.ones(n, np.int64)]
    return SyntheticSet(frames=frames, masks=masks, labels=labels)
