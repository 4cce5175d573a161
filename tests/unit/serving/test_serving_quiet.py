"""Quiet output: `vigil pull` prints one line per pulled version (`--json`: the manifest), and
no progress bar reaches a log when stderr is not a terminal."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from conftest import make_model_dir, register

from vigil.cli import main

VIGIL = Path(sys.executable).with_name("vigil")
PROGRESS_ENV = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def test_pull_prints_one_line_and_the_manifest_with_json(image_registry, tmp_path, capsys):
    name, _ = image_registry
    dest = tmp_path / "deploy"
    assert main(["pull", "--model", name, "--dest", str(dest)]) == 0
    out = capsys.readouterr().out
    assert out.count("\n") == 1, out
    manifest = json.loads((dest / "manifest.json").read_text())
    assert out.startswith(f"{name} version 1 @champion -> {dest} (threshold 0.05,")
    assert manifest["checksum"][:12] in out

    register(name, make_model_dir(tmp_path / "v2", "image", seed=1))  # version 2, champion
    assert main(["pull", "--model", name, "--dest", str(dest), "--json"]) == 0
    manifest = json.loads(capsys.readouterr().out)
    assert manifest["version"] == "2" and manifest["alias"] == "champion"
    assert manifest == json.loads((dest / "manifest.json").read_text())

    assert main(["pull", "--model", name, "--dest", str(dest)]) == 0  # installed: a no-op
    assert capsys.readouterr().out.startswith(f"{name} version 2 @champion -> ")


def _pull(name: str, dest: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(VIGIL), "pull", "--model", name, "--dest", str(dest)],
        env=env, capture_output=True, text=True, timeout=300, check=False,
    )  # fmt: skip


@pytest.mark.slow  # two `vigil pull` subprocesses: ~1 min on a busy 2-core machine
def test_no_progress_bars_when_stderr_is_not_a_terminal(image_registry, tmp_path):
    """MLflow draws a tqdm bar per artifact download by default, also into a pipe; vigil turns
    it off when stderr is not a terminal. The control run (the bar forced on) shows that the
    check would see one."""
    name, _ = image_registry
    env = {k: v for k, v in os.environ.items() if k != PROGRESS_ENV}  # the CLI decides itself
    forced = _pull(name, tmp_path / "forced", {**env, PROGRESS_ENV: "true"})
    assert forced.returncode == 0, forced.stderr[-3000:]
    assert forced.stderr.count("Downloading artifacts") > 10  # a line per file into a pipe

    quiet = _pull(name, tmp_path / "quiet", env)
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    assert "Downloading artifacts" not in quiet.stderr and "it/s]" not in quiet.stderr
    assert "deprecated" not in quiet.stderr.lower(), quiet.stderr
    assert len(quiet.stdout.splitlines()) == 1, quiet.stdout
