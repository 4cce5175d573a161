"""The sweep objective on the tune split (never test): anomaly-to-total error ratio.

Images: mean per-pixel error inside the anomaly masks / mean per-pixel error over every tune
image. A normal-only image dataset (no anomaly masks in tune) is measured the same way on
synthetic evidence instead: the val images and a copy of each with a pasted synthetic anomaly
(``vigil.sweep.synthetic``); ``TuneErrors.evidence`` says which (``labelled`` / ``synthetic``). Video: mean frame error on anomalous tune frames / the balanced mean of the normal (val
and tune) and anomalous frame errors (frames a family cannot score yet are skipped).

Degenerate optimum: a model that reconstructs nothing has a ratio near 1, and so does a perfect
copier, but a weak model can still score a high ratio while failing on normal data. The guard:
when the mean error on the NORMAL tune items exceeds ``sweep.max_normal_error`` the trial is
infeasible; its objective is ``0.0`` (below every feasible ratio, which is > 0), so samplers steer
away from it and it can never be chosen over a feasible trial. The raw ratio is still reported.
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from vigil.config import EvaluateConfig
from vigil.data.prepared import PreparedDataset
from vigil.data.preprocess import to_tensor
from vigil.detector import Detector, DetectorRecord
from vigil.models.spec import model_spec
from vigil.sweep.synthetic import EVIDENCE_LABELLED, EVIDENCE_SYNTHETIC, synthetic_val

INFEASIBLE_OBJECTIVE = 0.0
log = logging.getLogger(__name__)


class NoAnomaliesError(ValueError):
    """The tune split holds no labelled anomaly, so the ratio cannot be computed."""


@dataclass(frozen=True)
class TuneErrors:
    total_error: float  # mean error over all tune pixels (images) or scored frames (video)
    anomaly_error: float  # mean error inside anomaly masks (images) / on anomalous frames (video)
    normal_error: float  # mean error over normal tune items
    ratio: float  # anomaly_error / total_error
    feasible: bool  # normal_error <= max_normal_error
    objective: float  # ratio when feasible, else INFEASIBLE_OBJECTIVE
    evidence: str = EVIDENCE_LABELLED  # labelled tune anomalies, or synthetic ones in val

    def as_dict(self) -> dict[str, float | bool]:
        return asdict(self)


def _no_anomalies(data: PreparedDataset, what: str) -> NoAnomaliesError:
    if data.modality == "image":
        how = (
            "put defect images under test/<defect>/ of the source folder with masks in "
            "ground_truth/<defect>/<name>_mask.png (MVTec layout), then rerun `prepare`"
        )
    else:
        how = (
            "give data.datasets.<name>.labels_csv (a frame_labels.csv with video,frame_file,"
            "label columns, label 1 on anomalous frames) for clips that hold anomalies, then "
            "rerun `prepare`"
        )
    return NoAnomaliesError(
        f"{data.root}: the tune split has no {what}; the sweep's anomaly-to-total error ratio "
        f"needs labelled anomalies in it: {how} (prepare.split.tune_fraction sets the share of "
        "labelled items that go to tune)"
    )


def _ratio(anomaly: float, total: float) -> float:
    return anomaly / total if total > 0 else 0.0


def _finish(
    total: float, anomaly: float, normal: float, max_normal_error: float,
    evidence: str = EVIDENCE_LABELLED,
) -> TuneErrors:
    ratio = _ratio(anomaly, total)
    feasible = bool(np.isfinite(normal) and normal <= max_normal_error and np.isfinite(ratio))
    objective = ratio if feasible else INFEASIBLE_OBJECTIVE
    return TuneErrors(total, anomaly, normal, ratio, feasible, float(objective), evidence)


def _has_tune_masks(data: PreparedDataset) -> bool:
    rows = data.indices("tune")
    return bool(rows.size) and bool(np.asarray(data.masks[rows]).any())


def raw_detector(model: nn.Module, data: PreparedDataset, family: str) -> Detector:
    """An uncalibrated detector over ``model`` (a ``family`` network) that reports raw maps: no
    blur, no ROI, the frame score is the map's mean (what the ratio is defined on)."""
    spec = model_spec(family, data.channels, data.size, model.cfg, prep=data.prep)
    raw = EvaluateConfig(score="mean", median_blur=1, use_error_head=False, roi=None)
    return Detector(model, DetectorRecord(spec=spec, postprocess=raw))


def image_errors(
    model: nn.Module, data: PreparedDataset, family: str, max_normal_error: float
) -> TuneErrors:
    """Per-pixel error maps of the tune images -> TuneErrors; without anomaly masks in tune, of
    the synthetic set made from the val images (``evidence`` synthetic)."""
    evidence = EVIDENCE_LABELLED
    if _has_tune_masks(data):
        rows = data.indices("tune")
        labels, frames = data.labels("tune"), np.asarray(data.frames[rows])
        masks = np.asarray(data.masks[rows], dtype=bool)  # (N, H, W)
    elif len(data.indices("val")):
        synthetic = synthetic_val(data)
        frames, masks, labels = synthetic.frames, synthetic.masks, synthetic.labels
        evidence = EVIDENCE_SYNTHETIC
    else:
        raise _no_anomalies(data, "anomaly masks (anomalous images with ground-truth masks)")
    error = raw_detector(model, data, family).score_prepared(frames).maps
    error = error.astype(np.float64)
    normal = _image_reconstruction_mse(model, data, frames[labels == 0])
    return _finish(
        float(error.mean()), float(error[masks].mean()), float(normal), max_normal_error, evidence
    )


