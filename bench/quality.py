"""Quality on real data with the default params: magnetic tiles (images) and UCSD Ped2 (video).

    .venv/bin/python bench/quality.py [--tile ../shared/data/magnetic_tile]
        [--ped2 ../shared/data/ucsd_ped2] [--only tile|ped2|capsules ...] [--keep]
        [--families conv_ae,draem@128] [--size 128] [--max-minutes 4] [--trials 0]
        [--video-families convlstm,future_frame] [--only ped2 print]

Image datasets (tile, capsules: the built-in generated capsules) run once per image family of
``--families`` on the same prepared data (datasets ``<name>_<family>``, each with the
per-dataset override ``model: {image_family: <family>}``), and one table prints them side by
side: image AUROC, pixel AUROC, AUPRO, recall at the gate's precision, false-alarm rate at the
calibrated threshold (tune split; never selected on test), the tune split's own image and pixel
AUROC (choose between runs on these, not on the test columns) and training minutes. ``--size``,
``--max-minutes`` and ``--trials`` shrink a run (``prepare.image.size``, ``train.max_minutes``,
``sweep.n_trials``; they are printed with the results).

Video datasets (ped2, print: the built-in generated print video) run once per video family of
``--video-families`` the same way (``<name>_<family>``, override ``model: {video_family: ..}``);
``video_table`` prints them side by side: frame AUROC (raw pooled scores, the headline; the
smoothed one beside it), per-clip min-max-normalized pooled AUROC, mean per-clip AUROC, recall at
the gate's precision, precision/recall at the tune-calibrated threshold, event recall/precision,
gate verdict and training minutes; for Ped2 also the AUROC of clip 01, clip 02 and both.

Clones the committed project into a temporary folder, points two datasets at the real folders
(`data.datasets.<name>.source`, the documented way to bring your own data; the only other change
is `prepare: {image: {channels: 1}}` for the tiles, since they are gray), and runs the real pipeline with
`dvc repro register@tile register@ped2`: prepare, sweep, train, evaluate, register. Nothing is
tuned to these sets. Prints what the evaluate stage measured on the test split (image and pixel
AUROC for the tiles, frame AUC for Ped2) and, for Ped2, whose two labelled clips are split one
to `tune` (sweep objective, threshold) and one to `test` (gate), the frame AUC of each clip and
of both together, scored by the same code as the evaluate stage.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

import vigil  # noqa: F401  (first: OpenMP defaults before torch loads, see vigil.threads)
from vigil.config import deep_merge
from knobs import knob_overrides, split_knobs

REPO = Path(__file__).resolve().parents[1]
VENV = Path(sys.prefix)
SHARED = REPO.parent / "shared" / "data"


def run(args: list[str], cwd: Path, env: dict[str, str]) -> float:
    start = time.perf_counter()
    result = subprocess.run(args, cwd=cwd, env=env, check=False)
    if result.returncode != 0:
        sys.exit(f"{' '.join(args)} failed (exit {result.returncode}) in {cwd}")
    return time.perf_counter() - start


def make_project(work: Path, datasets: dict[str, dict], shrink: dict[str, dict] | None = None) -> Path:
    """A clone of the committed project whose datasets are ``datasets``; ``shrink`` overrides
    keys of params sections (``{"train": {"max_minutes": 4}}``)."""
    clone = work / "vigil"
    subprocess.run(["git", "clone", "-q", str(REPO), str(clone)], check=True)
    params_path = clone / "params.yaml"
    params = yaml.safe_load(params_path.read_text())
    params["data"]["datasets"] = datasets
    for section, values in (shrink or {}).items():
        params[section] = deep_merge(params[section], values)
    params_path.write_text(yaml.safe_dump(params, sort_keys=False))
    for name in datasets:  # the prepare stage depends on each dataset's (empty) ingest folder
        extra = clone / params["data"]["extra_dir"] / name
        extra.mkdir(parents=True, exist_ok=True)
        (extra / ".gitkeep").touch()
    return clone


IMAGE_KEYS = ("image_auroc", "pixel_auroc", "aupro", "recall_at_precision", "false_alarm_rate")


def split_aucs(detector, data, split: str) -> tuple[float, float]:
    """(image AUROC, pixel AUROC) of ``detector`` on ``split`` (NaN where undefined)."""
    from vigil.evaluation.splits import pixel_metrics, score_split, split_auroc

    scored = score_split(detector, data, split)
    image = split_auroc(scored)
    return (float("nan") if image is None else image,
            pixel_metrics(data, scored).get("pixel_auroc", float("nan")))


def tune_aucs(project: Path, name: str) -> tuple[float, float]:
    """(image AUROC, pixel AUROC) on the tune split, from the stage's calibrated detector: the
    split a change is chosen on (the table's other columns are the test split)."""
    from vigil.data.prepared import PreparedDataset
    from vigil.detector import Detector

    data = PreparedDataset.load(project / "data" / "prepared" / name)
    return split_aucs(Detector.load(project / "models" / name / "detector"), data, "tune")


def map_table(project: Path, runs: dict[str, tuple[str, str]]) -> list[str]:
    """Every (anomaly map, score) pair the same trained network can ship (``Family.map_knob``
    choices x ``vigil.config.SCORES``): its tune and test AUROCs (video: frame AUROC of the raw
    frame scores, as the choice reads them) and pixel AUROCs, the shipped pair (chosen on tune
    when ``auto``) marked; the other rows are what the same weights give otherwise."""
    from vigil.config import SCORES
    from vigil.data.prepared import PreparedDataset
    from vigil.detector import Detector
    from vigil.evaluation.map_choice import label, map_readers, raw_auroc, rescored, with_score
    from vigil.evaluation.splits import pixel_metrics, score_split

    width = max(12, *(len(family) for _, family in runs.values()))
    lines = [f"{'dataset':10} {'family':{width}} {'map / score':32} {'tune':>10} "
             f"{'tune_pixel':>10} {'test':>10} {'test_pixel':>10}"]
    nan = float("nan")
    for name, (base, family) in runs.items():
        detector = Detector.load(project / "models" / name / "detector")
        data = PreparedDataset.load(project / "data" / "prepared" / name)
        knob = detector.family.map_knob
        shipped = label(detector.record.spec["model"][knob] if knob else None,
                        detector.postprocess.summary)
        for choice, reader in map_readers(detector):
            splits = {s: score_split(reader, data, s) for s in ("tune", "test")}
            pixel = {s: pixel_metrics(data, split).get("pixel_auroc", nan)
                     for s, split in splits.items()}
            for score in SCORES:
                variant = with_score(reader, score)
                cells = []
                for split_name, split in splits.items():
                    auc = raw_auroc(rescored(split, variant))
                    cells += [nan if auc is None else auc, pixel[split_name]]
                row = label(choice, score)
                mark = " (shipped)" if row == shipped else ""
                lines.append(f"{base:10} {family:{width}} {row + mark:32} "
                             + " ".join(f"{c:>10.3f}" for c in cells))
    return lines


def family_table(project: Path, runs: dict[str, tuple[str, str]]) -> list[str]:
    """Lines of the side-by-side table: one row per (dataset, family) run; test-split metrics,
    then the tune split's image and pixel AUROC."""
    width = max(12, *(len(family) for _, family in runs.values()))
    lines = [f"{'dataset':10} {'family':{width}} " + " ".join(f"{k:>19}" for k in IMAGE_KEYS)
             + f" {'tune_image':>10} {'tune_pixel':>10} {'train_min':>9} {'epochs':>6}"]
    for name, (base, family) in runs.items():
        metrics = json.loads((project / "reports" / name / "metrics.json").read_text())
        train = json.loads((project / "models" / name / "train.json").read_text())
        cells = " ".join(f"{metrics.get(k, float('nan')):>19.3f}" for k in IMAGE_KEYS)
        tune_image, tune_pixel = tune_aucs(project, name)
        lines.append(f"{base:10} {family:{width}} {cells} {tune_image:>10.3f} {tune_pixel:>10.3f} "
                     f"{train['wall_time_s'] / 60:>9.1f} {train.get('epochs', '?'):>6}")
    return lines


VIDEO_KEYS = ("frame_auroc_raw", "frame_auroc", "frame_auroc_clip_normalized",
              "frame_auroc_mean_per_clip", "recall_at_precision", "precision_at_threshold",
              "recall_at_threshold", "event_recall", "event_precision")


def video_table(project: Path, runs: dict[str, tuple[str, str]]) -> list[str]:
    """Lines of the side-by-side video table: one row per (dataset, video family) run."""
    heads = ("raw", "smoothed", "clip_norm", "per_clip", "rec@prec", "prec@thr", "rec@thr",
             "ev_rec", "ev_prec")
    width = max(12, *(len(family) for _, family in runs.values()))
    lines = ["frame AUROC raw = pooled raw scores (headline); smoothed = pooled moving average",
             f"{'dataset':10} {'family':{width}} " + " ".join(f"{h:>9}" for h in heads)
             + f" {'gate':>6} {'train_min':>9} {'epochs':>6}"]
    for name, (base, family) in runs.items():
        metrics = json.loads((project / "reports" / name / "metrics.json").read_text())
        decision = json.loads((project / "reports" / name / "decision.json").read_text())
        train = json.loads((project / "models" / name / "train.json").read_text())
        cells = " ".join(f"{metrics.get(k, float('nan')):>9.3f}" for k in VIDEO_KEYS)
        gate = "pass" if decision.get("passed") else "reject"
        lines.append(f"{base:10} {family:{width}} {cells} {gate:>6} "
                     f"{train['wall_time_s'] / 60:>9.1f} {train.get('epochs', '?'):>6}")
    return lines


def clip_aucs(project: Path, name: str) -> dict[str, float]:
    """Frame AUROC (smoothed scores, as the evaluate stage makes them) of each labelled clip of
    the tune and test splits and of all of them pooled, from the stage's calibrated detector."""
    import numpy as np
    from sklearn.metrics import roc_auc_score

    from vigil.data.prepared import PreparedDataset
    from vigil.detector import Detector
    from vigil.evaluation.splits import score_split

    data = PreparedDataset.load(project / "data" / "prepared" / name)
    detector = Detector.load(project / "models" / name / "detector")
    out: dict[str, float] = {}
    labels, scores = [], []
    for split in ("tune", "test"):
        s = score_split(detector, data, split)
        for clip, a, b in s.clips:
            keep = s.scored[a:b]
            y, p = s.labels[a:b][keep], s.scores[a:b][keep]
            if 0 < y.sum() < len(y):
                out[f"{clip} ({split})"] = float(roc_auc_score(y, p))
            labels.append(y)
            scores.append(p)
    y = np.concatenate(labels)
    if 0 < y.sum() < len(y):
        out["all clips"] = float(roc_auc_score(y, np.concatenate(scores)))
    return out


def split_entries(text: str) -> list[str]:
    """Comma-separated runs; a comma inside [...] belongs to a knob's value (size=[128, 128])."""
    return [e.strip() for e in re.split(r",(?![^\[]*\])", text) if e.strip()]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=Path, default=SHARED / "magnetic_tile")
    parser.add_argument("--ped2", type=Path, default=SHARED / "ucsd_ped2")
    parser.add_argument("--only", nargs="+", choices=("tile", "ped2", "capsules", "print"))
    parser.add_argument("--families", default="conv_ae,draem",
                        help="image families compared on each image dataset (comma-separated; "
                             "family@N also sets that run's image size to N x N; "
                             "family:key=value sets a knob of that run, e.g. a baseline)")
    parser.add_argument("--video-families", default="convlstm",
                        help="video families compared on each video dataset (comma-separated; "
                             "family:key=value as above, e.g. "
                             "future_frame,future_frame:restored_context=false)")
    parser.add_argument("--size", type=int, help="prepare.image.size (square), default: params")
    parser.add_argument("--max-minutes", type=float, help="train.max_minutes, default: params")
    parser.add_argument("--trials", type=int, help="sweep.n_trials (0: no sweep), default: params")
    parser.add_argument("--keep", action="store_true", help="keep the project and print its path")
    args = parser.parse_args()
    if not (VENV / "bin" / "dvc").is_file():
        sys.exit(f"run this with the project's environment (.venv/bin/python), not {sys.executable}")

    sources = {
        "tile": {"source": str(args.tile.resolve()), "modality": "image",
                 "prepare": {"image": {"channels": 1}}},
        "ped2": {"source": str(args.ped2.resolve()), "modality": "video"},
    }
    shipped = yaml.safe_load((REPO / "params.yaml").read_text())["data"]["datasets"]
    for name in ("capsules", "print"):  # the generate stage's, with their params.yaml overrides
        sources[name] = shipped[name]
    chosen = args.only or ["tile", "ped2"]
    for name in chosen:
        source = Path(sources[name]["source"])
        if source.is_absolute() and not source.is_dir():
            sys.exit(f"{name}: dataset folder {source} not found")
    families = split_entries(args.families)
    wanted: dict[str, dict] = {}
    runs: dict[str, tuple[str, str]] = {}  # dataset name -> (source name, image family)
    video_families = split_entries(args.video_families)
    video_runs: dict[str, tuple[str, str]] = {}  # dataset name -> (source name, video family)
    for name in chosen:
        if sources[name]["modality"] != "image":
            for index, entry in enumerate(video_families):
                family, knobs = split_knobs(entry)
                dataset = deep_merge(sources[name], {"model": {"video_family": family}})
                dataset = deep_merge(dataset, knob_overrides(family, knobs))
                key = f"{name}_{family}" + (f"_{index}" if knobs else "")
                wanted[key] = dataset
                video_runs[key] = (name, entry)
            continue
        for index, entry in enumerate(families):
            spec, knobs = split_knobs(entry)
            family, _, size = spec.partition("@")
            dataset = deep_merge(sources[name], {"model": {"image_family": family}})
            dataset = deep_merge(dataset, knob_overrides(family, knobs))
            if size:  # family@size: this run's prepare.image.size, over --size and params
                dataset = deep_merge(dataset, {"prepare": {"image": {"size": [int(size)] * 2}}})
            key = f"{name}_{family}" + (f"_{size}" if size else "") + (f"_{index}" if knobs else "")
            wanted[key] = dataset
            runs[key] = (name, entry)
    shrink: dict[str, dict] = {}
    if args.size:
        shrink["prepare"] = {"image": {"size": [args.size, args.size]}}
    if args.max_minutes:
        shrink["train"] = {"max_minutes": args.max_minutes}
    if args.trials is not None:
        shrink["sweep"] = {"n_trials": args.trials}

    work = Path(tempfile.mkdtemp(prefix="vigil-bench-quality-"))
    project = make_project(work, wanted, shrink)
    env = {k: v for k, v in os.environ.items() if k not in ("MLFLOW_TRACKING_URI", "VIGIL_OPTUNA_STORAGE")}
    env["PATH"] = f"{VENV / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["DVC_NO_ANALYTICS"] = "1"
    seconds = run([str(VENV / "bin" / "dvc"), "repro", *(f"register@{n}" for n in wanted)],
                  project, env)

    print(f"\ncores: {os.cpu_count()}  pipeline wall time: {seconds:.0f} s  load average: "
          f"{' '.join(f'{v:.1f}' for v in os.getloadavg())}  settings: {shrink or 'params.yaml'}")
    if runs:
        print("\n".join(family_table(project, runs)))
    if runs or video_runs:
        print("\nmaps and scores of the same trained networks (test columns: not used to choose)")
        print("\n".join(map_table(project, {**runs, **video_runs})))
    for name in wanted:
        metrics = json.loads((project / "reports" / name / "metrics.json").read_text())
        decision = json.loads((project / "reports" / name / "decision.json").read_text())
        keys = [k for k in ("image_auroc", "pixel_auroc", "aupro", "frame_auroc",
                            "frame_auroc_raw", "average_precision", "recall_at_precision",
                            "event_recall", "event_precision") if k in metrics]
        print(f"{name} (test split, n={metrics.get('n_test')}): "
              + "  ".join(f"{k}={metrics[k]:.3f}" for k in keys))
        print(f"{name}: gate {'PASSED' if decision.get('passed') else 'REJECTED'}"
              f" {'; '.join(decision.get('reasons') or [])}")
    if video_runs:
        print("\n".join(video_table(project, video_runs)))
        for name in video_runs:
            aucs = clip_aucs(project, name)
            print(f"{name} frame AUROC per labelled clip (smoothed scores): "
                  + "  ".join(f"{clip}={auc:.3f}" for clip, auc in aucs.items()))
    if args.keep:
        print(f"project kept at {project}")
    else:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
