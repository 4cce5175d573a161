"""The evaluate stage: score tune and test, calibrate the threshold, measure, report, log.

Outputs (all written atomically):

- ``<out>/metrics.json``: flat numbers for ``dvc metrics show`` (keys in ``EvaluationResult``)
  plus ``test_split_hash``, the hash of the test split they were measured on (the gate compares
  a candidate with the champion only on the same test split).
- ``<out>/plots/pr.csv``, ``roc.csv``, ``scores.csv`` and, for video, ``timeline.csv``: plot
  data for ``dvc plots show/diff``.
- ``<out>/evaluation/report.html`` (self-contained) + its PNGs + ``per_defect.csv``.
- ``<model_dir>/threshold.json``: the image/frame threshold (flag when ``score >= threshold``),
  the pixel threshold for heat-map masks, the post-processing config and the calibration, so the
  model package decides exactly as evaluated.

The metrics are logged (prefixed ``test_``) with the report and figures to the training run
named in ``<model_dir>/train.json`` (``run_id``), when that file exists.
"""

from __future__ import annotations

import csv
import hashlib
import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from vigil.atomic import atomic_write_text
from vigil.config import EvaluateConfig, ImagePrep, Params, VideoPrep
from vigil.data.prepared import PreparedDataset
from vigil.evaluation import metrics as M
from vigil.evaluation import plots
from vigil.evaluation.gate import evaluate_gate
from vigil.evaluation.postprocess import binarize, overlay
from vigil.evaluation.report import render_report, write_report
from vigil.evaluation.scoring import Scores, score_clips, score_frames

THRESHOLD_FILE = "threshold.json"
TRAIN_RUN_FILE = "train.json"
METRICS_FILE = "metrics.json"
PLOTS_DIR = "plots"
REPORT_DIR = "evaluation"
REPORT_FILE = "report.html"
MLFLOW_ARTIFACT_DIR = "evaluation"
TEST_SPLIT_HASH = "test_split_hash"  # key in metrics.json / threshold.json, gate input
TEST_SPLIT_TAG = "vigil.test_split_hash"  # the same on the training run


class EvaluationError(ValueError):
    """The inputs of the evaluate stage do not fit together; the message names them."""


@dataclass(frozen=True)
class SplitScores:
    """Scores of one split, aligned row by row (video: clips concatenated in time order)."""

    split: str
    rows: np.ndarray  # (N,) row indices into the prepared arrays
    labels: np.ndarray  # (N,) 0/1
    defects: list[str]
    scores: np.ndarray  # (N,) float64; NaN for a clip's first frame
    raw: np.ndarray  # (N,) float64 unsmoothed (== scores for images)
    maps: np.ndarray  # (N, H, W) float32
    clips: list[tuple[str, int, int]] = field(default_factory=list)  # (name, start, stop)

    @property
    def scored(self) -> np.ndarray:
        """(N,) bool: items that have a score (all but each clip's first frame). A NaN score
        elsewhere (a diverged model) stays in, so the metric checks reject it by split name."""
        mask = np.ones(self.scores.shape, dtype=bool)
        for _, start, _ in self.clips:
            mask[start] = False
        return mask


@dataclass(frozen=True)
class EvaluationResult:
    metrics: dict[str, float]  # flat, also in metrics.json
    test_split_hash: str
    calibration: M.Calibration
    pixel_threshold: float
    threshold_path: Path
    metrics_path: Path
    report_path: Path
    run_id: str | None
    gate_preview: dict[str, Any]


# --- small IO helpers ------------------------------------------------------------------------


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

    import io

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


# --- scoring ---------------------------------------------------------------------------------


def model_prep(spec: dict[str, Any], params: Params, modality: str) -> ImagePrep:
    """The preprocessing the model was trained with: from its spec, else from params."""
    cls = VideoPrep if modality == "video" else ImagePrep
    if spec.get("prep"):
        return cls.model_validate(spec["prep"])
    return params.prepare.video if modality == "video" else params.prepare.image


