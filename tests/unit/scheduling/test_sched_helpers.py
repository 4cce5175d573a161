"""A tiny real project for the scheduling tests: git + DVC + a genuine two-stage pipeline.

The pipeline is not vigil's (that one trains models: too slow for unit tests) but a real DVC
pipeline over the same data layout: ``count@D`` counts the normal images of the source and of
``data/extra/D`` into JSON; ``register@D`` logs an MLflow run, registers a model version and moves
the ``champion`` alias only when its gate passes (more normal images than the champion had),
writing ``reports/D/decision.json`` with vigil's own ``Decision`` and ``write_decision``, so
the file has exactly the real register stage's format. Failures are injected for real:
``count.py`` exits 1 while a ``FAIL_COUNT`` file exists, ``register.py`` writes a corrupt
decision while ``BAD_DECISION`` exists.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import cv2
import numpy as np
import yaml

COUNT_PY = """
import json, sys
from pathlib import Path
ds, source = sys.argv[1], Path(sys.argv[2])
if Path("FAIL_COUNT").exists():
    sys.exit("count: injected training crash")
exts = {".png", ".jpg"}
good = [p for p in (source / "train" / "good").iterdir() if p.suffix in exts]
extra = [p for p in Path("data/extra", ds).rglob("*") if p.suffix in exts] if Path("data/extra", ds).is_dir() else []
out = Path("reports", ds, "count.json")
out.parent.mkdir(parents=True, exist_ok=True)
out.write_text(json.dumps({"normal": len(good) + len(extra), "extra": len(extra)}))
"""

REGISTER_PY = """
import json, sys
from pathlib import Path
import mlflow
from mlflow import MlflowClient
from vigil.registry.promotion import Decision, write_decision
ds = sys.argv[1]
count = json.loads(Path("reports", ds, "count.json").read_text())["normal"]
name = f"t-{ds}-image"
client = MlflowClient()
try:
    champ = client.get_model_version_by_alias(name, "champion")
    champ_count = float(client.get_run(champ.run_id).data.metrics["normal"])
except Exception:
    champ, champ_count = None, -1.0
if not client.search_registered_models(filter_string=f"name='{name}'"):
    client.create_registered_model(name)
exp = client.get_experiment_by_name("t-train") or None
exp_id = exp.experiment_id if exp else client.create_experiment("t-train")
run = client.create_run(exp_id)
client.log_metric(run.info.run_id, "normal", count)
client.set_terminated(run.info.run_id)
version = client.create_model_version(name, f"runs:/{run.info.run_id}/model", run.info.run_id)
passed = count > champ_count
if passed:
    client.set_registered_model_alias(name, "champion", version.version)
after = version.version if passed else (champ.version if champ else None)
if Path("BAD_DECISION").exists():  # injected: a corrupt decision file
    Path("reports", ds, "decision.json").write_text("{not json")
    sys.exit(0)
# the real format: the register stage's Decision, written by its own writer
write_decision(Decision(
    model_name=name, version=str(version.version), passed=passed, promoted=passed,
    reasons=[f"normal images {count:g} vs champion {champ_count:g}"],
    champion_before=str(champ.version) if champ else None,
    champion_after=str(after) if after is not None else None, run_id=run.info.run_id,
    metrics={"normal": float(count)}), Path("reports", ds, "decision.json"))
"""

DVC_YAML = {
    "stages": {
        "count": {
            "foreach": "${data.datasets}",
            "do": {
                "cmd": "python count.py ${key} ${item.source}",
                "deps": ["count.py", "${item.source}", "data/extra"],
                "outs": ["reports/${key}/count.json"],
            },
        },
        "register": {
            "foreach": "${data.datasets}",
            "do": {
                "cmd": "python register.py ${key}",
                "deps": ["register.py", "reports/${key}/count.json"],
                "outs": [{"reports/${key}/decision.json": {"cache": False}}],
            },
        },
    }
}

RETRAIN_YAML = {
    "datasets": {"tiles": {"inbox": "inbox/tiles", "size": "auto", "channels": "auto"}},
    "quarantine": "quarantine",
    "records": "reports/retrain",
    "state_dir": ".vigil",
    "max_model_age_days": None,
    "lock": {"path": ".vigil/retrain.lock", "timeout_s": 0},
    "schedule": {"interval_minutes": 60},
    "repro": {"targets": ["register@{dataset}"], "force_from": "count@{dataset}"},
}


def image(seed: int, size: int = 32, channels: int = 3) -> np.ndarray:
    """A random uint8 (size, size, channels) image; a different seed gives different content."""
    rng = np.random.default_rng(seed)
    shape = (size, size) if channels == 1 else (size, size, channels)
    return rng.integers(0, 256, shape, dtype=np.uint8)


def write_png(path: Path, array: np.ndarray) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    ok, buf = cv2.imencode(".png", array)
    assert ok
    path.write_bytes(buf.tobytes())
    return path


def dvc(root: Path, *args: str) -> str:
    # a release run (the project is not a clean commit): the register stage may promote, as
    # the scheduled retrain's own runs may (vigil.registry.policy)
    env = dict(os.environ, DVC_NO_ANALYTICS="1", VIGIL_PROMOTE="1")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=root,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    return done.stdout + done.stderr


def make_image_source(root: Path, n_good: int = 3, size: int = 32) -> Path:
    """An MVTec-layout source folder ``data/tiles`` with tiny random PNGs."""
    source = root / "data" / "tiles"
    for i in range(n_good):
        write_png(source / "train" / "good" / f"{i:03d}.png", image(100 + i, size))
    write_png(source / "test" / "good" / "000.png", image(200, size))
    write_png(source / "test" / "crack" / "000.png", image(300, size))
    return source


def make_project(root: Path, *, pipeline: bool = True, retrain: dict | None = None) -> Path:
    """git + DVC project with the ``tiles`` image dataset (source under ``dvc add``)."""
    root.mkdir(parents=True, exist_ok=True)
    subprocess.run(["git", "init", "-q"], cwd=root, check=True)
    dvc(root, "init", "-q")
    make_image_source(root)
    (root / "data" / "extra").mkdir(parents=True, exist_ok=True)
    (root / "data" / "extra" / "README.md").write_text("ingested normal data: data/extra/<D>\n")
    params = {
        "data": {"datasets": {"tiles": {"source": "data/tiles", "modality": "image"}}},
        "register": {"model_name_prefix": "t"},
    }
    (root / "params.yaml").write_text(yaml.safe_dump(params))
    (root / "configs").mkdir(exist_ok=True)
    (root / "configs" / "retrain.yaml").write_text(yaml.safe_dump(retrain or RETRAIN_YAML))
    dvc(root, "add", "data/tiles")
    if pipeline:
        (root / "count.py").write_text(COUNT_PY)
        (root / "register.py").write_text(REGISTER_PY)
        (root / "dvc.yaml").write_text(yaml.safe_dump(DVC_YAML, sort_keys=False))
    return root


def read_records(root: Path) -> list[dict]:
    folder = root / "reports" / "retrain"
    return (
        [json.loads(p.read_text()) for p in sorted(folder.glob("*.json"))]
        if folder.is_dir()
        else []
    )
