"""Issue 15: `dvc repro` runs in its own process group; a timeout ends the whole group, and the
retrain lock of a killed cycle is not broken while its pipeline still runs (then ends it once
stale). Real processes throughout; the cycle record is owner-only with credentials masked."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_sched_helpers import RETRAIN_YAML, make_project

from vigil.scheduling import RetrainConfig
from vigil.scheduling.lock import LockBusyError, RetrainLock, read_owner
from vigil.scheduling.procgroup import group_alive
from vigil.scheduling.repro import run_in_group

# a "stage" that starts a worker of its own, reports both pids, then works for a minute
STAGE = (
    "import subprocess, sys, time\n"
    "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'])\n"
    "print('pids', w.pid, flush=True)\n"
    "time.sleep(60)\n"
)


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state != "Z"


def test_a_repro_timeout_ends_the_whole_process_group(tmp_path: Path):
    lines: list[str] = []
    started = time.monotonic()
    code, tail = run_in_group(
        [sys.executable, "-c", STAGE], tmp_path, 2.0, lines.append, env=dict(os.environ), grace_s=2
    )
    assert time.monotonic() - started < 30
    worker = int(next(line for line in lines if line.startswith("pids")).split()[1])
    assert code != 0 and "killed (whole process group) after the 2.0 s repro timeout" in tail
    assert not _running(worker)  # the stage's own worker went with it, not only the parent


def test_the_lock_records_the_group_and_a_killed_cycle_keeps_it_until_its_pipeline_ends(
    tmp_path: Path,
):
    path = tmp_path / "retrain.lock"
    holder_code = (
        "import os, sys\n"
        "from pathlib import Path\n"
        "from vigil.scheduling.lock import RetrainLock\n"
        "from vigil.scheduling.repro import run_in_group\n"
        f"RetrainLock({str(path)!r}).acquire()\n"
        f"run_in_group([sys.executable, '-c', {STAGE!r}], Path('.'), None,"
        " lambda line: print(line, flush=True), env=dict(os.environ))\n"
    )
    holder = subprocess.Popen(
        [sys.executable, "-c", holder_code], stdout=subprocess.PIPE, text=True, cwd=tmp_path
    )
    try:
        line = holder.stdout.readline()
        assert line.startswith("pids"), line
        worker = int(line.split()[1])
        (group,) = read_owner(path).groups
        assert group_alive(group) and os.getpgid(worker) == group
    finally:
        holder.kill()  # kill -9 of `vigil retrain`: its pipeline lives on
        holder.wait()
    assert _running(worker)
    with pytest.raises(LockBusyError, match=rf"process group {group}\) is still running"):
        RetrainLock(path, timeout_s=0).acquire()
    # once the lock is older than stale_after_s, the orphaned pipeline is ended, then broken
    owner = json.loads(path.read_text())
    path.write_text(json.dumps({**owner, "since": time.time() - 120}))
    with RetrainLock(path, timeout_s=0, stale_after_s=60):
        assert not group_alive(group) and not _running(worker)
        assert read_owner(path).pid == os.getpid()


# the tiny project's count stage, blocking: a worker of its own, both pids in a file, then waits
BLOCKING_COUNT_PY = (
    "import os, subprocess, sys, time\n"
    "from pathlib import Path\n"
    "w = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(120)'])\n"
    "Path('STAGE_PIDS').write_text(f'{os.getpid()} {w.pid}')\n"
    "time.sleep(120)\n"
)


def _wait_for(condition, timeout_s: float, what: str) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"timed out after {timeout_s} s waiting for {what}"
        time.sleep(0.05)


def test_sigterm_of_vigil_retrain_ends_its_dvc_repro_group_and_frees_the_lock(
    tmp_path: Path, mlflow_store: str
):
    root = make_project(tmp_path / "proj")
    (root / "count.py").write_text(BLOCKING_COUNT_PY)
    pids = root / "STAGE_PIDS"
    retrain = subprocess.Popen(
        [sys.executable, "-m", "vigil.cli", "retrain", "--root", str(root), "--force"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    group = None
    try:
        _wait_for(lambda: pids.is_file() and len(pids.read_text().split()) == 2, 120, "the stage")
        stage, worker = map(int, pids.read_text().split())
        group = os.getpgid(stage)
        assert group != os.getpgid(retrain.pid) and group_alive(group)
        retrain.terminate()  # SIGTERM, as a service manager or `kill` sends it
        assert retrain.wait(timeout=60) == 128 + signal.SIGTERM
        _wait_for(lambda: not group_alive(group), 30, f"process group {group} to end")
        assert not _running(stage) and not _running(worker)
        assert read_owner(root / RETRAIN_YAML["lock"]["path"]) is None  # the lock was released
    finally:  # nothing of this test outlives it, whatever failed
        if retrain.poll() is None:
            retrain.kill()
            retrain.wait()
        if group is not None and group_alive(group):
            os.killpg(group, signal.SIGKILL)


def test_a_dead_holder_whose_pipeline_ended_is_stale_at_once(tmp_path: Path):
    path = tmp_path / "retrain.lock"
    gone = subprocess.Popen([sys.executable, "-c", "pass"], start_new_session=True)
    gone.wait()
    path.write_text(
        json.dumps(
            {"pid": gone.pid, "host": os.uname().nodename, "since": time.time(), "groups": [gone.pid]}
        )
    )
    with RetrainLock(path, timeout_s=0):
        assert read_owner(path).pid == os.getpid()


def test_cycle_records_are_owner_only_and_mask_credentials(tmp_path: Path):
    from vigil.scheduling.records import write_record

    cfg = RetrainConfig.model_validate(RETRAIN_YAML)
    record = {
        "cycle_id": "c1",
        "error": {"step": "registry", "message": "cannot reach postgresql://vigil:hunter2@db/mlflow"},
    }
    path = write_record(tmp_path, cfg, record)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    text = path.read_text()
    assert "hunter2" not in text and "postgresql://vigil:***@db/mlflow" in text
