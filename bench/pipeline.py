"""Wall time of the whole pipeline: `make repro` on the default data, then a no-op `dvc repro`.

    .venv/bin/python bench/pipeline.py [--keep]

Clones the committed project into a temporary folder (so the working tree's outputs and stores
are not reused), points `make` at this checkout's virtual environment (environment creation is
not what is measured), runs `make repro` and then `dvc repro` again, which must skip every
stage. Each run gets its own MLflow and Optuna stores inside the clone. Prints both times and
the per-dataset quality figures the run produced.
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

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)  # the virtual environment running this script (not the base python)


def timed(args: list[str], cwd: Path, env: dict[str, str]) -> tuple[float, str]:
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, check=False)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed after {seconds:.0f} s:\n{result.stdout[-4000:]}"
                 f"\n{result.stderr[-4000:]}")
    return seconds, result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", action="store_true", help="keep the clone and print its path")
    args = parser.parse_args()

    if not (VENV / "bin" / "dvc").is_file():
        sys.exit(f"run this with the project's environment (.venv/bin/python), not {sys.executable}")
    work = Path(tempfile.mkdtemp(prefix="vigil-bench-pipeline-"))
    clone = work / "vigil"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (clone / ".venv").symlink_to(VENV)
    (VENV / ".installed").touch()  # the environment exists: measure the pipeline, not pip
    env = {k: v for k, v in os.environ.items() if k != "MLFLOW_TRACKING_URI"}
    env.pop("VIGIL_OPTUNA_STORAGE", None)

    full, _ = timed(["make", "repro"], clone, env)
    noop, out = timed([str(VENV / "bin" / "dvc"), "repro"], clone, env)
    skipped = "Running stage" not in out

    print(f"cores: {os.cpu_count()}  load average: {os.getloadavg()[0]:.1f}")
    print(f"make repro (default data, both datasets): {full:7.1f} s  (target < 600 s)")
    print(f"no-op dvc repro afterwards:               {noop:7.1f} s  all stages skipped: {skipped}")
    print(f"ratio full / no-op:                       {full / noop:7.0f}x")
    for dataset in ("capsules", "print"):
        metrics = clone / "reports" / dataset / "metrics.json"
        decision = clone / "reports" / dataset / "decision.json"
        if metrics.is_file():
            m = json.loads(metrics.read_text())
            keys = [k for k in ("image_auroc", "frame_auroc", "pixel_auroc", "aupro",
                                "recall_at_precision", "recall_at_threshold") if k in m]
            print(f"{dataset}: " + "  ".join(f"{k}={m[k]:.3f}" for k in keys))
        if decision.is_file():
            d = json.loads(decision.read_text())
            print(f"{dataset}: gate {'PASSED' if d.get('passed') else 'REJECTED'}, "
                  f"champion {d.get('champion_after')}")
    if args.keep:
        print(f"clone kept at {clone}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
