"""README commands, pasted in order: the ```bash blocks of Quick start, Deployment and Retraining.

    .venv/bin/python bench/readme.py [--venv .venv] [--with-tests] [--keep DIR] [--timeout 5400]

Clones HEAD of this repository into a temporary folder (committed work only) and runs each
command there the way a user pastes it: one after another in a fresh shell environment (no
``MLFLOW_TRACKING_URI``, no ``VIGIL_*``, no venv on PATH), keeping what ``export`` and ``cd``
change. It prints ``ok`` / ``FAILED`` and the seconds of each command, and the output's tail for
a failure. ``make test`` (the whole suite) is skipped unless ``--with-tests``.

Not reinstalled: the clone's ``.venv`` is a symbolic link to ``--venv`` (torch is big) and its
``pyproject.toml`` is dated before the venv's install stamp, so ``make`` does not reinstall into
the shared venv; ``PYTHONPATH=<clone>/src`` makes the clone's code the one that runs, as an
editable install in a fresh clone would.

Stand-ins for what a README reader has and this machine does not:

- servers the README starts in the foreground (``vigil serve``, ``mlflow ui``) run in the
  background on a free port (``localhost:8000`` in later commands follows), are waited for and
  stopped at the end;
- ``part.png``, ``a.png``, ``b.png`` (capsule photographs), ``f000.png``/``f001.png`` (print
  frames), ``line.avi`` (a print video), ``new-good-parts/`` (new defect-free capsules) are made
  from the clone's generated data before the commands that need them;
- the alert webhook ``http://alerts.local/hook`` is a tiny HTTP listener on 127.0.0.1 that
  counts the events it receives.

A ``curl`` whose answer is an error body (JSON with ``detail``) or whose ``-o`` file is not a PNG
counts as failed (``curl -s`` itself exits 0 on HTTP errors).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SECTIONS = ("Quick start", "Deployment", "Retraining")
SERVERS = {"vigil serve": ("--port", "/health"), "mlflow ui": ("--port", "/")}
WEBHOOK = "http://alerts.local/hook"
PNG = b"\x89PNG\r\n\x1a\n"


@dataclass
class Command:
    section: str
    text: str


def readme_commands(readme: str, sections=SECTIONS) -> list[Command]:
    """The commands of the ```bash blocks under the ``## <section>`` headings, in order:
    continuation lines joined, comment-only lines dropped."""
    commands: list[Command] = []
    section, fenced, pending = None, False, ""
    for line in readme.splitlines():
        if line.startswith("## "):
            section = next((s for s in sections if line[3:].startswith(s)), None)
        elif line.startswith("```"):
            fenced = line.strip() == "```bash" and not fenced and section is not None
        elif fenced and (pending or line.strip() and not line.lstrip().startswith("#")):
            pending += line.rstrip()[:-1] + " " if line.rstrip().endswith("\\") else line
            if not line.rstrip().endswith("\\"):
                commands.append(Command(section, pending.strip()))
                pending = ""
    return commands


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Hook(BaseHTTPRequestHandler):
    received: list[dict] = []

    def do_POST(self) -> None:  # noqa: N802 - http.server's name
        body = self.rfile.read(int(self.headers.get("content-length") or 0))
        Hook.received.append(json.loads(body or b"{}"))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args) -> None:
        pass


