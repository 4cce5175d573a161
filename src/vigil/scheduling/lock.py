"""One retraining cycle at a time: an owner file with stale-lock recovery.

The lock is the file ``<path>`` holding JSON ``{pid, host, since}`` of its owner. Reading and
writing it happen under a ``filelock.FileLock`` on ``<path>.guard`` (OS-level, released when a
process dies), so two contenders never both see the lock free. The owner file outlives a crash;
it is *stale*, and broken with a warning, when its holder is a dead process on this host, or
when it is older than ``stale_after_s`` and its holder is on another host (we cannot check
there). A live holder on this host is never broken, however old: the message says who it is.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Self

from filelock import FileLock

log = logging.getLogger(__name__)


class LockBusyError(RuntimeError):
    """Another cycle holds the lock; the message names the holder and the lock file."""


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    since: float  # unix time the lock was taken

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        return f"pid {self.pid} on {self.host} since {when}"


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def read_owner(path: Path) -> LockOwner | None:
    """The owner recorded in ``path``; None when free. An unreadable file counts as stale owner."""
    try:
        data = json.loads(path.read_text())
        return LockOwner(pid=int(data["pid"]), host=str(data["host"]), since=float(data["since"]))
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OSError):
        return LockOwner(pid=-1, host="?", since=0.0)  # garbage: treated as stale


def is_stale(owner: LockOwner, stale_after_s: float, now: float | None = None) -> bool:
    now = time.time() if now is None else now
    if owner.pid < 0:
        return True
    if owner.host == socket.gethostname():
        return not _pid_alive(owner.pid)
    return now - owner.since > stale_after_s


class RetrainLock:
    """Context manager: ``with RetrainLock(path, timeout_s=0): run_cycle(...)``.

    Waits up to ``timeout_s`` (polling every ``poll_s``) for a live holder, then raises
    ``LockBusyError``. Re-entrant within one process is *not* supported: take it once per cycle.
    """

    def __init__(
        self,
        path: Path | str,
        *,
        timeout_s: float = 0,
        stale_after_s: float = 6 * 3600,
        poll_s: float = 0.5,
    ) -> None:
        self.path = Path(path)
        self.timeout_s = timeout_s
        self.stale_after_s = stale_after_s
        self.poll_s = poll_s
        self._guard = FileLock(str(self.path) + ".guard")
        self._held = False

    def _try_take(self) -> LockOwner | None:
        """Take the lock if free or stale; return the live owner otherwise."""
        with self._guard:
            owner = read_owner(self.path)
            if owner is not None and not is_stale(owner, self.stale_after_s):
                return owner
            if owner is not None:
                log.warning(
                    "breaking stale retrain lock %s held by %s", self.path, owner.describe()
                )
            me = {"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()}
            tmp = self.path.with_name(self.path.name + f".tmp-{os.getpid()}")
            tmp.write_text(json.dumps(me))
            os.replace(tmp, self.path)
            return None

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout_s
        while True:
            owner = self._try_take()
            if owner is None:
                self._held = True
                return
            if time.monotonic() >= deadline:
                raise LockBusyError(
                    f"another retraining cycle is running ({owner.describe()}; lock file "
                    f"{self.path}); waited {self.timeout_s:g} s. Try again later, or raise "
                    "lock.timeout_s / pass --wait SECONDS to wait for it."
                )
            time.sleep(min(self.poll_s, max(deadline - time.monotonic(), 0.01)))

    def release(self) -> None:
        if not self._held:
            return
        with self._guard:
            owner = read_owner(self.path)
            if (
                owner is not None
                and owner.pid == os.getpid()
                and owner.host == socket.gethostname()
            ):
                self.path.unlink(missing_ok=True)
        self._held = False

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
