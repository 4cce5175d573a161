"""What the evaluate stage writes besides metrics: plot data (CSV) and report figures.

The report's false-alarm and escape examples show each image item on the input it was prepared
from, at that input's resolution (``source_image``: the manifest's ``source`` / ``origin``, its
bytes checked against the recorded sha256), overlaid as serving overlays a decoded input
(``Detector.overlay``); inputs longer than ``REPORT_MAX_SIDE`` are shown downscaled. Video
frames, and images whose source is gone or changed, are shown as the prepared frame, and their
caption says so.
"""

from __future__ import annotations

import csv
import hashlib
import io
import json
import math
from pathlib import Path
from typing import Any

import cv2
import numpy as np

from vigil.atomic import atomic_write_text
from vigil.data.decode import ImageDecodeError, decode_image
from vigil.data.prepared import Item, PreparedDataset
from vigil.detector import Detector
from vigil.detector.postprocess import binarize, map_to_input
from vigil.evaluation import metrics as M
from vigil.evaluation import plots
from vigil.evaluation.splits import SplitScores

PLOTS_DIR = "plots"
REPORT_MAX_SIDE = 512  # px: the longer side of an example input shown in report.html


def write_json(path: Path, data: Any) -> Path:
    return atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def write_csv(path: Path, columns: dict[str, Any]) -> Path:
    """Columns of equal length -> CSV with a header (floats with 6 significant digits)."""
    names = list(columns)
    cols = [list(columns[n]) for n in names]
    lengths = {len(c) for c in cols}
    if len(lengths) > 1:
        raise ValueError(f"{path}: columns of unequal length {dict(zip(names, map(len, cols)))}")

    def cell(v: Any) -> Any:
        if isinstance(v, (float, np.floating)):
            return "" if not math.isfinite(float(v)) else f"{float(v):.6g}"
        return v.item() if isinstance(v, np.generic) else v

    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(names)
    writer.writerows(zip(*([cell(v) for v in c] for c in cols)))
    return atomic_write_text(path, buffer.getvalue())


def finite_metrics(values: dict[str, Any]) -> dict[str, float]:
    """Numbers only (bools as 0/1), NaN/inf/None dropped: what metrics.json and MLflow take."""
    out: dict[str, float] = {}
    for key, value in values.items():
        if isinstance(value, bool):
            out[key] = int(value)
        elif isinstance(value, (int, float, np.integer, np.floating)) and math.isfinite(value):
            out[key] = value.item() if isinstance(value, np.generic) else value
    return out


def write_plot_data(out_dir: Path, test: SplitScores, threshold: float) -> dict[str, Path]:
    ok = test.scored
    labels, scores = test.labels[ok], test.scores[ok]
    pr = M.pr_curve(labels, scores)
    roc = M.roc_curve(labels, scores)
    roc_thresholds = np.where(np.isfinite(roc["thresholds"]), roc["thresholds"], np.nan)
    plots_dir = out_dir / PLOTS_DIR
    paths = {
        "pr": write_csv(plots_dir / "pr.csv", {
            "recall": pr["recall"], "precision": pr["precision"],
            "threshold": np.r_[pr["thresholds"], np.nan],
        }),
        "roc": write_csv(plots_dir / "roc.csv", {
            "fpr": roc["fpr"], "tpr": roc["tpr"], "threshold": roc_thresholds,
        }),
        "scores": write_csv(plots_dir / "scores.csv", {
            "row": test.rows, "defect": test.defects, "label": test.labels,
            "score": test.scores,
        }),
    }
    if test.clips:
        names, frames = [], []
        for name, a, b in test.clips:
            names += [name] * (b - a)
            frames += list(range(b - a))
        paths["timeline"] = write_csv(plots_dir / "timeline.csv", {
            "step": np.arange(len(frames)), "clip": names, "frame": frames,
            "score": test.scores, "raw_score": test.raw,
            "label": test.labels, "threshold": np.full(len(frames), threshold),
        })
    return paths


def source_image(
    data: PreparedDataset, item: Item, base_dir: Path = Path(".")
) -> np.ndarray | None:
    """The decoded input an image item was prepared from: uint8 gray (H, W) or BGR (H, W, 3) at
    its own resolution; a relative manifest ``source`` is taken from ``base_dir`` (the params
    file's folder, as prepare took it). None for a video frame, or when the file is no longer
    at ``source`` / ``origin`` or its bytes changed since prepare (sha256)."""
    if item.video is not None:
        return None
    path = Path(item.origin)
    if not path.is_absolute():
        path = Path(base_dir) / data.manifest["source"] / path
    try:
        raw = path.read_bytes()
    except OSError:
        return None
    if hashlib.sha256(raw).hexdigest() != item.sha256:
        return None
    try:
        return decode_image(raw, name=str(path))
    except ImageDecodeError:
        return None


def bounded(image: np.ndarray, max_side: int = REPORT_MAX_SIDE) -> np.ndarray:
    """``image`` (H, W[, C]) downscaled (area-averaged) so its longer side is at most
    ``max_side``; unchanged when it already is."""
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return cv2.resize(image, size, interpolation=cv2.INTER_AREA)


