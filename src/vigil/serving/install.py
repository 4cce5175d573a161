"""The installed-model folder layout ``vigil pull`` writes and every loader reads.

```
DEST/versions/<v>/{manifest.json,package/,.vigil-version}   one complete install per version
DEST/current -> versions/<v>                                  swapped by renaming a symlink
```

Readers resolve ``current`` once (``resolve_model_dir``); ``replace_dir`` installs a staged
version and swaps the link atomically, so a reader sees the old complete version or the new one
at every instant. Only folders carrying vigil's marker are ever deleted.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

log = logging.getLogger("vigil.serving.pull")

MANIFEST_FILE = "manifest.json"
PACKAGE_DIR = "package"
VERSIONS_DIR = "versions"
CURRENT_LINK = "current"
VERSION_MARKER = ".vigil-version"  # in every version folder vigil installs: only those are deleted


class PullError(RuntimeError):
    """The model cannot be resolved, downloaded or installed; the message says which and why."""



def resolve_model_dir(dest: Path | str) -> Path:
    """The complete version folder to load from ``dest``: the target of ``dest/current`` (read
    once, so a swap while loading cannot mix two versions), or ``dest`` itself when it has no
    ``current`` link (a bare package or a folder written by an older vigil)."""
    dest = Path(dest)
    link = dest / CURRENT_LINK
    if link.is_symlink():
        return Path(os.path.realpath(link))
    return dest


def read_manifest(dest: Path | str) -> dict[str, Any] | None:
    """The manifest of an installed package (through ``current`` when there is one), or None
    when ``dest`` holds none."""
    path = Path(dest) / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise PullError(f"{path}: corrupt manifest: {error}") from error


def replace_dir(staging: Path, dest: Path) -> None:
    """Install the pulled folder ``staging`` as the current version of ``dest``; ``staging`` is
    consumed (its version folder moves into ``dest``, the rest is removed).

    ``staging`` is a flat folder (``manifest.json`` + ``package/``) or one written by ``pull``
    (its ``current`` version is taken). Readers of ``dest`` see the old complete version or the
    new one at every instant (see ``_install_version`` for when old versions are deleted).
    """
    staging, dest = Path(staging), Path(dest)
    version_dir = resolve_model_dir(staging)
    if not (version_dir / MANIFEST_FILE).is_file():
        raise PullError(f"{staging}: no {MANIFEST_FILE}: not a pulled model folder")
    version = str((read_manifest(version_dir) or {}).get("version", "unversioned"))
    try:
        if not dest.exists():
            _install_new(version_dir, dest, version)
        elif _is_flat_install(dest):
            _convert_flat(version_dir, dest, version)
        else:
            _install_version(version_dir, dest, version)
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


def _is_flat_install(dest: Path) -> bool:
    """``dest`` was written by an older vigil: a plain manifest file or package folder."""
    return any(
        (dest / name).exists() and not (dest / name).is_symlink()
        for name in (MANIFEST_FILE, PACKAGE_DIR)
    )


def _install_new(version_dir: Path, dest: Path, version: str) -> None:
    """Build the whole layout in a sibling folder, then rename it to ``dest`` (absent so far)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    fresh = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-", dir=dest.parent))
    try:
        _install_version(version_dir, fresh, version)
        os.rename(fresh, dest)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


def _convert_flat(version_dir: Path, dest: Path, version: str) -> None:
    """Replace an older vigil's flat ``dest`` by the versioned layout (the one non-atomic swap:
    two renames, the old folder is put back if the second one fails)."""
    fresh = Path(tempfile.mkdtemp(prefix=f".{dest.name}.new-", dir=dest.parent))
    backup = dest.with_name(f".{dest.name}.old-{os.getpid()}")
    try:
        _install_version(version_dir, fresh, version)
        shutil.rmtree(backup, ignore_errors=True)
        os.rename(dest, backup)
        try:
            os.rename(fresh, dest)
        except OSError:
            os.rename(backup, dest)
            raise
        log.info("%s: converted to the versioned layout (versions/ + current)", dest)
    finally:
        shutil.rmtree(fresh, ignore_errors=True)
        shutil.rmtree(backup, ignore_errors=True)


def _install_version(version_dir: Path, dest: Path, version: str) -> None:
    """Move ``version_dir`` under ``dest/versions/``, point ``current`` at it, and delete the
    versions before the one it replaces.

    The replaced version stays until the next swap: a reader that resolved ``current`` just
    before this swap is still loading from it (deleting it now would pull files from under it).
    """
    versions = dest / VERSIONS_DIR
    versions.mkdir(parents=True, exist_ok=True)
    replaced = _current_name(dest)
    target = _free_name(versions, version)
    (version_dir / VERSION_MARKER).write_text(json.dumps({"version": version}) + "\n")
    shutil.move(str(version_dir), target)  # a rename on one filesystem
    _atomic_symlink(f"{CURRENT_LINK}/{MANIFEST_FILE}", dest / MANIFEST_FILE)
    _atomic_symlink(f"{CURRENT_LINK}/{PACKAGE_DIR}", dest / PACKAGE_DIR)
    _atomic_symlink(f"{VERSIONS_DIR}/{target.name}", dest / CURRENT_LINK)
    _remove_versions(versions, keep={target.name, replaced})


def _current_name(dest: Path) -> str | None:
    """The name of the version folder ``dest/current`` points at, or None."""
    link = dest / CURRENT_LINK
    return Path(os.readlink(link)).name if link.is_symlink() else None


def _free_name(versions: Path, version: str) -> Path:
    """``versions/<version>``, or ``<version>-2``, ``-3``... when that one is taken (a corrupt
    copy of the same version may still be ``current`` until the swap)."""
    base = "".join(c if c.isalnum() or c in "._-" else "_" for c in version) or "unversioned"
    candidate, n = versions / base, 1
    while candidate.exists() or candidate.is_symlink():
        n += 1
        candidate = versions / f"{base}-{n}"
    return candidate


def _atomic_symlink(target: str, link: Path) -> None:
    """Make ``link`` a symlink to ``target`` (relative to the link's folder) by renaming a
    temporary link over it: readers see the old link or the new one, never none. A link that
    is already right is left alone."""
    if link.is_symlink() and os.readlink(link) == target:
        return
    temp = link.with_name(f".{link.name}.tmp-{os.getpid()}")
    if temp.is_symlink() or temp.exists():
        temp.unlink()
    os.symlink(target, temp)
    os.replace(temp, link)


def _remove_versions(versions: Path, keep: set[str | None]) -> None:
    """Delete every version folder vigil installed (it holds ``VERSION_MARKER``) whose name is
    not in ``keep``; anything else under ``versions/`` is not vigil's to delete."""
    for entry in versions.iterdir():
        if entry.name in keep:
            continue
        if entry.is_symlink() or not (entry / VERSION_MARKER).is_file():
            log.warning("%s: not installed by vigil (no %s): left in place", entry, VERSION_MARKER)
            continue
        shutil.rmtree(entry, ignore_errors=True)
