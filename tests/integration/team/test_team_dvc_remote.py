"""A DVC remote on the team's S3 store (dvc-s3 against the real S3-compatible server).

Machine A (a temporary git + DVC repository) adds data and `dvc push`es it to
``s3://<bucket>/dvcstore`` (``endpointurl`` pointing at the server, keys from the environment as
on a real box); machine B clones the repository (git only: no data) and `dvc pull`s identical
bytes.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.team_stores import S3Store

DVC = str(Path(sys.executable).with_name("dvc"))


def run(*cmd: str, cwd: Path, env: dict[str, str], check: bool = True):
    done = subprocess.run(
        cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300, check=False
    )
    if check:
        assert done.returncode == 0, f"{' '.join(cmd)}:\n{done.stdout}\n{done.stderr}"
    return done


def machine_env(s3: S3Store, home: Path) -> dict[str, str]:
    env = {**os.environ, **s3.env(), "DVC_NO_ANALYTICS": "1", "HOME": str(home)}
    env.update(GIT_AUTHOR_NAME="a", GIT_AUTHOR_EMAIL="a@x", GIT_COMMITTER_NAME="a",
               GIT_COMMITTER_EMAIL="a@x")
    return env


def digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.slow  # S3 server start + dvc push/pull: over a minute on a busy 2-core box
def test_dvc_push_on_one_machine_pull_on_another(team_s3: S3Store, tmp_path):
    env = machine_env(team_s3, tmp_path)
    a = tmp_path / "machine-a"
    a.mkdir()
    run("git", "init", "-q", cwd=a, env=env)
    run(DVC, "init", "-q", cwd=a, env=env)
    run(DVC, "remote", "add", "-d", "team", f"s3://{team_s3.bucket}/dvcstore", cwd=a, env=env)
    run(DVC, "remote", "modify", "team", "endpointurl", team_s3.endpoint, cwd=a, env=env)
    data = a / "data" / "extra" / "capsules"
    data.mkdir(parents=True)
    rng = np.random.default_rng(0)
    for i in range(3):
        np.save(data / f"item{i}.npy", rng.integers(0, 255, (16, 16, 3), dtype=np.uint8))
    run(DVC, "add", "-q", "data/extra/capsules", cwd=a, env=env)
    run("git", "add", "-A", cwd=a, env=env)
    run("git", "commit", "-q", "-m", "data", cwd=a, env=env)
    run(DVC, "push", "-q", cwd=a, env=env)
    assert any(k.startswith("dvcstore/files/md5/") for k in team_s3.keys("dvcstore/"))

    b = tmp_path / "machine-b"
    run("git", "clone", "-q", str(a), str(b), cwd=tmp_path, env=env)
    assert not (b / "data" / "extra" / "capsules").exists(), "git carried the data"
    run(DVC, "pull", "-q", cwd=b, env=env)
    for item in sorted(data.iterdir()):
        pulled = b / "data" / "extra" / "capsules" / item.name
        assert digest(pulled) == digest(item), item.name

