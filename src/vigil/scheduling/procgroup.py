"""Process groups: is one still alive, ending all of it (the retrain pipeline's processes), and
turning a termination signal of this process into an exception while it runs one."""

from __future__ import annotations

import os
import signal
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

KILL_GRACE_S = 10.0  # between SIGTERM and SIGKILL to a group
TERMINATING = (signal.SIGTERM, signal.SIGHUP)


class Terminated(SystemExit):
    """This process got SIGTERM or SIGHUP; exits with 128 + the signal number (the shell's
    convention), after the ``finally`` blocks on the way out have run."""


@contextmanager
def signals_raise() -> Iterator[None]:
    """Within the block, SIGTERM and SIGHUP raise ``Terminated`` in the main thread instead of
    ending the process at once, so ``finally`` blocks run (a child process group is ended, a
    lock released). Only signals left at their default action are taken (a ``nohup``'s ignored
    SIGHUP stays ignored); a second signal during the cleanup is ignored. A no-op off the main
    thread, where Python cannot set handlers."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    taken = [s for s in TERMINATING if signal.getsignal(s) == signal.SIG_DFL]

    def raise_terminated(signum: int, _frame) -> None:
        for sig in taken:  # the cleanup that follows must not be cut short
            signal.signal(sig, signal.SIG_IGN)
        raise Terminated(128 + signum)

    for sig in taken:
        signal.signal(sig, raise_terminated)
    try:
        yield
    finally:
        for sig in taken:
            signal.signal(sig, signal.SIG_DFL)


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
