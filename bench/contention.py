"""Contention benchmark: a training epoch and a serving burst, idle and next to CPU-bound competitors.

    .venv/bin/python bench/contention.py [--competitors 2] [--train-images 160] [--requests 300]

Each workload is measured three times in one run, in fresh processes:

- ``vigil``: the process imports vigil first, as every entry point does, so torch loads with
  a short ``GOMP_SPINCOUNT`` and ``OMP_NUM_THREADS`` = usable cores (``vigil.threads``);
- ``passive``: the same with ``OMP_WAIT_POLICY=PASSIVE`` (threads never spin; vigil's
  previous default);
- ``torch default``: the same code with torch imported before vigil and no variable set,
  i.e. libgomp's default spin-waiting (what every stage ran with before either).

Training: the real ``vigil.training.fit`` (1 epoch, default model of params.yaml, MLflow on a
throw-away SQLite store) on a synthetic image set prepared by the real prepare stage; the figure
is training steps/s over the epoch (an epoch slower than ``--cap`` seconds is cut there, its rate
still counts). Serving: the real ``vigil serve`` (default image model of params.yaml, untrained
weights) answering ``--requests`` PNG requests from ``--clients`` concurrent clients; the figure
is requests/s. Each is measured idle, then next to ``--competitors`` processes running
``while True: pass`` (started and killed here); the slowdown ratio is idle rate / busy rate.
With N cores and k competitors a fair share gives a ratio of about (k + 1) / 1 for a process
that could use all the cores alone, capped by N: the target is <= 3x for 2 competitors.

The load generator (this process) shares the cores with the service. "Idle" means no
competitor started by the bench; other work on the machine adds noise to both figures.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
import vigil  # noqa: E402,F401  (first: OpenMP defaults before torch loads, see vigil.threads)

POLICIES = ("vigil", "passive", "torch default")
OMP_VARIABLES = ("OMP_WAIT_POLICY", "OMP_NUM_THREADS", "GOMP_SPINCOUNT")
# the child's first line: for the baseline, torch loads before vigil can set its defaults
PRELUDE = {"vigil": "import vigil", "passive": "import vigil",
           "torch default": "import torch; import vigil"}
# what the child's environment sets besides: "passive" is vigil's previous default
POLICY_ENV = {"passive": {"OMP_WAIT_POLICY": "PASSIVE"}}


def child_env(policy: str, work: Path) -> dict[str, str]:
    """The environment of a measured process: no OpenMP variables from the caller, the
    policy's own."""
    env = {k: v for k, v in os.environ.items() if k not in OMP_VARIABLES}
    env.update(POLICY_ENV.get(policy, {}))
    env.update(
        MLFLOW_TRACKING_URI=f"sqlite:///{work / 'mlflow.db'}",
        MLFLOW_SKIP_PIP_REQUIREMENTS_CHECK="true",
        PYTHONPATH=str(ROOT / "src"),
        PYTHONUNBUFFERED="1",
    )
    return env


# --- competitors -----------------------------------------------------------------------------


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


class Competitors:
    """``n`` CPU-bound processes (``while True: pass``), running once the context is entered."""

    def __init__(self, n: int):
        self.n = n
        self.processes: list[subprocess.Popen] = []

    def __enter__(self) -> Competitors:
        code = "while True: pass"
        self.processes = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(self.n)]
        deadline = time.monotonic() + 30
        # running, not just started: each has burnt some CPU time in its loop
        while any(_cpu_seconds(p.pid) < 0.05 for p in self.processes):
            if time.monotonic() > deadline:
                raise RuntimeError("competitor processes did not start running in 30 s")
            time.sleep(0.01)
        return self

    def __exit__(self, *exc) -> None:
        for process in self.processes:
            process.kill()
        for process in self.processes:
            process.wait()


# --- data and model --------------------------------------------------------------------------


def bench_params_raw(size: int) -> dict:
    """params.yaml with one image dataset, ``bench``, and one training epoch."""
    import yaml

    raw = yaml.safe_load((ROOT / "params.yaml").read_text())
    raw["data"]["datasets"] = {"bench": {"source": "source", "modality": "image"}}
    raw["prepare"]["image"]["size"] = [size, size]
    raw["train"]["max_epochs"] = 1
    return raw


