"""Model servers benchmark: `vigil serve` vs `mlflow models serve` vs MLServer, one package.

    .venv/bin/python bench/servers.py [--levels 1,8,32] [--duration 8] [--image-size 256]
    VIGIL_MLSERVER_VENV=/path/to/venv .venv/bin/python bench/servers.py   # adds MLServer

One package (params.yaml's default image model, untrained: speed does not depend on the weights)
is logged and registered in a temporary MLflow store (SQLite, local artifacts) and made champion
by a forced promotion (there is no gate evidence). Each server then serves that version, one
after the other, alone on the loopback (started, checked, measured, stopped):

- ``vigil serve``: ``vigil pull`` the champion, then ``vigil serve --model-dir DEST --no-follow``
  with configs/serving.yaml (2 forward passes at once, 1 torch thread each; past 8 requests in
  flight it answers 503 with Retry-After). Request: ``POST /score``, the PNG as the body.
- ``mlflow models serve -m models:/NAME@champion --env-manager local --workers 1``. Request:
  ``POST /invocations``, ``dataframe_split`` JSON with the PNG in base64 (what
  ``vigil.registry.package.invocation_payload`` writes).
- MLServer with ``mlserver_mlflow.MLflowRuntime`` (``parallel_workers: 0``), from its own venv
  (``VIGIL_MLSERVER_VENV``, see tests/integration/team/test_team_mlserver.py for how to build
  it); skipped without one. Request: V2 ``POST /v2/models/vigil/infer``, one BYTES input in
  base64.

Every request carries the same PNG (``--image-size`` px, decoded and resized by the package's
own preprocessing in each server); before the load, each server's answer must carry the score
the package computes in this process. The pyfunc servers run torch with vigil's default thread
count for the package (the usable cores). Per client level: p50/p99 latency of the accepted
requests, requests/s, 503s, errors (target 0), and the ratios of requests/s and p50 to
``vigil serve``'s at the same level. The load generator shares the cores with the server; the
load average at start and end is printed, since other work on the machine moves every figure.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "bench"))
import vigil  # noqa: E402,F401  (first: OpenMP defaults before torch loads, see vigil.threads)
from serve import build_default_detector, free_port, load_level  # noqa: E402

MODEL = "vigil-bench-servers"
BIN = Path(sys.executable).parent


@dataclass(frozen=True)
class Server:
    """How to start one server and what to send it."""

    name: str
    command: list[str]
    ready_path: str
    score_path: str
    body: bytes
    content_type: str
    score_of: Callable[[dict], float]  # the image's score in the server's JSON answer
    env: dict[str, str]


def register_package(root: Path) -> str:
    """Log and register the default image package in a new store under ``root``, champion;
    returns the tracking URI (also set in this process's environment)."""
    import mlflow

    from vigil.config import GateConfig
    from vigil.registry.package import log_package
    from vigil.registry.promotion import force_promote, register_candidate

    uri = f"sqlite:///{root / 'mlflow.db'}"
    os.environ["MLFLOW_TRACKING_URI"] = uri
    mlflow.set_tracking_uri(uri)
    client = mlflow.MlflowClient(uri)
    experiment = client.create_experiment("bench-servers", (root / "store").as_uri())
    mlflow.set_experiment(experiment_id=experiment)  # logged models follow it, not the run
    with mlflow.start_run(experiment_id=experiment) as run:
        logged = log_package(build_default_detector(root, "image"), run_id=run.info.run_id)
    decision = register_candidate(client, MODEL, logged, {}, GateConfig())
    force_promote(MODEL, decision.version, "bench/servers.py", "speed benchmark, untrained model",
                  client=client, decision_dir=root / "promotions")  # fmt: skip
    return uri


def request_image(size: int) -> bytes:
    """A camera-like PNG (blurred noise: compressible, not pure noise) of ``size`` px."""
    import cv2
    import numpy as np

    image = np.random.default_rng(0).integers(0, 255, (size, size, 3), dtype=np.uint8)
    return cv2.imencode(".png", cv2.GaussianBlur(image, (0, 0), 3))[1].tobytes()


def vigil_server(root: Path, png: bytes, port: int) -> Server:
    dest = root / "vigil-deploy"
    subprocess.run([str(BIN / "vigil"), "pull", "--model", MODEL, "--dest", str(dest)],
                   check=True, capture_output=True)  # fmt: skip
    command = [str(BIN / "vigil"), "serve", "--model-dir", str(dest), "--no-follow",
               "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    return Server("vigil serve", command, "/ready", "/score", png, "image/png",
                  lambda answer: answer["score"], {})  # fmt: skip


def mlflow_server(png: bytes, port: int) -> Server:
    from vigil.registry.package import invocation_payload

    command = [str(BIN / "mlflow"), "models", "serve", "-m", f"models:/{MODEL}@champion",
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port),
               "--workers", "1"]  # fmt: skip
    body = json.dumps(invocation_payload([png])).encode()
    path = f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"  # it execs uvicorn by name
    return Server("mlflow models serve", command, "/ping", "/invocations", body,
                  "application/json", lambda answer: answer["predictions"][0]["score"],
                  {"PATH": path})  # fmt: skip


