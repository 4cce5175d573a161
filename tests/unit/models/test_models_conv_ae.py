"""conv_ae family (ConvAutoencoder): shapes, encoding sizes set by depth/filters/latent, options, size errors."""

from __future__ import annotations

import pytest
import torch

from vigil.models.blocks import ImageTooSmallError, block_filters
from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.conv_ae.network import ConvAutoencoder
from vigil.models.outputs import AnomalyOutput


def test_output_shapes_and_score_is_mean_of_map():
    model = ConvAutoencoder(3, ConvAEConfig(depth=2, filters=8, latent_channels=4))
    x = torch.rand(2, 3, 32, 32)
    out = model(x)
    assert isinstance(out, AnomalyOutput)
    assert out.reconstruction.shape == (2, 3, 32, 32)
    assert out.error_map.shape == (2, 1, 32, 32)
    assert out.score.shape == (2,)
    assert out.predicted_error is None
    expected_map = (out.reconstruction - x).pow(2).mean(dim=1, keepdim=True)
    torch.testing.assert_close(out.error_map, expected_map)
    torch.testing.assert_close(out.score, expected_map.mean(dim=(1, 2, 3)))
    # sigmoid output for unit-range inputs
    assert out.reconstruction.min() >= 0 and out.reconstruction.max() <= 1


@pytest.mark.parametrize(
    ("depth", "latent", "size", "expected"),
    [(3, 16, 64, (16, 8, 8)), (2, 20, 48, (20, 12, 12)), (4, 8, 64, (8, 4, 4)), (3, 4, 60, (4, 8, 8))],
)
def test_encoding_shape_follows_depth_and_latent_channels(depth, latent, size, expected):
    model = ConvAutoencoder(1, ConvAEConfig(depth=depth, filters=4, latent_channels=latent))
    assert model.encoding_shape(size, size) == expected
    z, _ = model.encode(torch.rand(1, 1, *(2**depth * s for s in expected[1:])))
    assert tuple(z.shape[1:]) == expected


def test_filters_double_per_block_and_cap_at_256():
    assert block_filters(32, 3) == [32, 64, 128]
    assert block_filters(100, 4) == [100, 200, 256, 256]
    model = ConvAutoencoder(3, ConvAEConfig(depth=4, filters=100, latent_channels=2))
    assert [block[0].out_channels for block in model.downs] == [100, 200, 256, 256]


def test_odd_sizes_are_padded_and_cropped_back():
    model = ConvAutoencoder(3, ConvAEConfig(depth=3, filters=4, latent_channels=2))
    out = model(torch.rand(1, 3, 30, 45))
    assert out.reconstruction.shape == (1, 3, 30, 45)
    assert out.error_map.shape == (1, 1, 30, 45)


def test_options_batch_norm_skip_error_head_and_identity_output():
    cfg = ConvAEConfig(depth=3, filters=4, latent_channels=2, batch_norm=True, skip=True,
                           error_head=True)
    model = ConvAutoencoder(3, cfg, output="identity")
    assert any(isinstance(m, torch.nn.BatchNorm2d) for m in model.modules())
    out = model(torch.randn(2, 3, 32, 32) * 3)
    assert out.predicted_error.shape == (2, 1, 32, 32)
    assert (out.predicted_error >= 0).all()  # softplus: squared errors are non-negative
    assert out.reconstruction.min() < 0 or out.reconstruction.max() > 1  # not squashed


def test_skip_changes_the_reconstruction_path():
    torch.manual_seed(0)
    plain = ConvAutoencoder(1, ConvAEConfig(depth=2, filters=4, latent_channels=2))
    torch.manual_seed(0)
    skip = ConvAutoencoder(1, ConvAEConfig(depth=2, filters=4, latent_channels=2, skip=True))
    x = torch.rand(1, 1, 16, 16)
    assert not torch.allclose(plain(x).reconstruction, skip(x).reconstruction)


def test_too_small_image_names_both_numbers():
    model = ConvAutoencoder(3, ConvAEConfig(depth=5, filters=4, latent_channels=2))
    with pytest.raises(ImageTooSmallError, match=r"image 16x16 is too small for depth 5: needs at least 32x32"):
        model(torch.rand(1, 3, 16, 16))
    with pytest.raises(ImageTooSmallError, match="16x16"):
        model.encoding_shape(16, 16)