@dataclass
class Shell:
    """A user's shell: the environment and folder that ``export`` and ``cd`` change."""

    cwd: Path
    env: dict[str, str]
    servers: list[subprocess.Popen] = field(default_factory=list)
    ports: dict[str, int] = field(default_factory=dict)  # README port -> stand-in port

    def run(self, text: str, timeout: float) -> tuple[bool, str]:
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp)
            script = (
                f"{text}\nrc=$?\nenv -0 > {state / 'env'}\npwd > {state / 'pwd'}\nexit $rc\n"
            )
            try:
                done = subprocess.run(
                    ["bash", "-c", script], cwd=self.cwd, env=self.env, timeout=timeout,
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, errors="replace",
                )  # fmt: skip
            except subprocess.TimeoutExpired as error:
                return False, f"timed out after {timeout:.0f} s\n{error.output or ''}"
            if (state / "env").is_file():
                items = (state / "env").read_text().split("\0")
                self.env = dict(item.split("=", 1) for item in items if "=" in item)
                self.cwd = Path((state / "pwd").read_text().strip())
        return done.returncode == 0, done.stdout

    def serve(self, text: str, name: str, log: Path, timeout: float) -> tuple[bool, str]:
        """Start a server command in the background on a free port; wait until it answers."""
        flag, probe = SERVERS[name]
        text = re.sub(r"\s+#.*$", "", text).rstrip(" &")  # a trailing comment, a trailing &
        given = re.search(rf"\s{flag}[ =](\d+)", text)
        readme_port = given.group(1) if given else ("8000" if name == "vigil serve" else "5000")
        text = text.replace(given.group(0), "") if given else text
        port = free_port()
        self.ports[readme_port] = port
        out = log.open("w")
        process = subprocess.Popen(
            ["bash", "-c", f"exec {text} {flag} {port}"], cwd=self.cwd, env=self.env,
            stdout=out, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        self.servers.append(process)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if process.poll() is not None:
                return False, f"exited with {process.returncode}\n{log.read_text()}"
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}{probe}", timeout=2) as r:
                    if r.status == 200:
                        return True, f"listening on {port} (README: {readme_port})"
            except OSError:
                time.sleep(1)
        return False, f"no answer on {port} within {timeout:.0f} s\n{log.read_text()}"

    def stop_servers(self) -> None:
        for process in self.servers:
            if process.poll() is None:
                os.killpg(process.pid, signal.SIGTERM)
                try:
                    process.wait(20)
                except subprocess.TimeoutExpired:
                    os.killpg(process.pid, signal.SIGKILL)
                    process.wait()
        self.servers.clear()


def fresh_env(clone: Path) -> dict[str, str]:
    """The environment of a new terminal: no stores, no vigil settings, no venv on PATH."""
    env = {
        k: v
        for k, v in os.environ.items()
        if not k.startswith(("MLFLOW_", "VIGIL_", "DVC_", "VIRTUAL_ENV", "PYTHON"))
    }
    env["PATH"] = os.pathsep.join(
        p for p in env.get("PATH", "/usr/bin:/bin").split(os.pathsep) if ".venv" not in p
    )
    env["PYTHONPATH"] = str(clone / "src")  # the clone's code, as its editable install would be
    return env


def clone_repo(dest: Path, venv: Path) -> Path:
    clone = dest / "vigil"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    (clone / ".venv").symlink_to(venv.resolve(), target_is_directory=True)
    stamp = (venv / ".installed").stat().st_mtime
    os.utime(clone / "pyproject.toml", (stamp - 60, stamp - 60))  # make does not reinstall
    return clone


def make_stand_ins(root: Path) -> None:
    """Inputs the README assumes a reader has, made from the generated data."""
    import cv2

    raw = root / "data/raw" if (root / "data/raw/capsules").is_dir() else REPO / "data/raw"
    good = sorted((raw / "capsules/test/good").iterdir())
    defect = sorted(p for d in (raw / "capsules/test").iterdir() if d.name != "good"
                    for p in d.iterdir())  # fmt: skip
    for name, source in (("part.png", defect[0]), ("a.png", good[0]), ("b.png", defect[1])):
        shutil.copy(source, root / name)
    video = sorted((raw / "print/testing").glob("*.avi"))[0]
    shutil.copy(video, root / "line.avi")
    capture = cv2.VideoCapture(str(video))
    for i in range(2):
        ok, frame = capture.read()
        if ok:
            cv2.imwrite(str(root / f"f{i:03d}.png"), frame)
    capture.release()
    new = root / "new-good-parts"
    new.mkdir(exist_ok=True)
    for i, path in enumerate(sorted((raw / "capsules/train/good").iterdir())[:6]):
        cv2.imwrite(str(new / f"new{i:03d}.png"), cv2.flip(cv2.imread(str(path)), 1))


