"""`dvc exp run` as DVC users type it, in the README's environment: `.venv/bin/dvc exp run -S
evaluate.median_blur=5` with the venv NOT on PATH (no `make`, no activated venv). The stage
commands go through `pipelines/run.sh`, which finds `<project root>/.venv/bin/python`, also
from `dvc exp run --temp`'s folder under `.dvc/tmp/exps/`. Without an environment a stage fails
at once with one line saying what to do."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).parent))  # the pipeline test's helpers live beside
from test_integration_pipeline import (  # noqa: E402 (after the sys.path insert)
    _run,
    _write_params,
    project,  # noqa: F401 (the fixture)
)

VENV = Path(sys.executable).parent.parent

# The smallest pipeline that still runs every stage: no sweep trials, 2 epochs, few images.
TINY = {
    "generate": {"capsules.n_train": 48, "capsules.n_test_good": 10,
                 "capsules.n_test_per_defect": 4},
    "sweep": {"n_trials": 0},
    "train": {"max_epochs": 2},
}


def _without_venv(env: dict[str, str]) -> dict[str, str]:
    """``env`` whose PATH holds no folder of this venv (as in a shell without `make`)."""
    venv_bin = (VENV / "bin").resolve()
    path = [p for p in env["PATH"].split(os.pathsep) if p and Path(p).resolve() != venv_bin]
    return {**env, "PATH": os.pathsep.join(path)}


def _commit(root: Path, env: dict[str, str], message: str) -> None:
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    _run([*git, "add", "-A"], root, env)
    _run([*git, "commit", "-qm", message], root, env)


def test_dvc_exp_run_works_without_the_venv_on_path(project):  # noqa: F811 (the fixture)
    root, env = project
    env = _without_venv(env)
    dvc = str(VENV / "bin" / "dvc")
    _write_params(root / "params.yaml", **TINY)
    _commit(root, env, "tiny params")

    # no environment in the project: the first stage stops at once, saying what to do
    failed = subprocess.run(
        [dvc, "repro", "generate"], cwd=root, env=env, capture_output=True, text=True, check=False
    )
    assert failed.returncode != 0
    assert "run `make venv`" in failed.stdout + failed.stderr, failed.stderr

    (root / ".venv").symlink_to(VENV)  # the README's `make venv`, shared with this checkout
    out = _run([dvc, "exp", "run", "-S", "evaluate.median_blur=5", "--name", "blur5"], root, env)
    ran = {line.split("'")[1] for line in out.splitlines() if line.startswith("Running stage")}
    assert {"generate", "prepare@capsules", "evaluate@capsules", "register@capsules"} <= ran
    metrics = json.loads((root / "reports" / "capsules" / "metrics.json").read_text())
    assert "image_auroc" in json.dumps(metrics)

    # --temp runs the stages in <root>/.dvc/tmp/exps/<random>/, where no .venv is
    _commit(root, env, "blur5")
    out = _run([dvc, "exp", "run", "--temp", "-S", "evaluate.median_blur=3", "--name", "blur3"],
               root, env)
    shown = json.loads(_run([dvc, "exp", "show", "--json"], root, env))
    names = [exp.get("name") for baseline in shown for exp in baseline.get("experiments") or []]
    assert "blur3" in names, out


def test_make_exp_show_is_the_headline_metrics_and_the_params_that_differ(project):  # noqa: F811
    """`dvc exp show` lists every metric, param and dependency hash (over 200 columns on this
    project); `make exp-show` (DVC's --only-changed / --keep / --drop) keeps the headline
    metrics and the params whose value differs between the rows. A workspace edit stands in for
    an experiment: both are rows beside the baseline commit."""
    root, env = project
    params = yaml.safe_load((root / "params.yaml").read_text())
    params["evaluate"]["median_blur"] += 2
    (root / "params.yaml").write_text(yaml.safe_dump(params))

    def columns(command: list[str]) -> list[str]:
        return _run(command, root, env).splitlines()[0].split(",")

    everything = columns([str(VENV / "bin" / "dvc"), "exp", "show", "--csv"])
    # -o: the shared venv's install stamp counts as up to date (make must not reinstall it)
    shown = columns(["make", "-s", "-o", f"{VENV}/.installed", f"VENV={VENV}", "exp-show",
                     "EXP_SHOW_ARGS=--csv"])
    metrics = ["image_auroc", "frame_auroc", "event_recall"] + [
        f"reports/{d}/metrics.json:{m}"
        for d in ("capsules", "print")
        for m in ("recall_at_threshold", "false_alarm_rate")
    ]
    assert len(everything) > 200
    assert sorted(shown) == sorted(["Experiment", "Created", *metrics, "evaluate.median_blur"])