def mlserver_server(root: Path, venv: Path, png: bytes, port: int) -> Server:
    """MLServer's model repository as KServe's storage initializer lays it out."""
    import mlflow

    model_dir = root / "mlserver" / "vigil"
    mlflow.artifacts.download_artifacts(f"models:/{MODEL}@champion", dst_path=str(model_dir / "m"))
    (model_dir / "model-settings.json").write_text(json.dumps({
        "name": "vigil", "implementation": "mlserver_mlflow.MLflowRuntime",
        "parameters": {"uri": "./m"},
    }))  # fmt: skip
    (model_dir.parent / "settings.json").write_text(json.dumps({
        "host": "127.0.0.1", "http_port": port, "grpc_port": free_port(),
        "metrics_port": free_port(), "parallel_workers": 0,
    }))  # fmt: skip
    body = json.dumps({"inputs": [{
        "name": "image", "datatype": "BYTES", "shape": [1, 1],
        "parameters": {"content_type": "base64"}, "data": [base64.b64encode(png).decode()],
    }]}).encode()  # fmt: skip

    def score_of(answer: dict) -> float:
        return {out["name"]: out["data"] for out in answer["outputs"]}["score"][0]

    command = [str(venv / "bin" / "mlserver"), "start", str(model_dir.parent)]
    path = f"{venv / 'bin'}{os.pathsep}{os.environ.get('PATH', '')}"
    return Server("MLServer", command, "/v2/models/vigil/ready", "/v2/models/vigil/infer", body,
                  "application/json", score_of, {"PATH": path})  # fmt: skip


