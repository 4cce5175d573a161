"""future_frame family (FutureFramePredictor): clip shapes, stream == clip mode with a ring buffer
of k frames, encoding shape, the training loss terms, and the fusion scales set on normal clips."""

from __future__ import annotations

import pytest
import torch

from tests.unit.training.conftest import make_video_dataset
from vigil.data.prepared import PreparedDataset
from vigil.data.torch_datasets import ClipDataset
from vigil.models.blocks import ImageTooSmallError
from vigil.models.future_frame.config import FRAME_MAPS, FutureFrameConfig
from vigil.models.future_frame.network import FutureFramePredictor
from vigil.models.future_frame.training import gradient_loss, set_fusion_scales
from vigil.models.outputs import AnomalyOutput
from vigil.models.registry import get_family

CFG = FutureFrameConfig(context=3, depth=2, filters=4, bottleneck_channels=8, restored_context=True)


def test_family_is_registered_as_video_with_searchable_config_fields():
    family = get_family("future_frame")
    assert family.modality == "video"
    assert set(family.searchable) <= set(FutureFrameConfig.model_fields)
    assert isinstance(family.build(1, CFG), FutureFramePredictor)


def test_encoding_shape_is_bottleneck_over_padded_size():
    model = FutureFramePredictor(1, CFG)
    assert model.encoding_shape(32, 32) == (8, 8, 8)
    assert model.encoding_shape(30, 36) == (8, 8, 9)  # padded to a multiple of 2**depth
    with pytest.raises(ImageTooSmallError, match="too small for depth 2"):
        model.encoding_shape(2, 2)


def test_clip_forward_scores_frames_k_to_T_minus_1():
    model = FutureFramePredictor(1, CFG)
    clip = torch.rand(2, 7, 1, 32, 32)
    out = model(clip)
    assert out.reconstruction.shape == (2, 4, 1, 32, 32)  # frames 3..6 predicted
    assert out.error_map.shape == (2, 4, 1, 32, 32)
    assert out.score.shape == (2, 4)
    torch.testing.assert_close(out.score, out.error_map.mean(dim=(2, 3, 4)))
    with pytest.raises(ValueError, match="clip"):
        model(torch.rand(2, 3, 1, 32, 32))  # T must exceed k


@torch.no_grad()
def test_stream_ring_buffer_gives_none_for_the_first_k_frames_then_equals_clip_mode():
    torch.manual_seed(0)
    model = FutureFramePredictor(3, CFG).eval()
    model.pred_scale.fill_(0.5)
    model.app_scale.fill_(2.0)
    clip = torch.rand(2, 8, 3, 36, 28)  # odd sizes: padding must agree in both modes
    out = model(clip)
    state = None
    for t in range(8):
        frame_out, state = model.stream(clip[:, t], state)
        assert state.shape[1] == min(t + 1, CFG.context)  # the ring holds at most k frames
        torch.testing.assert_close(state[:, -1, :3], clip[:, t])  # then its reconstruction
        torch.testing.assert_close(state[:, -1, 3:], model.appearance(clip[:, t]))
        if t < CFG.context:
            assert frame_out is None
            continue
        assert isinstance(frame_out, AnomalyOutput)
        assert frame_out.error_map.shape == (2, 1, 36, 28)
        for name in ("reconstruction", "error_map", "score"):
            torch.testing.assert_close(
                getattr(frame_out, name), getattr(out, name)[:, t - CFG.context],
                atol=1e-5, rtol=1e-4,
            )


@torch.no_grad()
def test_fused_map_is_each_error_over_its_scale():
    torch.manual_seed(0)
    model = FutureFramePredictor(1, CFG).eval()
    clip = torch.rand(1, 4, 1, 16, 16)
    history, frame = clip[:, :3], clip[:, 3]
    restored = model.predict(model.appearance(history[0])[None])
    pred_err, app_err = model.error_maps(
        frame, model.predict(history), model.appearance(frame), restored
    )
    plain_err = (model.predict(history) - frame).pow(2).mean(dim=1, keepdim=True)
    restored_err = (restored - frame).pow(2).mean(dim=1, keepdim=True)
    torch.testing.assert_close(pred_err, torch.minimum(plain_err, restored_err))
    model.pred_scale.fill_(0.25)
    model.app_scale.fill_(4.0)
    out = model(clip)
    torch.testing.assert_close(out.error_map[:, 0], pred_err / 0.25 + app_err / 4.0)
    plain = FutureFramePredictor(
        1, CFG.model_copy(update={"appearance": False, "restored_context": False})
    ).eval()
    assert plain.appearance_ae is None and plain.appearance(frame) is None
    pred_only, none = plain.error_maps(frame, plain.predict(history), None)
    assert none is None
    torch.testing.assert_close(plain(clip).error_map[:, 0], pred_only)