def score_split(
    model, data: PreparedDataset, split: str, prep: ImagePrep, cfg: EvaluateConfig
) -> SplitScores:
    """Score every item of ``split``; video clips frame by frame with carried state."""
    labels_by_row = np.array([it.label for it in data.items], dtype=np.int64)
    defects_by_row = [it.defect for it in data.items]
    clips: list[tuple[str, int, int]] = []
    if data.modality == "video":
        groups = data.videos(split)
        rows = np.concatenate(groups) if groups else np.zeros(0, dtype=np.int64)
        scored: Scores = score_clips(model, data.frames, groups, prep, cfg)
        start = 0
        for group in groups:
            clips.append((str(data.items[int(group[0])].video), start, start + len(group)))
            start += len(group)
    else:
        rows = data.indices(split)
        scored = score_frames(model, np.asarray(data.frames[rows]), prep, cfg)
    return SplitScores(
        split=split,
        rows=rows,
        labels=labels_by_row[rows],
        defects=[defects_by_row[r] for r in rows],
        scores=scored.scores,
        raw=scored.raw if scored.raw is not None else scored.scores,
        maps=scored.maps,
        clips=clips,
    )


# --- metrics ---------------------------------------------------------------------------------


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


def calibrate(tune: SplitScores, val: SplitScores, precision: float) -> M.Calibration:
    ok_tune, ok_val = tune.scored, val.scored
    return M.calibrate_threshold(
        tune.labels[ok_tune], tune.scores[ok_tune], precision,
        normal_scores=val.scores[ok_val], split="tune",
    )


def pixel_metrics(data: PreparedDataset, test: SplitScores) -> dict[str, float]:
    """Pixel AUROC and AUPRO over test items that are normal or carry a mask (if any do)."""
    has_mask = np.array([data.items[int(r)].has_mask for r in test.rows], dtype=bool)
    keep = test.scored & ((test.labels == 0) | has_mask)
    if not (has_mask & (test.labels == 1) & test.scored).any():
        return {}
    masks = np.asarray(data.masks[test.rows[keep]])
    if not masks.any():
        return {}
    maps = test.maps[keep]
    return {"pixel_auroc": M.pixel_auroc(masks, maps), "aupro": M.aupro(masks, maps)}


def test_metrics(
    data: PreparedDataset, test: SplitScores, calibration: M.Calibration, precision: float
) -> dict[str, Any]:
    """The flat metric dict of the test split (names as in metrics.json)."""
    ok = test.scored
    base = M.image_metrics(test.labels[ok], test.scores[ok], precision,
                           calibration.threshold, split="test")
    auroc_key = "frame_auroc" if data.modality == "video" else "image_auroc"
    out: dict[str, Any] = {
        auroc_key: base["auroc"],
        "average_precision": base["average_precision"],
        "recall_at_precision": base["recall_at_precision"],
        "target_precision": precision,
        "threshold": calibration.threshold,
        "precision_at_threshold": base["precision_at_threshold"],
        "recall_at_threshold": base["recall_at_threshold"],
        "false_alarm_rate": base["false_alarm_rate"],
        "escape_rate": base["escape_rate"],
        "gate_can_pass": calibration.gate_can_pass,
        "n_test": base["n"],
        "n_test_anomalous": base["n_anomalous"],
    }
    if data.modality == "video":
        raw_ok = test.scored
        out["frame_auroc_raw"] = M.image_metrics(
            test.labels[raw_ok], test.raw[raw_ok], precision, split="test"
        )["auroc"]
        clips = [(test.labels[a:b], test.scores[a:b]) for _, a, b in test.clips]
        out.update(M.event_metrics(clips, calibration.threshold))
    out.update(pixel_metrics(data, test))
    return out


# --- outputs ---------------------------------------------------------------------------------


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


def _example_panels(
    data: PreparedDataset, test: SplitScores, order: np.ndarray, cfg: EvaluateConfig,
    pixel_thr: float, vmax: float,
) -> list[dict]:
    panels = []
    for i in order:
        row = int(test.rows[i])
        image = np.asarray(data.frames[row])
        item = data.items[row]
        where = f"{item.video} frame {item.frame}" if item.video else Path(item.origin).name
        panels.append({
            "image": image,
            "overlay": overlay(image, test.maps[i], vmax),
            "pred_mask": binarize(test.maps[i], pixel_thr, cfg.min_area),
            "mask": np.asarray(data.masks[row]) if item.has_mask else None,
            "caption": f"{item.defect} · {where} · score {test.scores[i]:.4g}",
        })
    return panels


