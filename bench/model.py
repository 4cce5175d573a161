"""Model benchmark: training images/s and inference frames/s of the default models.

    .venv/bin/python bench/model.py [--sizes 64 256] [--seconds 2] [--threads N] [--device cuda]
        [--image-families conv_ae,draem] [--video-families convlstm,future_frame]
        [--image-families draem,draem:anomaly_map=segmentation] [--layouts channels_last nchw]

For the image and video model families (default: params.yaml's ``model.image_family`` /
``model.video_family``; ``--image-families`` / ``--video-families`` compare several in one run,
each with its ``model.<family>`` knobs, ``family:key=value`` overriding one of them, and print
each one's inference rate as a ratio of the first one's at the same size and batch), at each
size and at batch 1 and 32:

- inference frames/s: image = ``to_tensor`` + model (batch norms folded, as the detector
  scores: ``vigil.models.folding``) + heat-map post-processing
  (``vigil.detector.postprocess.smooth_map`` + ``image_score``, when that module is present);
  video = one ``stream`` step per frame for a batch of streams, error map included;
- training images/s: forward + backward + Adam step (video: clips of ``prepare.video.clip_len``,
  counted in frames);
- ``--layouts channels_last nchw unfolded``: each model also in the plain NCHW layout (vigil
  builds its networks channels-last, ``vigil.models.spec.build_model``), rows marked ``(nchw)``,
  and with its batch norms left unfolded, rows marked ``(unfolded)``;
- peak memory (RSS high-water of the worker process that ran that model and size);
- achieved GFLOP/s (FLOPs counted by ``torch.utils.flop_counter.FlopCounterMode``) as a
  fraction of this machine's 3x3-convolution and dense-matmul GFLOP/s, measured in the same run.

Every configuration runs in a fresh process twice: with glibc's default malloc, and with
``MALLOC_MMAP_THRESHOLD_`` / ``MALLOC_TRIM_THRESHOLD_`` / ``MALLOC_TOP_PAD_`` set so that large
activation buffers are not returned to the OS after every call (DESIGN.md, known traps).
Figures depend on what else runs on the machine: the output prints the load average.
With ``--device cuda`` the models, inputs and the two reference kernels run on the GPU (every
timed call ends with a synchronize; the heat-map post-processing still runs on the CPU, as in
serving), and peak memory is the GPU's high-water mark.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
import vigil  # noqa: E402,F401  (first: OpenMP defaults before torch loads, see vigil.threads)
from knobs import family_knobs, split_knobs  # noqa: E402

TUNED_MALLOC = {
    "MALLOC_MMAP_THRESHOLD_": str(1 << 30),
    "MALLOC_TRIM_THRESHOLD_": str(1 << 30),
    "MALLOC_TOP_PAD_": str(1 << 29),
}


DEVICE = "cpu"  # set once per worker process from --device


def synchronize() -> None:
    """Wait for queued GPU work, so a timed call includes it (no-op on the CPU)."""
    if DEVICE != "cpu":
        import torch

        torch.cuda.synchronize()


def timed_rate(
    fn, items_per_call: int, seconds: float, min_calls: int = 2, warm_up: bool = True
) -> float:
    """Items per second of ``fn()`` (after one warm-up call) over >= ``seconds``."""
    if warm_up:
        fn()
        synchronize()
    calls, start = 0, time.perf_counter()
    while calls < min_calls or time.perf_counter() - start < seconds:
        fn()
        calls += 1
    synchronize()
    return calls * items_per_call / (time.perf_counter() - start)


def count_flops(fn) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    with FlopCounterMode(display=False) as counter:
        fn()
    return float(counter.get_total_flops())


def machine_peaks(seconds: float) -> dict[str, float]:
    """GFLOP/s of a 3x3 convolution (64 -> 64 channels, 8 x 128 x 128) and of a 2048^2 matmul."""
    import torch

    conv = torch.nn.Conv2d(64, 64, 3, padding=1, bias=False).eval().to(DEVICE)
    x = torch.rand(8, 64, 128, 128, device=DEVICE)
    a, b = torch.rand(2048, 2048, device=DEVICE), torch.rand(2048, 2048, device=DEVICE)
    with torch.inference_mode():
        conv_flops = count_flops(lambda: conv(x))
        conv_rate = timed_rate(lambda: conv(x), 1, seconds)
        mm_rate = timed_rate(lambda: torch.mm(a, b), 1, seconds)
    return {"conv3x3_gflops": conv_flops * conv_rate / 1e9, "mm_gflops": 2 * 2048**3 * mm_rate / 1e9}


def build(modality: str, entry: str, size: int, layout: str = "channels_last"):
    """(network of ``entry`` (``family[:key=value...]``) at ``size`` in memory ``layout``, its
    prep, the params); ``nchw``: the plain layout, the baseline of vigil's channels-last."""
    import torch

    from vigil.config import load_params
    from vigil.models.spec import build_model, model_spec

    family, knobs = split_knobs(entry)
    params = load_params(ROOT / "params.yaml")
    prep = params.prepare.image if modality == "image" else params.prepare.video
    prep = prep.model_copy(update={"size": (size, size)})
    cfg = params.model.family_config(family)
    cfg = cfg.model_validate({**cfg.model_dump(), **family_knobs(knobs)})
    spec = model_spec(family, prep.channels, (size, size), cfg, prep=prep)
    model = build_model(spec).to(DEVICE)
    if layout == "nchw":
        model = model.to(memory_format=torch.contiguous_format)
    return model, prep, params


