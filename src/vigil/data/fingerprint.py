"""Content fingerprint of a folder of ingested data (``data/extra/<dataset>``).

The ``extra@<dataset>`` stage writes it to a small file that ``prepare@<dataset>`` depends on,
in place of the folder itself: a DVC dependency must exist, and a dataset added with two lines
of params.yaml has no folder yet. The fingerprint of a missing folder is that of an empty one.

The hash is sha256 over every file's path relative to the folder (sorted, POSIX separators), its
size and its bytes (read in chunks), so renaming, editing, adding or removing any file changes it.
``.gitkeep`` placeholders (what git tracks so a clone has the folder) are left out.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path

IGNORED_NAMES = frozenset({".gitkeep"})
_CHUNK = 1 << 20


@dataclass(frozen=True)
class FolderFingerprint:
    files: int  # files hashed (placeholders excluded)
    sha256: str  # sha256 of nothing when files == 0


def fingerprint_folder(folder: Path | str) -> FolderFingerprint:
    """Fingerprint of the files under ``folder`` (recursively); a missing folder has none."""
    folder = Path(folder)
    files = (
        sorted(
            (p for p in folder.rglob("*") if p.is_file() and p.name not in IGNORED_NAMES),
            key=lambda p: p.relative_to(folder).as_posix(),
        )
        if folder.is_dir()
        else []
    )
    digest = hashlib.sha256()
    for path in files:
        # path and size framed by NULs: no two different folders feed the same byte stream
        digest.update(f"{path.relative_to(folder).as_posix()}\0{path.stat().st_size}\0".encode())
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digest.update(chunk)
    return FolderFingerprint(files=len(files), sha256=digest.hexdigest())
