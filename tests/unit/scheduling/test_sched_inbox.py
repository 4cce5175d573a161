"""Inbox validation, quarantine reasons, DVC versioning, journal resume and rollback."""

from __future__ import annotations

from pathlib import Path

import cv2
import pytest
import yaml
from test_sched_helpers import dvc, image, make_project, write_png

from vigil.config import load_params
from vigil.scheduling import InboxSpec, load_retrain_config
from vigil.scheduling import inbox as inbox_mod
from vigil.scheduling.inbox import (
    DatasetFolders,
    Expected,
    IngestError,
    InvalidItem,
    ingest_dataset,
    journal_path,
    plan_moves,
    tracked_version,
    validate_item,
)


def _image_folders(tmp_path: Path) -> DatasetFolders:
    source = tmp_path / "src"
    for i in range(3):
        write_png(source / "train" / "good" / f"{i}.png", image(i))
    return DatasetFolders("tiles", "image", source, source / "train" / "good", tmp_path / "extra")


def test_plan_quarantines_each_bad_kind_with_its_reason(tmp_path: Path) -> None:
    folders = _image_folders(tmp_path)
    inbox = tmp_path / "inbox"
    write_png(inbox / "ok.png", image(50))
    write_png(inbox / "ok_copy.png", image(50))  # same bytes as ok.png
    write_png(inbox / "known.png", image(1))  # same bytes as src/train/good/1.png
    write_png(inbox / "big.png", image(51, size=48))
    write_png(inbox / "gray.png", image(52, channels=1))
    (inbox / "empty.png").write_bytes(b"")
    (inbox / "corrupt.png").write_bytes(write_png(tmp_path / "x.png", image(53)).read_bytes()[:60])
    (inbox / "notes.txt").write_text("hello")
    (inbox / "folder").mkdir()
    moves = {
        Path(m.src).name: m
        for m in plan_moves(folders, InboxSpec(inbox="inbox"), inbox, tmp_path / "q")
    }
    assert moves["ok.png"].kind == "ingest"
    assert Path(moves["ok.png"].dst).parent == folders.extra
    reasons = {name: m.reason for name, m in moves.items() if m.kind == "quarantine"}
    assert set(reasons) == {
        "ok_copy.png",
        "known.png",
        "big.png",
        "gray.png",
        "empty.png",
        "corrupt.png",
        "notes.txt",
        "folder",
    }
    assert "duplicate of ok.png" in reasons["ok_copy.png"]
    assert "already in the dataset" in reasons["known.png"]
    assert "size 48x48" in reasons["big.png"] and "32x32" in reasons["big.png"]
    assert "1 channel(s)" in reasons["gray.png"]
    assert "empty file" in reasons["empty.png"]
    assert "truncated PNG" in reasons["corrupt.png"]
    assert "not an image file" in reasons["notes.txt"]
    assert "folder in an image inbox" in reasons["folder"]


def test_explicit_size_and_any_channels(tmp_path: Path) -> None:
    folders = _image_folders(tmp_path)
    path = write_png(tmp_path / "in" / "g.png", image(9, size=48, channels=1))
    digest = validate_item(path, "image", Expected(size=(48, 48), channels=None), 1, set())
    assert len(digest) == 64
    with pytest.raises(InvalidItem, match="48x48"):
        validate_item(path, "image", Expected(size=(32, 32), channels=None), 1, set())
    assert folders.source.is_dir()


def _write_video(path: Path, n_frames: int, size: int = 32, seed: int = 0) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    writer = cv2.VideoWriter(str(path), cv2.VideoWriter_fourcc(*"MJPG"), 10, (size, size))
    for i in range(n_frames):
        writer.write(image(seed + i, size))
    writer.release()
    return path


def test_video_items_files_and_frame_folders(tmp_path: Path) -> None:
    source = tmp_path / "src"
    _write_video(source / "training" / "a.avi", 6)
    folders = DatasetFolders("line", "video", source, source / "training", tmp_path / "extra")
    inbox = tmp_path / "inbox"
    _write_video(inbox / "new.avi", 6, seed=40)
    _write_video(inbox / "same.avi", 6)  # the bytes of src/training/a.avi
    _write_video(inbox / "short.avi", 2)
    for i in range(4):
        write_png(inbox / "clip1" / f"{i:03d}.png", image(70 + i))
    for i in range(4):
        write_png(inbox / "clip2" / f"{i:03d}.png", image(80 + i))
    (inbox / "clip2" / "002.png").write_bytes(b"garbage")
    write_png(inbox / "loose.png", image(90))
    spec = InboxSpec(inbox="inbox", min_frames=4)
    moves = {Path(m.src).name: m for m in plan_moves(folders, spec, inbox, tmp_path / "q")}
    assert moves["new.avi"].kind == "ingest"
    assert moves["clip1"].kind == "ingest"
    assert Path(moves["clip1"].dst).parent == folders.extra / "frames"
    assert "already in the dataset" in moves["same.avi"].reason
    assert "need at least 4" in moves["short.avi"].reason
    assert "clip2/002.png" in moves["clip2"].reason
    assert "loose image" in moves["loose.png"].reason


@pytest.fixture()
def project(tmp_path: Path, mlflow_store: str) -> Path:
    return make_project(tmp_path / "proj", pipeline=False)


def _ingest(root: Path):
    cfg = load_retrain_config(root / "configs" / "retrain.yaml")
    return ingest_dataset(root, cfg, load_params(root / "params.yaml"), "tiles")