def inference_copy(model, layout: str):
    """What the detector scores with: the eval-mode network with its batch norms folded
    (``vigil.models.folding``); ``model`` itself stays in training form for the training rate.
    Layout ``unfolded``: the network as trained, the baseline of the folding."""
    from vigil.models.folding import fold_batch_norms

    return model.eval() if layout == "unfolded" else fold_batch_norms(model)


def heat_map_postprocess(params):
    """(error maps (N, H, W) -> scores) of the evaluation module, or None when it is absent."""
    try:
        from vigil.detector.postprocess import image_score, smooth_map
    except ImportError:
        return None
    cfg = params.evaluate
    return lambda maps: image_score(smooth_map(maps, cfg), cfg)


def bench_image(
    family: str, size: int, batches: list[int], seconds: float, layout: str
) -> list[dict]:
    import numpy as np
    import torch

    from vigil.data.preprocess import to_tensor

    model, prep, params = build("image", family, size, layout)
    post = heat_map_postprocess(params)
    rows = []
    for batch in batches:
        frames = np.random.default_rng(0).integers(0, 256, (batch, size, size, 3), dtype=np.uint8)
        scorer = inference_copy(model, layout)

        def infer():
            with torch.inference_mode():
                out = scorer(to_tensor(frames, prep).to(DEVICE))
                if post is not None:
                    post(out.error_map[:, 0].cpu().numpy())

        with torch.inference_mode():
            flops = count_flops(lambda: scorer(to_tensor(frames, prep).to(DEVICE)))
        infer_rate = timed_rate(infer, batch, seconds)
        train_inputs = to_tensor(frames, prep).to(DEVICE)
        train_rate, train_flops = bench_training(model, train_inputs, batch, seconds)
        rows.append(result_row(family, size, batch, infer_rate, flops / batch, train_rate,
                               train_flops / batch, post is not None))
    return rows


def bench_video(
    family: str, size: int, batches: list[int], seconds: float, layout: str
) -> list[dict]:
    import torch

    model, prep, params = build("video", family, size, layout)
    clip_len = params.prepare.video.clip_len
    rows = []
    for batch in batches:
        frame = torch.rand(batch, prep.channels, size, size, device=DEVICE)
        scorer = inference_copy(model, layout)
        with torch.inference_mode():  # a started stream: every later step gives a frame's map
            state = [scorer.stream(frame, None)[1]]
            while True:
                output, state[0] = scorer.stream(frame, state[0])
                if output is not None:
                    break

        def infer():
            with torch.inference_mode():
                _, state[0] = scorer.stream(frame, state[0])  # the family's step, error map incl.

        with torch.inference_mode():
            flops = count_flops(infer)
        infer_rate = timed_rate(infer, batch, seconds)
        clips = torch.rand(batch, clip_len, prep.channels, size, size, device=DEVICE)
        train_rate, train_flops = bench_training(model, clips, batch * clip_len, seconds)
        rows.append(result_row(family, size, batch, infer_rate, flops / batch, train_rate,
                               train_flops / (batch * clip_len), True))
    return rows


def bench_training(model, inputs, frames: int, seconds: float) -> tuple[float, float]:
    """(frames/s, FLOPs per step) of forward + backward + Adam on ``inputs``."""
    import torch

    model.train()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)

    def step():
        optimizer.zero_grad(set_to_none=True)
        out = model(inputs)
        out.error_map.mean().backward()
        optimizer.step()

    flops = count_flops(step)  # also the warm-up step
    return timed_rate(step, frames, seconds, min_calls=1, warm_up=False), flops


def result_row(family, size, batch, infer_rate, infer_flops, train_rate, train_flops, heat):
    return {
        "model": family, "size": size, "batch": batch,
        "infer_fps": infer_rate, "infer_gflop_per_frame": infer_flops / 1e9,
        "infer_gflops": infer_rate * infer_flops / 1e9,
        "train_fps": train_rate, "train_gflops": train_rate * train_flops / 1e9,
        "heat_map_included": heat,
    }


