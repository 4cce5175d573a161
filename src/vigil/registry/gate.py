"""The promotion gate: a pure function of two metric dicts and ``GateConfig``.

A candidate passes when, on the test split at its calibrated threshold (``threshold.json``; on
synthetic anomalies in val only with ``gate.allow_synthetic_evidence``: ``registry.evidence``):

1. its threshold was calibrated on labelled anomalies or normal items (``gate_can_pass`` true; a
   threshold taken from a quantile of normal scores has unmeasured precision and never passes);
2. precision >= ``gate.precision``: with ``gate.prevalence`` unset, the test split's own
   ``precision_at_threshold``; with it set, the precision a line with that defect rate would see,
   ``r*p / (r*p + far*(1-p))`` from test recall ``r`` and false-alarm rate ``far`` (the test
   splits are 75-88 % anomalous, so their own precision flatters a model that flags good parts);
3. ``recall_at_threshold >= gate.min_recall``;
4. with ``gate.max_false_alarm_rate`` set, ``false_alarm_rate`` (flagged normal test items /
   normal test items) <= it;
5. when a champion exists and is comparable (below), the candidate is not worse than the champion
   by more than ``gate.champion_tolerance`` on any compared metric AND strictly better on at
   least one. Compared: ``recall_at_precision`` (best recall at the target precision: threshold
   free), AUROC (``image_auroc`` / ``frame_auroc``), and the operating point: ``recall_at_threshold``
   and ``false_alarm_rate`` (lower is better; precision at any defect rate follows from these
   two). Tie rule: a candidate that is nowhere better than the champion does not replace it.

Comparable means measured on the same test split (same ``test_split_hash``; a legacy champion
without one: same ``data_hash``) AND under the same measurement settings: the same
``gate_settings_hash`` (``settings_hash`` of ``gate.precision``, ``max_false_alarm_rate``,
``prevalence`` and the threshold method; a legacy champion without it: the same
``target_precision``). Retraining adds normal training data and changes ``data_hash`` every cycle
while the test split, and so the comparison, stays valid. When not comparable, the gate decides
on rules 1-4 and the reasons say why the comparison was skipped.

Defaults (params.yaml ``gate``): precision 0.9 from the seeds; ``min_recall`` 0.8 (missing more
than one defect in five leaves the inspection worse than the manual sampling it backs up, and
with ~30 anomalous test items one miss moves recall by ~0.03); ``max_false_alarm_rate`` 0.05 (at
most one good part in 20 flagged: the finest bar ~30 normal test items can measure).

Inputs are flat metric mappings as in ``reports/<D>/metrics.json`` (or read back from the
champion version's tags); missing keys fail the gate with a reason instead of raising.
"""

from __future__ import annotations

import hashlib
import json
import math
from dataclasses import dataclass, field
from typing import Any

from vigil.config import GateConfig
from vigil.registry import evidence as EV

PRIMARY_METRIC = "recall_at_precision"
AUROC_KEYS = ("image_auroc", "frame_auroc")
TEST_SPLIT_KEY = "test_split_hash"  # hash of the test split the metrics were measured on
DATA_HASH_KEY = "data_hash"  # hash of all prepared data (legacy champions: fallback only)
SETTINGS_KEY = "gate_settings_hash"  # hash of the settings the metrics were measured under
#: Operating-point metrics compared with the champion: (key, higher is better).
OPERATING_POINT = (("recall_at_threshold", True), ("false_alarm_rate", False))
TIE_RULE = "a tie does not promote: the candidate must beat the champion on at least one metric"
_TINY = 1e-12  # differences below this are ties (float noise)


