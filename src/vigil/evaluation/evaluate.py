"""The evaluate stage: score tune and test, calibrate the threshold, measure, report, log.

Outputs (all written atomically):

- ``<out>/metrics.json``: flat numbers for ``dvc metrics show`` (keys in ``EvaluationResult``)
  plus ``test_split_hash``, the hash of the test split they were measured on (the gate compares
  a candidate with the champion only on the same test split).
- ``<out>/plots/pr.csv``, ``roc.csv``, ``scores.csv`` and, for video, ``timeline.csv``: plot
  data for ``dvc plots show/diff``.
- ``<out>/evaluation/report.html`` (self-contained) + its PNGs + ``per_defect.csv``.
- ``<model_dir>/detector/``: the calibrated ``Detector`` (weights + ``detector.json`` with the
  prepared data's preprocessing, the post-processing settings, the image/frame threshold (flag
  when ``score >= threshold``), the pixel threshold and the calibration record). The package,
  serving and streams load exactly this, so they decide as evaluated.

The metrics are logged (prefixed ``test_``) with the report and figures to the training run
named in ``<model_dir>/train.json`` (``run_id``), when that file exists.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from vigil.config import Params
from vigil.data.prepared import PreparedDataset
from vigil.detector import Detector
from vigil.evaluation import alerting as A
from vigil.evaluation import calibration as C
from vigil.evaluation import map_choice as MC
from vigil.evaluation import evidence as E
from vigil.evaluation import metrics as M
from vigil.evaluation import pixel_metrics as PM
from vigil.evaluation import smoothing as S
from vigil.evaluation import video_metrics as VM
from vigil.evaluation.outputs import (
    draw_figures,
    finite_metrics,
    write_csv,
    write_json,
    write_plot_data,
)
from vigil.evaluation.report import render_report, write_report
from vigil.evaluation.splits import SplitScores, hash_test_split, pixel_metrics, score_split
from vigil import names

DETECTOR_DIR = "detector"  # models/<dataset>/detector/: the calibrated detector
TRAIN_RUN_FILE = "train.json"
METRICS_FILE = "metrics.json"
REPORT_DIR = "evaluation"
REPORT_FILE = "report.html"
MLFLOW_ARTIFACT_DIR = "evaluation"
TEST_SPLIT_HASH = "test_split_hash"  # key in metrics.json / detector.json, gate input
TEST_SPLIT_TAG = names.TEST_SPLIT_HASH  # the same on the training run


class EvaluationError(ValueError):
    """The inputs of the evaluate stage do not fit together; the message names them."""


@dataclass(frozen=True)
class EvaluationResult:
    metrics: dict[str, float]  # flat, also in metrics.json
    test_split_hash: str
    calibration: M.Calibration
    pixel_threshold: float
    detector_dir: Path
    metrics_path: Path
    report_path: Path
    run_id: str | None


# --- metrics ---------------------------------------------------------------------------------


def reference_frame(data: PreparedDataset) -> np.ndarray | None:
    """The prepared alignment reference frame uint8 (h, w, C) when the prep aligns, else None."""
    if data.prep.align == "none":
        return None
    index = data.manifest.get("reference_index")
    if index is None:
        raise EvaluationError(
            f"{data.root}: prep.align is {data.prep.align!r} but manifest.json names no "
            "reference_index; rerun `dvc repro -f prepare@<dataset>`"
        )
    return np.ascontiguousarray(data.frames[int(index)])


def threshold_method(params: Params) -> str:
    """``evaluate.threshold_method``; ``auto`` calibrates the way the gate judges: at the stated
    prevalence when ``gate.prevalence`` is set, else at ``gate.max_false_alarm_rate``, else at
    ``gate.precision`` on the tune split."""
    method = params.evaluate.threshold_method
    if method != "auto":
        return method
    if params.gate.prevalence is not None:
        return "prevalence"
    if params.gate.max_false_alarm_rate is not None:
        return "false_alarm_rate"
    return "precision"


def calibrate(
    tune: SplitScores, val: SplitScores, params: Params, labelled: bool = True
) -> M.Calibration:
    """The operating threshold on the tune split (normal val items count as normals). Without
    labelled anomalies (``labelled`` false) ``auto`` calibrates on normal items to
    ``gate.max_false_alarm_rate`` when it is set (precision cannot be measured)."""
    ok_tune, ok_val = tune.scored, val.scored
    method = threshold_method(params)
    if not labelled and params.evaluate.threshold_method == "auto" and (
        params.gate.max_false_alarm_rate is not None
    ):
        method = "false_alarm_rate"
    return C.calibrate(
        method, tune.labels[ok_tune], tune.scores[ok_tune],
        precision=params.gate.precision,
        max_false_alarm_rate=params.gate.max_false_alarm_rate,
        prevalence=params.gate.prevalence,
        normal_scores=val.scores[ok_val], split="tune", min_recall=params.gate.min_recall,
    )


def test_metrics(
    data: PreparedDataset, test: SplitScores, calibration: M.Calibration, precision: float,
    alert_frames: int = 1,
) -> dict[str, Any]:
    """The flat metric dict of the test split (names as in metrics.json); video events are
    alerts of ``alert_frames`` frames in a row."""
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
        out.update(VM.event_metrics(clips, calibration.threshold, alert_frames))
        scored = [(test.labels[a:b][test.scored[a:b]], test.scores[a:b][test.scored[a:b]])
                  for _, a, b in test.clips]
        out.update(VM.clip_aurocs(scored))
    out.update(pixel_metrics(data, test))
    return out


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

    from vigil.tracking import connect

    client = connect()
    now = int(time.time() * 1000)
    batch = [Metric(f"{names.TEST_METRIC_PREFIX}{k}", float(v), now, 0) for k, v in metrics.items()]
    for start in range(0, len(batch), 200):
        client.log_batch(run_id, metrics=batch[start : start + 200])
    for path in files:
        client.log_artifact(run_id, str(path), MLFLOW_ARTIFACT_DIR)
    client.set_tag(run_id, names.REPORT, f"{MLFLOW_ARTIFACT_DIR}/{REPORT_FILE}")
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
    base_dir: Path | str = ".",
) -> EvaluationResult:
    """Run the whole stage for ``dataset``; see the module docstring for what it writes.
    ``base_dir``: the params file's folder, where relative dataset sources are (the report
    shows its examples on those inputs)."""
    data_dir, model_dir, out_dir = Path(data_dir), Path(model_dir), Path(out_dir)
    params = params.for_dataset(dataset)
    cfg = params.evaluate
    precision = params.gate.precision
    data = PreparedDataset.load(data_dir)
    detector = Detector.from_trained(
        model_dir, cfg, reference=reference_frame(data), dataset=dataset
    )
    if detector.record.modality != data.modality:
        raise EvaluationError(
            f"{model_dir}: a {detector.record.modality} model cannot score {data_dir}, a "
            f"{data.modality} dataset"
        )

    map_aucs: dict[str, float] = {}
    chosen_tune = None
    if MC.needs_choice(detector):  # map knob or score auto: chosen on tune, shipped
        detector, chosen_tune, map_aucs = MC.choose_map(detector, data)
        cfg = detector.postprocess
    # heat map knob auto: chosen on tune
    detector, chosen_tune, heat_aucs = MC.choose_heat(detector, data, chosen_tune)
    scored = {s: score_split(detector, data, s) for s in ("val", "test")}
    scored["tune"] = score_split(detector, data, "tune") if chosen_tune is None else chosen_tune
    window_aucs: dict[int, float] = {}
    if data.modality == "video" and cfg.smoothing_window == "auto":
        window, window_aucs = S.choose_window(scored["tune"])
        scored = {s: S.resmoothed(split, window) for s, split in scored.items()}
        cfg = cfg.model_copy(update={"smoothing_window": window})  # shipped below
    val, tune, test = scored["val"], scored["tune"], scored["test"]
    evidence = E.evidence_of(data, test)
    if not test.scored.any() and evidence == E.EVIDENCE_NONE:
        raise EvaluationError(f"{data_dir}: the test split has no scored items")
    calibration = calibrate(tune, val, params, labelled=evidence == E.EVIDENCE_LABELLED)
    val_maps = val.maps[val.scored]
    pixel_thr = PM.pixel_threshold(val_maps, cfg.pixel_threshold_quantile)
    split_hash = hash_test_split(data)
    alert_f1s: dict[int, float] = {}
    if data.modality == "video" and cfg.alert_frames == "auto":
        frames, alert_f1s = A.choose_alert_frames(tune, calibration.threshold)
        cfg = cfg.model_copy(update={"alert_frames": frames})
    detector = detector.calibrated(
        postprocess=cfg, threshold=calibration.threshold, pixel_threshold=pixel_thr,
        calibration=calibration.to_dict(), data_hash=data.content_hash,
        test_split_hash=split_hash,
    )

    if evidence == E.EVIDENCE_LABELLED:
        metrics = test_metrics(data, test, calibration, precision, cfg.alert_run)
    else:  # normal-only: no label metrics; synthetic ones when the data allows
        metrics = E.unlabelled_metrics(
            test, calibration.threshold, precision, calibration.gate_can_pass
        )
        if evidence == E.EVIDENCE_SYNTHETIC:
            metrics.update(E.synthetic_metrics(detector, data, calibration.threshold, precision))
    metrics["pixel_threshold"] = pixel_thr
    if data.modality == "video":
        metrics["smoothing_window"] = cfg.window
        metrics["alert_frames"] = cfg.alert_run
    flat = finite_metrics(metrics)
    ok = test.scored
    per_defect = M.per_defect_table(
        [d for d, k in zip(test.defects, ok) if k], test.scores[ok], calibration.threshold
    )
    metrics_path = write_json(
        out_dir / METRICS_FILE, {**flat, TEST_SPLIT_HASH: split_hash, E.EVIDENCE_KEY: evidence}
    )
    report_dir = out_dir / REPORT_DIR
    if evidence == E.EVIDENCE_LABELLED:
        write_plot_data(out_dir, test, calibration.threshold)
        figures = draw_figures(
            data, test, metrics, calibration, detector, report_dir, Path(base_dir)
        )
    else:
        E.write_unlabelled_plot_data(out_dir, test)
        figures = E.unlabelled_figures(
            detector, data, test, calibration.threshold, evidence, report_dir
        )
    write_csv(report_dir / "per_defect.csv",
              {k: [r[k] for r in per_defect] for k in (per_defect[0] if per_defect else {})})
    detector_dir = detector.save(model_dir / DETECTOR_DIR)

    run_id = read_train_run(model_dir)
    summary = {
        "dataset": dataset,
        "modality": data.modality,
        "model": f"{model_dir} (family {detector.record.family})",
        "data hash": data.content_hash,
        "test-split hash": split_hash,
        "training run": run_id or "none (no train.json)",
        "items scored (val / tune / test)": f"{val.scored.sum()} / {tune.scored.sum()} / "
                                            f"{test.scored.sum()}",
        "threshold method": calibration.method,
        "evidence": evidence,
    }
    notes = ["the gate's verdict (with the champion comparison) is added at register"]
    knob = detector.family.map_knob
    if knob is not None:
        summary["anomaly map"] = f"{knob} = {detector.record.spec['model'][knob]}"
    summary["score"] = cfg.summary
    if map_aucs:
        notes.append("map and score chosen on tune (AUROC of each: "
                     + ", ".join(f"{c}: {auc:.3f}" for c, auc in map_aucs.items()) + ")")
    heat = detector.family.heat_knob
    if heat is not None:
        summary["heat map"] = f"{heat} = {detector.record.spec['model'][heat]}"
    if heat_aucs:
        notes.append("heat map chosen on tune (pixel AUROC of each: "
                     + ", ".join(f"{c}: {auc:.3f}" for c, auc in heat_aucs.items()) + ")")
    if data.modality == "video":
        notes.append("video: the first frame of each clip has no prediction and is not scored; "
                     f"scores are a trailing moving average over {cfg.window} frames")
        if window_aucs:
            notes.append("smoothing window chosen on tune (frame AUROC by window: "
                         + ", ".join(f"{w}: {auc:.3f}" for w, auc in window_aucs.items()) + ")")
        notes.append(f"an alert (and an event in the metrics) is {cfg.alert_run} frame(s) in a "
                     "row at or above the threshold, as `vigil watch` raises it")
        if alert_f1s:
            notes.append("alert frames chosen on tune (event F1 by frames: "
                         + ", ".join(f"{k}: {f1:.3f}" for k, f1 in alert_f1s.items()) + ")")
    if not calibration.gate_can_pass:
        notes.append(calibration.note)
    if E.missing_evidence_note(evidence):
        notes.append(E.missing_evidence_note(evidence))
    tables = {"Per defect type (test)": per_defect}
    html = render_report(f"vigil evaluation: {dataset}", summary, metrics,
                         calibration.to_dict(), tables, figures, notes)
    report_path = write_report(report_dir / REPORT_FILE, html)

    if run_id and log_mlflow:
        files = [report_path, detector_dir / "detector.json", metrics_path, report_dir / "per_defect.csv",
                 *figures.values()]
        log_to_mlflow(run_id, flat, files, split_hash)
    return EvaluationResult(
        metrics=flat, test_split_hash=split_hash, calibration=calibration,
        pixel_threshold=pixel_thr,
        detector_dir=detector_dir, metrics_path=metrics_path, report_path=report_path,
        run_id=run_id,
    )


def summary_lines(dataset: str, result: EvaluationResult) -> list[str]:
    """A few plain lines for the terminal."""
    m = result.metrics
    cal = result.calibration
    if "recall_at_threshold" not in m:  # no labelled anomalies in test: see evaluation.evidence
        return E.unlabelled_summary(dataset, m, cal, result.report_path)
    auroc_name = "frame AUROC" if "frame_auroc" in m else "image AUROC"
    auroc = m.get("frame_auroc", m.get("image_auroc"))
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
    if "frame_auroc_clip_normalized" in m:
        lines.append(
            f"  frame AUROC, pooled raw scores (headline) {m['frame_auroc']:.3f}; per-clip "
            f"min-max normalized {m['frame_auroc_clip_normalized']:.3f}; mean of per-clip "
            f"{m.get('frame_auroc_mean_per_clip', float('nan')):.3f}"
        )
    if "event_recall" in m:
        lines.append(f"  events: recall {m['event_recall']:.3f} ({m['n_detected_events']}/"
                     f"{m['n_events']}), precision {m['event_precision']:.3f}")
    if not cal.gate_can_pass:
        lines.append(f"  note: {cal.note}")
    lines.append(f"  report: {result.report_path}")
    return lines