def make_prepared(work: Path, n_train: int, size: int) -> Path:
    """A synthetic MVTec-layout folder (soft blobs; scratches with masks on anomalies) prepared
    by the real prepare stage into ``work/prepared``."""
    import cv2
    import numpy as np

    from vigil.config import parse_params
    from vigil.data.prepare import prepare_dataset

    rng = np.random.default_rng(0)

    def write(path: Path, image: np.ndarray) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), image)

    def part(defect: bool) -> tuple[np.ndarray, np.ndarray]:
        image = np.full((size, size, 3), 60, np.uint8)
        center = tuple(int(c) for c in rng.integers(size // 4, 3 * size // 4, 2))
        cv2.circle(image, center, size // 5, (200, 190, 180), -1)
        image = cv2.GaussianBlur(image, (5, 5), 0)
        mask = np.zeros((size, size), np.uint8)
        if defect:
            p1, p2 = (tuple(int(c) for c in rng.integers(2, size - 2, 2)) for _ in range(2))
            cv2.line(image, p1, p2, (0, 0, 0), 2)
            cv2.line(mask, p1, p2, 255, 2)
        return image, mask

    source = work / "source"
    for i in range(n_train):
        write(source / "train" / "good" / f"{i:04d}.png", part(False)[0])
    for i in range(8):
        write(source / "test" / "good" / f"{i:04d}.png", part(False)[0])
        image, mask = part(True)
        write(source / "test" / "scratch" / f"{i:04d}.png", image)
        write(source / "ground_truth" / "scratch" / f"{i:04d}_mask.png", mask)
    params = parse_params(bench_params_raw(size))
    out = work / "prepared"
    prepare_dataset(
        "bench", params.dataset("bench"), params.prepare, out, base_dir=work, progress=False
    )
    return out


def make_package(work: Path) -> Path:
    """A package folder of params.yaml's default image model (untrained: speed does not
    depend on the weights), as ``vigil serve --model-dir`` takes it."""
    import torch

    from vigil.config import load_params
    from vigil.detector import Detector, DetectorRecord
    from vigil.models.spec import build_model, model_spec
    from vigil.registry.package import stage_artifacts

    params = load_params(ROOT / "params.yaml")
    family = params.model.family_name("image")
    prep = params.prepare.image
    spec = model_spec(
        family, prep.channels, prep.size, params.model.family_config(family), prep=prep
    )
    record = DetectorRecord(
        spec=spec,
        postprocess=params.evaluate,
        threshold=0.01,
        pixel_threshold=0.01,
        dataset="bench",
    )
    torch.manual_seed(0)
    Detector(build_model(spec), record).save(work / "detector")
    return stage_artifacts(work / "detector", work / "package")


# --- training --------------------------------------------------------------------------------

TRAIN_CHILD = r"""
import json, sys, time
from pathlib import Path

import pytorch_lightning as pl

sys.path.insert(0, {bench!r})
from contention import bench_params_raw
from vigil.config import parse_params
from vigil.training import fit


class Rate(pl.Callback):
    "Training steps/s over the epoch; stops it after `cap` seconds."

    def __init__(self, cap):
        self.cap, self.steps, self.started, self.seconds = cap, 0, None, 0.0

    def on_train_epoch_start(self, trainer, module):
        self.started = time.perf_counter()

    def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx):
        self.steps += 1
        self.seconds = time.perf_counter() - self.started
        if self.seconds > self.cap:
            trainer.should_stop = True


params = parse_params(bench_params_raw({size}))
work = Path({work!r})
for n, line in enumerate(sys.stdin):
    rate = Rate({cap})
    fit(params, work / "prepared", work / f"model-{{n}}", callbacks=[rate],
        log_model_images=False, resume=False)
    import torch
    print(json.dumps({{"label": line.strip(), "steps": rate.steps, "seconds": rate.seconds,
                      "threads": torch.get_num_threads()}}), flush=True)
"""


def bench_training(work: Path, args: argparse.Namespace) -> dict[str, dict]:
    """Per policy: warm-up epoch, idle epoch, epoch next to the competitors (one process)."""
    results: dict[str, dict] = {}
    for policy in POLICIES:
        code = (
            PRELUDE[policy]
            + "\n"
            + TRAIN_CHILD.format(
                bench=str(ROOT / "bench"), size=args.size, work=str(work), cap=args.cap
            )
        )
        child = subprocess.Popen(
            [sys.executable, "-c", code],
            cwd=work,
            env=child_env(policy, work),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
            text=True,
        )

        def epoch(label: str) -> dict:
            child.stdin.write(label + "\n")
            child.stdin.flush()
            line = child.stdout.readline()
            if not line:
                raise RuntimeError(f"training process ({policy}) exited: {child.wait()}")
            return json.loads(line)

        try:
            epoch("warm-up")  # imports, MLflow store, first-call costs
            idle = epoch("idle")
            with Competitors(args.competitors):
                busy = epoch("busy")
        finally:
            child.stdin.close()
            child.wait(120)
        results[policy] = _ratio(idle["steps"] / idle["seconds"], busy["steps"] / busy["seconds"])
        results[policy]["torch_threads"] = idle["threads"]
        print(f"  train [{policy}] {_line(results[policy], 'steps/s')}", flush=True)
    return results


# --- serving ---------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(policy: str, package: Path, port: int, work: Path) -> subprocess.Popen:
    import httpx

    code = PRELUDE[policy] + "; import sys; from vigil.cli import main; sys.exit(main())"
    cmd = [sys.executable, "-c", code, "serve", "--model-dir", str(package), "--no-follow"]
    cmd += ["--host", "127.0.0.1", "--port", str(port)]
    env = child_env(policy, work)
    process = subprocess.Popen(
        cmd, cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"service exited: {process.stderr.read().decode()[-2000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}/ready", timeout=2).status_code == 200:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    process.kill()
    raise RuntimeError("service did not become ready in 180 s")


async def burst(url: str, body: bytes, requests: int, clients: int) -> dict:
    """``requests`` POST /score from ``clients`` concurrent clients; requests/s and errors."""
    import httpx

    todo = iter(range(requests))
    errors = 0
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    async with httpx.AsyncClient(base_url=url, timeout=120, limits=limits) as http:

        async def client() -> None:
            nonlocal errors
            for _ in todo:
                response = await http.post(
                    "/score", content=body, headers={"content-type": "image/png"}
                )
                errors += response.status_code != 200

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        seconds = time.perf_counter() - started
    return {"rate": requests / seconds, "errors": errors}


def bench_serving(work: Path, package: Path, args: argparse.Namespace) -> dict[str, dict]:
    import cv2
    import numpy as np

    rng = np.random.default_rng(0)
    image = cv2.GaussianBlur(rng.integers(0, 255, (256, 256, 3), dtype=np.uint8), (0, 0), 3)
    body = cv2.imencode(".png", image)[1].tobytes()
    results: dict[str, dict] = {}
    for policy in POLICIES:
        port = free_port()
        service = start_service(policy, package, port, work)
        url = f"http://127.0.0.1:{port}"
        try:
            asyncio.run(burst(url, body, 20, args.clients))  # warm-up
            idle = asyncio.run(burst(url, body, args.requests, args.clients))
            with Competitors(args.competitors):
                busy = asyncio.run(burst(url, body, args.requests, args.clients))
        finally:
            service.terminate()
            service.wait(30)
        results[policy] = _ratio(idle["rate"], busy["rate"])
        results[policy]["errors"] = idle["errors"] + busy["errors"]
        print(f"  serve [{policy}] {_line(results[policy], 'req/s')}", flush=True)
    return results


# --- report ----------------------------------------------------------------------------------


def _ratio(idle_rate: float, busy_rate: float) -> dict:
    return {
        "idle": round(idle_rate, 2),
        "busy": round(busy_rate, 2),
        "slowdown": round(idle_rate / busy_rate, 2),
    }


def _line(row: dict, unit: str) -> str:
    return f"idle {row['idle']} {unit}, busy {row['busy']} {unit}: {row['slowdown']}x slower"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--competitors", type=int, default=2, help="CPU-bound processes")
    parser.add_argument("--train-images", type=int, default=160, help="normal training images")
    parser.add_argument("--size", type=int, default=64, help="image side (px)")
    parser.add_argument("--cap", type=float, default=45.0, help="max seconds per epoch")
    parser.add_argument("--requests", type=int, default=300, help="requests per burst")
    parser.add_argument("--clients", type=int, default=4, help="concurrent clients")
    parser.add_argument("--skip-train", action="store_true")
    parser.add_argument("--skip-serve", action="store_true")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args()
    started = time.perf_counter()
    report: dict = {"cpus": os.cpu_count(), "load_avg_at_start": os.getloadavg()[0]}
    with tempfile.TemporaryDirectory(prefix="vigil-bench-contention-") as tmp:
        work = Path(tmp)
        if not args.skip_train:
            make_prepared(work, args.train_images, args.size)
            report["train"] = bench_training(work, args)
        if not args.skip_serve:
            report["serve"] = bench_serving(work, make_package(work), args)
    report["load_avg_at_end"] = os.getloadavg()[0]
    report["seconds"] = round(time.perf_counter() - started, 1)
    print(json.dumps(report, indent=2))
    for part, unit in (("train", "steps/s"), ("serve", "req/s")):
        if part in report:
            ours = report[part]["vigil"]
            for name in POLICIES[1:]:
                base = report[part][name]
                print(
                    f"{part}: slowdown next to {args.competitors} competitors {ours['slowdown']}x "
                    f"({name} {base['slowdown']}x); vigil vs {name}: {ours['idle'] / base['idle']:.2f}x "
                    f"idle, {ours['busy'] / base['busy']:.2f}x busy"
                )
    if args.json:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