def video_errors(
    model: nn.Module, data: PreparedDataset, family: str, max_normal_error: float
) -> TuneErrors:
    """Per-frame errors, stepped as a stream (unscored frames, e.g. a clip's first, skipped).

    Anomalous frames come from the tune clips; normal frames from the val clips (normal by
    construction) and the tune clips. "Total" is the balanced mean of the normal and anomalous
    means, so the ratio separates configurations however anomalous the tune split is (on real
    footage 88 % of tune frames were anomalous, which pinned a plain pooled ratio near 1).
    """
    label_of = {it.index: it.label for it in data.items}
    tune = [rows for rows in data.videos("tune") if len(rows) >= 2]
    if not any(label_of[int(r)] for rows in tune for r in rows[1:]):
        raise _no_anomalies(data, "anomalous frames")
    clips = tune + [rows for rows in data.videos("val") if len(rows) >= 2]
    parts = raw_detector(model, data, family).score_clips([np.asarray(data.frames[r]) for r in clips])
    err = np.concatenate([p.raw[p.valid] for p in parts]).astype(np.float64)
    lab = np.concatenate([
        np.array([label_of[int(r)] for r in rows])[p.valid] for rows, p in zip(clips, parts)
    ])
    normal_maps = float(err[lab == 0].mean()) if (lab == 0).any() else np.nan
    anomaly = float(err[lab == 1].mean())
    total = 0.5 * (normal_maps + anomaly) if np.isfinite(normal_maps) else anomaly
    normal = _video_reconstruction_mse(model, data, clips, label_of)
    return _finish(total, anomaly, normal, max_normal_error)


def tune_errors(
    model: nn.Module, data: PreparedDataset, family: str, max_normal_error: float
) -> TuneErrors:
    """The objective's errors of ``model`` (a network of ``family``) on the tune split; the
    network's train/eval mode is restored (the pruning callback scores a model in training)."""
    if len(data.indices("tune")) == 0 and data.modality != "image":
        raise _no_anomalies(data, "items at all")
    was_training = model.training
    try:
        if data.modality == "image":
            return image_errors(model, data, family, max_normal_error)
        return video_errors(model, data, family, max_normal_error)
    finally:
        model.train(was_training)


def check_tune_split(data: PreparedDataset) -> str:
    """Fail before any training when neither the tune split nor (images) synthetic anomalies in
    val can give a ratio; returns the evidence the objective will use, and logs it."""
    rows = data.indices("tune")
    if data.modality == "image":
        if _has_tune_masks(data):
            evidence = EVIDENCE_LABELLED
            log.info("sweep objective: labelled anomalies in %d tune images", len(rows))
        elif len(data.indices("val")):
            evidence = EVIDENCE_SYNTHETIC
            log.warning(
                "sweep objective on synthetic evidence: no anomaly masks in the tune split, so "
                "the ratio is measured on %d val images and a copy of each with a pasted "
                "synthetic anomaly", len(data.indices("val")),
            )
        else:
            raise _no_anomalies(data, "anomaly masks (anomalous images with ground-truth masks)")
        return evidence
    if len(rows) == 0:
        raise _no_anomalies(data, "items at all")
    if not data.labels("tune").any():
        raise _no_anomalies(data, "anomalous frames")
    return EVIDENCE_LABELLED


# The feasibility guard (``sweep.max_normal_error``) is about how well the network reconstructs or
# predicts normal data, in the input's units: a family's anomaly map may be in other units (a
# segmentation probability, prediction error fused with appearance error scaled to 1 on normal
# val), so the guard reads the network's ``reconstruction`` against its input, not the map.


@torch.inference_mode()
def _image_reconstruction_mse(model: nn.Module, data: PreparedDataset, frames: np.ndarray) -> float:
    """Mean squared error of the reconstructions of normal frames uint8 (N, H, W, C), NaN if none."""
    if not len(frames):
        return float("nan")
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for start in range(0, len(frames), 32):
        x = to_tensor(np.asarray(frames[start : start + 32]), data.prep).to(device)
        total += float((model(x).reconstruction - x).pow(2).mean()) * len(x)
        count += len(x)
    return total / count


@torch.inference_mode()
def _video_reconstruction_mse(
    model: nn.Module, data: PreparedDataset, clips: list[np.ndarray], label_of: dict[int, int]
) -> float:
    """Mean squared prediction error on normal frames of ``clips``, stepped as a stream."""
    device = next(model.parameters()).device
    total, count = 0.0, 0
    for rows in clips:
        state = None
        for row in rows:
            x = to_tensor(np.asarray(data.frames[[row]]), data.prep).to(device)
            output, state = model.stream(x, state)
            if output is not None and label_of[int(row)] == 0:
                total += float((output.reconstruction - x).pow(2).mean())
                count += 1
    return total / count if count else float("nan")
