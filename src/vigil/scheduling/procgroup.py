"""Process groups: is one still alive, and ending all of it (the retrain pipeline's processes)."""

from __future__ import annotations

import os
import signal
import time
from pathlib import Path

KILL_GRACE_S = 10.0  # between SIGTERM and SIGKILL to a group


def group_alive(pgid: int) -> bool:
    """Whether a running process of the group ``pgid`` still exists. Zombies (dead, waiting to
    be reaped) do not count: on Linux ``/proc`` is read, elsewhere ``killpg(pgid, 0)`` decides."""
    if pgid <= 0:
        return False
    proc = Path("/proc")
    if proc.is_dir():
        for entry in proc.iterdir():
            if not entry.name.isdigit():
                continue
            try:
                stat = (entry / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2 :].split()  # after "pid (comm) "
            if fields[0] != "Z" and int(fields[2]) == pgid:
                return True
        return False
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def end_group(pgid: int, grace_s: float = KILL_GRACE_S) -> bool:
    """SIGTERM the process group ``pgid``, SIGKILL what is left after ``grace_s``; True when
    the group is gone afterwards."""
    for sig, wait_s in ((signal.SIGTERM, grace_s), (signal.SIGKILL, 5.0)):
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            return True
        deadline = time.monotonic() + wait_s
        while time.monotonic() < deadline:
            if not group_alive(pgid):
                return True
            time.sleep(0.05)
    return not group_alive(pgid)
