"""Benchmark of the prepare stage on real files: throughput against a bare OpenCV loop, and memory.

    .venv/bin/python bench/prepare.py [--data ../shared/data] [--size 64] [--workers 2]

1. Image folders (magnetic_tile, MVTec layout): images/s of `prepare_dataset` (decode, gray/RGB,
   resize, masks, manifest, hashes, streamed .npy writes) against a bare loop of `cv2.imread` +
   `cv2.resize` over the same files (images and their masks), in the same run (page cache warmed
   first). Each rate is the best of ``--repeats`` runs: the CPUs are shared.
2. Video (ucsd_ped2 frames re-encoded into MJPG .avi files at 30 fps, the container real users
   bring): decode + resample 30 -> 15 fps + resize against a bare `VideoCapture.read` loop.
   Rates count source frames decoded per second.
3. Peak memory (RSS high-water of a fresh process running `prepare_dataset`) at 1x and 10x the
   dataset (10x = the same files linked ten times): it must stay flat because items are streamed.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import cv2

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

from vigil.config import DatasetSpec, PrepareConfig  # noqa: E402 (after the sys.path insert)
from vigil.data.prepare import prepare_dataset  # noqa: E402


def bare_image_loop(files: list[Path], size: int) -> float:
    """Seconds for cv2.imread + cv2.resize over ``files`` on one thread."""
    start = time.perf_counter()
    for path in files:
        image = cv2.imread(str(path), cv2.IMREAD_UNCHANGED)
        cv2.resize(image, (size, size), interpolation=cv2.INTER_AREA)
    return time.perf_counter() - start


def bare_video_loop(videos: list[Path]) -> tuple[float, int]:
    """(seconds, frames) for VideoCapture.read over ``videos`` (decode only, every frame)."""
    start, frames = time.perf_counter(), 0
    for path in videos:
        capture = cv2.VideoCapture(str(path))
        while capture.read()[0]:
            frames += 1
        capture.release()
    return time.perf_counter() - start, frames


def timed_prepare(
    spec: DatasetSpec, cfg: PrepareConfig, out: Path, workers: int
) -> tuple[float, int]:
    start = time.perf_counter()
    result = prepare_dataset("bench", spec, cfg, out, workers=workers, progress=False)
    return time.perf_counter() - start, result.n_items


def encode_videos(ped2: Path, dest: Path, fps: float = 30.0) -> Path:
    """ucsd_ped2 frame folders -> MJPG .avi files in the video layout (labels follow by index)."""
    for part in ("training", "testing"):
        for clip in sorted((ped2 / part / "frames").iterdir()):
            frames = sorted(clip.glob("*.jpg"))
            first = cv2.imread(str(frames[0]))
            (dest / part).mkdir(parents=True, exist_ok=True)
            writer = cv2.VideoWriter(
                str(dest / part / f"{clip.name}.avi"),
                cv2.VideoWriter_fourcc(*"MJPG"),
                fps,
                first.shape[1::-1],
            )
            for frame in frames:
                writer.write(cv2.imread(str(frame)))
            writer.release()
    with (
        (ped2 / "testing" / "frame_labels.csv").open() as src,
        (dest / "testing" / "frame_labels.csv").open("w", newline="") as dst,
    ):
        out = csv.writer(dst)
        out.writerow(["video", "frame_file", "frame_index_1based", "label"])
        for row in csv.DictReader(src):
            out.writerow([row["video"], "", row["frame_index_1based"], row["label"]])
    return dest


def replicate(root: Path, dest: Path, times: int, modality: str) -> Path:
    """A tree with every source file linked ``times`` times (copies 1.. get a suffix)."""
    for path in sorted(root.rglob("*")):
        if not path.is_file():
            continue
        rel = path.relative_to(root)
        is_item = path.suffix in (".jpg", ".png", ".avi") and "ground_truth" not in rel.parts
        for k in range(times if is_item else 1):
            name = rel.name if k == 0 else f"{rel.stem}_x{k}{rel.suffix}"
            target = dest / rel.parent / name
            target.parent.mkdir(parents=True, exist_ok=True)
            if modality == "image" and k and "test" in rel.parts and rel.parts[1] != "good":
                mask = root / "ground_truth" / rel.parts[1] / f"{rel.stem}_mask.png"
                masked = dest / "ground_truth" / rel.parts[1] / f"{rel.stem}_x{k}_mask.png"
                masked.parent.mkdir(parents=True, exist_ok=True)
                if mask.is_file():
                    masked.symlink_to(mask)
            target.symlink_to(path)
    if modality == "video":  # label rows for the linked testing clips
        labels = (root / "testing" / "frame_labels.csv").read_text().splitlines()
        rows = labels[1:]
        for k in range(1, times):
            rows += [r.replace(r.split(",")[0], f"{r.split(',')[0]}_x{k}", 1) for r in labels[1:]]
        target = dest / "testing" / "frame_labels.csv"
        target.unlink()
        target.write_text("\n".join([labels[0], *rows]) + "\n")
    return dest


PEAK_SNIPPET = """
import json, resource, sys
sys.path.insert(0, {src!r})
from vigil.config import DatasetSpec, PrepareConfig  # noqa: E402 (after the sys.path insert)
from vigil.data.prepare import prepare_dataset  # noqa: E402
cfg = PrepareConfig.model_validate(json.loads({cfg!r}))
r = prepare_dataset("mem", DatasetSpec(source={source!r}, modality={modality!r}), cfg, {out!r},
                    workers={workers}, progress=False)
peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
print(json.dumps({{"items": r.n_items, "peak_rss_mb": peak}}))
"""


def peak_memory(source: Path, modality: str, cfg: PrepareConfig, out: Path, workers: int) -> dict:
    code = PEAK_SNIPPET.format(
        src=str(ROOT / "src"),
        cfg=cfg.model_dump_json(),
        source=str(source),
        modality=modality,
        out=str(out),
        workers=workers,
    )
    result = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    )
    info = json.loads(result.stdout.strip().splitlines()[-1])
    info["output_mb"] = sum(p.stat().st_size for p in out.iterdir()) / 2**20
    return info


def best_of(repeats: int, run) -> tuple[float, int]:
    """The fastest of ``repeats`` runs of ``run() -> (seconds, count)`` (noise from shared CPUs)."""
    return min((run() for _ in range(repeats)), key=lambda result: result[0])


def image_rows(tile: Path, cfg: PrepareConfig, tmp: Path, args: argparse.Namespace) -> list:
    images = sorted(p for p in tile.glob("t*/*/*.jpg"))
    files = images + sorted(tile.glob("ground_truth/*/*.png"))  # the same files prepare reads
    bare_image_loop(files, args.size)  # warm the page cache
    bare, _ = best_of(args.repeats, lambda: (bare_image_loop(files, args.size), len(images)))
    name = "images: bare cv2.imread+resize (+masks), 1 thread"
    rows = [(name, f"{len(images) / bare:,.0f}", "1.00")]
    spec = DatasetSpec(source=str(tile), modality="image")
    for workers in sorted({1, args.workers}):
        seconds, n = best_of(
            args.repeats, lambda w=workers: timed_prepare(spec, cfg, tmp / f"img{w}", w)
        )
        name = f"images: prepare, {workers} thread(s)"
        rows.append((name, f"{n / seconds:,.0f}", f"{bare / seconds:.2f}"))
    return rows


def video_rows(videos: Path, cfg: PrepareConfig, tmp: Path, args: argparse.Namespace) -> list:
    avis = sorted(videos.glob("*/*.avi"))
    bare_video_loop(avis)
    bare, n_frames = best_of(args.repeats, lambda: bare_video_loop(avis))
    rows = [("video: bare VideoCapture.read, 1 thread", f"{n_frames / bare:,.0f}", "1.00")]
    spec = DatasetSpec(source=str(videos), modality="video")
    for workers in sorted({1, args.workers}):
        seconds, n_kept = best_of(
            args.repeats, lambda w=workers: timed_prepare(spec, cfg, tmp / f"vid{w}", w)
        )
        name = f"video: prepare 30->15 fps ({n_kept} kept), {workers} thr."
        rows.append((name, f"{n_frames / seconds:,.0f}", f"{bare / seconds:.2f}"))
    return rows


def print_report(rows: list[tuple[str, str, str]], memory: list, args: argparse.Namespace) -> None:
    """Markdown tables (as pasted into the README) and the command that produced them."""
    print(f"\n$ python bench/prepare.py --size {args.size} --workers {args.workers}")
    print(
        f"prepare throughput, {args.size}x{args.size} gray, {os.cpu_count()} CPU(s); "
        "rates in source frames/s\n"
    )
    print(f"| {'path':<52} | {'frames/s':>9} | {'vs bare':>7} |")
    print(f"|{'-' * 54}|{'-' * 11}|{'-' * 9}|")
    for name, rate, ratio in rows:
        print(f"| {name:<52} | {rate:>9} | {ratio:>7} |")
    print(f"\npeak memory (RSS high-water of a fresh process, {args.workers} threads)\n")
    head = ("dataset", "size", "items", "output MB", "peak RSS MB")
    print("| " + " | ".join(head) + " |")
    print("|" + "|".join("-" * (len(h) + 2) for h in head) + "|")
    for label, times, info in memory:
        cells = (
            label,
            f"{times}x",
            info["items"],
            f"{info['output_mb']:.1f}",
            f"{info['peak_rss_mb']:.1f}",
        )
        print("| " + " | ".join(f"{c!s:>{len(h)}}" for c, h in zip(cells, head)) + " |")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", type=Path, default=ROOT.parent / "shared" / "data")
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="best of N for each rate")
    args = parser.parse_args()
    tile, ped2 = args.data / "magnetic_tile", args.data / "ucsd_ped2"
    if not tile.is_dir() or not ped2.is_dir():
        print(f"real data not found under {args.data}", file=sys.stderr)
        return 2
    cfg = PrepareConfig.model_validate(
        {
            "image": {"size": [args.size, args.size], "channels": 1},
            "video": {"size": [args.size, args.size], "channels": 1, "fps": 15},
        }
    )
    rows: list[tuple[str, str, str]] = []
    with tempfile.TemporaryDirectory(prefix="vigil-bench-") as tmp_name:
        tmp = Path(tmp_name)
        rows += image_rows(tile, cfg, tmp, args)
        videos = encode_videos(ped2, tmp / "ped2_avi")
        rows += video_rows(videos, cfg, tmp, args)
        memory = []
        for label, source, modality in (("images", tile, "image"), ("video", videos, "video")):
            for times in (1, 10):
                src = (
                    source
                    if times == 1
                    else replicate(source, tmp / f"{label}_x{times}", times, modality)
                )
                info = peak_memory(src, modality, cfg, tmp / f"mem_{label}_{times}", args.workers)
                memory.append((label, times, info))

    print_report(rows, memory, args)
    return 0


if __name__ == "__main__":
    sys.exit(main())
