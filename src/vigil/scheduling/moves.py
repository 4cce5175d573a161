"""Moving inbox items and the ingest journal: idempotent moves, quarantine reasons, names.

Every move is planned first (``Move``), written to a ``Journal``, then done by ``move_item``,
which never leaves a half-written destination, so a replay after a crash finishes the job.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import shutil
from dataclasses import asdict, dataclass, field
from pathlib import Path

from vigil.scheduling.dvc_tools import sha256_file, utc_now, write_json_atomic
from vigil.scheduling.inbox_items import display_name


@dataclass
class Move:
    src: str
    dst: str
    kind: str  # "ingest" | "quarantine"
    reason: str = ""
    sha256: str = ""


@dataclass
class Journal:
    dataset: str
    phase: str  # "moving" -> "versioning"; removed when done
    dvc_file: str
    dvc_file_before: str | None  # text of <extra>.dvc before this ingest (None: did not exist)
    moves: list[Move] = field(default_factory=list)
    started: str = field(default_factory=utc_now)

    @classmethod
    def load(cls, path: Path) -> Journal:
        data = json.loads(path.read_text())
        data["moves"] = [Move(**m) for m in data["moves"]]
        return cls(**data)

    def save(self, path: Path) -> None:
        write_json_atomic(path, asdict(self))


def _unique(path: Path) -> Path:
    """``path`` or ``stem~N.ext`` that does not exist yet (quarantine names never collide)."""
    candidate, n = path, 1
    while _exists(candidate) or candidate.with_name(candidate.name + ".reason.txt").exists():
        n += 1
        candidate = path.with_name(f"{path.stem}~{n}{path.suffix}")
    return candidate


def content_digest(path: Path) -> str:
    """sha256 of a file, or of a folder's relative names and file hashes."""
    if path.is_file():
        return sha256_file(path)
    digest = hashlib.sha256()
    for child in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(f"{child.relative_to(path).as_posix()}:{sha256_file(child)}\n".encode())
    return digest.hexdigest()


def same_content(a: Path, b: Path) -> bool:
    if a.is_symlink() or b.is_symlink():  # links are moved as links, never followed
        return a.is_symlink() and b.is_symlink() and os.readlink(a) == os.readlink(b)
    return a.is_dir() == b.is_dir() and content_digest(a) == content_digest(b)


def _exists(path: Path) -> bool:
    """Whether ``path`` is there, a dangling symbolic link included."""
    return os.path.lexists(path)


def _remove(path: Path) -> None:
    shutil.rmtree(path) if path.is_dir() and not path.is_symlink() else path.unlink()


def move_item(src: Path, dst: Path) -> None:
    """Move a file, folder or symbolic link (as a link); idempotent, never leaves a
    half-written ``dst``.

    A rename when on one filesystem; otherwise copy to a temp name beside ``dst``, rename it into
    place, then remove ``src`` (replays after a crash finish whichever step was left).
    """
    if _exists(dst):
        if _exists(src):
            if not same_content(src, dst):
                raise FileExistsError(f"cannot move {src} -> {dst}: a different item is there")
            _remove(src)  # copied, src not yet removed
        return
    if not _exists(src):
        raise FileNotFoundError(f"cannot move {src} -> {dst}: neither exists")
    dst.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.rename(src, dst)
        return
    except OSError as error:
        if error.errno != errno.EXDEV:
            raise
    tmp = dst.with_name(f".{dst.name}.partial")
    if _exists(tmp):
        _remove(tmp)
    if src.is_symlink():
        os.symlink(os.readlink(src), tmp)
    elif src.is_dir():
        shutil.copytree(src, tmp, symlinks=True)
    else:
        shutil.copy2(src, tmp)
    os.rename(tmp, dst)
    _remove(src)


def _write_reason(move: Move, dataset: str) -> None:
    reason = Path(move.dst).with_name(Path(move.dst).name + ".reason.txt")
    reason.parent.mkdir(parents=True, exist_ok=True)
    reason.write_text(
        f"dataset: {dataset}\nitem: {display_name(Path(move.src).name)}\n"
        f"from: {display_name(move.src)}\n"
        f"quarantined: {utc_now()}\nreason: {move.reason}\n"
    )


def _ingest_name(item: Path, digest: str, extra: Path) -> Path:
    if item.is_dir():
        return extra / "frames" / f"{item.name}-{digest[:8]}"
    return extra / f"{item.stem}-{digest[:8]}{item.suffix.lower()}"


