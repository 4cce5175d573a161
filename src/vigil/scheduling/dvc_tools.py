"""Small tools the inbox and the retrain cycle share: DVC subprocesses and tracked versions,
content hashes, timestamps and atomic JSON writes."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import yaml

from vigil.atomic import atomic_write_json

_HASH_CHUNK = 1 << 20


class DvcError(RuntimeError):
    """A dvc command failed; the message holds its output tail."""


def utc_now() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def write_json_atomic(path: Path, data: object) -> Path:
    """Write JSON to ``path`` via a temp file in the same folder and a rename."""
    return atomic_write_json(path, data)


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        while chunk := handle.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def dvc_env() -> dict[str, str]:
    """Environment for dvc subprocesses: analytics off, this venv first on PATH (stage cmds)."""
    env = dict(os.environ)
    env["DVC_NO_ANALYTICS"] = "1"
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return env


def run_dvc(root: Path, *args: str, timeout: float | None = None) -> str:
    """Run ``dvc ARGS`` (this venv's) in ``root``; returns its output, raises DvcError on failure."""
    cmd = [sys.executable, "-m", "dvc", *args]
    try:
        done = subprocess.run(
            cmd,
            cwd=root,
            env=dvc_env(),
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise DvcError(f"`dvc {' '.join(args)}` timed out after {timeout} s") from None
    output = (done.stdout or "") + (done.stderr or "")
    if done.returncode != 0:
        raise DvcError(f"`dvc {' '.join(args)}` failed (exit {done.returncode}): {output[-2000:]}")
    return output


def dvc_file(extra_dir: Path) -> Path:
    return extra_dir.with_name(extra_dir.name + ".dvc")


def tracked_version(extra_dir: Path) -> str | None:
    """The md5 DVC recorded for ``extra_dir`` (``<extra_dir>.dvc``), or None when untracked."""
    path = dvc_file(extra_dir)
    if not path.is_file():
        return None
    outs = (yaml.safe_load(path.read_text()) or {}).get("outs") or [{}]
    return outs[0].get("md5")


