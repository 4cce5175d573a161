"""The reconstruction error maps (l2, ssim, gradient) and the conv autoencoder's choice of one."""

from __future__ import annotations

import pytest
import torch

from vigil.models.conv_ae.config import ConvAEConfig
from vigil.models.conv_ae.network import ConvAutoencoder
from vigil.models.draem.network import mean_filter
from vigil.models.error_maps import error_map, ssim_map


@pytest.mark.parametrize("kind", ["l2", "ssim", "gradient"])
def test_maps_are_zero_on_a_perfect_copy_and_light_up_only_near_the_defect(kind):
    torch.manual_seed(0)
    image = torch.rand(2, 3, 48, 40)
    assert float(error_map(image, image.clone(), kind).max()) < 1e-4
    damaged = image.clone()
    damaged[:, :, 20:28, 16:24] = 0.5  # a flat patch where the texture was
    emap = error_map(image, damaged, kind)
    assert emap.shape == (2, 1, 48, 40) and float(emap.min()) >= 0
    inside = emap[:, :, 20:28, 16:24].mean()
    assert float(inside) > 0.05
    assert float(emap[:, :, :12, :].max()) < 1e-4  # far from the patch: nothing (11 px SSIM window)


def test_ssim_ignores_a_uniform_brightness_offset_more_than_l2():
    torch.manual_seed(0)
    image = torch.rand(1, 1, 32, 32) * 0.5
    brighter = image + 0.2
    ratio_ssim = error_map(image, brighter, "ssim").mean() / error_map(image, image * 0, "ssim").mean()
    ratio_l2 = error_map(image, brighter, "l2").mean() / error_map(image, image * 0, "l2").mean()
    assert float(ratio_ssim) < float(ratio_l2)


def test_unknown_kind_is_named():
    with pytest.raises(ValueError, match="'sobel'"):
        error_map(torch.zeros(1, 1, 8, 8), torch.zeros(1, 1, 8, 8), "sobel")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["ssim", "gradient"])
def test_conv_ae_uses_the_configured_map_and_its_mean_as_score(kind):
    net = ConvAutoencoder(1, ConvAEConfig(depth=2, filters=4, latent_channels=4, error_map=kind)).eval()
    x = torch.rand(2, 1, 32, 32)
    with torch.no_grad():
        out = net(x)
    assert torch.allclose(out.error_map, error_map(x, out.reconstruction, kind))
    assert torch.allclose(out.score, out.error_map.mean(dim=(1, 2, 3)))


@pytest.mark.parametrize("data_range", [1.0, 0.37])
def test_ssim_map_computes_what_torchmetrics_computes(data_range):
    """The separable SSIM (speed) must equal the library's: full map and batch mean."""
    from torchmetrics.functional.image import structural_similarity_index_measure

    torch.manual_seed(0)
    target = torch.rand(2, 3, 40, 52) * data_range
    prediction = (target + 0.1 * data_range * torch.randn_like(target)).clamp(0, data_range)
    mean, full = structural_similarity_index_measure(
        prediction, target, data_range=data_range, return_full_image=True
    )
    ours = ssim_map(prediction, target, data_range)
    assert ours.shape == target.shape
    assert torch.allclose(ours, full, atol=1e-5)
    assert torch.allclose(ours.mean(), mean, atol=1e-6)


@pytest.mark.parametrize(("shape", "kernel"), [((1, 1, 64, 64), 11), ((2, 1, 37, 50), 9), ((1, 1, 20, 30), 1)])
def test_mean_filter_equals_average_pooling_over_the_pixels_inside(shape, kernel):
    torch.manual_seed(0)
    maps = torch.rand(*shape)
    expected = maps if kernel == 1 else torch.nn.functional.avg_pool2d(
        maps, kernel, stride=1, padding=kernel // 2, count_include_pad=False
    )
    out = mean_filter(maps, kernel)
    assert out.dtype == maps.dtype and torch.allclose(out, expected, atol=1e-6)