def draw_figures(
    data: PreparedDataset, test: SplitScores, metrics: dict[str, Any],
    calibration: M.Calibration, pixel_thr: float, cfg: EvaluateConfig, fig_dir: Path,
) -> dict[str, Path]:
    """All report figures; returns {title: png path}."""
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
    n = cfg.n_report_examples
    if n:
        valid = np.flatnonzero(ok)
        normal = valid[test.labels[valid] == 0]
        anomalous = valid[test.labels[valid] == 1]
        worst_normal = normal[np.argsort(-test.scores[normal], kind="stable")][:n]
        worst_anomalous = anomalous[np.argsort(test.scores[anomalous], kind="stable")][:n]
        vmax = 2.0 * pixel_thr if pixel_thr > 0 else float(test.maps.max() or 1.0)
        figures[f"Worst false alarms (highest-scoring normal {unit})"] = plots.plot_examples(
            _example_panels(data, test, worst_normal, cfg, pixel_thr, vmax),
            fig_dir / "false_alarms.png",
            f"Highest-scoring normal {unit} (threshold {calibration.threshold:.4g})")
        figures[f"Worst escapes (lowest-scoring anomalous {unit})"] = plots.plot_examples(
            _example_panels(data, test, worst_anomalous, cfg, pixel_thr, vmax),
            fig_dir / "escapes.png",
            f"Lowest-scoring anomalous {unit} (threshold {calibration.threshold:.4g})")
    return figures


def threshold_record(
    calibration: M.Calibration, pixel_thr: float, cfg: EvaluateConfig, data: PreparedDataset,
    params: Params,
) -> dict[str, Any]:
    """Everything serving needs to decide as evaluation did (``models/<D>/threshold.json``)."""
    return {
        "threshold": calibration.threshold,
        "comparison": "score >= threshold is anomalous",
        "pixel_threshold": pixel_thr,
        "pixel_threshold_quantile": cfg.pixel_threshold_quantile,
        "score": cfg.score,
        "topk_fraction": cfg.topk_fraction,
        "postprocess": cfg.model_dump(mode="json"),
        "modality": data.modality,
        "target_precision": params.gate.precision,
        "calibration": calibration.to_dict(),
        "data_hash": data.content_hash,
        TEST_SPLIT_HASH: hash_test_split(data),
    }


def read_train_run(model_dir: Path) -> str | None:
    path = Path(model_dir) / TRAIN_RUN_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text()).get("run_id") or None
    except json.JSONDecodeError as error:
        raise EvaluationError(f"{path}: not valid JSON: {error}") from None


def log_to_mlflow(
    run_id: str, metrics: dict[str, float], files: list[Path], split_hash: str
) -> None:
    """``test_``-prefixed metrics, the report, figures, threshold and test-split hash on the
    training run."""
    import time

    from mlflow.entities import Metric

    from vigil.registry.tracking import connect

    client = connect()
    now = int(time.time() * 1000)
    batch = [Metric(f"test_{k}", float(v), now, 0) for k, v in metrics.items()]
    for start in range(0, len(batch), 200):
        client.log_batch(run_id, metrics=batch[start : start + 200])
    for path in files:
        client.log_artifact(run_id, str(path), MLFLOW_ARTIFACT_DIR)
    client.set_tag(run_id, "vigil.report", f"{MLFLOW_ARTIFACT_DIR}/{REPORT_FILE}")
    client.set_tag(run_id, TEST_SPLIT_TAG, split_hash)


# --- the stage -------------------------------------------------------------------------------


