"""The retrain lock: contention, waiting, stale-lock recovery."""

from __future__ import annotations

import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from vigil.scheduling.lock import LockBusyError, RetrainLock, read_owner


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_second_holder_gets_a_clear_message(tmp_path: Path) -> None:
    path = tmp_path / "retrain.lock"
    with RetrainLock(path):
        owner = read_owner(path)
        assert owner.host == socket.gethostname()
        with pytest.raises(LockBusyError) as error:
            RetrainLock(path, timeout_s=0.2, poll_s=0.05).acquire()
        message = str(error.value)
        assert f"pid {owner.pid}" in message and str(path) in message and "--wait" in message
    assert not path.exists()


def test_waiter_gets_the_lock_when_it_is_released(tmp_path: Path) -> None:
    path = tmp_path / "retrain.lock"
    first = RetrainLock(path)
    first.acquire()
    threading.Timer(0.3, first.release).start()
    started = time.monotonic()
    with RetrainLock(path, timeout_s=5, poll_s=0.05):
        waited = time.monotonic() - started
    assert 0.2 < waited < 4


def test_dead_holder_on_this_host_is_stale(tmp_path: Path) -> None:
    path = tmp_path / "retrain.lock"
    path.write_text(
        json.dumps({"pid": _dead_pid(), "host": socket.gethostname(), "since": time.time()})
    )
    with RetrainLock(path):
        assert read_owner(path).pid != -1
    assert not path.exists()


def test_remote_holder_is_stale_only_when_old(tmp_path: Path) -> None:
    path = tmp_path / "retrain.lock"
    path.write_text(json.dumps({"pid": 1, "host": "other-box", "since": time.time()}))
    with pytest.raises(LockBusyError, match="other-box"):
        RetrainLock(path, stale_after_s=60).acquire()
    path.write_text(json.dumps({"pid": 1, "host": "other-box", "since": time.time() - 120}))
    with RetrainLock(path, stale_after_s=60):
        assert read_owner(path).host == socket.gethostname()


def test_garbage_lock_file_is_recovered(tmp_path: Path) -> None:
    path = tmp_path / "retrain.lock"
    path.write_text("{half a json")
    with RetrainLock(path):
        assert read_owner(path).host == socket.gethostname()


def test_lock_is_exclusive_across_processes(tmp_path: Path) -> None:
    path = tmp_path / "retrain.lock"
    code = (
        "import time; from vigil.scheduling.lock import RetrainLock\n"
        f"l = RetrainLock({str(path)!r}); l.acquire(); print('held', flush=True); time.sleep(30)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        with pytest.raises(LockBusyError, match=f"pid {holder.pid}"):
            RetrainLock(path, timeout_s=0).acquire()
    finally:
        holder.kill()
        holder.wait()
    with RetrainLock(path):  # the killed holder left a stale owner file: recovered
        assert read_owner(path).pid != holder.pid
