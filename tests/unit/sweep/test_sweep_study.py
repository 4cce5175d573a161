"""run_sweep / run_stage end to end on tiny data: real fit, real Optuna SQLite, real MLflow."""

from __future__ import annotations

import json
import multiprocessing
import os
import signal
import sqlite3
import sys
import time
import warnings
from pathlib import Path

import optuna
import pytest
import yaml
from mlflow.tracking import MlflowClient

from vigil.config import parse_params
from vigil.sweep.study import (
    StorageError,
    open_storage,
    pruning_summary,
    quotas,
    run_stage,
    run_sweep,
)

REPO = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(Path(__file__).parent))  # the tiny dataset builders live beside
from test_sweep_objective import make_images  # noqa: E402 (after the sys.path insert)

SPACE = "conv_ae:\n  depth: {choices: [1, 2]}\n  latent_channels: {choices: [2, 8]}\n"


def tiny_params(tmp_path: Path, **sweep) -> object:
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    return parse_params(
        {
            "data": {"datasets": {"tinysweep": {"source": "tests", "modality": "image"}}},
            "prepare": {"image": {"size": [16, 16], "channels": 3}},
            "model": {"image_family": "conv_ae",
                      "conv_ae": {"depth": 2, "filters": 4, "latent_channels": 4}},
            "train": {"max_epochs": 1, "batch_size": 8, "accelerator": "cpu"},
            "sweep": {
                "n_trials": 2,
                "epochs_per_trial": 1,
                "space": str(space),
                "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
                "max_normal_error": 1.0,
                **sweep,
            },
        }
    )


def test_sweep_logs_nested_runs_and_writes_the_best_config(mlflow_store, tmp_path):
    make_images(tmp_path / "data" / "prepared" / "tinysweep")
    params = tiny_params(tmp_path, n_trials=3, sampler="grid", pruning=False)
    best = run_stage(params, "tinysweep", root=tmp_path)

    saved = json.loads((tmp_path / "models" / "tinysweep" / "best_config.json").read_text())
    assert saved == best
    assert saved["model"]["depth"] in (1, 2) and saved["model"]["filters"] == 4
    rows = json.loads((tmp_path / "reports" / "tinysweep" / "sweep.json").read_text())
    assert len(rows) == 3
    assert all(r["ratio"] == pytest.approx(r["anomaly_error"] / r["total_error"]) for r in rows)
    assert max(r["objective"] for r in rows) == pytest.approx(saved["objective"])
    assert (tmp_path / "reports" / "tinysweep" / "sweep.csv").read_text().startswith("trial,")
    missing = [p for p in _declared_sweep_outputs("tinysweep") if not (tmp_path / p).is_file()]
    assert not missing
    pruning = json.loads((tmp_path / "reports" / "tinysweep" / "pruning.json").read_text())
    assert pruning["sweep_ran"] is True and pruning["n_trials"] == 3

    client = MlflowClient(mlflow_store)
    runs = client.search_runs([client.get_experiment_by_name("vigil-tinysweep").experiment_id])
    parents = [r for r in runs if r.data.tags.get("vigil.stage") == "sweep"]
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    assert len(parents) == 1 and len(children) == 3
    parent = parents[0]
    assert {c.data.tags["mlflow.parentRunId"] for c in children} == {parent.info.run_id}
    assert parent.info.status == "FINISHED"
    best_children = [c for c in children if c.data.tags.get("vigil.best_trial") == "true"]
    assert [int(c.data.tags["vigil.trial"]) for c in best_children] == [saved["trial"]]
    assert {"tune_ratio", "tune_total_error", "tune_anomaly_error", "encoding_size"} <= set(
        best_children[0].data.metrics
    )
    artifacts = {a.path for a in client.list_artifacts(parent.info.run_id, "sweep")}
    assert artifacts == {"sweep/sweep.png", "sweep/sweep.json"}

    # same config again: the study resumes, already holds its 3 trials, trains nothing more
    again = run_stage(params, "tinysweep", root=tmp_path)
    assert again == best
    assert len(client.search_runs([parent.info.experiment_id])) == len(runs)


def _declared_sweep_outputs(dataset: str) -> list[str]:
    """The sweep stage's outs and plots in the repo's dvc.yaml, for ``dataset``."""
    stage = yaml.safe_load((REPO / "dvc.yaml").read_text())["stages"]["sweep"]["do"]
    paths = []
    for entry in stage.get("outs", []) + stage.get("plots", []):
        path = next(iter(entry)) if isinstance(entry, dict) else entry
        paths.append(path.replace("${key}", dataset))
    return paths


