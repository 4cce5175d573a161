"""OpenMP defaults (``vigil.threads``): set before torch loads in every entry point, user values kept.

Each check runs a fresh interpreter (libgomp reads the variables once, when torch loads) with
``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` and ``OMP_NUM_THREADS`` removed from its environment.
An audit hook records the environment at the moment ``torch`` is first imported and whether
``vigil`` was loaded then.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from vigil import threads

ROOT = Path(__file__).resolve().parents[2]
OPENMP_VARIABLES = ("OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "OMP_NUM_THREADS")
SPIN = str(threads.SPIN_COUNT)

PROBE = r"""
import importlib, importlib.metadata, importlib.util, json, os, runpy, sys
seen = {}
def hook(event, args):
    if event == "import" and args[0] == "torch" and "torch" not in seen:
        seen["torch"] = {"spin": os.environ.get("GOMP_SPINCOUNT"),
                         "vigil_loaded": "vigil" in sys.modules}
sys.addaudithook(hook)
kind, target = sys.argv[1], sys.argv[2]
if kind == "script":  # a pipelines/ or bench/ file: its top level, as `python FILE` runs it
    sys.path.insert(0, os.path.dirname(os.path.abspath(target)))  # python FILE's sys.path[0]
    runpy.run_path(target, run_name="__entry_check__")
elif kind == "console":  # the console script's entry point, loaded as the installed script does
    (entry,) = importlib.metadata.entry_points(group="console_scripts", name=target)
    entry.load()
elif kind == "pyfunc":  # `mlflow models serve`: the scoring server, then the model file by path
    import mlflow.pyfunc.scoring_server
    spec = importlib.util.spec_from_file_location("code_model_check", target)
    module = importlib.util.module_from_spec(spec)
    sys.modules["code_model_check"] = module
    spec.loader.exec_module(module)
    import mlflow.models.model, types  # then MLflow calls load_context (here on an empty folder)
    try:
        mlflow.models.model.__mlflow_model__.load_context(
            types.SimpleNamespace(artifacts={"model": sys.argv[4]}))
    except Exception:
        pass  # no package in the folder: the imports on the way are what is checked
report = {"top_level": {"vigil_loaded": "vigil" in sys.modules, "torch_seen": seen.get("torch")}}
if "--then-torch" in sys.argv[3:4]:  # what the entry does next: its first torch import
    import torch
    report.update(torch=seen["torch"], threads=torch.get_num_threads())
print(json.dumps(report))
"""


def _probe(kind: str, target: str, *extra: str, then_torch: bool = False, **env: str) -> dict:
    clean = {k: v for k, v in os.environ.items() if k not in OPENMP_VARIABLES}
    result = subprocess.run(
        [sys.executable, "-c", PROBE, kind, target, "--then-torch" if then_torch else "-", *extra],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"{kind} {target}: {result.stderr[-3000:]}"
    return json.loads(result.stdout.strip().splitlines()[-1])


def _assert_first(report: dict, entry: str, *, at_top_level: bool = True) -> None:
    """vigil loaded by the entry's top level, so everything the entry runs afterwards (its
    ``main``, lazy ``import torch`` included) runs with the defaults; a torch import during the
    top level came after vigil's; the first torch import, when probed, saw the spin count."""
    top = report["top_level"]
    if at_top_level:
        assert top["vigil_loaded"], f"{entry} does not import vigil at its top level"
    if top["torch_seen"] is not None:
        assert top["torch_seen"]["vigil_loaded"], f"{entry} imports torch before vigil"
        assert top["torch_seen"]["spin"] == SPIN, f"{entry}: torch loaded without it"
    if "torch" in report:
        assert report["torch"]["spin"] == SPIN, f"{entry}: torch loaded without it"


# every DVC stage entry, and the benchmarks that run torch themselves (bench/pipeline.py and
# bench/retrain.py start `dvc repro` / vigil commands, or import vigil before anything else)
TORCH_SCRIPTS = sorted(
    p.relative_to(ROOT).as_posix()
    for p in [*ROOT.glob("pipelines/*.py"), *ROOT.glob("bench/*.py")]
    if p.parent.name == "pipelines" or "import torch" in p.read_text()
)


