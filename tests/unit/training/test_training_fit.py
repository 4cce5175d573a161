"""fit(): real 1-epoch trainings on tiny prepared data, logged to a real MLflow store."""

from __future__ import annotations

import json
import time

import mlflow
import pytest
import pytorch_lightning as pl
from conftest import tiny_params

from vigil.models.blocks import ImageTooSmallError
from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.spec import load_trained
from vigil.models.lightning import NonFiniteLossError
from vigil.tracking import TrackingError
from vigil.training import fit


class RecordValLoss(pl.Callback):
    """Stands in for the sweep's pruning callback: reads val_loss after each validation."""

    def __init__(self) -> None:
        self.seen: list[float] = []

    def on_validation_end(self, trainer, module) -> None:
        self.seen.append(float(trainer.callback_metrics["val_loss"]))


def test_one_epoch_image_training_logs_a_complete_run(mlflow_store, image_dataset, tmp_path):
    recorder = RecordValLoss()
    result = fit(tiny_params(), image_dataset, tmp_path / "models" / "tiny", callbacks=[recorder])
    assert result.epochs == 1 and result.objective > 0
    assert recorder.seen == [pytest.approx(result.objective)]
    model, spec = load_trained(tmp_path / "models" / "tiny")
    assert spec == result.spec and spec["modality"] == "image" and spec["family"] == "conv_ae"
    assert spec["prep"]["size"] == [32, 32]  # the prepared manifest's prep, not params'
    assert result.weights == tmp_path / "models" / "tiny" / "weights.safetensors"

    client = mlflow.MlflowClient()
    run = client.get_run(result.run_id)
    assert run.info.status == "FINISHED"
    assert client.get_experiment(run.info.experiment_id).name == "vigil-tiny"
    params = run.data.params
    assert params["model.family"] == "conv_ae" and params["model.conv_ae.depth"] == "2"
    assert params["train.lr"] == "0.002"
    assert params["data.dataset"] == "tiny" and params["prepare.image.normalize"] == "unit"
    metrics = run.data.metrics
    for name in ("train_loss", "val_loss", "n_params", "encoding_size", "wall_time_s",
                 "train_images_per_s"):
        assert metrics[name] > 0, name
    assert metrics["encoding_size"] == 4 * 8 * 8
    assert metrics["best_val_loss"] == pytest.approx(result.objective)
    tags = run.data.tags
    assert tags["vigil.dataset"] == "tiny" and tags["vigil.modality"] == "image"
    assert len(tags["vigil.data_hash"]) == 64 and tags["vigil.git_commit"]
    (dataset_input,) = run.inputs.dataset_inputs
    assert tags["vigil.data_hash"].startswith(dataset_input.dataset.digest)
    images = [a.path for a in client.list_artifacts(result.run_id, "images")]
    assert images == ["images/epoch_001.png"]


def test_video_training_with_model_override_nested_under_a_parent(
    mlflow_store, video_dataset, tmp_path
):
    parent = mlflow.MlflowClient().create_run(
        mlflow.MlflowClient().create_experiment("vigil-tinyvid")
    ).info.run_id
    override = {"encoder_depth": 1, "filters": 4, "hidden_channels": 4, "error_head": True}
    result = fit(tiny_params(), video_dataset, tmp_path / "trial0", model_cfg=override,
                 parent_run_id=parent, run_name="trial-0", log_model_images=False)
    run = mlflow.MlflowClient().get_run(result.run_id)
    assert run.data.tags["mlflow.parentRunId"] == parent
    assert run.info.run_name == "trial-0"
    assert run.data.params["model.family"] == "convlstm"
    assert run.data.params["model.convlstm.encoder_depth"] == "1"
    assert run.data.metrics["encoding_size"] == 4 * 16 * 16  # ConvLSTM state at 32/2
    assert not mlflow.MlflowClient().list_artifacts(result.run_id, "images")
    model, spec = load_trained(tmp_path / "trial0")
    assert spec["model"]["error_head"] is True and model.error_head is not None


class Interrupt(pl.Callback):
    """Kills training at the start of epoch ``at`` (0-based), after the earlier epochs'
    checkpoints were written: an interruption, as a crash or a kill would leave it."""

    def __init__(self, at: int) -> None:
        self.at = at

    def on_train_epoch_start(self, trainer, module) -> None:
        if trainer.current_epoch == self.at:
            raise InterruptedError(f"interrupted at epoch {self.at}")