@torch.no_grad()
def test_frame_map_reads_one_term_or_both_and_a_prediction_stream_skips_the_autoencoder():
    torch.manual_seed(0)
    cfg = CFG.model_copy(update={"restored_context": False})
    fused = FutureFramePredictor(1, cfg).eval()
    fused.pred_scale.fill_(0.25)
    fused.app_scale.fill_(4.0)
    clip = torch.rand(1, 5, 1, 16, 16)
    _, pred_err, app_err = fused.clip_terms(clip)
    assert get_family("future_frame").map_choices == FRAME_MAPS
    assert FutureFrameConfig().frame_map == "auto" and fused.map_mode == FRAME_MAPS[0]
    expected = {"fused": pred_err / 0.25 + app_err / 4.0, "prediction": pred_err / 0.25,
                "appearance": app_err / 4.0}
    calls = []
    for frame_map, want in expected.items():
        model = FutureFramePredictor(1, cfg.model_copy(update={"frame_map": frame_map})).eval()
        model.load_state_dict(fused.state_dict())
        torch.testing.assert_close(model(clip).error_map[0], want)
        model.appearance_ae.register_forward_hook(lambda *_, name=frame_map: calls.append(name))
        state = None
        for t in range(clip.shape[1]):
            out, state = model.stream(clip[:, t], state)
        torch.testing.assert_close(out.error_map, want[-1:])  # the last frame, streamed
    assert "prediction" not in calls and {"fused", "appearance"} <= set(calls)
    with pytest.raises(ValueError, match="frame_map: appearance needs appearance: true"):
        FutureFrameConfig(appearance=False, frame_map="appearance")


def test_gradient_loss_is_zero_for_equal_edges_and_positive_otherwise():
    frame = torch.rand(2, 1, 8, 8)
    assert float(gradient_loss(frame, frame + 0.3)) == pytest.approx(0.0, abs=1e-6)
    assert float(gradient_loss(torch.zeros_like(frame), frame)) > 0


@torch.no_grad()
def test_set_fusion_scales_are_the_mean_errors_on_normal_clips(tmp_path):
    data = PreparedDataset.load(make_video_dataset(tmp_path / "vid", size=16, n_frames=8))
    clips = ClipDataset(data, "val", data.prep, 5, 5)
    torch.manual_seed(0)
    model = FutureFramePredictor(1, CFG).eval()
    set_fusion_scales(model, clips, batch_size=1)
    pred, app = [], []
    for clip in clips:
        _, p, a = model.clip_terms(clip[None])  # the terms the map fuses (restored context)
        pred.append(p.flatten())
        app.append(a.flatten())
    assert float(model.pred_scale) == pytest.approx(float(torch.cat(pred).mean()), rel=1e-4)
    assert float(model.app_scale) == pytest.approx(float(torch.cat(app).mean()), rel=1e-4)
    # on those normal clips each term now weighs 1 on average: the fused map means 2
    fused = torch.cat([model(clip[None]).error_map.flatten() for clip in clips])
    assert float(fused.mean()) == pytest.approx(2.0, rel=1e-3)


def test_restored_context_needs_the_appearance_autoencoder():
    with pytest.raises(ValueError, match="restored_context needs appearance"):
        FutureFrameConfig(appearance=False, restored_context=True)


@torch.no_grad()
def test_a_frame_after_an_anomaly_is_not_blamed_for_its_context():
    """The plain prediction repeats a blob its context showed; the restored one (context
    through the appearance autoencoder, which paints it out) does not, so the minimum stays low."""
    torch.manual_seed(0)
    model = FutureFramePredictor(1, CFG).eval()
    model.predictor = _CopyLast()  # a predictor that copies the last context frame
    model.appearance_ae = _Constant(0.2)  # "normal" appearance: a flat grey frame
    normal = torch.full((1, 1, 16, 16), 0.2)
    blob = normal.clone()
    blob[..., 4:10, 4:10] = 1.0
    clip = torch.stack([blob, blob, blob, normal], dim=1)  # the blob ends at the last frame
    pred_err = model.clip_terms(clip)[1]
    assert float(pred_err.max()) < 1e-6
    plain = FutureFramePredictor(1, CFG.model_copy(update={"restored_context": False})).eval()
    plain.predictor, plain.appearance_ae = _CopyLast(), _Constant(0.2)
    assert float(plain.clip_terms(clip)[1].max()) > 0.5


class _CopyLast(torch.nn.Module):
    def forward(self, stacked: torch.Tensor) -> torch.Tensor:
        return stacked[:, -1:]


class _Constant(torch.nn.Module):
    def __init__(self, value: float) -> None:
        super().__init__()
        self.value = value

    def forward(self, x: torch.Tensor) -> AnomalyOutput:
        flat = torch.full_like(x, self.value)
        return AnomalyOutput(flat, flat, flat.flatten(1).mean(1), None)