@pytest.mark.parametrize("script", TORCH_SCRIPTS)
def test_entry_script_loads_vigil_before_torch(script):
    _assert_first(_probe("script", script), script)


def test_console_script_loads_vigil_before_torch():
    report = _probe("console", "vigil", then_torch=True)
    _assert_first(report, "the vigil console script")
    assert report["threads"] == threads.usable_cpus()  # OMP_NUM_THREADS reached torch


def test_pyfunc_model_under_mlflow_serve_loads_vigil_before_torch(tmp_path):
    """MLflow runs the package's model file by path, then ``load_context``: the first torch
    import on that path (or any later one) must see the default."""
    model_file = (ROOT / "src/vigil/registry/pyfunc_model.py").as_posix()
    report = _probe("pyfunc", model_file, str(tmp_path), then_torch=True)
    _assert_first(report, "the MLflow pyfunc model file", at_top_level=False)
    assert report["top_level"]["vigil_loaded"], "load_context did not import vigil"


def _vigil_env(code: str, **env: str) -> list[str]:
    """Run ``code`` in a fresh interpreter without the two variables (plus ``env``)."""
    clean = {k: v for k, v in os.environ.items() if k not in OPENMP_VARIABLES}
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={**clean, **env},
        capture_output=True,
        text=True,
        check=True,
    )
    return out.stdout.split()


def test_user_settings_are_kept():
    code = ("import os, vigil; print(os.environ.get('OMP_WAIT_POLICY'), "
            "os.environ.get('GOMP_SPINCOUNT'), os.environ['OMP_NUM_THREADS'])")
    assert _vigil_env(code) == ["None", SPIN, str(threads.usable_cpus())]
    # a wait policy the user chose is not overridden by a spin count (libgomp lets
    # GOMP_SPINCOUNT win over OMP_WAIT_POLICY)
    assert _vigil_env(code, OMP_WAIT_POLICY="PASSIVE") == ["PASSIVE", "None",
                                                           str(threads.usable_cpus())]
    assert _vigil_env(code, GOMP_SPINCOUNT="5", OMP_NUM_THREADS="3") == ["None", "5", "3"]


def test_thread_count_follows_the_cpu_affinity():
    """A process pinned to one core gets one thread (torch alone would take every core)."""
    code = (
        "import os; os.sched_setaffinity(0, {min(os.sched_getaffinity(0))}); import vigil;"
        "print(os.environ['OMP_NUM_THREADS'])"
    )
    assert _vigil_env(code) == ["1"]


@pytest.mark.parametrize(
    ("v2", "v1", "expected_cap"),
    [
        ("150000 100000\n", None, 2),  # docker --cpus 1.5 -> 2 threads
        ("max 100000\n", None, None),  # no quota
        (None, ("50000", "100000"), 1),  # cgroup v1 quota of half a core
        (None, ("-1", "100000"), None),  # v1 without quota
        ("garbage\n", None, None),  # unreadable: no limit assumed
    ],
)
def test_usable_cpus_honours_a_cgroup_quota(tmp_path, monkeypatch, v2, v1, expected_cap):
    monkeypatch.setattr(threads, "CGROUP_V2_CPU_MAX", tmp_path / "cpu.max")
    monkeypatch.setattr(threads, "CGROUP_V1_QUOTA", tmp_path / "cfs_quota_us")
    monkeypatch.setattr(threads, "CGROUP_V1_PERIOD", tmp_path / "cfs_period_us")
    if v2 is not None:
        (tmp_path / "cpu.max").write_text(v2)
    if v1 is not None:
        (tmp_path / "cfs_quota_us").write_text(v1[0])
        (tmp_path / "cfs_period_us").write_text(v1[1])
    affinity = len(os.sched_getaffinity(0))
    expected = affinity if expected_cap is None else min(affinity, expected_cap)
    assert threads.usable_cpus() == expected
