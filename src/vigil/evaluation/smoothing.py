"""``evaluate.smoothing_window: auto``: the video score's moving-average window, chosen on tune.

A trailing mean over a few frames steadies a noisy frame score on long anomalies (real footage:
a cart crossing for seconds) and blurs short ones and adds a frame of alarm after each (the
built-in melt-pool events last ~8 frames). Which one a line has is a property of its data, so
the window is the one of ``SMOOTHING_WINDOWS`` with the highest frame AUROC on the labelled tune
split (ties: the shorter), never chosen on test; without both classes in tune it is
``SMOOTHING_FALLBACK``. Smoothing only re-averages the raw scores, so every split is re-smoothed
from the raw scores the detector already gave (``postprocess.trailing_mean``, the detector's own
smoothing).
"""

from __future__ import annotations

import dataclasses
import logging

import numpy as np

from vigil.config import SMOOTHING_FALLBACK, SMOOTHING_WINDOWS
from vigil.detector.postprocess import trailing_mean
from vigil.evaluation.splits import SplitScores, split_auroc

log = logging.getLogger(__name__)


def resmoothed(split: SplitScores, window: int) -> SplitScores:
    """The split with ``scores`` = each clip's trailing mean of ``raw`` over ``window`` frames."""
    scores = np.full_like(split.raw, np.nan)
    for _, start, stop in split.clips:
        scores[start:stop] = trailing_mean(split.raw[start:stop], window)
    return dataclasses.replace(split, scores=scores)


def choose_window(tune: SplitScores) -> tuple[int, dict[int, float]]:
    """(window, {window: tune frame AUROC}); the AUROCs are empty when tune cannot decide."""
    aucs: dict[int, float] = {}
    for window in SMOOTHING_WINDOWS:
        auc = split_auroc(resmoothed(tune, window))
        if auc is None:
            return SMOOTHING_FALLBACK, {}
        aucs[window] = auc
    best = max(aucs.values())
    window = min(w for w, auc in aucs.items() if auc >= best - 1e-9)
    log.info("smoothing window %d frames, chosen on tune (frame AUROC %s)", window,
             ", ".join(f"{w}: {auc:.3f}" for w, auc in aucs.items()))
    return window, aucs
