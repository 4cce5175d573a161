"""The promotion gate: a pure function of two metric dicts and ``GateConfig``.

A candidate passes when, on the test split at its calibrated threshold (``threshold.json``):

1. its threshold was calibrated on labelled anomalies (``gate_can_pass`` true; a threshold taken
   from a quantile of normal scores has unmeasured precision and can never pass);
2. ``precision_at_threshold >= gate.precision`` and ``recall_at_threshold >= gate.min_recall``;
3. when a champion's metrics exist and were measured on the same test split (same
   ``test_split_hash``: the test items' content hashes and labels, in order), the candidate is
   not worse than the champion by more than ``gate.champion_tolerance`` on the primary metric
   ``recall_at_precision`` (best recall at the target precision on test: a threshold-free
   measure of the model, unaffected by calibration noise) nor on AUROC (``image_auroc`` for
   images, ``frame_auroc`` for video).

The comparison keys on the test split only, not on ``data_hash`` (which covers every prepared
item): retraining adds normal training data and changes ``data_hash`` every cycle, while the
test split, and so the comparison, stays valid. A champion registered before test-split hashes
existed is compared when its ``data_hash`` equals the candidate's (the same data holds the same
test split). When the test splits differ, or a side lacks both hashes, the comparison cannot be
made: the gate decides on rules 1-2 alone and the reasons say so plainly.

Defaults (params.yaml ``gate``): precision 0.9 comes from the seeds. ``min_recall`` = 0.8: at
90 % precision, one alarm in ten is false, which line operators tolerate; missing more than one
defect in five would leave the inspection worse than the manual sampling it backs up. It is
not set higher because the test splits are small: with ~30 anomalous test items one miss moves
recall by ~0.03, so 0.8 leaves room for split noise below a well-trained model's recall while
still rejecting a model that misses a large share of defects.

The candidate/champion dicts are flat metric mappings as written to ``reports/<D>/metrics.json``
(or read back from the champion version's tags); missing keys fail the gate with a reason
instead of raising, so a broken metrics file is a rejection, not a crash.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from vigil.config import GateConfig

PRIMARY_METRIC = "recall_at_precision"
AUROC_KEYS = ("image_auroc", "frame_auroc")
TEST_SPLIT_KEY = "test_split_hash"  # hash of the test split the metrics were measured on
DATA_HASH_KEY = "data_hash"  # hash of all prepared data (legacy champions: fallback only)


@dataclass(frozen=True)
class GateDecision:
    """The verdict, every reason in plain words, and the numbers that were compared."""

    passed: bool
    reasons: list[str]
    precision: float | None = None
    recall: float | None = None
    min_recall: float = 0.0
    target_precision: float = 0.0
    compared_with_champion: bool = False
    champion: dict[str, float] = field(default_factory=dict)  # champion's compared metrics
    candidate: dict[str, float] = field(default_factory=dict)  # candidate's compared metrics

    def to_dict(self) -> dict[str, Any]:
        return {
            "passed": self.passed,
            "reasons": list(self.reasons),
            "precision": self.precision,
            "recall": self.recall,
            "min_recall": self.min_recall,
            "target_precision": self.target_precision,
            "compared_with_champion": self.compared_with_champion,
            "champion": dict(self.champion),
            "candidate": dict(self.candidate),
        }


def _number(metrics: dict[str, Any], key: str) -> float | None:
    """A finite float at ``key`` or None (absent, not a number, NaN or inf)."""
    value = metrics.get(key)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _auroc_key(metrics: dict[str, Any]) -> str | None:
    return next((k for k in AUROC_KEYS if _number(metrics, k) is not None), None)


def _short(value: Any) -> str:
    return str(value)[:12]


def incomparable_reason(candidate: dict[str, Any], champion: dict[str, Any]) -> str | None:
    """None when both were measured on the same test split, else why they cannot be compared."""
    cand_test, champ_test = candidate.get(TEST_SPLIT_KEY), champion.get(TEST_SPLIT_KEY)
    if cand_test and champ_test:
        if cand_test == champ_test:
            return None
        return (
            f"champion was measured on a different test split (test-split hash "
            f"{_short(champ_test)} vs the candidate's {_short(cand_test)}): the comparison with "
            "the champion cannot be made; the gate decided on precision and recall alone"
        )
    cand_data, champ_data = candidate.get(DATA_HASH_KEY), champion.get(DATA_HASH_KEY)
    if cand_data and champ_data and cand_data == champ_data:
        return None  # same prepared data, so the same test split
    missing = "champion" if not champ_test else "candidate"
    return (
        f"the {missing} has no test-split hash ({TEST_SPLIT_KEY}) and the data hashes do not "
        "show the same test data: the comparison with the champion cannot be made; the gate "
        "decided on precision and recall alone"
    )


def _champion_checks(
    candidate: dict[str, Any], champion: dict[str, Any], tolerance: float
) -> tuple[bool, list[str], dict[str, float], dict[str, float]]:
    """(ok, reasons, champion numbers, candidate numbers) of the not-worse-than-champion rule."""
    reason = incomparable_reason(candidate, champion)
    if reason is not None:
        return True, [reason], {}, {}
    ok, reasons, champ_vals, cand_vals = True, [], {}, {}
    keys = [PRIMARY_METRIC]
    auroc = _auroc_key(champion)
    if auroc is not None:
        keys.append(auroc)
    for key in keys:
        theirs, ours = _number(champion, key), _number(candidate, key)
        if theirs is None:
            reasons.append(f"champion has no {key}; not compared on it")
            continue
        champ_vals[key] = theirs
        if ours is None:
            ok = False
            reasons.append(f"candidate has no {key} to compare with the champion's {theirs:.3f}")
            continue
        cand_vals[key] = ours
        if ours < theirs - tolerance:
            ok = False
            reasons.append(
                f"{key} {ours:.3f} is worse than the champion's {theirs:.3f} by more than "
                f"the tolerance {tolerance:g}"
            )
        else:
            reasons.append(
                f"{key} {ours:.3f} vs champion {theirs:.3f} (tolerance {tolerance:g}): ok"
            )
    return ok, reasons, champ_vals, cand_vals


def evaluate_gate(
    candidate: dict[str, Any], champion: dict[str, Any] | None, cfg: GateConfig
) -> GateDecision:
    """Decide whether ``candidate`` may become champion (see the module docstring for rules).

    Reads from ``candidate``: ``precision_at_threshold``, ``recall_at_threshold``,
    ``gate_can_pass`` (absent counts as true), ``recall_at_precision``, ``image_auroc`` or
    ``frame_auroc``, ``test_split_hash`` (and ``data_hash``); from ``champion`` (None or empty:
    no champion yet) the same comparison keys.
    """
    reasons: list[str] = []
    passed = True
    precision = _number(candidate, "precision_at_threshold")
    recall = _number(candidate, "recall_at_threshold")

    can_pass = candidate.get("gate_can_pass", True)
    if can_pass in (False, 0, 0.0, "false", "False"):
        passed = False
        reasons.append(
            "threshold was not calibrated on labelled anomalies (normal-score quantile "
            "fallback): precision is unmeasured, so the gate cannot pass"
        )
    if precision is None or recall is None:
        passed = False
        reasons.append(
            "candidate metrics lack precision_at_threshold or recall_at_threshold"
        )
    else:
        if precision >= cfg.precision:
            reasons.append(f"precision {precision:.3f} >= {cfg.precision:g}: ok")
        else:
            passed = False
            reasons.append(f"precision {precision:.3f} is below the target {cfg.precision:g}")
        if recall >= cfg.min_recall:
            reasons.append(f"recall {recall:.3f} >= {cfg.min_recall:g}: ok")
        else:
            passed = False
            reasons.append(f"recall {recall:.3f} is below the minimum {cfg.min_recall:g}")

    compared, champ_vals, cand_vals = False, {}, {}
    if champion:
        ok, champ_reasons, champ_vals, cand_vals = _champion_checks(
            candidate, champion, cfg.champion_tolerance
        )
        compared = bool(champ_vals)
        passed = passed and ok
        reasons.extend(champ_reasons)
    else:
        reasons.append("no champion yet: nothing to compare with")

    return GateDecision(
        passed=passed,
        reasons=reasons,
        precision=precision,
        recall=recall,
        min_recall=cfg.min_recall,
        target_precision=cfg.precision,
        compared_with_champion=compared,
        champion=champ_vals,
        candidate=cand_vals,
    )
