"""convlstm family (FramePredictor and ConvLSTMCell): clip shapes, streaming equals clip mode, state carry."""

from __future__ import annotations

import pytest
import torch

from vigil.models.blocks import ImageTooSmallError
from vigil.models.convlstm.config import ConvLSTMConfig
from vigil.models.convlstm.network import ConvLSTMCell, FramePredictor
from vigil.models.outputs import AnomalyOutput

CFG = ConvLSTMConfig(encoder_depth=2, filters=8, hidden_channels=6, error_head=True)


def test_convlstm_cell_shapes_and_state_changes():
    cell = ConvLSTMCell(4, 5)
    x = torch.rand(2, 4, 8, 8)
    state = cell.init_state(2, 8, 8, x)
    hidden, c = cell(x, state)
    assert hidden.shape == c.shape == (2, 5, 8, 8)
    assert not torch.equal(hidden, state[0])


def test_clip_forward_predicts_frames_1_to_T_minus_1():
    model = FramePredictor(1, CFG)
    clip = torch.rand(2, 6, 1, 32, 32)
    out = model(clip)
    assert out.reconstruction.shape == (2, 5, 1, 32, 32)
    assert out.error_map.shape == (2, 5, 1, 32, 32)
    assert out.score.shape == (2, 5)
    assert out.predicted_error.shape == (2, 5, 1, 32, 32)
    expected = (out.reconstruction - clip[:, 1:]).pow(2).mean(dim=2, keepdim=True)
    torch.testing.assert_close(out.error_map, expected)
    torch.testing.assert_close(out.score, expected.mean(dim=(2, 3, 4)))


@torch.no_grad()
def test_streaming_with_carried_state_equals_clip_mode():
    torch.manual_seed(0)
    model = FramePredictor(3, CFG).eval()
    clip = torch.rand(2, 7, 3, 36, 28)  # odd sizes: padding must agree in both modes
    out = model(clip)
    state = model.init_state(2, 36, 28)
    preds = []
    for t in range(6):
        pred, state = model.step(clip[:, t], state)
        preds.append(pred)
    torch.testing.assert_close(torch.stack(preds, dim=1), out.reconstruction, atol=1e-5, rtol=1e-4)


@torch.no_grad()
def test_stream_returns_the_typed_output_of_each_frame_equal_to_clip_mode():
    torch.manual_seed(0)
    model = FramePredictor(3, CFG).eval()
    clip = torch.rand(2, 7, 3, 36, 28)
    out = model(clip)
    first, state = model.stream(clip[:, 0])
    assert first is None  # nothing to predict frame 0 from, as in clip mode
    for t in range(1, 7):
        frame_out, state = model.stream(clip[:, t], state)
        assert isinstance(frame_out, AnomalyOutput)
        assert frame_out.reconstruction.shape == (2, 3, 36, 28)
        assert frame_out.error_map.shape == frame_out.predicted_error.shape == (2, 1, 36, 28)
        assert frame_out.score.shape == (2,)
        for name in AnomalyOutput._fields:
            expected = getattr(out, name)
            if expected is None:  # a field this family does not give (heat_map)
                assert getattr(frame_out, name) is None, name
                continue
            torch.testing.assert_close(
                getattr(frame_out, name), expected[:, t - 1], atol=1e-5, rtol=1e-4
            )


@torch.no_grad()
def test_stream_and_step_share_the_state():
    torch.manual_seed(0)
    model = FramePredictor(1, CFG).eval()
    frames = torch.rand(3, 1, 1, 16, 16)
    _, state = model.stream(frames[0])
    _, state_step = model.step(frames[0])
    prediction, _ = model.step(frames[1], state_step)
    _, state = model.stream(frames[1], state)
    out, _ = model.stream(frames[2], state)
    torch.testing.assert_close(out.reconstruction, prediction)


@torch.no_grad()
def test_state_carries_history():
    """The same frame predicts differently after different histories: the state is used."""
    torch.manual_seed(0)
    model = FramePredictor(1, CFG).eval()
    a, b = torch.zeros(1, 1, 16, 16), torch.ones(1, 1, 16, 16)
    _, state_a = model.step(a)
    _, state_b = model.step(b)
    pred_after_a, _ = model.step(a, state_a)
    pred_after_b, _ = model.step(a, state_b)
    assert not torch.allclose(pred_after_a, pred_after_b)


def test_bad_inputs():
    model = FramePredictor(1, CFG)
    with pytest.raises(ValueError, match="clip"):
        model(torch.rand(2, 1, 1, 16, 16))
    with pytest.raises(ImageTooSmallError, match="image 2x2 is too small for depth 2"):
        model.step(torch.rand(1, 1, 2, 2))
