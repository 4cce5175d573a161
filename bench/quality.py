"""Quality on real data with the default params: magnetic tiles (images) and UCSD Ped2 (video).

    .venv/bin/python bench/quality.py [--tile ../shared/data/magnetic_tile]
        [--ped2 ../shared/data/ucsd_ped2] [--only tile|ped2] [--keep]

Clones the committed project into a temporary folder, points two datasets at the real folders
(`data.datasets.<name>.source`, the documented way to bring your own data; the only other change
is `prepare.image.channels: 1`, since the tiles are gray), and runs the real pipeline with
`dvc repro register@tile register@ped2`: prepare, sweep, train, evaluate, register. Nothing is
tuned to these sets. Prints what the evaluate stage measured on the test split (image and pixel
AUROC for the tiles, frame AUC for Ped2) and, for Ped2, whose two labelled clips are split one
to `tune` (sweep objective, threshold) and one to `test` (gate), the frame AUC of each clip and
of both together, scored by the same code as the evaluate stage.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

import vigil  # noqa: F401  (first: OpenMP defaults before torch loads, see vigil.threads)

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
SHARED = REPO.parent / "shared" / "data"


def run(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed (exit {result.returncode}) in {cwd}")
    return time.perf_counter() - start


def make_project(work: Path, datasets: dict[str, dict[str, str]]) -> Path:
    clone = work / "vigil"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    params_path = clone / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["data"]["datasets"] = datasets
    params["prepare"]["image"]["channels"] = 1
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    return clone


def ped2_clip_aucs(project: Path) -> dict[str, float]:
    """Frame AUC per labelled clip and over both, smoothed scores as the evaluate stage makes."""
    import numpy as np
    import torch
    from sklearn.metrics import roc_auc_score

    from vigil.config import load_params
    from vigil.data.prepared import PreparedDataset
    from vigil.evaluation.evaluate import model_prep, score_split
    from vigil.models import load_trained

    torch.set_num_threads(max(1, min(4, os.cpu_count() or 1)))
    params = load_params(project / "params.yaml")
    data = PreparedDataset.load(project / "data" / "prepared" / "ped2")
    model, spec = load_trained(project / "models" / "ped2")
    prep = model_prep(spec, params, "video")
    out: dict[str, float] = {}
    labels, scores = [], []
    for split in ("tune", "test"):
        s = score_split(model, data, split, prep, params.evaluate)
        for name, a, b in s.clips:
            keep = s.scored[a:b]
            y, p = s.labels[a:b][keep], s.scores[a:b][keep]
            if 0 < y.sum() < len(y):
                out[f"{name} ({split})"] = float(roc_auc_score(y, p))
            labels.append(y)
            scores.append(p)
    out["both clips"] = float(roc_auc_score(np.concatenate(labels), np.concatenate(scores)))
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=Path, default=SHARED / "magnetic_tile")
    parser.add_argument("--ped2", type=Path, default=SHARED / "ucsd_ped2")
    parser.add_argument("--only", choices=("tile", "ped2"))
    parser.add_argument("--keep", action="store_true", help="keep the project and print its path")
    args = parser.parse_args()
    if not (VENV / "bin" / "dvc").is_file():
        sys.exit(f"run this with the project's environment (.venv/bin/python), not {sys.executable}")

    wanted = {
        "tile": {"source": str(args.tile.resolve()), "modality": "image"},
        "ped2": {"source": str(args.ped2.resolve()), "modality": "video"},
    }
    if args.only:
        wanted = {args.only: wanted[args.only]}
    for name, spec in wanted.items():
        if not Path(spec["source"]).is_dir():
            sys.exit(f"{name}: dataset folder {spec['source']} not found")

    work = Path(tempfile.mkdtemp(prefix="vigil-bench-quality-"))
    project = make_project(work, wanted)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VIGIL_OPTUNA_STORAGE")}
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    seconds = run([str(VENV / "bin" / "dvc"), "repro", *(f"register@{n}" for n in wanted)],
                  project, env)

    print(f"\ncores: {os.cpu_count()}  pipeline wall time: {seconds:.0f} s")
    for name in wanted:
        metrics = json.loads((project / "reports" / name / "metrics.json").read_text())
        decision = json.loads((project / "reports" / name / "decision.json").read_text())
        keys = [k for k in ("image_auroc", "pixel_auroc", "aupro", "frame_auroc",
                            "frame_auroc_raw", "average_precision", "recall_at_precision",
                            "event_recall", "event_precision") if k in metrics]
        print(f"{name} (test split, n={metrics.get('n_test')}): "
              + "  ".join(f"{k}={metrics[k]:.3f}" for k in keys))
        print(f"{name}: gate {'PASSED' if decision.get('passed') else 'REJECTED'}"
              f" {'; '.join(decision.get('reasons') or [])}")
    if "ped2" in wanted:
        for clip, auc in ped2_clip_aucs(project).items():
            print(f"ped2 frame AUC, {clip}: {auc:.3f}")
    if args.keep:
        print(f"project kept at {project}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
