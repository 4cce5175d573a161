"""``model.<family>.<map_knob>: auto``: which anomaly map of a trained network ships, chosen on tune.

Some families can read several anomaly maps off the same trained weights (DRAEM-style: the
predicted mask, the restoration error, or both fused). Which one separates defects best is a
property of the data: on the magnetic tiles the mask scored higher, on a photograph probe the
restoration error. So the evaluate stage scores the labelled tune split with each of the
family's ``map_choices`` and keeps the one with the highest image AUROC (the quantity the gate's
recall-at-precision follows; ties: the earlier choice), never chosen on test. Without both
classes in tune the family's first choice is kept. The choice is written into the detector's
spec, so packages, serving and streams read the same map.
"""

from __future__ import annotations

import logging

from vigil.data.prepared import PreparedDataset
from vigil.detector import Detector
from vigil.evaluation.splits import SplitScores, score_split, split_auroc

log = logging.getLogger(__name__)

AUTO = "auto"


def needs_choice(detector: Detector) -> bool:
    """The detector's family has a map knob and the spec leaves it to evaluate (``auto``)."""
    knob = detector.family.map_knob
    return knob is not None and detector.record.spec["model"].get(knob) == AUTO


def choose_map(
    detector: Detector, data: PreparedDataset
) -> tuple[Detector, SplitScores | None, dict[str, float]]:
    """(detector with the chosen map, its tune scores or None, {choice: tune image AUROC}).

    The AUROCs are empty when tune cannot decide (no labelled anomalies or no normals): the
    detector then reads the family's first choice and the tune scores are None (score it)."""
    family = detector.family
    knob, choices = family.map_knob, family.map_choices
    aucs: dict[str, float] = {}
    tunes: dict[str, tuple[Detector, SplitScores]] = {}
    for choice in choices:
        candidate = detector.with_model(**{knob: choice})
        tune = score_split(candidate, data, "tune")
        auc = split_auroc(tune)
        if auc is None:
            log.info("%s.%s: tune has no labelled anomalies (or no normals); using %r",
                     family.name, knob, choices[0])
            return detector.with_model(**{knob: choices[0]}), None, {}
        aucs[choice], tunes[choice] = auc, (candidate, tune)
    best = max(aucs.values())
    chosen = next(c for c in choices if aucs[c] >= best - 1e-9)
    log.info("%s.%s: %s, chosen on tune (image AUROC %s)", family.name, knob, chosen,
             ", ".join(f"{c}: {a:.3f}" for c, a in aucs.items()))
    return (*tunes[chosen], aucs)