def test_zero_trials_uses_the_configured_model_and_writes_every_declared_output(tmp_path):
    make_images(tmp_path / "data" / "prepared" / "tinysweep")  # its family and encoding size
    params = tiny_params(tmp_path, n_trials=0)
    best = run_stage(params, "tinysweep", root=tmp_path)
    assert best["model"] == params.model.family_config("conv_ae").model_dump(mode="json")
    assert best["trial"] is None
    declared = _declared_sweep_outputs("tinysweep")
    assert {"reports/tinysweep/sweep.png", "reports/tinysweep/pruning.json"} <= set(declared)
    missing = [p for p in declared if not (tmp_path / p).is_file()]
    assert not missing, f"dvc.yaml declares {missing}, the n_trials=0 stage did not write them"
    reports = tmp_path / "reports" / "tinysweep"
    assert json.loads((reports / "sweep.json").read_text()) == []
    pruning = json.loads((reports / "pruning.json").read_text())
    assert pruning["sweep_ran"] is False and pruning["n_trials"] == 0
    assert "n_trials is 0" in pruning["reason"]
    assert (reports / "sweep.png").read_bytes().startswith(b"\x89PNG")
    assert not list(reports.glob(".*"))  # no temp files left by the atomic writes


def test_unreachable_storage_fails_fast_with_the_url():
    started = time.perf_counter()
    url = "postgresql://vigil:secret@127.0.0.1:1/nowhere"
    with pytest.raises(StorageError) as info:
        open_storage(url)
    assert "postgresql://vigil:***@127.0.0.1:1/nowhere" in str(info.value)
    assert "secret" not in str(info.value)
    assert time.perf_counter() - started < 10


def _ask_and_hang(url: str, name: str) -> None:
    """A worker that starts a trial (heartbeat running) and then hangs until killed."""
    storage = open_storage(url, heartbeat_s=1, grace_s=2)
    study = optuna.load_study(study_name=name, storage=storage)
    trial = study.ask()
    storage.record_heartbeat(trial._trial_id)
    time.sleep(60)


def _heartbeats(db: Path) -> int:
    """How many trials of the SQLite storage ``db`` have recorded a heartbeat."""
    with sqlite3.connect(db) as conn:
        return conn.execute("SELECT COUNT(*) FROM trial_heartbeats").fetchone()[0]


def test_killed_workers_trial_is_marked_failed_and_the_study_goes_on(tmp_path):
    db = tmp_path / "optuna.db"
    url = f"sqlite:///{db}"
    study = optuna.create_study(
        storage=open_storage(url, 1, 2), study_name="hb", direction="maximize"
    )
    proc = multiprocessing.get_context("spawn").Process(target=_ask_and_hang, args=(url, "hb"))
    proc.start()
    # kill the worker only once its trial has a heartbeat: before that, Optuna cannot tell a
    # dead worker's trial from a live one (the spawned worker imports torch and mlflow first)
    deadline = time.monotonic() + 300
    while not _heartbeats(db) and proc.is_alive() and time.monotonic() < deadline:
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)
    proc.join()
    assert _heartbeats(db) == 1, "the worker never recorded its trial's heartbeat"
    running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert len(running) == 1
    # the heartbeat goes stale after the grace period (2 s): poll until Optuna says so
    study = optuna.load_study(study_name="hb", storage=open_storage(url, 1, 2))
    deadline = time.monotonic() + 60
    while study.get_trials(states=(optuna.trial.TrialState.RUNNING,)):
        assert time.monotonic() < deadline, "the dead worker's trial never went stale"
        time.sleep(0.2)
        with warnings.catch_warnings():  # experimental since Optuna 2.9, still in 5
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            optuna.storages.fail_stale_trials(study)
    study.optimize(lambda t: t.suggest_float("x", 0, 1), n_trials=1)
    states = [t.state for t in study.get_trials()]
    assert states == [optuna.trial.TrialState.FAIL, optuna.trial.TrialState.COMPLETE]


def test_quotas_and_pruning_summary():
    assert quotas(5, 2) == [3, 2] and quotas(1, 3) == [1, 0, 0]
    rows = [
        {"state": "PRUNED", "epochs_run": 1, "duration_s": 2.0},
        {"state": "COMPLETE", "epochs_run": 4, "duration_s": 8.0},
    ]
    summary = pruning_summary(rows, epochs_per_trial=4)
    assert summary["n_pruned"] == 1 and summary["epochs_saved"] == 3
    assert summary["time_saved_s_est"] == pytest.approx(6.0)
    assert summary["fraction_saved_est"] == pytest.approx(6.0 / 16.0)


