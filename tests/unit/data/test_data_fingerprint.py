"""Fingerprint of a folder of ingested data: deterministic, sensitive to every file's path and
bytes, blind to .gitkeep placeholders; a missing folder is an empty one."""

from __future__ import annotations

import hashlib
from pathlib import Path

from vigil.data.fingerprint import fingerprint_folder

EMPTY = hashlib.sha256().hexdigest()


def _folder(root: Path) -> Path:
    (root / "frames" / "clip1").mkdir(parents=True)
    (root / "a.png").write_bytes(b"\x89PNG one")
    (root / "b.png").write_bytes(b"\x89PNG two")
    (root / "frames" / "clip1" / "000.jpg").write_bytes(b"\xff\xd8 frame")
    return root


def test_same_content_same_fingerprint_wherever_it_lies(tmp_path: Path):
    first = fingerprint_folder(_folder(tmp_path / "one"))
    assert first.files == 3
    assert fingerprint_folder(tmp_path / "one") == first
    assert fingerprint_folder(_folder(tmp_path / "two")) == first  # paths are relative


def test_any_byte_name_or_file_change_changes_it(tmp_path: Path):
    folder = _folder(tmp_path / "d")
    before = fingerprint_folder(folder)
    (folder / "b.png").write_bytes(b"\x89PNG twO")  # same size, one byte differs
    edited = fingerprint_folder(folder)
    assert edited.files == 3 and edited.sha256 != before.sha256
    (folder / "b.png").rename(folder / "c.png")
    renamed = fingerprint_folder(folder)
    assert renamed.sha256 != edited.sha256
    (folder / "d.png").write_bytes(b"")  # even an empty file counts
    added = fingerprint_folder(folder)
    assert added.files == 4 and added.sha256 != renamed.sha256


def test_content_cannot_slide_between_name_and_bytes(tmp_path: Path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "ab").write_bytes(b"c")
    (tmp_path / "y").mkdir()
    (tmp_path / "y" / "a").write_bytes(b"bc")
    assert fingerprint_folder(tmp_path / "x") != fingerprint_folder(tmp_path / "y")


def test_gitkeep_is_ignored_and_missing_or_empty_is_the_fixed_empty_hash(tmp_path: Path):
    assert fingerprint_folder(tmp_path / "missing").sha256 == EMPTY
    assert fingerprint_folder(tmp_path / "missing").files == 0
    (tmp_path / "placeholder").mkdir()
    (tmp_path / "placeholder" / ".gitkeep").write_bytes(b"")
    assert fingerprint_folder(tmp_path / "placeholder") == fingerprint_folder(tmp_path / "missing")
    folder = _folder(tmp_path / "d")
    before = fingerprint_folder(folder)
    (folder / ".gitkeep").write_text("kept by git")
    (folder / "frames" / ".gitkeep").write_text("")
    assert fingerprint_folder(folder) == before
