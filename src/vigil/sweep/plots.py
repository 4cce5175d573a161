"""The sweep's figure: the ratio (objective) and the errors against the encoding size.

``write_plot_data`` writes the rows DVC plots read (JSON list + CSV, one row per finished trial,
sorted by encoding size); ``sweep_figure`` draws the PNG logged to the study's parent run;
``skipped_figure`` stands in for it when ``sweep.n_trials`` is 0. PNGs are written atomically.
"""

from __future__ import annotations

import csv
import io
import json
import math
from pathlib import Path
from typing import Any

from vigil.atomic import atomic_write, atomic_write_text

PLOT_FIELDS = (
    "trial",
    "encoding_size",
    "encoding_shape",
    "total_error",
    "anomaly_error",
    "normal_error",
    "ratio",
    "feasible",
    "objective",
    "evidence",  # what the ratio was measured on: labelled tune anomalies, or synthetic ones
    "state",
    "chosen",
    "chosen_trial_ratio",  # the ratio on the chosen trial's row, empty elsewhere: DVC's marker
)


def plot_rows(rows: list[dict[str, Any]], chosen: int | None = None) -> list[dict[str, Any]]:
    """Rows with errors (completed trials), sorted by encoding size, only PLOT_FIELDS; the
    ``chosen`` trial's row says so (``chosen``, ``chosen_trial_ratio``)."""
    done = [r for r in rows if r.get("ratio") is not None and r.get("encoding_size") is not None]
    done.sort(key=lambda r: (r["encoding_size"], r["trial"]))
    out = []
    for r in done:
        row = {k: r.get(k) for k in PLOT_FIELDS}
        row["chosen"] = r["trial"] == chosen
        row["chosen_trial_ratio"] = r["ratio"] if row["chosen"] else None
        out.append(row)
    return out


def write_plot_data(
    rows: list[dict[str, Any]], json_path: Path, csv_path: Path | None, chosen: int | None = None
) -> None:
    """``json_path``: the rows as a JSON list (``dvc plots`` reads it); ``csv_path``: same rows.
    ``chosen``: the number of the chosen trial, marked in its row."""
    data = plot_rows(rows, chosen)
    atomic_write_text(Path(json_path), json.dumps(data, indent=1) + "\n")
    if csv_path is not None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=PLOT_FIELDS)
        writer.writeheader()
        writer.writerows(data)
        atomic_write_text(Path(csv_path), buffer.getvalue())


def sweep_figure(
    rows: list[dict[str, Any]], png_path: Path, title: str = "", chosen: int | None = None
) -> Path:
    """Two panels against the encoding size C*H'*W' (log): the anomaly/total error ratio (the
    objective) on top, the total and anomaly errors (log) below. One marker per trial and no
    lines (neighbouring sizes are different architectures); pruned trials as grey crosses at
    their last epoch's values, infeasible ones ringed; the ``chosen`` trial starred and named."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = plot_rows(rows)
    done = [r for r in data if r["state"] == "COMPLETE"]
    pruned = [r for r in data if r["state"] == "PRUNED"]
    best = next((r for r in data if r["trial"] == chosen), None)
    fig, (top, bottom) = plt.subplots(2, 1, sharex=True, figsize=(7, 6.4), dpi=110)
    try:
        _scatter(top, done, "ratio", "o", "tab:green", "trial (completed)")
        _scatter(top, pruned, "ratio", "x", "tab:gray", "pruned (at its last epoch)")
        _ring(top, [r for r in done if not r["feasible"]], "ratio")
        top.set_ylabel("anomaly error / total error")
        top.set_title(title or "sweep: objective vs encoding size", fontsize=10)
        _scatter(bottom, done, "total_error", "o", "tab:blue", "total error")
        _scatter(bottom, done, "anomaly_error", "s", "tab:red", "anomaly error")
        bottom.set_yscale("log")
        bottom.set_ylabel("mean error (tune split)")
        bottom.set_xlabel("encoding size (C x H' x W', log)")
        bottom.set_xscale("log")
        bottom.xaxis.set_major_locator(matplotlib.ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
        bottom.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
        bottom.xaxis.set_minor_formatter(matplotlib.ticker.NullFormatter())
        if best is not None:
            _mark_chosen(top, bottom, best)
        for ax in (top, bottom):
            if ax.get_legend_handles_labels()[0]:
                ax.legend(loc="best", fontsize=8)
            ax.grid(alpha=0.3, which="both")
        fig.tight_layout()
        return _save(fig, png_path)
    finally:
        plt.close(fig)


def _scatter(ax, rows: list[dict[str, Any]], key: str, marker: str, color: str, label: str):
    if rows:
        ax.scatter([r["encoding_size"] for r in rows], [r[key] for r in rows], s=36,
                   marker=marker, color=color, label=label, zorder=2)


def _ring(ax, rows: list[dict[str, Any]], key: str) -> None:
    if rows:
        ax.scatter([r["encoding_size"] for r in rows], [r[key] for r in rows], s=110,
                   facecolors="none", edgecolors="k", label="infeasible (normal error cap)",
                   zorder=3)


def _mark_chosen(top, bottom, best: dict[str, Any]) -> None:
    """A star on the chosen trial in both panels, named (trial, encoding) in the top one."""
    size = best["encoding_size"]
    top.scatter([size], [best["ratio"]], s=260, marker="*", color="gold", edgecolors="k",
                label=f"chosen: trial {best['trial']}", zorder=4)
    top.annotate(f"trial {best['trial']}: {best['encoding_shape']} = {size}", (size, best["ratio"]),
                 textcoords="offset points", xytext=(-10, -4), ha="right", va="top", fontsize=8)
    for key in ("total_error", "anomaly_error"):
        bottom.scatter([size], [best[key]], s=200, marker="*", color="gold", edgecolors="k",
                       zorder=4)


def skipped_figure(png_path: Path, model: dict[str, Any], encoding_shape: tuple[int, ...]) -> Path:
    """The PNG of a skipped sweep (``sweep.n_trials: 0``): says so, and shows the configured
    model and its encoding (C x H' x W' = size), which train uses as is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    shape = " x ".join(map(str, encoding_shape))
    size = math.prod(int(d) for d in encoding_shape)
    knobs = ", ".join(f"{k}={v}" for k, v in model.items())
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    try:
        ax.axis("off")
        lines = (
            ("sweep skipped (sweep.n_trials = 0)", 14, "bold"),
            ("train uses the configured model as is", 10, "normal"),
            (f"encoding (C x H' x W'): {shape} = {size}", 12, "normal"),
            (knobs, 8, "normal"),
        )
        for row, (text, fontsize, weight) in enumerate(lines):
            ax.text(0.5, 0.8 - 0.2 * row, text, ha="center", va="center", wrap=True,
                    fontsize=fontsize, fontweight=weight, transform=ax.transAxes)
        return _save(fig, png_path)
    finally:
        plt.close(fig)


def _save(fig, png_path: Path) -> Path:
    """``fig`` as a PNG at ``png_path``, whole or not at all (temp file + rename)."""
    return atomic_write(png_path, lambda tmp: fig.savefig(tmp, format="png"), suffix=".png")
