"""Retraining benchmark: wall time of a no-change cycle and of a full cycle on the default data.

    .venv/bin/python bench/retrain.py [--items 20] [--keep DIR]

Builds a temporary git + DVC copy of the project (dvc.yaml, pipelines/, src/, configs/, default
params.yaml restricted to the `capsules` dataset) with its own MLflow SQLite store, runs the
pipeline once (the baseline, timed too), then times:

- a no-change cycle in-process and as a fresh `vigil retrain` process (what cron pays);
- a full cycle: ``--items`` new normal capsule images (mirrored copies of generated ones, plus a
  corrupt and a duplicate one) -> ingest + `dvc add` -> `dvc repro` -> registry -> record.

The copy runs vigil's own dvc.yaml unchanged: `prepare` reads the ingested data
(``${data.extra_dir}``) and the cycle runs through the register stage's gate, whose verdict is
printed.
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

import cv2
import yaml

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))


def _env() -> dict[str, str]:
    env = dict(os.environ, DVC_NO_ANALYTICS="1", MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK="true")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def _run(cmd: list[str], cwd: Path) -> float:
    start = time.perf_counter()
    done = subprocess.run(cmd, cwd=cwd, env=_env(), capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(cmd)} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}")
    return time.perf_counter() - start


def build_project(root: Path) -> None:
    """Copy the project into ``root`` (git + DVC), restricted to the ``capsules`` dataset."""
    shutil.copy(REPO / "dvc.yaml", root / "dvc.yaml")
    params = yaml.safe_load((REPO / "params.yaml").read_text())  # default params, capsules only
    params["data"]["datasets"] = {"capsules": params["data"]["datasets"]["capsules"]}
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    for folder in ("pipelines", "configs", "src"):
        shutil.copytree(
            REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    retrain = yaml.safe_load((root / "configs/retrain.yaml").read_text())
    retrain["datasets"] = {"capsules": retrain["datasets"]["capsules"]}
    (root / "configs/retrain.yaml").write_text(yaml.safe_dump(retrain, sort_keys=False))
    extra = root / params["data"]["extra_dir"]
    extra.mkdir(parents=True)
    (extra / "README.md").write_text("ingested normal data: <extra_dir>/<dataset>/\n")
    _run(["git", "init", "-q"], root)
    _run([sys.executable, "-m", "dvc", "init", "-q"], root)


def drop_items(root: Path, n: int) -> None:
    good = sorted((root / "data/raw/capsules/train/good").iterdir())
    inbox = root / "inbox/capsules"
    inbox.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        image = cv2.imread(str(good[i % len(good)]))
        flipped = cv2.flip(image, 1 if i < len(good) else 0)
        cv2.imwrite(str(inbox / f"new{i:03d}.png"), flipped)
    shutil.copy(good[0], inbox / "duplicate.png")
    (inbox / "corrupt.png").write_bytes(good[1].read_bytes()[:200])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20, help="new normal images per full cycle")
    parser.add_argument("--keep", type=Path, default=None, help="build in this folder and keep it")
    args = parser.parse_args()
    root = args.keep or Path(tempfile.mkdtemp(prefix="vigil-bench-retrain-"))
    root.mkdir(parents=True, exist_ok=True)
    os.environ["MLFLOW_TRACKING_URI"] = f"sqlite:///{root / 'mlflow.db'}"
    os.environ.update({k: v for k, v in _env().items() if k in ("DVC_NO_ANALYTICS", "PATH")})
    try:
        build_project(root)
        baseline = _run([sys.executable, "-m", "dvc", "repro"], root)
        from vigil.scheduling.retrain import run_cycle

        os.chdir(root)
        no_change = []
        for _ in range(2):  # the first pays the imports (mlflow) and the store's schema check
            start = time.perf_counter()
            quiet = run_cycle(root, echo=lambda _: None)
            no_change.append(time.perf_counter() - start)
            assert quiet["status"] == "no_change", quiet
        code = (
            "import argparse, sys; from vigil.scheduling.cli import register\n"
            "p = argparse.ArgumentParser(); register(p.add_subparsers())\n"
            "a = p.parse_args(['retrain']); sys.exit(a.handler(a))"
        )
        cli = [sys.executable, "-c", code]
        no_change_process = _run(cli, root)
        drop_items(root, args.items)
        start = time.perf_counter()
        record = run_cycle(root, echo=lambda _: None)
        full = time.perf_counter() - start
    finally:
        if args.keep is None:
            shutil.rmtree(root, ignore_errors=True)
    entry = record["datasets"]["capsules"]
    print(
        json.dumps(
            {
                "baseline_dvc_repro_s": round(baseline, 2),
                "no_change_cycle_cold_s": round(no_change[0], 3),
                "no_change_cycle_warm_s": round(no_change[1], 3),
                "no_change_cycle_fresh_process_s": round(no_change_process, 2),
                "full_cycle_s": round(full, 2),
                "full_cycle_status": record["status"],
                "full_cycle_steps_s": record["durations_s"],
                "ingested": entry.get("ingested"),
                "quarantined": len(entry.get("quarantined", {})),
                "repro_commands": record["repro_commands"],
                "verdict": entry.get("verdict"),
                "promoted": entry.get("promoted"),
                "gate_reasons": entry.get("reasons"),
                "champion": [entry.get("champion_before"), entry.get("champion_after")],
                "cpu_count": os.cpu_count(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
