"""Interleaved A/B of image inference latency, for a noisy machine.

    .venv/bin/python bench/latency_ab.py --size 256 conv_ae draem:seg_stride=1 draem

Each entry (``family[:key=value...]``, as ``bench/model.py --image-families`` takes them) is
built as the detector scores (batch norms folded, channels-last) and timed at batch 1 with the
heat-map post-processing (``smooth_map`` + ``image_score``), decode excluded. The entries take
turns, ``--rounds`` rounds of ``--calls`` calls each, so a neighbour's burst of load falls on all
of them alike; the minimum over rounds is the figure (what the code costs when it gets the
cores), the median says how noisy the machine was. Ratios are against the first entry.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
import vigil  # noqa: E402,F401  (first: OpenMP defaults before torch loads, see vigil.threads)
import numpy as np  # noqa: E402
import torch  # noqa: E402
from model import build, heat_map_postprocess, inference_copy  # noqa: E402

from vigil.data.preprocess import to_tensor  # noqa: E402


def scorer(entry: str, size: int, frames: np.ndarray):
    """() -> scores of ``frames`` by the model of ``entry`` at ``size``, heat map included."""
    model, prep, params = build("image", entry, size)
    network = inference_copy(model, "channels_last")
    post = heat_map_postprocess(params)
    return lambda: post(network(to_tensor(frames, prep)).error_map[:, 0].numpy())


def round_ms(fn, calls: int) -> float:
    """Mean milliseconds per call over ``calls`` calls (after one warm-up call)."""
    fn()
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls * 1000


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("entries", nargs="+", help="family[:key=value...] per model")
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--calls", type=int, default=15)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    frames = np.random.default_rng(0).integers(0, 256, (1, args.size, args.size, 3), np.uint8)
    fns = {entry: scorer(entry, args.size, frames) for entry in args.entries}
    times: dict[str, list[float]] = {entry: [] for entry in args.entries}
    with torch.inference_mode():
        for _ in range(args.rounds):
            for entry, fn in fns.items():
                times[entry].append(round_ms(fn, args.calls))
    first = min(times[args.entries[0]])
    print(f"batch 1, {args.size}x{args.size}, heat map included, {args.threads} threads, "
          f"{args.rounds} interleaved rounds of {args.calls} calls")
    for entry, values in times.items():
        best = min(values)
        print(f"{entry:50s} {1000 / best:6.1f} images/s (min {best:6.2f} ms, median "
              f"{statistics.median(values):6.2f} ms)  x{first / best:.2f} of the first")


if __name__ == "__main__":
    main()
