"""``auto`` map and score: which anomaly map of a trained network ships, and how it becomes one
score, chosen together on tune.

Some families can read several anomaly maps off the same trained weights (DRAEM-style: the
predicted mask, the restoration error, or both fused; the future-frame predictor: the prediction
error, the appearance error, or both). Which one separates anomalies best is a property of the
data: on the magnetic tiles the mask scored higher, on a photograph probe the restoration error;
on UCSD Ped2's tune clip the appearance error inverts while the prediction error does not. How a
map becomes a score (``evaluate.score``: the mean of its top pixels, or its mean, the PSNR-like
frame score of Liu et al.) is such a property too. So the evaluate stage scores the labelled tune
split with each of the family's ``map_choices`` (when its map knob is ``auto``), summarizes each
map with each of ``SCORES`` (when ``evaluate.score`` is ``auto``), and ships the pair with the
highest AUROC (images: image AUROC, the quantity the gate's recall-at-precision follows; video:
frame AUROC of the raw frame scores, the headline, before ``smoothing_window: auto`` chooses a
moving average for the chosen pair; ties: the earlier pair) when it beats the first pair by
more than ``MARGIN``, else the first pair; never chosen on test. Without both classes in tune
the first of each is kept. The map is written into the detector's spec and the score into its
post-processing, so packages, serving and streams read the same ones. A map the model's
configuration cannot give (the appearance map of a predictor without an appearance
autoencoder) is left out.

The heat map (a family's ``heat_knob``: what overlays show and pixel metrics judge) is chosen
after, by ``choose_heat``: the scored map unless another of ``map_choices`` beats its pixel
AUROC on the tune split's masks by more than ``MARGIN``. Image AUROC and pixel AUROC can favour
different maps of the same weights (on the magnetic tiles the fused map ranks images best, the
predicted mask localizes best), and the gate judges images only.
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from vigil.config import SCORES
from vigil.data.prepared import PreparedDataset
from vigil.detector import Detector
from vigil.detector.postprocess import image_score
from vigil.evaluation.smoothing import resmoothed
from vigil.evaluation.splits import SplitScores, pixel_metrics, score_split, split_auroc

log = logging.getLogger(__name__)

AUTO = "auto"
SAME_HEAT = "same"  # the heat map is the scored map
# the first pair (the family's first map, SCORES[0]) is kept unless another beats it on tune by
# more than this: on a small tune split near-ties are noise (the built-in print's six pairs
# scored 0.961-0.970 on tune, and the 0.970 one lost 0.02 frame AUROC on test against the first)
MARGIN = 0.02


def _map_is_auto(detector: Detector) -> bool:
    knob = detector.family.map_knob
    return knob is not None and detector.record.spec["model"].get(knob) == AUTO


def needs_choice(detector: Detector) -> bool:
    """The family's map knob or ``evaluate.score`` is left to evaluate (``auto``)."""
    return _map_is_auto(detector) or detector.postprocess.score == AUTO


def label(map_choice: str | None, score: str) -> str:
    """How a candidate is named in logs and reports: ``fused / topk_mean`` or ``topk_mean``."""
    return score if map_choice is None else f"{map_choice} / {score}"


def rescored(split: SplitScores, detector: Detector) -> SplitScores:
    """The split re-summarized from its post-processed maps with ``detector``'s score (video:
    re-smoothed with its window), as scoring it again would give, without the network."""
    raw = np.asarray(image_score(split.maps, detector.postprocess), dtype=np.float64)
    raw = np.where(split.scored, raw, np.nan)
    out = dataclasses.replace(split, raw=raw, scores=raw.copy())
    return resmoothed(out, detector.postprocess.window) if split.clips else out


def with_score(detector: Detector, score: str) -> Detector:
    """The same detector summarizing its maps with ``score``."""
    return detector.calibrated(postprocess=detector.postprocess.model_copy(update={"score": score}))


def raw_auroc(split: SplitScores) -> float | None:
    """AUROC of the split's raw (unsmoothed) scores: what the choice compares."""
    return split_auroc(dataclasses.replace(split, scores=split.raw))


