"""Batch-norm folding for inference: the same maps, no norm layers left, the trained network
untouched."""

from __future__ import annotations

import torch
from torch import nn

from vigil.config import ImagePrep
from vigil.models.draem.config import DraemConfig
from vigil.models.folding import fold_batch_norms
from vigil.models.spec import build_model, model_spec


def _trained_draem(seg_decoder: str) -> nn.Module:
    cfg = DraemConfig(depth=2, filters=4, latent_channels=4, seg_filters=4, seg_depth=2,
                      seg_decoder=seg_decoder, anomaly_map="fused")
    network = build_model(model_spec("draem", 3, (32, 32), cfg,
                                      prep=ImagePrep(size=(32, 32), channels=3)))
    torch.manual_seed(0)
    network.train()
    with torch.no_grad():  # running statistics away from their initial 0 / 1
        for _ in range(3):
            network.segment(torch.rand(4, 3, 32, 32) * 2)
    for module in network.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.weight.data.uniform_(0.5, 1.5)
            module.bias.data.uniform_(-0.2, 0.2)
    return network.eval()


def test_folded_network_scores_the_same_without_norm_layers():
    for decoder in ("concat", "add"):
        network = _trained_draem(decoder)
        keys = set(network.state_dict())
        folded = fold_batch_norms(network)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in folded.modules())
        assert set(network.state_dict()) == keys  # the trained network is not changed
        x = torch.rand(2, 3, 32, 32).contiguous(memory_format=torch.channels_last)
        with torch.inference_mode():
            expected, got = network(x), folded(x)
        assert torch.allclose(got.error_map, expected.error_map, rtol=1e-4, atol=1e-5), decoder
        assert torch.allclose(got.reconstruction, expected.reconstruction, atol=1e-6)


def test_a_network_without_batch_norm_is_copied_unchanged():
    network = nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU()).eval()
    folded = fold_batch_norms(network)
    assert folded is not network
    assert all(torch.equal(a, b) for a, b in zip(network.state_dict().values(),
                                                  folded.state_dict().values(), strict=True))