def judge_curl(text: str, output: str, cwd: Path) -> str | None:
    """Why a ``curl`` command failed although it exited 0, or None."""
    words = shlex.split(text, comments=True)
    if "-o" in words:
        written = cwd / words[words.index("-o") + 1]
        head = written.read_bytes()[:200] if written.is_file() else b""
        return None if head.startswith(PNG) else f"{written.name} is not a PNG: {head[:160]!r}"
    try:
        answer = json.loads(output)
    except ValueError:
        return f"not a JSON answer: {output[:200]!r}"
    if isinstance(answer, dict) and "detail" in answer:
        return f"error answer: {output[:300]}"
    return None


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--venv", type=Path, default=REPO / ".venv", help="venv to reuse")
    parser.add_argument("--with-tests", action="store_true", help="also run `make test`")
    parser.add_argument("--keep", type=Path, help="clone here and keep it (default: a temp dir)")
    parser.add_argument("--timeout", type=float, default=5400, help="seconds per command")
    args = parser.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the servers on the way out

    commands = readme_commands((REPO / "README.md").read_text())
    workdir = args.keep or Path(tempfile.mkdtemp(prefix="vigil-readme-"))
    workdir.mkdir(parents=True, exist_ok=True)
    clone = clone_repo(workdir, args.venv)
    head = subprocess.run(["git", "-C", str(clone), "rev-parse", "--short", "HEAD"],
                          capture_output=True, text=True).stdout.strip()  # fmt: skip
    print(f"README commands at {head} in {clone}: {len(commands)}", flush=True)
    hook = ThreadingHTTPServer(("127.0.0.1", 0), Hook)
    threading.Thread(target=hook.serve_forever, daemon=True).start()
    shell = Shell(clone, fresh_env(clone))
    results: list[tuple[str, float, Command]] = []
    made = False
    try:
        for i, command in enumerate(commands):
            text = command.text
            if text.split("#")[0].strip() == "make test" and not args.with_tests:
                results.append(("skipped", 0.0, command))
                print(f"skipped          {text}  (the whole suite: --with-tests)", flush=True)
                continue
            if command.section != "Quick start" and not made:
                make_stand_ins(clone)
                made = True
            text = text.replace(WEBHOOK, f"http://127.0.0.1:{hook.server_port}/hook")
            for old, new in shell.ports.items():
                text = re.sub(rf"localhost:{old}\b", f"localhost:{new}", text)
            started = time.perf_counter()
            server = next((s for s in SERVERS if re.search(rf"(^|/){s}\b", text)), None)
            if server:
                ok, output = shell.serve(text, server, workdir / f"server-{i}.log", 300)
            else:
                ok, output = shell.run(text, args.timeout)
                if ok and text.startswith("curl"):
                    reason = judge_curl(text, output, shell.cwd)
                    ok, output = reason is None, (reason or output)
            seconds = time.perf_counter() - started
            status = "ok" if ok else "FAILED"
            results.append((status, seconds, command))
            print(f"{status:<7}{seconds:8.1f} s  {text}", flush=True)
            lines = [line[:200] for line in output.strip().splitlines()[-(2 if ok else 15) :]]
            if lines:  # what it said: the last 2 lines, 15 for a failure
                print("         | " + "\n         | ".join(lines), flush=True)
    finally:
        shell.stop_servers()
        hook.shutdown()
    failed = [r for r in results if r[0] == "FAILED"]
    print(f"\n{len(results) - len(failed)} of {len(results)} ok or skipped; "
          f"webhook events received: {len(Hook.received)}")  # fmt: skip
    if not args.keep:
        shutil.rmtree(workdir, ignore_errors=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