def worker(args: argparse.Namespace) -> None:
    import torch

    global DEVICE
    DEVICE = args.device
    torch.set_num_threads(args.threads)
    if args.worker == "peaks":
        out = machine_peaks(args.seconds)
    else:
        modality, family, size, layout = args.worker.split("|")
        fn = bench_image if modality == "image" else bench_video
        out = {"rows": fn(family, int(size), args.batches, args.seconds, layout)}
        if layout != "channels_last":
            for row in out["rows"]:
                row["model"] += f" ({layout})"
    out["peak_rss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    if DEVICE != "cpu":
        out["peak_rss_mib"] = torch.cuda.max_memory_allocated() / 2**20
    print("RESULT " + json.dumps(out), flush=True)


def run_worker(job: str, env_extra: dict[str, str], args: argparse.Namespace) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")} | env_extra
    cmd = [sys.executable, __file__, "--worker", job, "--seconds", str(args.seconds),
           "--threads", str(args.threads), "--device", args.device,
           "--batches", *map(str, args.batches)]
    done = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
    for line in done.stdout.splitlines():
        if line.startswith("RESULT "):
            return json.loads(line[7:])
    raise RuntimeError(f"worker {job} failed:\n{done.stderr[-3000:]}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 256])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 32])
    parser.add_argument("--seconds", type=float, default=2.0, help="per measurement")
    parser.add_argument("--threads", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--malloc", choices=["both", "default", "tuned"], default="both")
    parser.add_argument("--device", default="cpu", help="cpu, cuda or cuda:N")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    parser.add_argument("--image-families", help="comma-separated (default: params.yaml's)")
    parser.add_argument("--video-families", help="comma-separated (default: params.yaml's)")
    parser.add_argument("--layouts", nargs="+", choices=("channels_last", "nchw", "unfolded"),
                        default=["channels_last"],
                        help="memory layouts (vigil's networks run channels_last; nchw: the "
                             "plain layout, unfolded: channels_last with its batch norms left "
                             "unfolded, each to measure against in the same run)")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        worker(args)
        return 0
    variants = {"default": {}, "tuned": TUNED_MALLOC}
    if args.malloc != "both":
        variants = {args.malloc: variants[args.malloc]}
    print(f"device {args.device}, threads {args.threads}, "
          f"load average before: {os.getloadavg()[0]:.2f}")
    if args.device != "cpu":
        variants = {"default": {}}  # malloc tuning is about CPU activations
    from vigil.config import load_params

    defaults = load_params(ROOT / "params.yaml").model
    families = {
        modality: [f.strip() for f in (given or defaults.family_name(modality)).split(",") if f.strip()]
        for modality, given in (("image", args.image_families), ("video", args.video_families))
    }
    report = {}
    for name, env in variants.items():
        peaks = run_worker("peaks", env, args)
        print(f"\n[malloc {name}] 3x3 conv {peaks['conv3x3_gflops']:.0f} GFLOP/s, "
              f"matmul {peaks['mm_gflops']:.0f} GFLOP/s")
        print(f"{'model':12} {'size':>4} {'batch':>5} {'infer f/s':>10} {'ratio':>6} {'GFLOP/f':>8} "
              f"{'GFLOP/s':>8} {'%conv':>6} {'%mm':>5} {'train f/s':>10} {'GFLOP/s':>8} "
              f"{'%conv':>6} {'peak MiB':>9}")  # peak MiB: process RSS, or GPU memory on a GPU
        rows = []
        for modality in ("image", "video"):
            first: dict[tuple[int, int], float] = {}  # (size, batch) -> the first family's rate
            for family in families[modality]:
                for size, layout in ((s, lay) for s in args.sizes for lay in args.layouts):
                    out = run_worker(f"{modality}|{family}|{size}|{layout}", env, args)
                    for row in out["rows"]:
                        row["modality"] = modality
                        row["peak_rss_mib"] = out["peak_rss_mib"]
                        base = first.setdefault((size, row["batch"]), row["infer_fps"])
                        row["infer_ratio"] = row["infer_fps"] / base
                        rows.append(row)
                        print(f"{row['model']:12} {row['size']:>4} {row['batch']:>5} "
                            f"{row['infer_fps']:>10.1f} {row['infer_ratio']:>6.2f} "
                            f"{row['infer_gflop_per_frame']:>8.3f} "
                            f"{row['infer_gflops']:>8.1f} "
                            f"{100 * row['infer_gflops'] / peaks['conv3x3_gflops']:>5.0f}% "
                            f"{100 * row['infer_gflops'] / peaks['mm_gflops']:>4.0f}% "
                            f"{row['train_fps']:>10.1f} {row['train_gflops']:>8.1f} "
                            f"{100 * row['train_gflops'] / peaks['conv3x3_gflops']:>5.0f}% "
                            f"{row['peak_rss_mib']:>9.0f}")
        report[name] = {"peaks": peaks, "rows": rows}
    for family in families["image"]:
        target = [r for r in report.get("tuned", report.get("default", {})).get("rows", [])
                  if r["modality"] == "image" and r["model"] == family and r["size"] == 256
                  and r["batch"] == 1]
        if target:
            best = max(r["infer_fps"] for r in target)
            print(f"target: {family} at 256x256, batch 1 >= 55 frames/s incl. heat map: "
                  f"{best:.1f} frames/s ({'met' if best >= 55 else 'NOT met'})")
    print(f"load average after: {os.getloadavg()[0]:.2f}")
    if args.json:
        args.json.write_text(json.dumps(report, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