def _example_panel(
    data: PreparedDataset, test: SplitScores, i: int, detector: Detector, base_dir: Path
) -> dict:
    """The plot_examples panel of test row ``i``: on the source input when it can be read
    (maps placed as serving places them: resized into the input, or into ``prep.roi``), else on
    the prepared frame."""
    row = int(test.rows[i])
    item = data.items[row]
    where = f"{item.video} frame {item.frame}" if item.video else Path(item.origin).name
    caption = f"{item.defect} · {where} · score {test.scores[i]:.4g}"
    pixel_thr = detector.record.pixel_threshold or 0.0
    pred = binarize(test.maps[i], pixel_thr, detector.postprocess.min_area)
    mask = np.asarray(data.masks[row]) if item.has_mask else None
    source = source_image(data, item, base_dir)
    if source is None:
        frame = np.asarray(data.frames[row])
        return {"image": frame, "overlay": detector.overlay(test.maps[i], frame=frame),
                "pred_mask": pred, "mask": mask, "caption": f"{caption} · prepared frame"}
    height, width = source.shape[:2]

    def placed(small: np.ndarray) -> np.ndarray:  # (h, w) {0, 1} -> float32, shown size
        return bounded(map_to_input(small.astype(np.float32), (height, width), detector.prep.roi))

    image = bounded(source)
    shown = "" if image.shape[:2] == (height, width) else (
        f", shown at {image.shape[1]}x{image.shape[0]}")
    return {
        "image": image if image.ndim == 2 else image[..., ::-1],  # BGR -> RGB
        "overlay": bounded(detector.overlay(test.maps[i], source)),
        "pred_mask": placed(pred),
        "mask": None if mask is None else placed(mask),
        "caption": f"{caption} · {width}x{height} input{shown}",
    }


def example_panels(
    data: PreparedDataset,
    test: SplitScores,
    order: np.ndarray,
    detector: Detector,
    base_dir: Path = Path("."),
) -> list[dict]:
    """plot_examples panels of the test rows ``order`` (indices into ``test``); ``base_dir``:
    see ``source_image``."""
    return [_example_panel(data, test, int(i), detector, base_dir) for i in order]


def draw_figures(
    data: PreparedDataset, test: SplitScores, metrics: dict[str, Any],
    calibration: M.Calibration, detector: Detector, fig_dir: Path, base_dir: Path = Path("."),
) -> dict[str, Path]:
    """All report figures; returns {title: png path}. ``base_dir``: where relative dataset
    sources are (the params file's folder), for the examples' inputs."""
    ok = test.scored
    labels, scores = test.labels[ok], test.scores[ok]
    pr = M.pr_curve(labels, scores)
    roc = M.roc_curve(labels, scores)
    auroc = metrics.get("image_auroc", metrics.get("frame_auroc"))
    unit = "frames" if data.modality == "video" else "images"
    figures = {}
    if test.clips:
        clips = [{"name": n, "scores": test.scores[a:b], "raw": test.raw[a:b],
                  "labels": test.labels[a:b]} for n, a, b in test.clips]
        figures["Score over time (test clips)"] = plots.plot_timeline(
            clips, calibration.threshold, fig_dir / "timeline.png")
    figures["Precision-recall curve"] = plots.plot_pr(
        pr["precision"], pr["recall"], fig_dir / "pr_curve.png", calibration.target_precision,
        (metrics["recall_at_threshold"], metrics["precision_at_threshold"]))
    figures["ROC curve"] = plots.plot_roc(roc["fpr"], roc["tpr"], auroc, fig_dir / "roc_curve.png")
    figures["Score histograms per defect type"] = plots.plot_score_histograms(
        test.scores, test.defects, calibration.threshold, fig_dir / "score_hist.png")
    n = detector.postprocess.n_report_examples
    if n:
        thr = calibration.threshold
        valid = np.flatnonzero(ok)
        alarms = valid[(test.labels[valid] == 0) & (test.scores[valid] >= thr)]
        escapes = valid[(test.labels[valid] == 1) & (test.scores[valid] < thr)]
        worst_alarms = alarms[np.argsort(-test.scores[alarms], kind="stable")][:n]
        worst_escapes = escapes[np.argsort(test.scores[escapes], kind="stable")][:n]
        for title, rows, name, what in (
            (f"False alarms (normal {unit} at or above the threshold)", worst_alarms,
             "false_alarms.png", f"{len(alarms)} false alarms"),
            (f"Escapes (anomalous {unit} below the threshold)", worst_escapes,
             "escapes.png", f"{len(escapes)} escapes"),
        ):
            if len(rows):  # none: the report says so instead of showing items that are neither
                figures[title] = plots.plot_examples(
                    example_panels(data, test, rows, detector, base_dir), fig_dir / name,
                    f"{what} at threshold {thr:.4g} (worst {len(rows)} shown)")
    return figures
