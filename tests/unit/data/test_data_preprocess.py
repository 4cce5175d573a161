"""Preprocessing: decoding errors, color order, ROI, resize, equalization, alignment, tensors."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from vigil.config import ImagePrep
from vigil.data.preprocess import (
    ImageDecodeError,
    PreprocessError,
    decode_image,
    decode_mask,
    equalize,
    preprocess_frame,
    preprocess_with_mask,
    to_color,
    to_tensor,
)


def _png(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".png", image)
    assert ok
    return buf.tobytes()


def _jpg(image: np.ndarray) -> bytes:
    ok, buf = cv2.imencode(".jpg", image)
    assert ok
    return buf.tobytes()


def _texture(h: int = 48, w: int = 64, seed: int = 0) -> np.ndarray:
    """Smooth random BGR texture (H, W, 3) uint8 with enough structure for registration."""
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 256, (h // 4, w // 4, 3), dtype=np.uint8)
    return cv2.resize(noise, (w, h), interpolation=cv2.INTER_CUBIC)


def test_decode_png_bytes_and_path_roundtrip(tmp_path):
    image = _texture()
    data = _png(image)
    assert np.array_equal(decode_image(data, "a.png"), image)
    path = tmp_path / "a.png"
    path.write_bytes(data)
    assert np.array_equal(decode_image(path), image)


@pytest.mark.parametrize(
    ("data", "needle"),
    [
        (b"", "empty file"),
        (b"this is not an image at all", "not a decodable image"),
        (_jpg(_texture())[:-40], "truncated JPEG"),
        (_png(_texture())[:-30], "truncated PNG"),
    ],
    ids=["empty", "text", "truncated-jpeg", "truncated-png"],
)
def test_decode_rejects_bad_bytes_naming_the_file(data, needle):
    with pytest.raises(ImageDecodeError, match=needle) as info:
        decode_image(data, "line3/cam7.jpg")
    assert "line3/cam7.jpg" in str(info.value)


def test_decode_missing_file_names_it(tmp_path):
    with pytest.raises(ImageDecodeError, match="nope.png: cannot read file"):
        decode_image(tmp_path / "nope.png")


def test_decode_bgra_drops_alpha_and_16_bit_is_scaled():
    bgra = np.dstack([_texture(), np.full((48, 64), 200, np.uint8)])
    assert decode_image(_png(bgra), "a").shape == (48, 64, 3)
    deep = np.full((8, 8), 65535, np.uint16)
    out = decode_image(_png(deep), "deep.png")
    assert out.dtype == np.uint8 and out.max() == 255


def test_decode_mask_binarizes_at_127():
    mask = np.array([[0, 127, 128, 255]], np.uint8)
    assert decode_mask(_png(mask), "m").tolist() == [[0, 0, 1, 1]]


def test_bgr_is_converted_to_rgb_and_gray_has_one_channel():
    bgr = np.zeros((4, 4, 3), np.uint8)
    bgr[..., 0] = 255  # pure blue in OpenCV order
    rgb = to_color(bgr, 3)
    assert rgb[0, 0].tolist() == [0, 0, 255]
    assert to_color(bgr, 1).shape == (4, 4, 1)
    assert to_color(np.zeros((4, 4), np.uint8), 3).shape == (4, 4, 3)


def test_wrong_channel_count_is_a_clear_error():
    with pytest.raises(PreprocessError, match=r"expected a gray .* got \(8, 8, 2\)"):
        preprocess_frame(np.zeros((8, 8, 2), np.uint8), ImagePrep())


def test_preprocess_frame_shape_roi_and_resize():
    image = np.zeros((100, 200, 3), np.uint8)
    image[10:30, 50:90] = 255  # the ROI is all white, the rest black
    prep = ImagePrep(size=(16, 24), channels=3, roi=(50, 10, 40, 20))
    out = preprocess_frame(image, prep)
    assert out.shape == (16, 24, 3) and out.dtype == np.uint8
    assert out.min() == 255
    gray = preprocess_frame(image, ImagePrep(size=(8, 8), channels=1))
    assert gray.shape == (8, 8, 1)


def test_roi_outside_image_names_sizes():
    with pytest.raises(PreprocessError, match="does not fit inside the 20x10 image"):
        preprocess_frame(np.zeros((10, 20), np.uint8), ImagePrep(roi=(15, 0, 10, 5)))


def test_equalization_stretches_a_low_contrast_image():
    low = np.tile(np.linspace(100, 140, 64).astype(np.uint8), (64, 1))[:, :, None]
    hist = equalize(low, "hist")
    clahe = equalize(low, "clahe", 2.0)
    assert hist.max() - hist.min() > 200
    assert clahe.max() - clahe.min() > low.max() - low.min()
    rgb = equalize(np.repeat(low, 3, axis=2), "hist")
    assert rgb.shape == (64, 64, 3) and rgb.max() - rgb.min() > 200


def test_mask_follows_the_geometry_and_mismatch_is_rejected():
    image = np.zeros((40, 40), np.uint8)
    mask = np.zeros((40, 40), np.uint8)
    mask[20:, 20:] = 1
    prep = ImagePrep(size=(10, 10), channels=1, roi=(20, 20, 20, 20))
    _, out = preprocess_with_mask(image, mask, prep)
    assert out.shape == (10, 10) and out.min() == 1
    with pytest.raises(
        PreprocessError, match="mask size 30x40 does not match the image size 40x40"
    ):
        preprocess_with_mask(image, np.zeros((40, 30), np.uint8), prep)


@pytest.mark.parametrize("method", ["phase", "ecc"])
def test_alignment_registers_a_shifted_frame_to_the_reference(method):
    base = _texture(72, 72, seed=3)
    prep = ImagePrep(size=(64, 64), channels=1, align=method)
    reference = preprocess_frame(base[4:68, 4:68], prep)
    shifted = preprocess_frame(base[1:65, 6:70], prep.model_copy(update={"align": "none"}))
    aligned = preprocess_frame(base[1:65, 6:70], prep, reference)
    inner = (slice(8, -8), slice(8, -8))
    before = np.abs(shifted[inner].astype(int) - reference[inner]).mean()
    after = np.abs(aligned[inner].astype(int) - reference[inner]).mean()
    assert after < 0.25 * before


def test_to_tensor_unit_and_zscore():
    frames = np.full((2, 4, 4, 3), 255, np.uint8)
    frames[1] = 0
    unit = to_tensor(frames, ImagePrep())
    assert (
        unit.shape == (2, 3, 4, 4) and float(unit[0].min()) == 1.0 and float(unit[1].max()) == 0.0
    )
    ramp = np.arange(48, dtype=np.uint8).reshape(4, 4, 3)
    z = to_tensor(ramp, ImagePrep(normalize="zscore"))
    assert z.shape == (1, 3, 4, 4)
    assert abs(float(z.mean())) < 1e-5 and abs(float(z.std()) - 1) < 1e-4


def test_resized_mask_keeps_a_small_defect():
    from vigil.data.preprocess import resize_mask

    mask = np.zeros((200, 200), np.uint8)
    mask[50:53, 50:53] = 1  # 3x3 px defect: under half of any 16x16 output pixel
    small = resize_mask(mask, (16, 16))
    assert small.dtype == np.uint8 and 1 <= small.sum() <= 4
    big = np.zeros((200, 200), np.uint8)
    big[:100] = 1
    assert resize_mask(big, (16, 16))[:8].all() and not resize_mask(big, (16, 16))[8:].any()
