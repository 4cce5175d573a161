"""Retraining end to end, through the `vigil` subcommands, in temporary git + DVC projects.

- ``test_schedule_story_on_a_small_real_pipeline`` (slow, ~30 s): `vigil ingest` / `vigil schedule` /
  `vigil retrain` on a small real DVC pipeline (see tests/unit/scheduling/test_sched_helpers.py):
  new data -> new data version -> candidate -> gate -> champion, then a cycle that does nothing;
  a second `vigil retrain` while a cycle holds the lock exits with the holder's pid.
- ``test_full_pipeline_story`` (slow, a few minutes): the same story on vigil's own dvc.yaml and
  the built-in `capsules` data shrunk to tiny images: the real register stage's decision is the
  record's verdict, and only the gate moves the champion.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
from pathlib import Path

import cv2
import mlflow
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "unit" / "scheduling"))
from test_sched_helpers import RETRAIN_YAML, dvc, image, make_project, read_records, write_png

from vigil.scheduling.cli import register
from vigil.scheduling.retrain import run_cycle

REPO = Path(__file__).resolve().parents[2]


def vigil(*argv: str) -> int:
    """Run a scheduling subcommand in-process, as `vigil` would."""
    parser = argparse.ArgumentParser(prog="vigil")
    register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(list(argv))
    return int(args.handler(args) or 0)


def _champion(name: str) -> str | None:
    try:
        return str(mlflow.MlflowClient().get_model_version_by_alias(name, "champion").version)
    except mlflow.exceptions.MlflowException:
        return None


def test_schedule_story_on_a_small_real_pipeline(tmp_path: Path, mlflow_store: str, capsys) -> None:
    fast = {**RETRAIN_YAML, "schedule": {"interval_minutes": 0.5 / 60, "run_at_start": True}}
    root = make_project(tmp_path / "proj", retrain=fast)
    dvc(root, "repro")
    assert _champion("t-tiles-image") == "1"
    inbox = root / "inbox" / "tiles"
    write_png(inbox / "fresh1.png", image(901))
    write_png(inbox / "fresh2.png", image(902))
    (inbox / "zero.png").write_bytes(b"")
    shutil.copy(root / "data/tiles/train/good/001.png", inbox / "copy.png")

    assert vigil("ingest", "--root", str(root)) == 0
    out = capsys.readouterr().out
    assert (
        "tiles: ingested 2, quarantined 2" in out and "quarantined zero.png: zero.png: empty" in out
    )
    assert vigil("schedule", "--root", str(root), "--max-cycles", "2") == 0
    out = capsys.readouterr().out
    assert "2 cycle(s): retrained, no_change" in out and "nothing to do" in out
    (record,) = read_records(root)
    entry = record["datasets"]["tiles"]
    assert (
        record["trigger"] == ["new_data"] and entry["ingested"] == 0
    )  # ingested by `vigil ingest`
    assert entry["data_version_trained"] == entry["data_version_after"]
    assert json.loads((root / "reports/tiles/count.json").read_text())["normal"] == 5
    assert (entry["verdict"], entry["champion_before"], entry["champion_after"]) == (
        "pass",
        "1",
        "2",
    )
    assert _champion("t-tiles-image") == "2"
    assert "empty file" in (root / "quarantine/tiles/zero.png.reason.txt").read_text()
    assert "already in the dataset" in (root / "quarantine/tiles/copy.png.reason.txt").read_text()

    code = (
        "import time; from vigil.scheduling.lock import RetrainLock\n"
        f"l = RetrainLock({str(root / '.vigil/retrain.lock')!r}); l.acquire(); "
        "print('held', flush=True); time.sleep(30)"
    )
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "held"
        assert vigil("retrain", "--root", str(root)) == 1
        assert f"pid {holder.pid}" in capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()


# --- the full vigil pipeline -----------------------------------------------------------------

TINY = {
    "generate": {
        "capsules": {"image_size": 32, "n_train": 12, "n_test_good": 4, "n_test_per_defect": 2}
    },
    "prepare": {"image": {"size": [16, 16]}, "video": {"size": [16, 16]}},
    "sweep": {"n_trials": 0},
    "train": {"max_epochs": 2, "batch_size": 8},
}


def _merge(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        base[key] = _merge(base.get(key, {}), value) if isinstance(value, dict) else value
    return base


def test_full_pipeline_story(tmp_path: Path, mlflow_store: str) -> None:
    root = tmp_path / "repo"
    root.mkdir()
    for name in ("dvc.yaml", "pyproject.toml"):
        shutil.copy(REPO / name, root / name)
    for folder in ("pipelines", "configs", "src"):
        shutil.copytree(
            REPO / folder, root / folder, ignore=shutil.ignore_patterns("__pycache__", "*.egg-info")
        )
    params = _merge(yaml.safe_load((REPO / "params.yaml").read_text()), TINY)
    params["data"]["datasets"] = {"capsules": params["data"]["datasets"]["capsules"]}
    params["data"]["datasets"]["capsules"].pop("prepare", None)  # TINY's global 16x16 applies
    params["data"]["datasets"]["capsules"].pop("train", None)  # and its epochs
    (root / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    retrain = yaml.safe_load((REPO / "configs/retrain.yaml").read_text())
    retrain["datasets"] = {"capsules": retrain["datasets"]["capsules"]}
    (root / "configs/retrain.yaml").write_text(yaml.safe_dump(retrain))
    (root / "data/extra").mkdir(parents=True)  # extra@capsules depends on it, not on capsules/
    (root / "data/extra/README.md").write_text("ingested normal data\n")
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(root, "init", "-q")
    dvc(root, "repro")
    name = f"{params['register']['model_name_prefix']}-capsules-image"
    champion_before = _champion(name)

    good = sorted((root / "data/raw/capsules/train/good").iterdir())
    inbox = root / "inbox" / "capsules"
    for i, path in enumerate(good[:3]):  # new normal frames: mirrored parts, same size
        write_png(inbox / f"new{i}.png", cv2.flip(cv2.imread(str(path)), 1))
    shutil.copy(good[4], inbox / "dup.png")
    (inbox / "broken.png").write_bytes(good[5].read_bytes()[:100])

    metrics_before = (root / "reports/capsules/metrics.json").read_bytes()
    record = run_cycle(root, echo=lambda _: None)
    entry = record["datasets"]["capsules"]
    assert record["status"] == "retrained", record["error"]
    assert record["trigger"] == ["new_data"] and read_records(root) == [record]
    # the data version changed, and DVC tracks the ingested data
    assert entry["data_version_before"] != entry["data_version_after"]
    assert entry["data_version_trained"] == entry["data_version_after"]
    assert (root / "data/extra/capsules.dvc").is_file()
    assert len(list((root / "data/extra/capsules").glob("*.png"))) == 3
    # the bad items are in quarantine, each with its reason
    assert entry["ingested"] == 3 and set(entry["quarantined"]) == {"dup.png", "broken.png"}
    reasons = {
        name: (root / "quarantine/capsules" / f"{name}.reason.txt").read_text()
        for name in ("dup.png", "broken.png")
    }
    assert "already in the dataset" in reasons["dup.png"]
    assert "reason: broken.png: " in reasons["broken.png"]
    # a new candidate was evaluated on the new data and registered
    assert (root / "reports/capsules/metrics.json").read_bytes() != metrics_before
    decision = json.loads((root / "reports/capsules/decision.json").read_text())
    assert entry["candidate_version"] == decision["version"] != champion_before
    assert entry["verdict"] == ("pass" if decision["passed"] else "fail")  # the real verdict
    assert entry["promoted"] is decision["promoted"] is decision["passed"]
    assert entry["reasons"] == decision["reasons"] and entry["reasons"]
    client = mlflow.MlflowClient()
    candidate = client.get_model_version(name, entry["candidate_version"])
    assert candidate.tags["vigil.gate.passed"] == str(decision["passed"]).lower()
    assert str(client.get_model_version_by_alias(name, "challenger").version) == decision["version"]
    # the gate alone moved (or kept) the champion
    assert entry["champion_before"] == champion_before
    expected = entry["candidate_version"] if entry["verdict"] == "pass" else champion_before
    assert entry["champion_after"] == _champion(name) == expected
    # a second cycle with no new data does nothing
    versions = len(client.search_model_versions(f"name='{name}'"))
    again = run_cycle(root, echo=lambda _: None)
    assert again["status"] == "no_change" and again["trigger"] == []
    assert read_records(root) == [record]
    assert len(client.search_model_versions(f"name='{name}'")) == versions
    assert _champion(name) == expected

    # a training crash inside vigil's real pipeline: new data arrives while the configured model
    # is too deep for the 16x16 frames; the cycle fails, the record says where, the champion
    # and the registry stay as they were, and the next cycle retries the same data
    for i, path in enumerate(good[6:8]):
        write_png(inbox / f"later{i}.png", cv2.flip(cv2.imread(str(path)), 0))
    sound = (root / "params.yaml").read_text()
    broken = yaml.safe_load(sound)
    broken["model"]["conv_ae"]["depth"] = 6  # needs 64x64 frames
    (root / "params.yaml").write_text(yaml.safe_dump(broken, sort_keys=False))
    failed = run_cycle(root, echo=lambda _: None)
    assert failed["status"] == "failed" and failed["error"]["step"] == "repro", failed
    assert "too small for depth 6" in failed["error"]["tail"]
    failed_entry = failed["datasets"]["capsules"]
    assert failed_entry["ingested"] == 2  # versioned, not lost
    assert len(list((root / "data/extra/capsules").glob("*.png"))) == 5
    assert len(client.search_model_versions(f"name='{name}'")) == versions
    assert _champion(name) == expected
    (root / "params.yaml").write_text(sound)
    retried = run_cycle(root, echo=lambda _: None)
    assert retried["status"] == "retrained" and retried["trigger"] == ["new_data"], retried
    assert retried["datasets"]["capsules"]["ingested"] == 0
