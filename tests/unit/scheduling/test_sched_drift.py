"""The drift trigger over a JSONL log of production scores."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from vigil.scheduling import DriftConfig
from vigil.scheduling.drift import check_drift, read_scores


def _log(path: Path, scores, threshold: float | None = 1.0) -> Path:
    with path.open("w") as handle:
        for s in scores:
            row = {"score": float(s)}
            if threshold is not None:
                row["threshold"] = threshold
            handle.write(json.dumps(row) + "\n")
        handle.write('{"score": 0.5, "threshold": "n/a"}\n')  # not a number: skipped
        handle.write('{"score": 0.5, "thresh')  # a torn last line is skipped
    return path


def test_alarm_share_fires_above_the_limit(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    quiet = rng.uniform(0, 0.9, 100)
    _log(tmp_path / "s.jsonl", quiet)
    cfg = DriftConfig(scores_log="s.jsonl", window=100, min_samples=50, max_alarm_fraction=0.1)
    result = check_drift(cfg, tmp_path)
    assert not result.fired and result.alarm_fraction == 0.0 and result.n_recent == 100
    noisy = np.concatenate([quiet, rng.uniform(1.1, 2.0, 30)])
    _log(tmp_path / "s.jsonl", noisy)
    result = check_drift(cfg, tmp_path)
    assert result.fired and result.alarm_fraction == 0.3
    assert "30.0% of the last 100" in result.reasons[0]


def test_config_threshold_overrides_missing_line_threshold(tmp_path: Path) -> None:
    _log(tmp_path / "s.jsonl", np.linspace(0, 1, 60), threshold=None)
    cfg = DriftConfig(scores_log="s.jsonl", window=60, min_samples=10, threshold=0.5)
    assert check_drift(cfg, tmp_path).fired
    no_threshold = DriftConfig(scores_log="s.jsonl", window=60, min_samples=10)
    result = check_drift(no_threshold, tmp_path)
    assert not result.fired and "no threshold" in result.reasons[0]


def test_ks_shift_against_the_previous_window(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    same = rng.normal(0.2, 0.02, 400)
    _log(tmp_path / "s.jsonl", same)
    cfg = DriftConfig(
        scores_log="s.jsonl", window=200, min_samples=50, max_alarm_fraction=None, ks_pvalue=0.001
    )
    result = check_drift(cfg, tmp_path)
    assert not result.fired and result.ks_pvalue > 0.001
    shifted = np.concatenate([same[:200], rng.normal(0.26, 0.02, 200)])
    _log(tmp_path / "s.jsonl", shifted)
    result = check_drift(cfg, tmp_path)
    assert result.fired and result.ks_pvalue < 1e-6 and "shifted" in result.reasons[0]


def test_missing_log_or_few_samples_never_fire(tmp_path: Path) -> None:
    cfg = DriftConfig(scores_log="none.jsonl")
    assert not check_drift(cfg, tmp_path).fired
    _log(tmp_path / "s.jsonl", [5.0] * 10)
    result = check_drift(DriftConfig(scores_log="s.jsonl", min_samples=50), tmp_path)
    assert not result.fired and "min_samples" in result.reasons[0]
    scores, thresholds = read_scores(tmp_path / "s.jsonl")
    assert scores.shape == thresholds.shape == (10,)