def _all_files(root: Path, *folders: str) -> set[str]:
    return {p.name for f in folders for p in (root / f).rglob("*") if p.is_file()}


def test_ingest_versions_with_dvc_and_never_twice(project: Path) -> None:
    root = project
    inbox = root / "inbox" / "tiles"
    write_png(inbox / "n1.png", image(500))
    write_png(inbox / "n2.png", image(501))
    (inbox / "zero.png").write_bytes(b"")
    report = _ingest(root)
    assert len(report.ingested) == 2 and set(report.quarantined) == {"zero.png"}
    assert report.version_before is None and report.version_after.endswith(".dir")
    assert tracked_version(root / "data" / "extra" / "tiles") == report.version_after
    assert not any(inbox.iterdir())
    reason = (root / "quarantine" / "tiles" / "zero.png.reason.txt").read_text()
    assert "empty file" in reason and "dataset: tiles" in reason
    assert "up to date" in dvc(root, "status", "data/extra/tiles.dvc")
    # the same content again, and another zero-byte file of the same name: nothing twice
    write_png(inbox / "again.png", image(500))
    (inbox / "zero.png").write_bytes(b"")
    second = _ingest(root)
    assert second.ingested == [] and not second.changed
    assert "already in the dataset" in second.quarantined["again.png"]
    assert (root / "quarantine" / "tiles" / "zero~2.png.reason.txt").is_file()


def test_interrupted_ingest_resumes_from_the_journal(project: Path, monkeypatch) -> None:
    root = project
    inbox = root / "inbox" / "tiles"
    for i in range(3):
        write_png(inbox / f"n{i}.png", image(600 + i))
    real_move, calls = inbox_mod.move_item, []

    def crash_on_second_move(src: Path, dst: Path) -> None:  # failure injection: a kill mid-way
        calls.append(src)
        if len(calls) == 2:
            raise KeyboardInterrupt("killed mid-ingest")
        real_move(src, dst)

    monkeypatch.setattr(inbox_mod, "move_item", crash_on_second_move)
    with pytest.raises(KeyboardInterrupt):
        _ingest(root)
    cfg = load_retrain_config(root / "configs" / "retrain.yaml")
    assert journal_path(root, cfg, "tiles").is_file()
    assert len(list(inbox.iterdir())) == 2 and tracked_version(root / "data/extra/tiles") is None
    monkeypatch.setattr(inbox_mod, "move_item", real_move)
    report = _ingest(root)
    assert report.resumed and len(report.ingested) == 3 and report.changed
    assert not journal_path(root, cfg, "tiles").exists()
    assert not any(inbox.iterdir())
    assert yaml.safe_load((root / "data/extra/tiles.dvc").read_text())["outs"][0]["nfiles"] == 3


def test_failed_dvc_add_rolls_back_moves_and_dvc_file(project: Path) -> None:
    root = project
    inbox = root / "inbox" / "tiles"
    write_png(inbox / "first.png", image(700))
    _ingest(root)
    dvc_before = (root / "data/extra/tiles.dvc").read_text()
    write_png(inbox / "second.png", image(701))
    config = root / ".dvc" / "config"
    good_config = config.read_text()
    config.write_text("[core\nthis is not an ini file")  # dvc itself now fails, for real
    try:
        with pytest.raises(IngestError, match="rolled back"):
            _ingest(root)
    finally:
        config.write_text(good_config)
    assert (inbox / "second.png").is_file()
    assert (root / "data/extra/tiles.dvc").read_text() == dvc_before
    assert len(_all_files(root, "data/extra/tiles")) == 1  # only the first ingest's item
    assert "up to date" in dvc(root, "status", "data/extra/tiles.dvc")
    assert _ingest(root).changed  # the next run ingests it


def test_move_never_overwrites_a_different_item(tmp_path: Path) -> None:
    src = write_png(tmp_path / "a" / "x.png", image(1))
    dst = write_png(tmp_path / "b" / "x.png", image(2))
    with pytest.raises(FileExistsError, match="different item"):
        inbox_mod.move_item(src, dst)
    assert src.is_file() and dst.is_file()
    same = write_png(tmp_path / "c" / "x.png", image(2))
    inbox_mod.move_item(same, dst)  # a replay after the copy landed: only the source goes
    assert not same.exists() and dst.is_file()


def test_ingest_moves_the_git_placeholder_of_the_extra_folder_to_dvc(project: Path) -> None:
    """A clone keeps ``data/extra/<D>/`` (the prepare stage's dependency) with a git-tracked
    ``.gitkeep``; DVC refuses to add a folder git tracks files in, so ingest untracks it."""
    import subprocess

    root = project
    git = ["git", "-c", "user.name=t", "-c", "user.email=t@t"]
    placeholder = root / "data" / "extra" / "tiles" / ".gitkeep"
    placeholder.parent.mkdir(parents=True)
    placeholder.touch()
    subprocess.run([*git, "add", "-A"], cwd=root, check=True)
    subprocess.run([*git, "commit", "-qm", "placeholder"], cwd=root, check=True)
    write_png(root / "inbox" / "tiles" / "n1.png", image(800))
    report = _ingest(root)
    assert len(report.ingested) == 1 and report.version_after.endswith(".dir")
    assert placeholder.is_file()  # still on disk, now inside the DVC-tracked folder
    tracked = subprocess.run(
        ["git", "ls-files", "data/extra"], cwd=root, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "data/extra/tiles/.gitkeep" not in tracked
    assert "up to date" in dvc(root, "status", "data/extra/tiles.dvc")
