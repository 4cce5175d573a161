"""The sweep objective on the tune split (never test): anomaly-to-total error ratio.

Images: mean per-pixel error inside the anomaly masks / mean per-pixel error over every tune
image. Video: mean frame error on anomalous frames / mean frame error over all scored frames
(the first frame of each clip has no prediction and is skipped).

Degenerate optimum: a model that reconstructs nothing has a ratio near 1, and so does a perfect
copier, but a weak model can still score a high ratio while failing on normal data. The guard:
when the mean error on the NORMAL tune items exceeds ``sweep.max_normal_error`` the trial is
infeasible; its objective is ``0.0`` (below every feasible ratio, which is > 0), so samplers steer
away from it and it can never be chosen over a feasible trial. The raw ratio is still reported.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import nn

from vigil.config import ImagePrep
from vigil.data.prepared import PreparedDataset
from vigil.data.preprocess import to_tensor

INFEASIBLE_OBJECTIVE = 0.0


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


def _finish(total: float, anomaly: float, normal: float, max_normal_error: float) -> TuneErrors:
    ratio = _ratio(anomaly, total)
    feasible = bool(np.isfinite(normal) and normal <= max_normal_error and np.isfinite(ratio))
    objective = ratio if feasible else INFEASIBLE_OBJECTIVE
    return TuneErrors(total, anomaly, normal, ratio, feasible, float(objective))


@torch.inference_mode()
def image_errors(
    model: nn.Module,
    data: PreparedDataset,
    prep: ImagePrep,
    max_normal_error: float,
    batch_size: int = 32,
) -> TuneErrors:
    """Per-pixel error maps (B, 1, H, W) of the tune images -> TuneErrors."""
    rows = data.indices("tune")
    labels = data.labels("tune")
    masks = np.asarray(data.masks[rows], dtype=bool)  # (N, H, W)
    if not masks.any():
        raise _no_anomalies(data, "anomaly masks (anomalous images with ground-truth masks)")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    maps = []
    for start in range(0, len(rows), batch_size):
        x = to_tensor(np.asarray(data.frames[rows[start : start + batch_size]]), prep).to(device)
        maps.append(model(x).error_map[:, 0].float().cpu().numpy())
    model.train(was_training)
    error = np.concatenate(maps).astype(np.float64)  # (N, H, W)
    normal = error[labels == 0].mean() if (labels == 0).any() else np.nan
    return _finish(float(error.mean()), float(error[masks].mean()), float(normal), max_normal_error)


@torch.inference_mode()
def video_errors(
    model: nn.Module, data: PreparedDataset, prep: ImagePrep, max_normal_error: float
) -> TuneErrors:
    """Per-frame prediction errors of the tune clips (each clip one (1, T, C, H, W) pass)."""
    label_of = {it.index: it.label for it in data.items}
    clips = [rows for rows in data.videos("tune") if len(rows) >= 2]
    if not any(label_of[int(r)] for rows in clips for r in rows[1:]):
        raise _no_anomalies(data, "anomalous frames")
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    errors, labels = [], []
    for rows in clips:
        clip = to_tensor(np.asarray(data.frames[rows]), prep).unsqueeze(0).to(device)
        error_map = model(clip).error_map  # (1, T-1, 1, H, W) for frames 1..T-1
        errors.append(error_map.flatten(2).mean(dim=2)[0].float().cpu().numpy())
        labels.append(np.array([label_of[int(r)] for r in rows[1:]]))
    model.train(was_training)
    err = np.concatenate(errors).astype(np.float64)
    lab = np.concatenate(labels)
    normal = err[lab == 0].mean() if (lab == 0).any() else np.nan
    return _finish(float(err.mean()), float(err[lab == 1].mean()), float(normal), max_normal_error)


def tune_errors(
    model: nn.Module, data: PreparedDataset, prep: ImagePrep, max_normal_error: float
) -> TuneErrors:
    """The objective's errors for ``data.modality`` on the tune split."""
    if len(data.indices("tune")) == 0:
        raise _no_anomalies(data, "items at all")
    if data.modality == "image":
        return image_errors(model, data, prep, max_normal_error)
    return video_errors(model, data, prep, max_normal_error)


def check_tune_split(data: PreparedDataset) -> None:
    """Fail before any training when the tune split cannot give a ratio."""
    rows = data.indices("tune")
    if len(rows) == 0:
        raise _no_anomalies(data, "items at all")
    if data.modality == "image":
        if not np.asarray(data.masks[rows]).any():
            raise _no_anomalies(data, "anomaly masks (anomalous images with ground-truth masks)")
    elif not data.labels("tune").any():
        raise _no_anomalies(data, "anomalous frames")