def gate_settings(
    cfg: GateConfig, threshold_method: str | None = None, evidence: str | None = None
) -> dict[str, Any]:
    """The settings the gate's inputs were measured under (what ``settings_hash`` covers).

    ``min_recall``, ``champion_tolerance`` and ``allow_synthetic_evidence`` are pass bars, not
    measurement conditions: changing them keeps old and new metrics comparable, so they are left
    out. ``evidence`` other than labelled (``vigil.registry.evidence``) is a condition."""
    settings = {"precision": cfg.precision, "max_false_alarm_rate": cfg.max_false_alarm_rate,
                "prevalence": cfg.prevalence, "threshold_method": threshold_method}
    return settings if evidence in (None, EV.LABELLED) else {**settings, "evidence": evidence}


def settings_hash(settings: dict[str, Any]) -> str:
    """A short stable hash of ``gate_settings(...)`` (sorted JSON, sha256, 16 hex digits)."""
    text = json.dumps(settings, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def criteria(cfg: GateConfig) -> list[str]:
    """The rules a candidate is held to under ``cfg``, in plain words (decision and tags)."""
    where = (
        f"at a {cfg.prevalence:g} production defect rate (from test recall and false-alarm rate)"
        if cfg.prevalence is not None
        else "on the test split"
    )
    out = [f"precision >= {cfg.precision:g} {where}", f"recall >= {cfg.min_recall:g}"]
    if cfg.max_false_alarm_rate is not None:
        out.append(f"false-alarm rate <= {cfg.max_false_alarm_rate:g} of normal test items")
    out.append("labelled anomalies in the test split" + (
        " or synthetic ones in val" if cfg.allow_synthetic_evidence else ""))
    out.append(
        f"not worse than the champion by more than {cfg.champion_tolerance:g} on "
        f"{PRIMARY_METRIC}, AUROC, recall_at_threshold or false_alarm_rate (same test split "
        f"and settings); {TIE_RULE}"
    )
    return out


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
    false_alarm_rate: float | None = None
    max_false_alarm_rate: float | None = None
    prevalence: float | None = None
    precision_at_prevalence: float | None = None
    criteria: list[str] = field(default_factory=list)
    settings_hash: str | None = None
    evidence: str = EV.LABELLED  # labelled | synthetic | none (vigil.registry.evidence)

    def to_dict(self) -> dict[str, Any]:
        out = {k: getattr(self, k) for k in self.__dataclass_fields__}
        for key in ("reasons", "criteria"):
            out[key] = list(out[key])
        for key in ("champion", "candidate"):
            out[key] = dict(out[key])
        return out


def _number(metrics: dict[str, Any], key: str) -> float | None:
    """A finite float at ``key`` or None (absent, not a number, NaN or inf)."""
    value = metrics.get(key)
    if isinstance(value, bool):
        return float(value)
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def _auroc_key(metrics: dict[str, Any]) -> str | None:
    return next((k for k in AUROC_KEYS if _number(metrics, k) is not None), None)


def _short(value: Any) -> str:
    return str(value)[:12]


_SKIPPED = "the comparison with the champion cannot be made; the gate decided on its bars alone"


def _split_reason(candidate: dict[str, Any], champion: dict[str, Any]) -> str | None:
    cand_test, champ_test = candidate.get(TEST_SPLIT_KEY), champion.get(TEST_SPLIT_KEY)
    if cand_test and champ_test:
        if cand_test == champ_test:
            return None
        return (
            f"champion was measured on a different test split (test-split hash "
            f"{_short(champ_test)} vs the candidate's {_short(cand_test)}): {_SKIPPED}"
        )
    cand_data, champ_data = candidate.get(DATA_HASH_KEY), champion.get(DATA_HASH_KEY)
    if cand_data and champ_data and cand_data == champ_data:
        return None  # same prepared data, so the same test split
    missing = "champion" if not champ_test else "candidate"
    return (
        f"the {missing} has no test-split hash ({TEST_SPLIT_KEY}) and the data hashes do not "
        f"show the same test data: {_SKIPPED}"
    )


def _settings_reason(candidate: dict[str, Any], champion: dict[str, Any]) -> str | None:
    cand_p, champ_p = _number(candidate, "target_precision"), _number(champion, "target_precision")
    if cand_p is not None and champ_p is not None and abs(cand_p - champ_p) > _TINY:
        return (
            f"champion was measured at target precision {champ_p:g}, the candidate at "
            f"{cand_p:g} (gate.precision changed): {_SKIPPED}"
        )
    cand_s, champ_s = candidate.get(SETTINGS_KEY), champion.get(SETTINGS_KEY)
    if cand_s and champ_s:
        if cand_s == champ_s:
            return None
        return (
            f"champion was measured under other gate settings (settings hash {_short(champ_s)} "
            f"vs the candidate's {_short(cand_s)}: target precision, false-alarm bar, "
            f"prevalence or threshold method changed): {_SKIPPED}"
        )
    if cand_p is not None and champ_p is not None:
        return None  # a legacy champion without a settings hash, at the same target precision
    return (
        "neither a gate-settings hash nor the target precision shows that the champion was "
        f"measured under the candidate's settings: {_SKIPPED}"
    )


def incomparable_reason(candidate: dict[str, Any], champion: dict[str, Any]) -> str | None:
    """None when both were measured on the same test split under the same settings, else why
    they cannot be compared."""
    return _split_reason(candidate, champion) or _settings_reason(candidate, champion)


def _champion_checks(
    candidate: dict[str, Any], champion: dict[str, Any], tolerance: float
) -> tuple[bool, list[str], dict[str, float], dict[str, float]]:
    """(ok, reasons, champion numbers, candidate numbers) of the champion rule (rule 5)."""
    reason = incomparable_reason(candidate, champion)
    if reason is not None:
        return True, [reason], {}, {}
    ok, better, reasons, champ_vals, cand_vals = True, [], [], {}, {}
    keys = [(PRIMARY_METRIC, True)]
    auroc = _auroc_key(champion)
    if auroc is not None:
        keys.append((auroc, True))
    keys.extend(OPERATING_POINT)
    for key, higher in keys:
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
        gain = (ours - theirs) if higher else (theirs - ours)
        direction = "higher" if higher else "lower"
        if gain < -tolerance - _TINY:
            ok = False
            reasons.append(
                f"{key} {ours:.3f} is worse than the champion's {theirs:.3f} by more than the "
                f"tolerance {tolerance:g} ({direction} is better)"
            )
            continue
        if gain > _TINY:
            better.append(key)
        reasons.append(f"{key} {ours:.3f} vs champion {theirs:.3f} (tolerance {tolerance:g}): ok")
    if ok and champ_vals and not better:
        ok = False
        reasons.append(f"the candidate ties the champion or is nowhere better: {TIE_RULE}")
    elif ok and better:
        reasons.append(f"better than the champion on {', '.join(better)}")
    return ok, reasons, champ_vals, cand_vals


def _bars(candidate: dict[str, Any], cfg: GateConfig) -> tuple[bool, list[str], dict[str, Any]]:
    """Rules 1-4: (ok, reasons, the numbers read)."""
    ok, reasons = True, []
    precision = _number(candidate, "precision_at_threshold")
    recall = _number(candidate, "recall_at_threshold")
    far = _number(candidate, "false_alarm_rate")
    at_prevalence = None
    if candidate.get("gate_can_pass", True) in (False, 0, 0.0, "false", "False"):
        ok = False
        reasons.append(
            "threshold was not calibrated on labelled anomalies (normal-score quantile "
            "fallback): precision is unmeasured, so the gate cannot pass"
        )
    if precision is None or recall is None:
        ok = False
        reasons.append("candidate metrics lack precision_at_threshold or recall_at_threshold")
    else:
        if cfg.prevalence is None:
            judged, where = precision, "on the test split"
        else:
            from vigil.evaluation.calibration import precision_at_prevalence

            at_prevalence = judged = precision_at_prevalence(recall, far, cfg.prevalence)
            where = f"at a {cfg.prevalence:g} defect rate (test split: {precision:.3f})"
        if judged is None:
            ok = False
            reasons.append("candidate metrics lack false_alarm_rate (needed with gate.prevalence)")
        elif judged >= cfg.precision:
            reasons.append(f"precision {judged:.3f} {where} >= {cfg.precision:g}: ok")
        else:
            ok = False
            reasons.append(f"precision {judged:.3f} {where} is below the target {cfg.precision:g}")
        if recall >= cfg.min_recall:
            reasons.append(f"recall {recall:.3f} >= {cfg.min_recall:g}: ok")
        else:
            ok = False
            reasons.append(f"recall {recall:.3f} is below the minimum {cfg.min_recall:g}")
    if cfg.max_false_alarm_rate is not None:
        n_test, n_anomalous = _number(candidate, "n_test"), _number(candidate, "n_test_anomalous")
        normals = int(n_test - n_anomalous) if n_test is not None and n_anomalous is not None else 0
        of = f" ({round(far * normals)} of {normals} good items)" if far is not None and normals else ""
        if far is None:
            ok = False
            reasons.append("candidate metrics lack false_alarm_rate (gate.max_false_alarm_rate)")
        elif far <= cfg.max_false_alarm_rate + _TINY:
            reasons.append(
                f"false-alarm rate {far:.3f}{of} <= {cfg.max_false_alarm_rate:g}: ok"
            )
        else:
            ok = False
            reasons.append(
                f"false-alarm rate {far:.3f}{of} is above the maximum "
                f"{cfg.max_false_alarm_rate:g}"
            )
    numbers = {"precision": precision, "recall": recall, "far": far, "at_p": at_prevalence}
    return ok, reasons, numbers


def evaluate_gate(
    candidate: dict[str, Any], champion: dict[str, Any] | None, cfg: GateConfig
) -> GateDecision:
    """Decide whether ``candidate`` may become champion (see the module docstring for rules).

    Reads from ``candidate``: ``precision_at_threshold``, ``recall_at_threshold``,
    ``false_alarm_rate``, ``gate_can_pass`` (absent counts as true), ``recall_at_precision``,
    ``image_auroc`` or ``frame_auroc``, ``target_precision``, ``n_test``/``n_test_anomalous``
    (for the wording), ``test_split_hash`` (and ``data_hash``), ``gate_settings_hash`` (default:
    ``settings_hash(gate_settings(cfg))``); from ``champion`` (None or empty: no champion yet) the
    same comparison keys.
    """
    evidence = EV.evidence_of(candidate)
    candidate = EV.judged_metrics(candidate, evidence)
    candidate.setdefault(SETTINGS_KEY, settings_hash(gate_settings(cfg, evidence=evidence)))
    passed, reasons, numbers = _bars(candidate, cfg)
    passed, reasons = EV.judge(evidence, cfg.allow_synthetic_evidence, passed, reasons, candidate)
    compared, champ_vals, cand_vals = False, {}, {}
    if champion:
        ok, champ_reasons, champ_vals, cand_vals = _champion_checks(
            candidate, EV.judged_metrics(champion, evidence), cfg.champion_tolerance
        )
        compared = bool(champ_vals)
        passed = passed and ok
        reasons.extend(champ_reasons)
    else:
        reasons.append("no champion yet: nothing to compare with")
    return GateDecision(
        passed=passed,
        reasons=reasons,
        precision=numbers["precision"],
        recall=numbers["recall"],
        min_recall=cfg.min_recall,
        target_precision=cfg.precision,
        compared_with_champion=compared,
        champion=champ_vals,
        candidate=cand_vals,
        false_alarm_rate=numbers["far"],
        max_false_alarm_rate=cfg.max_false_alarm_rate,
        prevalence=cfg.prevalence,
        precision_at_prevalence=numbers["at_p"],
        criteria=criteria(cfg),
        settings_hash=str(candidate[SETTINGS_KEY]),
        evidence=evidence,
    )
