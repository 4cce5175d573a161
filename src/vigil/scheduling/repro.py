"""Running the pipeline for a retrain cycle: ``dvc repro`` in its own process group.

``dvc repro`` starts stage commands, which start workers: a tree of processes. It runs here in a
new session (``start_new_session=True``: its own process group, pgid = its pid), so that

- a ``repro.timeout_s`` timeout ends the whole group (SIGTERM, then SIGKILL after
  ``KILL_GRACE_S``), not only dvc, whose stage would live on;
- the group is recorded in the retrain lock (``vigil.scheduling.lock.note_process_group``): if
  this process dies (``kill -9``), the next cycle sees the pipeline still running and waits for
  it, or ends it once the lock is stale, instead of starting a second pipeline beside it;
- an exception or signal in this process ends the group on the way out: Ctrl-C, and SIGTERM or
  SIGHUP, which ``vigil.scheduling.procgroup.signals_raise`` turns into ``Terminated`` (a
  ``SystemExit``) while the group runs; without it Python dies at once and the group lives on.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from collections import deque
from collections.abc import Callable
from pathlib import Path

from vigil.registry.policy import PROMOTE_ENV
from vigil.redact import redact
from vigil.scheduling import RetrainConfig
from vigil.scheduling.dvc_tools import dvc_env
from vigil.scheduling.lock import forget_process_group, note_process_group
from vigil.scheduling.procgroup import KILL_GRACE_S, end_group, group_alive, signals_raise


class ReproError(RuntimeError):
    """A repro command failed or timed out; ``tail`` holds its last output lines."""

    def __init__(self, message: str, tail: str = "") -> None:
        super().__init__(message)
        self.tail = tail


def _echo_output(proc: subprocess.Popen, echo: Callable[[str], None], tail: deque[str]) -> None:
    """Echo each line of ``proc``'s output, redacted (the stages' output may quote a
    credentialed store URI), keeping the last ones in ``tail``."""
    assert proc.stdout is not None
    for line in proc.stdout:
        clean = redact(line.rstrip("\n"))
        echo(clean)
        tail.append(clean)


def run_in_group(
    cmd: list[str],
    root: Path,
    timeout_s: float | None,
    echo: Callable[[str], None],
    env: dict[str, str] | None = None,
    grace_s: float = KILL_GRACE_S,
) -> tuple[int, str]:
    """Run ``cmd`` in a new process group, echoing each output line; returns (exit code, last
    lines). After ``timeout_s`` the whole group is ended; the group never outlives this call."""
    tail: deque[str] = deque(maxlen=60)
    timed_out = threading.Event()
    timer = None
    with signals_raise():  # SIGTERM / SIGHUP of this process: the finally below still runs
        proc = subprocess.Popen(
            cmd,
            cwd=root,
            env=env if env is not None else dvc_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            bufsize=1,
            start_new_session=True,
        )
        try:
            note_process_group(proc.pid)  # its pgid: a new session's leader

            def on_timeout() -> None:
                timed_out.set()
                end_group(proc.pid, grace_s)

            if timeout_s:
                timer = threading.Timer(timeout_s, on_timeout)
                timer.daemon = True
                timer.start()
            _echo_output(proc, echo, tail)
            code = proc.wait()
        finally:
            if timer:
                timer.cancel()
            if proc.poll() is None or group_alive(proc.pid):  # an exception, signal or orphans
                end_group(proc.pid, grace_s)
                proc.wait()
            forget_process_group(proc.pid)
    if timed_out.is_set():
        tail.append(f"killed (whole process group) after the {timeout_s} s repro timeout")
    return code, "\n".join(tail)


def repro_commands(cfg: RetrainConfig, triggers: dict[str, list[str]]) -> list[list[str]]:
    """dvc repro argument lists: plain for new data, ``--force --downstream`` for the rest."""
    plain = [d for d, t in triggers.items() if t == ["new_data"]]
    forced = [d for d, t in triggers.items() if t and t != ["new_data"]]
    commands = []
    if plain:
        targets = [t.format(dataset=d) for d in plain for t in cfg.repro.targets]
        commands.append(["repro", *targets])
    if forced:
        if cfg.repro.force_from:
            commands.append(
                [
                    "repro",
                    "--force",
                    "--downstream",
                    *[cfg.repro.force_from.format(dataset=d) for d in forced],
                ]
            )
        else:
            targets = [t.format(dataset=d) for d in forced for t in cfg.repro.targets]
            commands.append(["repro", "--force", *targets])
    return commands


def run_repro(
    root: Path, cfg: RetrainConfig, triggers: dict[str, list[str]], echo: Callable[[str], None]
) -> list[str]:
    """Run the repro commands in order; raises ReproError on the first failure."""
    ran = []
    for args in repro_commands(cfg, triggers):
        cmd = [sys.executable, "-m", "dvc", *args]
        ran.append("dvc " + " ".join(args))
        echo(f"$ {ran[-1]}")
        # the scheduled retrain may move champion (register.promote: auto; the gate decides)
        env = {**dvc_env(), PROMOTE_ENV: "1"}
        code, tail = run_in_group(cmd, root, cfg.repro.timeout_s, echo, env=env)
        if code != 0:
            raise ReproError(f"`{ran[-1]}` failed (exit {code})", tail)
    return ran