def test_pruning_runs_with_real_fit(mlflow_store, tmp_path):
    make_images(tmp_path / "data" / "prepared" / "tinysweep")
    params = tiny_params(tmp_path, n_trials=4, epochs_per_trial=2, sampler="grid", pruning=True)
    result = run_sweep(params, tmp_path / "data" / "prepared" / "tinysweep", tmp_path / "reports")
    states = [r["state"] for r in result.rows]
    assert len(states) == 4 and "COMPLETE" in states
    assert all(r["epochs_run"] >= 1 for r in result.rows)
    summary = json.loads((tmp_path / "reports" / "pruning.json").read_text())
    assert summary["n_pruned"] == states.count("PRUNED")
    assert summary["epochs_saved"] == sum(
        2 - r["epochs_run"] for r in result.rows if r["state"] == "PRUNED"
    )


def test_video_sweep_one_trial(mlflow_store, tmp_path):
    from test_sweep_objective import make_video

    make_video(tmp_path / "data" / "prepared" / "tinysweepvid")
    space = tmp_path / "space.yaml"
    space.write_text("convlstm:\n  hidden_channels: {choices: [4, 8]}\n")
    params = parse_params(
        {
            "data": {"datasets": {"tinysweepvid": {"source": "tests", "modality": "video"}}},
            "prepare": {"video": {"size": [16, 16], "channels": 1, "clip_len": 4}},
            "model": {
                "video_family": "convlstm",
                "convlstm": {"encoder_depth": 1, "filters": 4, "hidden_channels": 4},
            },
            "train": {"max_epochs": 1, "batch_size": 4, "accelerator": "cpu"},
            "sweep": {
                "n_trials": 1,
                "epochs_per_trial": 1,
                "space": str(space),
                "pruning": False,
                "storage": f"sqlite:///{tmp_path / 'optuna.db'}",
                "max_normal_error": 1.0,
            },
        }
    )
    best = run_stage(params, "tinysweepvid", root=tmp_path)
    assert best["model"]["hidden_channels"] in (4, 8) and best["trial"] == 0
    row = json.loads((tmp_path / "reports" / "tinysweepvid" / "sweep.json").read_text())[0]
    assert row["encoding_size"] == best["model"]["hidden_channels"] * 8 * 8  # state at 16/2


def test_cli_registers_the_sweep_subcommand():
    import argparse

    from vigil.sweep.cli import register, run

    parser = argparse.ArgumentParser(prog="vigil")
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["sweep", "--dataset", "capsules", "--workers", "2"])
    assert args.handler is run and args.workers == 2 and args.dataset == "capsules"


def test_same_params_give_the_same_trials_and_choice_in_any_storage(mlflow_store, tmp_path, caplog):
    """Two fresh storages (two clones): `n_trials=4` straight away in one; `n_trials=2`, then
    `n_trials=4` (resumed: 2 more) in the other. Same trials, same choice; and `n_trials=2` on
    the 4-trial study reuses its first 2 and chooses among them only."""
    import logging

    make_images(tmp_path / "data" / "prepared" / "tinysweep")
    data = tmp_path / "data" / "prepared" / "tinysweep"

    def sweep(store: str, n_trials: int):
        params = tiny_params(tmp_path, n_trials=n_trials, sampler="tpe",
                             storage=f"sqlite:///{tmp_path / store}")
        return run_sweep(params, data, tmp_path / "reports" / store)

    caplog.set_level(logging.INFO, logger="vigil.sweep")
    straight = sweep("a.db", 4)
    first = sweep("b.db", 2)
    resumed = sweep("b.db", 4)
    assert "2 finished, running 2 more" in caplog.text
    drawn = [[r["params"] for r in result.rows] for result in (straight, resumed)]
    assert drawn[0] == drawn[1] and len(drawn[0]) == 4
    assert resumed.model == straight.model and resumed.trial == straight.trial
    assert straight.study == resumed.study  # n_trials is not part of the study's identity

    caplog.clear()
    again = sweep("a.db", 2)  # the first 2 of the 4 trials it holds: the choice of a 2-trial run
    assert "reusing its first 2 trials" in caplog.text
    assert again.model == first.model and again.trial == first.trial
    assert [r["trial"] for r in again.rows] == [0, 1]
    storage = open_storage(f"sqlite:///{tmp_path / 'a.db'}")
    study = optuna.load_study(study_name=straight.study, storage=storage)
    assert study.metric_names == ["anomaly_to_total_error_ratio"] and len(study.trials) == 4