def evaluate(
    params: Params,
    dataset: str,
    data_dir: Path | str,
    model_dir: Path | str,
    out_dir: Path | str,
    *,
    log_mlflow: bool = True,
) -> EvaluationResult:
    """Run the whole stage for ``dataset``; see the module docstring for what it writes."""
    from vigil.models import load_trained

    data_dir, model_dir, out_dir = Path(data_dir), Path(model_dir), Path(out_dir)
    cfg = params.evaluate
    precision = params.gate.precision
    data = PreparedDataset.load(data_dir)
    model, spec = load_trained(model_dir)
    if spec.get("modality") != data.modality:
        raise EvaluationError(
            f"{model_dir}: a {spec.get('modality')} model cannot score {data_dir}, a "
            f"{data.modality} dataset"
        )
    prep = model_prep(spec, params, data.modality)

    scored = {s: score_split(model, data, s, prep, cfg) for s in ("val", "tune", "test")}
    val, tune, test = scored["val"], scored["tune"], scored["test"]
    if not test.scored.any():
        raise EvaluationError(f"{data_dir}: the test split has no scored items")
    calibration = calibrate(tune, val, precision)
    val_maps = val.maps[val.scored]
    pixel_thr = M.pixel_threshold(val_maps, cfg.pixel_threshold_quantile)

    metrics = test_metrics(data, test, calibration, precision)
    metrics["pixel_threshold"] = pixel_thr
    flat = finite_metrics(metrics)
    ok = test.scored
    per_defect = M.per_defect_table(
        [d for d, k in zip(test.defects, ok) if k], test.scores[ok], calibration.threshold
    )
    split_hash = hash_test_split(data)
    gate = evaluate_gate(
        {**flat, "data_hash": data.content_hash, TEST_SPLIT_HASH: split_hash}, None, params.gate
    )

    metrics_path = write_json(out_dir / METRICS_FILE, {**flat, TEST_SPLIT_HASH: split_hash})
    write_plot_data(out_dir, test, calibration.threshold)
    report_dir = out_dir / REPORT_DIR
    figures = draw_figures(data, test, metrics, calibration, pixel_thr, cfg, report_dir)
    write_csv(report_dir / "per_defect.csv",
              {k: [r[k] for r in per_defect] for k in (per_defect[0] if per_defect else {})})
    record = threshold_record(calibration, pixel_thr, cfg, data, params)
    threshold_path = write_json(model_dir / THRESHOLD_FILE, record)

    run_id = read_train_run(model_dir)
    summary = {
        "dataset": dataset,
        "modality": data.modality,
        "model": str(model_dir),
        "data hash": data.content_hash,
        "test-split hash": split_hash,
        "training run": run_id or "none (no train.json)",
        "items scored (val / tune / test)": f"{val.scored.sum()} / {tune.scored.sum()} / "
                                            f"{test.scored.sum()}",
        "gate preview (without champion)": "PASS" if gate.passed else "FAIL",
    }
    notes = [f"gate: {r}" for r in gate.reasons]
    if data.modality == "video":
        notes.append("video: the first frame of each clip has no prediction and is not scored; "
                     f"scores are a trailing moving average over {cfg.smoothing_window} frames")
    if not calibration.gate_can_pass:
        notes.append(calibration.note)
    tables = {"Per defect type (test)": per_defect}
    html = render_report(f"vigil evaluation: {dataset}", summary, metrics,
                         calibration.to_dict(), tables, figures, notes)
    report_path = write_report(report_dir / REPORT_FILE, html)

    if run_id and log_mlflow:
        files = [report_path, threshold_path, metrics_path, report_dir / "per_defect.csv",
                 *figures.values()]
        log_to_mlflow(run_id, flat, files, split_hash)
    return EvaluationResult(
        metrics=flat, test_split_hash=split_hash, calibration=calibration,
        pixel_threshold=pixel_thr,
        threshold_path=threshold_path, metrics_path=metrics_path, report_path=report_path,
        run_id=run_id, gate_preview=gate.to_dict(),
    )


def summary_lines(dataset: str, result: EvaluationResult) -> list[str]:
    """A few plain lines for the terminal."""
    m = result.metrics
    auroc_name = "frame AUROC" if "frame_auroc" in m else "image AUROC"
    auroc = m.get("frame_auroc", m.get("image_auroc"))
    cal = result.calibration
    lines = [
        (
            f"evaluate {dataset}: {auroc_name} {auroc:.3f}, AP {m['average_precision']:.3f}, "
            f"best recall at precision {cal.target_precision:g}: {m['recall_at_precision']:.3f}"
        ),
        (
            f"  threshold {cal.threshold:.5g} ({cal.method} on {cal.split}): test precision "
            f"{m['precision_at_threshold']:.3f}, recall {m['recall_at_threshold']:.3f}, "
            f"false alarms {m['false_alarm_rate']:.1%}, escapes {m['escape_rate']:.1%}"
        ),
    ]
    if "pixel_auroc" in m:
        lines.append(f"  pixel AUROC {m['pixel_auroc']:.3f}, AUPRO {m['aupro']:.3f}")
    if "event_recall" in m:
        lines.append(f"  events: recall {m['event_recall']:.3f} ({m['n_detected_events']}/"
                     f"{m['n_events']}), precision {m['event_precision']:.3f}")
    if not cal.gate_can_pass:
        lines.append(f"  note: {cal.note}")
    verdict = "PASS" if result.gate_preview["passed"] else "FAIL"
    lines.append(f"  gate preview (champion comparison happens at register): {verdict}")
    lines.append(f"  report: {result.report_path}")
    return lines