def map_readers(detector: Detector) -> list[tuple[str | None, Detector]]:
    """(map choice, the same weights reading it, with that map as its heat map too) for each
    of the family's ``map_choices`` the configuration can give; [(None, detector)] for a family
    without a map knob."""
    knob = detector.family.map_knob
    if knob is None:
        return [(None, detector)]
    heat = detector.family.heat_knob
    shows_scored = heat is None or detector.record.spec["model"].get(heat) in (AUTO, SAME_HEAT)
    same_heat = {} if shows_scored else {heat: SAME_HEAT}  # auto reads as same until chosen
    out = []
    for choice in detector.family.map_choices:
        try:
            out.append((choice, detector.with_model(**{knob: choice}, **same_heat)))
        except ValueError as error:  # this configuration cannot give that map
            log.info("%s.%s: %s left out (%s)", detector.family.name, knob, choice,
                     str(error).splitlines()[-1].strip())
    return out


def pick(aucs: dict[str, float]) -> str:
    """The candidate to ship of {label: tune AUROC} in candidate order: the best one if it
    beats the first by more than ``MARGIN`` (ties: the earlier), else the first."""
    first, best = next(iter(aucs)), max(aucs.values())
    if best <= aucs[first] + MARGIN:
        return first
    return next(name for name, auc in aucs.items() if auc >= best - 1e-9)


def choose_map(
    detector: Detector, data: PreparedDataset
) -> tuple[Detector, SplitScores | None, dict[str, float]]:
    """(detector with the chosen map and score, its tune scores or None, {candidate label:
    tune AUROC}).

    The AUROCs are empty when tune cannot decide (no labelled anomalies or no normals): the
    detector then reads the first map and ``SCORES[0]``, and the tune scores are None (score it)."""
    scores = list(SCORES) if detector.postprocess.score == AUTO else [detector.postprocess.score]
    candidates = map_readers(detector) if _map_is_auto(detector) else [(None, detector)]
    aucs: dict[str, float] = {}
    tunes: dict[str, tuple[Detector, SplitScores]] = {}
    for map_choice, reader in candidates:
        tune = score_split(reader, data, "tune")
        for score in scores:
            candidate = with_score(reader, score)
            split = rescored(tune, candidate)
            auc = raw_auroc(split)
            if auc is None:
                log.info("tune has no labelled anomalies (or no normals): keeping %s",
                         label(candidates[0][0], scores[0]))
                return with_score(candidates[0][1], scores[0]), None, {}
            name = label(map_choice, score)
            aucs[name], tunes[name] = auc, (candidate, split)
    chosen = pick(aucs)
    log.info("%s, chosen on tune (AUROC %s)", chosen,
             ", ".join(f"{name}: {auc:.3f}" for name, auc in aucs.items()))
    return (*tunes[chosen], aucs)


def choose_heat(
    detector: Detector, data: PreparedDataset, tune: SplitScores | None = None
) -> tuple[Detector, SplitScores | None, dict[str, float]]:
    """(detector with the chosen heat map, its tune scores or None, {heat map: tune pixel
    AUROC}) when the family's heat knob is ``auto``: ``same`` (the scored map) unless another
    map beats its tune pixel AUROC by more than ``MARGIN``. ``tune``: the detector's tune
    scores when already computed (``choose_map``'s), reused for ``same``. Without masked
    anomalies in tune it stays ``same`` and the AUROCs are empty. The detector is returned
    unchanged (with ``tune``) when the knob is not ``auto``."""
    knob = detector.family.heat_knob
    if knob is None or detector.record.spec["model"].get(knob) != AUTO:
        return detector, tune, {}
    scored_map = detector.record.spec["model"].get(detector.family.map_knob)
    aucs: dict[str, float] = {}
    chosen_by: dict[str, tuple[Detector, SplitScores]] = {}
    for choice in (SAME_HEAT, *(c for c in detector.family.map_choices if c != scored_map)):
        try:
            reader = detector.with_model(**{knob: choice})
        except ValueError:  # this configuration cannot give that map
            continue
        split = tune if choice == SAME_HEAT and tune is not None else score_split(reader, data, "tune")
        auc = pixel_metrics(data, split).get("pixel_auroc")
        if auc is None:
            log.info("tune has no masked anomalies: the heat map is the scored map")
            return detector.with_model(**{knob: SAME_HEAT}), tune, {}
        aucs[choice], chosen_by[choice] = auc, (reader, split)
    chosen = pick(aucs)
    log.info("heat map %s, chosen on tune (pixel AUROC %s)", chosen,
             ", ".join(f"{name}: {auc:.3f}" for name, auc in aucs.items()))
    return (*chosen_by[chosen], aucs)
