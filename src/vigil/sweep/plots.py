"""The seeds' figure: total error, anomaly error and their ratio against the encoding size.

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
    "state",
)


def plot_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Rows with errors (completed trials), sorted by encoding size, only PLOT_FIELDS."""
    done = [r for r in rows if r.get("ratio") is not None and r.get("encoding_size") is not None]
    done.sort(key=lambda r: (r["encoding_size"], r["trial"]))
    return [{k: r.get(k) for k in PLOT_FIELDS} for r in done]


def write_plot_data(rows: list[dict[str, Any]], json_path: Path, csv_path: Path | None) -> None:
    """``json_path``: the rows as a JSON list (``dvc plots`` reads it); ``csv_path``: same rows."""
    data = plot_rows(rows)
    atomic_write_text(Path(json_path), json.dumps(data, indent=1) + "\n")
    if csv_path is not None:
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=PLOT_FIELDS)
        writer.writeheader()
        writer.writerows(data)
        atomic_write_text(Path(csv_path), buffer.getvalue())


def sweep_figure(rows: list[dict[str, Any]], png_path: Path, title: str = "") -> Path:
    """Errors (left axis, log) and ratio (right axis) vs encoding size C*H'*W' (log) of the
    completed trials; pruned trials as grey crosses at the ratio of their last epoch."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data = plot_rows(rows)
    fig, ax = plt.subplots(figsize=(7, 4.2), dpi=110)
    try:
        done = [r for r in data if r["state"] == "COMPLETE"]
        sizes = [r["encoding_size"] for r in done]
        ax.plot(
            sizes, [r["total_error"] for r in done], "o-", color="tab:blue", label="total error"
        )
        ax.plot(
            sizes, [r["anomaly_error"] for r in done], "s-", color="tab:red", label="anomaly error"
        )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("encoding size (C x H' x W')")
        ax.set_ylabel("mean error (tune split)")
        right = ax.twinx()
        right.plot(sizes, [r["ratio"] for r in done], "^--", color="tab:green", label="ratio")
        pruned = [r for r in data if r["state"] == "PRUNED"]
        if pruned:
            right.scatter(
                [r["encoding_size"] for r in pruned],
                [r["ratio"] for r in pruned],
                s=40,
                marker="x",
                color="tab:gray",
                label="pruned (at its last epoch)",
            )
        infeasible = [r for r in done if not r["feasible"]]
        if infeasible:
            right.scatter(
                [r["encoding_size"] for r in infeasible],
                [r["ratio"] for r in infeasible],
                s=90,
                facecolors="none",
                edgecolors="k",
                label="infeasible (normal error cap)",
            )
        right.set_ylabel("anomaly / total error")
        handles = ax.get_legend_handles_labels()[0] + right.get_legend_handles_labels()[0]
        ax.legend(handles, [h.get_label() for h in handles], loc="best", fontsize=8)
        ax.set_title(title or "sweep: error vs encoding size", fontsize=10)
        fig.tight_layout()
        return _save(fig, png_path)
    finally:
        plt.close(fig)


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
