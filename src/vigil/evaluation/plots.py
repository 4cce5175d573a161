"""Evaluation figures (matplotlib, Agg backend: no display needed). Each function writes one PNG
and returns its path; inputs are plain arrays so the figures can be redrawn from saved data."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.ticker import MaxNLocator

from vigil.atomic import atomic_write

DPI = 110
#: Defect types get these colors in order; green is kept for ``good``.
DEFECT_COLORS = ["tab:orange", "tab:red", "tab:purple", "tab:blue", "tab:brown", "tab:pink",
                 "tab:olive", "tab:cyan", "tab:gray"]


def _save(fig, path: Path) -> Path:
    """Write the figure atomically (temp file, then rename) and close it."""
    try:
        return atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=DPI, bbox_inches="tight"),
                            suffix=".png")
    finally:
        plt.close(fig)


def plot_pr(
    precision: np.ndarray,
    recall: np.ndarray,
    path: Path,
    target_precision: float,
    operating: tuple[float, float] | None = None,
    title: str = "Precision-recall (test)",
) -> Path:
    """PR curve with the target precision line and the operating point (recall, precision)."""
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.step(recall, precision, where="post", color="tab:blue", label="model")
    ax.axhline(target_precision, color="tab:red", ls="--", lw=1,
               label=f"target precision {target_precision:g}")
    if operating is not None:
        ax.plot(*operating, "o", color="tab:red", ms=7, label="calibrated threshold")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1.02), ylim=(0, 1.02), title=title)
    ax.grid(alpha=0.3)
    ax.legend(loc="lower left", fontsize=8)
    return _save(fig, path)


def plot_roc(
    fpr: np.ndarray, tpr: np.ndarray, auroc: float, path: Path, title: str = "ROC (test)"
) -> Path:
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.plot(fpr, tpr, color="tab:blue", label=f"AUROC {auroc:.3f}")
    ax.plot([0, 1], [0, 1], color="gray", ls=":", lw=1)
    ax.set(xlabel="false-positive rate", ylabel="true-positive rate", title=title,
           xlim=(0, 1), ylim=(0, 1.02))
    ax.grid(alpha=0.3)
    ax.legend(loc="lower right", fontsize=8)
    return _save(fig, path)


def plot_score_histograms(
    scores: np.ndarray, defects: Sequence[str], threshold: float, path: Path,
    title: str = "Scores per defect type (test)",
) -> Path:
    """One histogram per defect type on shared bins, ``good`` first, threshold marked."""
    scores = np.asarray(scores, dtype=np.float64)
    defects = np.asarray(defects)
    names = sorted(set(defects.tolist()), key=lambda d: (d != "good", d))
    finite = scores[np.isfinite(scores)]
    bins = np.histogram_bin_edges(np.r_[finite, threshold], bins=30)
    fig, ax = plt.subplots(figsize=(6.5, 4))
    colors = iter(DEFECT_COLORS * (1 + len(names) // len(DEFECT_COLORS)))
    for name in names:
        mine = scores[(defects == name) & np.isfinite(scores)]
        color = "tab:green" if name == "good" else next(colors)
        ax.hist(mine, bins=bins, alpha=0.55, color=color,
                label=f"{name} ({mine.size})", histtype="stepfilled", edgecolor="black", lw=0.4)
    ax.axvline(threshold, color="black", ls="--", lw=1.2, label="threshold")
    ax.yaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set(xlabel="anomaly score", ylabel="items", title=title)
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_examples(
    panels: Sequence[dict], path: Path, title: str
) -> Path:
    """A grid, one row per example: input, heat-map overlay, and ground-truth mask if any.

    Each panel: ``image`` uint8 (H, W[, C]) RGB/gray, ``overlay`` uint8 (H, W, 3) BGR, optional
    ``mask`` (H, W) in [0, 1] ground truth, optional ``pred_mask`` (H, W) in [0, 1] (outlined
    at 0.5), ``caption`` str. A cell is at least 2.2 in wide, and wide enough to show the
    largest image pixel for pixel.
    """
    rows = max(1, len(panels))
    height, width = np.max([p["image"].shape[:2] for p in panels], axis=0) if panels else (1, 1)
    cell_w = max(2.2, width / DPI + 0.2)
    cell_h = cell_w * height / width + 0.15  # + the caption
    fig, axes = plt.subplots(rows, 3, figsize=(3 * cell_w, cell_h * rows), squeeze=False,
                             layout="constrained")
    for ax in axes.ravel():
        ax.axis("off")
    for ax, name in zip(axes[0], ("input", "heat map (white: flagged)", "ground truth")):
        ax.set_title(name, fontsize=8)
    if not panels:
        axes[0, 1].text(0.5, 0.5, "none", ha="center", va="center", fontsize=12)
    for row, panel in zip(axes, panels):
        image = panel["image"]
        gray = image.ndim == 2 or image.shape[-1] == 1
        row[0].imshow(image.squeeze(-1) if image.ndim == 3 and gray else image,
                      cmap="gray" if gray else None, vmin=0, vmax=255)
        row[0].text(0.0, -0.03, panel.get("caption", ""), transform=row[0].transAxes,
                    fontsize=7, va="top", ha="left")
        row[1].imshow(panel["overlay"][..., ::-1])
        if panel.get("pred_mask") is not None and panel["pred_mask"].any():
            row[1].contour(panel["pred_mask"], levels=[0.5], colors="white", linewidths=0.8)
        if panel.get("mask") is not None and np.asarray(panel["mask"]).any():
            row[2].imshow(panel["mask"], cmap="gray", vmin=0, vmax=1)
        else:
            row[2].text(0.5, 0.5, "no mask", ha="center", va="center", fontsize=8,
                        transform=row[2].transAxes)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def plot_timeline(
    clips: Sequence[dict], threshold: float, path: Path, title: str = "Score over time (test)"
) -> Path:
    """Per clip: smoothed score over frames, raw score faint, the threshold, shaded labelled
    anomalous spans. Each clip: ``name``, ``scores`` (T,), ``raw`` (T,), ``labels`` (T,)."""
    from vigil.evaluation.video_metrics import runs

    n = max(1, len(clips))
    fig, axes = plt.subplots(n, 1, figsize=(9, 1.2 + 1.9 * n), squeeze=False, sharey=True,
                             layout="constrained")
    for ax, clip in zip(axes[:, 0], clips):
        frames = np.arange(len(clip["scores"]))
        for k, (start, stop) in enumerate(runs(np.asarray(clip["labels"]) > 0)):
            ax.axvspan(start - 0.5, stop - 0.5, color="tab:orange", alpha=0.25,
                       label="labelled anomaly" if k == 0 else None)
        if clip.get("raw") is not None:
            ax.plot(frames, clip["raw"], color="tab:blue", alpha=0.3, lw=0.8, label="raw score")
        ax.plot(frames, clip["scores"], color="tab:blue", lw=1.5, label="smoothed score")
        ax.axhline(threshold, color="tab:red", ls="--", lw=1, label="threshold")
        ax.set_title(str(clip["name"]), fontsize=8, loc="left")
        ax.set_ylabel("score", fontsize=8)
        ax.grid(alpha=0.3)
    axes[-1, 0].set_xlabel("frame")
    fig.legend(*axes[0, 0].get_legend_handles_labels(), fontsize=8, loc="outside lower center",
               ncol=4, frameon=False)
    fig.suptitle(title, fontsize=10)
    return _save(fig, path)
