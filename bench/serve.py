"""Serving benchmark: HTTP latency/throughput at 1, 8, 32 and 64 clients, and `vigil watch` fps.

    .venv/bin/python bench/serve.py                     # default-size models, built here
    .venv/bin/python bench/serve.py --model-dir deploy/model --duration 10

HTTP: starts the real service (``vigil serve`` in a subprocess, loopback, follow off) and sends
single-image requests (a PNG of ``--image-size`` pixels, decoded and resized by the service) from
N concurrent clients for ``--duration`` seconds per level; prints p50/p99 latency of the accepted
requests, requests/s, requests shed with 503 (the service admits ``server.max_in_flight`` scoring
requests at once; a shed client waits the answer's Retry-After, at most 1 s, as a well-behaved
client does) and errors (anything else; target 0). At 64 clients the service should shed load and
keep the p99 of what it accepts under 1 s. The load generator shares the cores with the service.

Watch: writes a 55 fps melt-pool video (the built-in ``print`` generator) and runs ``watch`` on
it twice: resampled to the model's rate (what `vigil watch` does) and scoring every frame (the
worst case). It keeps up with a 55 fps camera when source frames are consumed at >= 55 frames/s.

Without ``--model-dir`` the models have the default configuration of params.yaml (untrained
weights: speed does not depend on them). ``bench/servers.py`` compares ``vigil serve`` with
``mlflow models serve`` and MLServer on one registered package.
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

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
import vigil  # noqa: E402,F401  (first: OpenMP defaults before torch loads, see vigil.threads)


def build_default_detector(root: Path, modality: str) -> Path:
    """A detector folder (detector.json + weights, what evaluate writes) of params.yaml's
    default model family for ``modality`` (untrained, threshold 0.01)."""
    import torch

    from vigil.config import load_params
    from vigil.detector import Detector, DetectorRecord
    from vigil.models.spec import build_model, model_spec

    params = load_params(ROOT / "params.yaml")
    prep = params.prepare.image if modality == "image" else params.prepare.video
    family = params.model.family_name(modality)
    cfg = params.model.family_config(family)
    spec = model_spec(family, prep.channels, prep.size, cfg, prep=prep)
    torch.manual_seed(0)
    record = DetectorRecord(
        spec=spec, postprocess=params.evaluate, threshold=0.01, pixel_threshold=0.01,
        dataset=f"bench-{modality}",
    )
    return Detector(build_model(spec), record).save(root / f"detector-{modality}")


def build_default_package(root: Path, modality: str) -> Path:
    """A package's artifact folder (a calibrated detector) of ``build_default_detector``."""
    from vigil.registry.package import stage_artifacts

    detector_dir = build_default_detector(root, modality)
    return stage_artifacts(detector_dir, root / f"package-{modality}")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_service(model_dir: Path, port: int) -> subprocess.Popen:
    code = "import sys; from vigil.cli import main; sys.exit(main())"
    cmd = [
        sys.executable,
        "-c",
        code,
        "serve",
        "--model-dir",
        str(model_dir),
        "--no-follow",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
    ]
    env = {
        **os.environ,
        "MALLOC_MMAP_THRESHOLD_": "1000000000",
        "MALLOC_TRIM_THRESHOLD_": "1000000000",
        "MALLOC_TOP_PAD_": "268435456",
    }
    process = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    import httpx

    deadline = time.monotonic() + 120
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
    raise RuntimeError("service did not become ready in 120 s")


async def load_level(
    url: str,
    body: bytes,
    clients: int,
    duration: float,
    path: str = "/score",
    content_type: str = "image/png",
) -> dict:
    """``clients`` concurrent clients POST ``body`` to ``url + path`` for ``duration`` s."""
    import httpx

    latencies: list[float] = []
    errors = shed = 0
    stop_at = time.perf_counter() + duration
    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)

    async with httpx.AsyncClient(base_url=url, timeout=60, limits=limits) as http:

        async def client() -> None:
            nonlocal errors, shed
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    response = await http.post(
                        path, content=body, headers={"content-type": content_type}
                    )
                    status = response.status_code
                except httpx.HTTPError:
                    status = None
                if status == 200:
                    latencies.append(time.perf_counter() - started)
                elif status == 503:
                    shed += 1
                    retry_after = float(response.headers.get("retry-after", "1") or 1)
                    await asyncio.sleep(min(retry_after, 1.0))
                else:
                    errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(clients)))
        wall = time.perf_counter() - started
    ms = np.array(latencies) * 1000
    return {
        "clients": clients,
        "requests": len(latencies),
        "shed_503": shed,
        "errors": errors,
        "p50_ms": round(float(np.percentile(ms, 50)), 2) if len(ms) else None,
        "p99_ms": round(float(np.percentile(ms, 99)), 2) if len(ms) else None,
        "throughput_rps": round(len(latencies) / wall, 1),
    }


