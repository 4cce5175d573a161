"""Atomic file writes: every output vigil writes appears whole or not at all.

A temp file is written in the destination folder (same file system) and renamed over the
destination with ``os.replace``; a failure removes the temp file and leaves any previous file
untouched. Files get the usual permissions (0666 minus the umask), not mkstemp's 0600.
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_MODE = _file_mode()


def atomic_write(
    path: Path | str, write: Callable[[Path], Any], suffix: str = ".tmp", mode: int | None = None
) -> Path:
    """Call ``write(tmp_path)``, then rename the temp file over ``path``; returns ``path``.

    ``suffix`` lets writers that pick a format from the extension (``savefig``, ``cv2``) see it.
    ``mode``: the file's permissions (e.g. 0o600 for owner-only), set before it appears.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        write(tmp)
        os.chmod(tmp, _MODE if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    return path


def atomic_write_text(path: Path | str, text: str) -> Path:
    return atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def atomic_write_json(path: Path | str, data: Any, indent: int = 1) -> Path:
    """JSON with a trailing newline; values JSON cannot hold are written with ``str``."""
    return atomic_write_text(path, json.dumps(data, indent=indent, default=str) + "\n")
