"""Issue 15: one inbox file never halts ingest. Bombs, undecodable files, non-UTF-8 names,
links, dot-files are quarantined with a reason naming them and the rest are ingested; a file
still being written is left for the next cycle; `dvc add` never sees a refused name."""

from __future__ import annotations

import os
import threading
import time
from pathlib import Path

import pytest
from test_sched_helpers import dvc, image, make_project, write_png

from tests.conftest import bomb_png
from vigil.config import load_params
from vigil.scheduling import InboxSpec, load_retrain_config
from vigil.scheduling.inbox import DatasetFolders, ingest_dataset, plan_moves

NON_UTF8 = os.fsdecode(b"part-\xff\xfe.png")  # bytes that are not UTF-8, as Python holds them


def _folders(tmp_path: Path) -> DatasetFolders:
    source = tmp_path / "src"
    for i in range(3):
        write_png(source / "train" / "good" / f"{i}.png", image(i))
    return DatasetFolders("tiles", "image", source, source / "train" / "good", tmp_path / "extra")


def _old(path: Path) -> Path:
    """Backdate ``path`` (not its target) as if written an hour ago."""
    stamp = time.time() - 3600
    os.utime(path, (stamp, stamp), follow_symlinks=False)
    return path


def test_each_hostile_item_gets_its_own_reason_and_the_good_one_is_planned(tmp_path: Path):
    folders = _folders(tmp_path)
    inbox = tmp_path / "inbox"
    good = _old(write_png(inbox / "good.png", image(50)))
    (inbox / "bomb.png").write_bytes(bomb_png(60000, 60000))
    (inbox / NON_UTF8).write_bytes(good.read_bytes()[:-1] + b"\x82")  # decodable, other hash
    outside = write_png(tmp_path / "secret" / "outside.png", image(51))
    os.symlink(outside, inbox / "link.png")
    (inbox / ".hidden.png").write_bytes(write_png(tmp_path / "h.png", image(52)).read_bytes())
    for entry in inbox.iterdir():
        _old(entry)
    moves = {
        Path(m.src).name: m
        for m in plan_moves(folders, InboxSpec(inbox="inbox"), inbox, tmp_path / "q")
    }
    assert moves["good.png"].kind == "ingest"
    reasons = {name: m.reason for name, m in moves.items() if m.kind == "quarantine"}
    assert set(reasons) == {"bomb.png", NON_UTF8, "link.png", ".hidden.png"}
    assert reasons["bomb.png"].startswith("bomb.png: image of 60000x60000")
    assert "exceeds the budget" in reasons["bomb.png"]
    assert reasons[NON_UTF8].startswith("part-\\xff\\xfe.png: the file name is not valid UTF-8")
    assert f"a symbolic link to {outside} outside the inbox" in reasons["link.png"]
    assert reasons[".hidden.png"].startswith(".hidden.png: a hidden file")
    # quarantine names are valid UTF-8 and visible (no leading dot)
    for name in (NON_UTF8, ".hidden.png"):
        Path(moves[name].dst).name.encode("utf-8")
    assert Path(moves[".hidden.png"].dst).name == "hidden.png"


def test_the_pixel_budget_is_the_one_prepare_uses(tmp_path: Path):
    folders = _folders(tmp_path)
    inbox = tmp_path / "inbox"
    _old(write_png(inbox / "n.png", image(60)))  # 32x32 = 1024 pixels
    spec = InboxSpec(inbox="inbox")
    (move,) = plan_moves(folders, spec, inbox, tmp_path / "q", max_pixels=1000)
    assert move.kind == "quarantine" and "n.png: image of 32x32 = 1,024 pixels" in move.reason
    (move,) = plan_moves(folders, spec, inbox, tmp_path / "q", max_pixels=1024)
    assert move.kind == "ingest"


def test_a_file_still_being_written_is_left_for_the_next_cycle(tmp_path: Path):
    folders = _folders(tmp_path)
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    whole = write_png(tmp_path / "w.png", image(70)).read_bytes()
    target = inbox / "arriving.png"
    target.write_bytes(whole[:100])
    done = threading.Event()

    def writer() -> None:  # a slow copy: a few bytes at a time until planning is over
        with target.open("ab") as handle:
            while not done.is_set():
                handle.write(b"\0")
                handle.flush()
                time.sleep(0.02)

    thread = threading.Thread(target=writer)
    thread.start()
    waiting: list[str] = []
    try:
        moves = plan_moves(folders, InboxSpec(inbox="inbox", settle_s=1), inbox, tmp_path / "q",
                           waiting=waiting)
    finally:
        done.set()
        thread.join()
    assert moves == [] and waiting == ["arriving.png"]  # not quarantined as a broken PNG
    target.write_bytes(whole)  # the copy completes
    (move,) = plan_moves(folders, InboxSpec(inbox="inbox", settle_s=1), inbox, tmp_path / "q")
    assert move.kind == "ingest"


@pytest.fixture()
def project(tmp_path: Path, mlflow_store: str) -> Path:
    return make_project(tmp_path / "proj", pipeline=False)


def test_ingest_versions_the_good_items_and_quarantines_a_bomb_and_a_non_utf8_name(project):
    root = project
    inbox = root / "inbox" / "tiles"
    write_png(inbox / "n1.png", image(800))
    (inbox / "bomb.png").write_bytes(bomb_png(60000, 60000))
    (inbox / NON_UTF8).write_bytes(write_png(root / "x.png", image(801)).read_bytes())
    cfg = load_retrain_config(root / "configs" / "retrain.yaml")
    report = ingest_dataset(root, cfg, load_params(root / "params.yaml"), "tiles")
    assert len(report.ingested) == 1 and report.changed  # `dvc add` ran and succeeded
    assert set(report.quarantined) == {"bomb.png", "part-\\xff\\xfe.png"}
    assert "up to date" in dvc(root, "status", "data/extra/tiles.dvc")
    quarantine = root / "quarantine" / "tiles"
    reason = (quarantine / "part-\\xff\\xfe.png.reason.txt").read_text(encoding="utf-8")
    assert "not valid UTF-8" in reason
    assert "60000x60000" in (quarantine / "bomb.png.reason.txt").read_text()
    assert not any(inbox.iterdir())
