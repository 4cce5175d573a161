"""AnomalyModule: one shared step for images and clips; mse / ssim / mse+ssim; error head."""

from __future__ import annotations

import pytest
import torch

from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.conv_ae.network import ConvAutoencoder
from vigil.models.convlstm.config import ConvLSTMConfig
from vigil.models.convlstm.network import FramePredictor
from vigil.models.lightning import AnomalyModule, NonFiniteLossError, reconstruction_loss


def test_losses_are_zero_for_a_perfect_reconstruction_and_positive_otherwise():
    model = ConvAutoencoder(1, ConvAEConfig(depth=2, filters=4))
    x = torch.rand(2, 1, 32, 32)
    out = model(x)
    perfect = out._replace(reconstruction=x, error_map=torch.zeros_like(out.error_map))
    for name in ("mse", "ssim", "mse+ssim"):
        assert reconstruction_loss(perfect, x, name, 1.0).item() == pytest.approx(0, abs=1e-5)
        assert reconstruction_loss(out, x, name, 1.0).item() > 0
    mse_ssim = reconstruction_loss(out, x, "mse+ssim", None)
    assert mse_ssim > reconstruction_loss(out, x, "mse", None)


@pytest.mark.parametrize("loss", ["mse", "ssim", "mse+ssim"])
def test_shared_step_on_clips_trains_model_and_error_head(loss):
    model = FramePredictor(1, ConvLSTMConfig(encoder_depth=1, filters=4, hidden_channels=4,
                                               error_head=True))
    module = AnomalyModule(model, loss=loss)
    clip = torch.rand(2, 4, 1, 16, 16)
    value = module.shared_step(clip, "train")
    value.backward()
    assert value.ndim == 0 and torch.isfinite(value)
    assert model.error_head.conv.weight.grad is not None
    assert model.encoder[0][0].weight.grad.abs().sum() > 0


def test_non_finite_loss_raises_a_clear_error():
    model = ConvAutoencoder(1, ConvAEConfig(depth=1, filters=2), output="identity")
    module = AnomalyModule(model)
    with pytest.raises(NonFiniteLossError, match="train loss is nan"):
        module.shared_step(torch.full((1, 1, 8, 8), float("nan")), "train")