def start(server: Server, port: int, log: Path) -> subprocess.Popen:
    import httpx

    with log.open("wb") as out:
        process = subprocess.Popen(server.command, cwd=log.parent, env={**os.environ, **server.env},
                                   stdout=out, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{server.name} exited:\n{log.read_text()[-3000:]}")
        try:
            if httpx.get(f"http://127.0.0.1:{port}{server.ready_path}", timeout=2).is_success:
                return process
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    stop(process)
    raise RuntimeError(f"{server.name} not ready in 300 s:\n{log.read_text()[-3000:]}")


def stop(process: subprocess.Popen) -> None:
    """End the server's process group (uvicorn and MLServer start workers of their own)."""
    try:
        os.killpg(process.pid, signal.SIGTERM)
        process.wait(30)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(30)
    except ProcessLookupError:
        pass


def measure(server: Server, port: int, log: Path, expected: float, levels, duration) -> list:
    """Start ``server``, check its score, warm it up, load it at each level, stop it."""
    import httpx

    process = start(server, port, log)
    url = f"http://127.0.0.1:{port}"
    try:
        answer = httpx.post(f"{url}{server.score_path}", content=server.body, timeout=120,
                            headers={"content-type": server.content_type})  # fmt: skip
        if not answer.is_success:
            raise RuntimeError(f"{server.name} answered {answer.status_code}: {answer.text[-1500:]}\n"
                               f"{log.read_text()[-3000:]}")  # fmt: skip
        score = float(server.score_of(answer.json()))
        if abs(score - expected) > 1e-5 * max(1.0, abs(expected)):
            raise RuntimeError(f"{server.name} scored {score}, the package {expected}")
        load = [server.body, 1, 1.0, server.score_path, server.content_type]
        asyncio.run(load_level(url, *load))  # warm-up
        rows = []
        for clients in levels:
            load[1:3] = [clients, duration]
            rows.append({"server": server.name, **asyncio.run(load_level(url, *load))})
        return rows
    finally:
        stop(process)


def with_ratios(rows: list[dict]) -> list[dict]:
    """Each row with its requests/s and p50 as multiples of vigil serve's at that level."""
    base = {row["clients"]: row for row in rows if row["server"] == "vigil serve"}
    for row in rows:
        ref = base.get(row["clients"])
        if ref and ref["throughput_rps"] and row["p50_ms"] and ref["p50_ms"]:
            row["rps_vs_vigil"] = round(row["throughput_rps"] / ref["throughput_rps"], 2)
            row["p50_vs_vigil"] = round(row["p50_ms"] / ref["p50_ms"], 2)
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per client level")
    parser.add_argument("--levels", default="1,8,32", help="concurrent clients per level")
    parser.add_argument("--image-size", type=int, default=256, help="request image side (px)")
    args = parser.parse_args()
    levels = [int(n) for n in args.levels.split(",")]
    venv = os.environ.get("VIGIL_MLSERVER_VENV")
    report: dict = {"cpus": os.cpu_count(), "load_avg_at_start": _load()}
    with tempfile.TemporaryDirectory(prefix="vigil-bench-servers-") as tmp:
        root = Path(tmp)
        register_package(root)
        png = request_image(args.image_size)
        expected = float(_package_score(png))
        servers = [
            lambda port: vigil_server(root, png, port),
            lambda port: mlflow_server(png, port),
        ]
        if venv and (Path(venv) / "bin" / "mlserver").is_file():
            servers.append(lambda port: mlserver_server(root, Path(venv), png, port))
        else:
            report["mlserver"] = f"skipped: no mlserver in VIGIL_MLSERVER_VENV={venv!r}"
        rows: list[dict] = []
        for make in servers:
            port = free_port()
            server = make(port)
            log = root / f"{server.name.split()[0].lower()}.log"
            rows += measure(server, port, log, expected, levels, args.duration)
        report["http"] = with_ratios(rows)
    report["load_avg_at_end"] = _load()
    print(json.dumps(report, indent=2))
    start_load, end_load = report["load_avg_at_start"], report["load_avg_at_end"]
    print(f"load average (1, 5, 15 min) at start {start_load}, at end {end_load}")
    for row in report["http"]:
        ratio = ""
        if "rps_vs_vigil" in row:
            ratio = f"  x{row['rps_vs_vigil']} req/s, x{row['p50_vs_vigil']} p50 vs vigil serve"
        print(f"{row['server']:<20} {row['clients']:>3} clients: p50 {row['p50_ms']} ms  p99 "
              f"{row['p99_ms']} ms  {row['throughput_rps']} req/s  503 {row['shed_503']}  "
              f"errors {row['errors']}{ratio}")  # fmt: skip
    return 0


def _load() -> list[float]:
    """The 1, 5 and 15 minute load averages."""
    return [round(x, 2) for x in os.getloadavg()]


def _package_score(png: bytes) -> float:
    """The score the registered package gives ``png`` in this process (pyfunc predict)."""
    import mlflow

    from vigil.registry.package import images_frame

    model = mlflow.pyfunc.load_model(f"models:/{MODEL}@champion")
    return model.predict(images_frame([png]))["score"].iloc[0]


if __name__ == "__main__":
    sys.exit(main())
