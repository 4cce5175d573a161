"""The real `dvc repro prepare` (generate + prepare) in a temporary git repo on tiny params:
first run builds everything, a second run skips everything, a prepare param change reruns only
the prepare stages."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from vigil.data.prepared import PreparedDataset

REPO = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent

TINY_GENERATE = {
    "capsules": {"image_size": 32, "n_train": 6, "n_test_good": 2, "n_test_per_defect": 2},
    "print": {
        "frame_size": 32,
        "fps": 30,
        "n_train_videos": 2,
        "n_test_videos": 2,
        "frames_per_video": 40,
        "anomalies_per_test_video": 1,
    },
}


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {
        **os.environ,
        "PATH": f"{VENV_BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "DVC_NO_ANALYTICS": "1",
        "GIT_TERMINAL_PROMPT": "0",
    }
    result = subprocess.run(
        args, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=600
    )
    assert result.returncode == 0, f"{' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
    return result


def _tiny_params(path: Path, channels: int) -> None:
    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["generate"].update({k: {**params["generate"][k], **v} for k, v in TINY_GENERATE.items()})
    params["prepare"]["image"].update({"size": [16, 16], "channels": channels})
    params["prepare"]["video"].update({"size": [16, 16]})
    path.write_text(yaml.safe_dump(params, sort_keys=False))


@pytest.fixture()
def dvc_repo(tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    shutil.copy(REPO / "dvc.yaml", repo / "dvc.yaml")
    shutil.copytree(
        REPO / "pipelines", repo / "pipelines", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(
        REPO / "src" / "vigil", repo / "src" / "vigil", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(REPO / "configs", repo / "configs")
    (repo / "data" / "extra").mkdir(parents=True)
    shutil.copy(REPO / "data" / "extra" / "README.md", repo / "data" / "extra" / "README.md")
    _tiny_params(repo / "params.yaml", channels=3)
    _run(["git", "init", "-q"], repo)
    _run([str(VENV_BIN / "dvc"), "init", "-q"], repo)
    shutil.copy(REPO / ".dvc" / "config", repo / ".dvc" / "config")
    _run(["git", "add", "-A"], repo)
    _run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-qm", "init"], repo)
    return repo


def _ran(output: str) -> set[str]:
    return {line.split("'")[1] for line in output.splitlines() if line.startswith("Running stage")}


def test_dvc_repro_generate_prepare_then_skip_then_rerun_prepare_only(dvc_repo: Path):
    dvc = str(VENV_BIN / "dvc")
    first = _run([dvc, "repro", "prepare"], dvc_repo)
    assert _ran(first.stdout) == {"generate", "prepare@capsules", "prepare@print"}, first.stdout
    capsules = PreparedDataset.load(dvc_repo / "data" / "prepared" / "capsules")
    assert capsules.frames.shape[1:] == (16, 16, 3)
    assert PreparedDataset.load(dvc_repo / "data" / "prepared" / "print").modality == "video"
    assert (dvc_repo / "dvc.lock").is_file()

    second = _run([dvc, "repro", "prepare"], dvc_repo)
    assert _ran(second.stdout) == set(), second.stdout

    _tiny_params(dvc_repo / "params.yaml", channels=1)
    third = _run([dvc, "repro", "prepare"], dvc_repo)
    assert _ran(third.stdout) == {"prepare@capsules", "prepare@print"}, third.stdout
    assert PreparedDataset.load(dvc_repo / "data" / "prepared" / "capsules").channels == 1
    assert "Data and pipelines are up to date" in _run([dvc, "status", "prepare"], dvc_repo).stdout
