"""One retraining cycle at a time: an owner file with stale-lock recovery.

The lock is the file ``<path>`` holding JSON ``{pid, host, since}`` of its owner. Reading and
writing it happen under a ``filelock.FileLock`` on ``<path>.guard`` (OS-level, released when a
process dies), so two contenders never both see the lock free. The owner file outlives a crash;
it is *stale*, and broken with a warning, when its holder is a dead process on this host, or
when it is older than ``stale_after_s`` and its holder is on another host (we cannot check
there). A live holder on this host is never broken, however old: the message says who it is.

Process groups: the holder records the process group of each pipeline it starts
(``note_process_group``: ``dvc repro`` runs in its own group, see ``vigil.scheduling.repro``).
A holder that died (``kill -9``) may leave that pipeline running; the lock then stays taken
while any recorded group is alive (a second cycle never starts beside it: ``--wait`` waits for
it), and once the lock is older than ``stale_after_s`` the orphaned groups are ended (SIGTERM,
then SIGKILL) before the lock is broken.
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

from vigil.scheduling.procgroup import end_group, group_alive

log = logging.getLogger(__name__)


class LockBusyError(RuntimeError):
    """Another cycle holds the lock; the message names the holder and the lock file."""


@dataclass(frozen=True)
class LockOwner:
    pid: int
    host: str
    since: float  # unix time the lock was taken
    groups: tuple[int, ...] = ()  # process groups of the pipelines it started (pgids)

    def describe(self) -> str:
        when = datetime.fromtimestamp(self.since, UTC).strftime("%Y-%m-%d %H:%M:%S UTC")
        text = f"pid {self.pid} on {self.host} since {when}"
        orphans = self.live_groups() if self.host == socket.gethostname() else []
        if orphans and not _pid_alive(self.pid):
            text += (
                f"; that process is gone but its pipeline (process group "
                f"{', '.join(map(str, orphans))}) is still running"
            )
        return text

    def live_groups(self) -> list[int]:
        return [g for g in self.groups if group_alive(g)]


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
        return LockOwner(
            pid=int(data["pid"]),
            host=str(data["host"]),
            since=float(data["since"]),
            groups=tuple(int(g) for g in data.get("groups", [])),
        )
    except FileNotFoundError:
        return None
    except (ValueError, KeyError, TypeError, OSError):
        return LockOwner(pid=-1, host="?", since=0.0)  # garbage: treated as stale


def is_stale(owner: LockOwner, stale_after_s: float, now: float | None = None) -> bool:
    """Whether the lock may be broken: garbage, a dead holder on this host whose pipeline
    groups are gone too (or, older than ``stale_after_s``, can be ended: the caller ends them),
    or a holder on another host older than ``stale_after_s``."""
    now = time.time() if now is None else now
    if owner.pid < 0:
        return True
    if owner.host == socket.gethostname():
        if _pid_alive(owner.pid):
            return False
        return not owner.live_groups() or now - owner.since > stale_after_s
    return now - owner.since > stale_after_s


# The lock this process holds (one cycle at a time per process), for ``note_process_group``.
_held: RetrainLock | None = None


def note_process_group(pgid: int) -> None:
    """Record ``pgid`` in the lock this process holds (no-op without one): a pipeline started
    in its own process group, which outlives this process if it is killed."""
    if _held is not None:
        _held.update_groups(add=pgid)


def forget_process_group(pgid: int) -> None:
    """The group ``pgid`` has ended: drop it from the lock this process holds."""
    if _held is not None:
        _held.update_groups(remove=pgid)


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
                for group in owner.live_groups() if owner.host == socket.gethostname() else []:
                    log.warning("ending process group %d left by the dead holder", group)
                    if not end_group(group):
                        return owner  # still there: not free yet
            self._write({"pid": os.getpid(), "host": socket.gethostname(), "since": time.time()})
            return None

    def _write(self, owner: dict) -> None:
        tmp = self.path.with_name(self.path.name + f".tmp-{os.getpid()}")
        tmp.write_text(json.dumps(owner))
        os.replace(tmp, self.path)

    def update_groups(self, add: int | None = None, remove: int | None = None) -> None:
        """Add or remove a process group in the owner file (only while this process owns it)."""
        with self._guard:
            data = json.loads(self.path.read_text())
            if data.get("pid") != os.getpid():
                return
            groups = [g for g in data.get("groups", []) if g != remove]
            if add is not None and add not in groups:
                groups.append(add)
            data["groups"] = groups
            self._write(data)

    def acquire(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + self.timeout_s
        while True:
            owner = self._try_take()
            if owner is None:
                global _held
                self._held, _held = True, self
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
        global _held
        self._held = False
        if _held is self:
            _held = None

    def __enter__(self) -> Self:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