def _interrupted_fit(dataset, out, max_epochs: int, at: int) -> str:
    """Run fit until the interruption; returns the id of the (FAILED) run."""
    with pytest.raises(InterruptedError):
        fit(tiny_params(), dataset, out, max_epochs=max_epochs, callbacks=[Interrupt(at)],
            log_model_images=False)
    (run,) = mlflow.search_runs(experiment_names=["vigil-tiny"], output_format="list",
                                filter_string="attributes.status = 'FAILED'")
    return run.info.run_id


def _state(out) -> dict:
    return json.loads((out / "checkpoints" / "resume.json").read_text())


def test_resume_continues_an_interrupted_run(mlflow_store, image_dataset, tmp_path):
    out = tmp_path / "out"
    interrupted = _interrupted_fit(image_dataset, out, max_epochs=2, at=1)
    assert _state(out)["completed"] is False
    second = fit(tiny_params(), image_dataset, out, max_epochs=2, log_model_images=False)
    assert second.epochs == 2
    state = _state(out)
    assert state["run_id"] == second.run_id and state["completed"] is True
    client = mlflow.MlflowClient()
    assert client.get_run(second.run_id).data.tags["vigil.resumed_from"] == interrupted
    history = client.get_metric_history(second.run_id, "train_loss")
    assert [m.step for m in history] == [1]  # epoch 0 was not trained again
    # other settings: starts over instead of resuming an incompatible checkpoint
    third = fit(tiny_params(lr=0.001), image_dataset, out, log_model_images=False)
    assert third.epochs == 1
    assert "vigil.resumed_from" not in client.get_run(third.run_id).data.tags


def test_a_completed_run_is_never_resumed(mlflow_store, image_dataset, tmp_path):
    """2 epochs, then max_epochs=1: trains 1 fresh epoch (resuming raised or over-trained)."""
    out = tmp_path / "out"
    fit(tiny_params(), image_dataset, out, max_epochs=2, log_model_images=False)
    assert _state(out)["completed"] is True
    again = fit(tiny_params(), image_dataset, out, max_epochs=1, log_model_images=False)
    assert again.epochs == 1
    client = mlflow.MlflowClient()
    assert "vigil.resumed_from" not in client.get_run(again.run_id).data.tags
    assert [m.step for m in client.get_metric_history(again.run_id, "train_loss")] == [0]


def test_a_checkpoint_beyond_max_epochs_is_not_resumed(
    mlflow_store, image_dataset, tmp_path, caplog
):
    out = tmp_path / "out"
    _interrupted_fit(image_dataset, out, max_epochs=3, at=2)  # 2 epochs in last.ckpt
    with caplog.at_level("INFO", logger="vigil.training.fit"):
        again = fit(tiny_params(), image_dataset, out, max_epochs=1, log_model_images=False)
    assert "beyond max_epochs=1" in caplog.text and "starting fresh" in caplog.text
    assert again.epochs == 1
    tags = mlflow.MlflowClient().get_run(again.run_id).data.tags
    assert "vigil.resumed_from" not in tags


def test_diverging_loss_fails_the_run_and_writes_no_weights(mlflow_store, image_dataset, tmp_path):
    with pytest.raises(NonFiniteLossError, match="loss is (nan|inf)"):
        fit(tiny_params(lr=1e30, max_epochs=3), image_dataset, tmp_path / "out",
            log_model_images=False)
    assert not (tmp_path / "out" / "weights.safetensors").exists()
    (run,) = mlflow.search_runs(experiment_names=["vigil-tiny"], output_format="list")
    assert run.info.status == "FAILED"
    assert "NonFiniteLossError" in run.data.tags["vigil.error"]


def test_image_too_small_for_depth_names_both_numbers(mlflow_store, image_dataset, tmp_path):
    with pytest.raises(ImageTooSmallError, match="image 32x32 is too small for depth 6: needs at least 64x64"):
        fit(tiny_params(), image_dataset, tmp_path / "out",
            model_cfg=ConvAEConfig(depth=6, filters=2, latent_channels=2))
    assert not mlflow.search_runs(search_all_experiments=True, output_format="list")


def test_unreachable_tracking_server_fails_fast_with_the_url(
    image_dataset, tmp_path, monkeypatch
):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    started = time.perf_counter()
    with pytest.raises(TrackingError, match=r"http://127\.0\.0\.1:9"):
        fit(tiny_params(), image_dataset, tmp_path / "out")
    assert time.perf_counter() - started < 30
    assert not (tmp_path / "out").exists()