def bench_http(model_dir: Path, levels: list[int], duration: float, image_size: int) -> list:
    import cv2

    rng = np.random.default_rng(0)
    image = rng.integers(0, 255, (image_size, image_size, 3), dtype=np.uint8)
    image = cv2.GaussianBlur(image, (0, 0), 3)  # camera-like: compressible, not pure noise
    body = cv2.imencode(".png", image)[1].tobytes()
    port = free_port()
    process = start_service(model_dir, port)
    try:
        url = f"http://127.0.0.1:{port}"
        asyncio.run(load_level(url, body, 1, 1.0))  # warm-up
        return [asyncio.run(load_level(url, body, n, duration)) for n in levels]
    finally:
        process.terminate()
        process.wait(30)


def write_camera_video(path: Path, seconds: float, fps: int) -> int:
    from vigil.config import PrintGen
    from vigil.data.synthetic.melt_pool import render_clip, write_video

    cfg = PrintGen(fps=fps, frames_per_video=int(seconds * fps))
    frames, _, _ = render_clip(0, "testing", 0, cfg, kinds=("blob",))
    write_video(path, frames, fps)
    return len(frames)


def bench_watch(model_dir: Path, seconds: float, threads: int) -> list:
    import torch

    from vigil.serving.loader import load_scorer
    from vigil.serving.watch import watch

    torch.set_num_threads(threads)
    scorer = load_scorer(model_dir)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        video = Path(tmp) / "camera55.avi"
        n = write_camera_video(video, seconds, 55)
        for label, target in (("model fps", "model"), ("every frame", None)):
            summary = watch(scorer, str(video), target_fps=target, events=None)
            results.append(
                {
                    "mode": f"{label} ({scorer.info.fps if target else 55} fps scored)",
                    "source_frames": n,
                    "frames_scored": summary.frames_scored,
                    "source_fps_processed": round(summary.read_fps, 1),
                    "scored_fps": round(summary.scored_fps, 1),
                    "keeps_up_with_55fps": summary.read_fps >= 55,
                }
            )
    return results


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model-dir", type=Path, help="image model folder (pulled or package)")
    parser.add_argument("--video-model-dir", type=Path, help="video model folder for watch")
    parser.add_argument("--duration", type=float, default=10.0, help="seconds per client level")
    parser.add_argument("--levels", default="1,8,32,64", help="concurrent clients per level")
    parser.add_argument("--image-size", type=int, default=256, help="request image side (px)")
    parser.add_argument("--video-seconds", type=float, default=10.0, help="length of the video")
    parser.add_argument("--watch-threads", type=int, default=1, help="torch threads for watch")
    parser.add_argument("--skip-http", action="store_true")
    parser.add_argument("--skip-watch", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp:
        report: dict = {
            "cpus": os.cpu_count(),
            "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
        }
        if not args.skip_http:
            image_dir = args.model_dir or build_default_package(Path(tmp), "image")
            levels = [int(n) for n in args.levels.split(",")]
            report["http"] = bench_http(image_dir, levels, args.duration, args.image_size)
        if not args.skip_watch:
            video_dir = args.video_model_dir or build_default_package(Path(tmp), "video")
            report["watch"] = bench_watch(video_dir, args.video_seconds, args.watch_threads)
        report["load_avg_at_end"] = [round(x, 2) for x in os.getloadavg()]
    print(json.dumps(report, indent=2))
    for row in report.get("http", []):
        print(
            f"http  {row['clients']:>3} clients: p50 {row['p50_ms']} ms  p99 {row['p99_ms']} ms"
            f"  {row['throughput_rps']} req/s  shed (503) {row['shed_503']}  errors {row['errors']}"
        )
    for row in report.get("watch", []):
        print(
            f"watch {row['mode']}: {row['source_fps_processed']} source frames/s "
            f"({row['scored_fps']} scored/s), keeps up with 55 fps: "
            f"{row['keeps_up_with_55fps']}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
