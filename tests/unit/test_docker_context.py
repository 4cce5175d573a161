"""The Docker build context: `.dockerignore` keeps the environment, the stores and the data out
of `docker build .`, and keeps in everything the Dockerfile copies."""

from __future__ import annotations

import re
from pathlib import Path

import pathspec

REPO = Path(__file__).resolve().parents[2]


def _ignored() -> pathspec.PathSpec:
    lines = (REPO / ".dockerignore").read_text().splitlines()
    return pathspec.PathSpec.from_lines("gitwildmatch", lines)


def _copied() -> list[str]:
    """The sources of the Dockerfile's COPY lines that read the build context."""
    sources = []
    for line in (REPO / "Dockerfile").read_text().splitlines():
        match = re.match(r"COPY\s+(?!--from)(.+)\s+\S+$", line.strip())
        if match:
            sources += match.group(1).split()
    return sources


def test_the_context_holds_what_the_image_copies_and_nothing_big():
    spec = _ignored()
    copied = _copied()
    assert "src" in copied and "pyproject.toml" in copied
    for source in copied:
        files = [source] if (REPO / source).is_file() else [
            str(p.relative_to(REPO)) for p in (REPO / source).rglob("*.py")
        ] or [f"{source}/x"]
        kept_out = [f for f in files if spec.match_file(f)]
        assert not kept_out, f"the Dockerfile copies {source} but .dockerignore drops {kept_out}"
    for heavy in (".venv/bin/python", "data/raw/capsules/a.png", "mlflow.db", "optuna.db",
                  "mlartifacts/1/model.pt", "models/capsules/weights.safetensors",
                  ".dvc/cache/files/md5/ab/cd", ".git/objects/ab", "reports/capsules/x.png",
                  "src/vigil/__pycache__/cli.cpython-311.pyc", "deploy/capsules/current"):
        assert spec.match_file(heavy), f".dockerignore lets {heavy} into the build context"
