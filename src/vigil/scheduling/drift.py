"""Optional drift trigger over production scores.

Input: the score log that ``vigil serve --score-log PATH`` / ``vigil watch --score-log PATH``
(or ``score_log:`` in configs/serving.yaml) appends, one scored image or frame per line; the
format is ``vigil.serving.scorelog``'s: ``{"time": ..., "model_name": ..., "model_version": ...,
"score": 0.013, "threshold": 0.02, "is_anomaly": false}``. Only ``score`` and ``threshold`` are
read (``threshold`` optional when the config sets one; lines without a numeric ``score`` are
skipped). Point ``drift.scores_log`` in configs/retrain.yaml at that file. Two tests, either can
fire:

- alarm share: the fraction of the last ``window`` scores above the threshold exceeds
  ``max_alarm_fraction`` (the line raises far more alarms than the calibrated false-alarm rate:
  the normal appearance moved, or the line really is broken; either way a person looks and the
  model is refreshed on the newest normal data);
- distribution shift: a two-sample Kolmogorov-Smirnov test between the recent window and the
  reference scores (``reference_log``, or the ``window`` scores before the recent ones) gives
  p < ``ks_pvalue``; scipy's ``ks_2samp`` when installed, else a quantile-shift rule.
"""

from __future__ import annotations

import json
from collections import deque
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from vigil.scheduling import DriftConfig
from vigil.serving.scorelog import SCORE, THRESHOLD


@dataclass
class DriftResult:
    fired: bool
    reasons: list[str] = field(default_factory=list)
    n_recent: int = 0
    alarm_fraction: float | None = None
    ks_pvalue: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def read_scores(path: Path, last: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(scores, thresholds) float64 (N,) from a JSONL log; NaN threshold where a line has none."""
    keep: deque = deque(maxlen=last)
    with path.open() as handle:
        for line in handle:
            line = line.strip()
            if not line:
                continue
            try:
                row = json.loads(line)
                score = float(row[SCORE])
                threshold = row.get(THRESHOLD)
                threshold = float(threshold) if threshold is not None else np.nan
            except (ValueError, KeyError, TypeError, AttributeError):
                continue  # a torn last line or a non-score event: not a score
            keep.append((score, threshold))
    if not keep:
        return np.empty(0), np.empty(0)
    array = np.array(keep, dtype=np.float64)
    return array[:, 0], array[:, 1]


def ks_shift_pvalue(recent: np.ndarray, reference: np.ndarray) -> float:
    """p-value that both samples come from one distribution (KS; quantile rule without scipy)."""
    try:
        from scipy.stats import ks_2samp
    except ImportError:  # pragma: no cover - scipy ships with scikit-learn
        q_ref = np.quantile(reference, [0.25, 0.5, 0.75])
        iqr = max(q_ref[2] - q_ref[0], 1e-12)
        shift = abs(np.median(recent) - q_ref[1]) / iqr
        return float(np.exp(-shift * 4))  # 0.25 IQR shift -> ~0.37, 1 IQR -> ~0.02
    return float(ks_2samp(recent, reference).pvalue)


def check_drift(cfg: DriftConfig, root: Path) -> DriftResult:
    """Evaluate the drift tests on the log; a missing log or too few scores never fires."""
    log_path = root / cfg.scores_log
    if not log_path.is_file():
        return DriftResult(False, [f"no score log at {cfg.scores_log}"])
    need_previous = cfg.ks_pvalue is not None and cfg.reference_log is None
    scores, thresholds = read_scores(log_path, last=cfg.window * (2 if need_previous else 1))
    recent, recent_thr = scores[-cfg.window :], thresholds[-cfg.window :]
    result = DriftResult(False, n_recent=int(recent.size))
    if recent.size < cfg.min_samples:
        result.reasons.append(f"{recent.size} recent scores < min_samples {cfg.min_samples}")
        return result
    if cfg.max_alarm_fraction is not None:
        threshold = np.full_like(recent, cfg.threshold) if cfg.threshold is not None else recent_thr
        known = ~np.isnan(threshold)
        if known.any():
            result.alarm_fraction = float(np.mean(recent[known] > threshold[known]))
            if result.alarm_fraction > cfg.max_alarm_fraction:
                result.fired = True
                result.reasons.append(
                    f"{result.alarm_fraction:.1%} of the last {int(known.sum())} scores above the "
                    f"threshold (> {cfg.max_alarm_fraction:.1%})"
                )
        else:
            result.reasons.append("no threshold: set drift.threshold or log it with each score")
    if cfg.ks_pvalue is not None:
        if cfg.reference_log is not None:
            reference, _ = read_scores(root / cfg.reference_log)
        else:
            reference = scores[: -cfg.window]
        if reference.size >= cfg.min_samples:
            result.ks_pvalue = ks_shift_pvalue(recent, reference)
            if result.ks_pvalue < cfg.ks_pvalue:
                result.fired = True
                result.reasons.append(
                    f"score distribution shifted (KS p = {result.ks_pvalue:.2g} < {cfg.ks_pvalue:g})"
                )
        else:
            result.reasons.append(f"{reference.size} reference scores < min_samples")
    return result
