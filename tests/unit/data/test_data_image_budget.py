"""Decompression bombs (issue 15): the one decode path reads the header's pixel count first and
refuses an image over the budget before decoding it; no decoder error escapes as cv2.error."""

from __future__ import annotations

import tracemalloc

import cv2
import numpy as np
import pytest

from tests.conftest import bomb_png
from vigil.data.preprocess import (
    ImageDecodeError,
    ImageTooLargeError,
    decode_image,
    decode_mask,
    image_header_size,
)


def test_a_tiny_png_claiming_60000_squared_is_refused_by_name_before_decoding():
    bomb = bomb_png(60000, 60000)
    assert len(bomb) < 200_000
    assert image_header_size(bomb, "bomb.png") == (60000, 60000)
    with pytest.raises(ImageTooLargeError, match=r"bomb\.png: image of 60000x60000") as caught:
        decode_image(bomb, "bomb.png")
    assert (caught.value.width, caught.value.height) == (60000, 60000)
    assert isinstance(caught.value, ImageDecodeError)  # callers that catch decode errors see it


def test_opencv_errors_never_escape_even_without_a_budget():
    # OpenCV refuses > 2^30 pixels with a raw cv2.error: it becomes an ImageDecodeError
    with pytest.raises(ImageDecodeError, match=r"bomb\.png: cannot decode the image"):
        decode_image(bomb_png(60000, 60000), "bomb.png", max_pixels=None)


def test_the_budget_is_checked_before_any_pixel_is_decoded(tmp_path):
    bomb = bomb_png(12000, 12000)  # 144 Mpx: 144 MB to decode as gray
    tracemalloc.start()
    try:
        with pytest.raises(ImageTooLargeError, match="exceeds the budget of 1,000,000"):
            decode_image(bomb, "b.png", max_pixels=1_000_000)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000  # the header only, not the 144 MB of pixels


def test_images_within_the_budget_decode_and_masks_share_the_check(tmp_path):
    image = np.full((100, 120, 3), 200, np.uint8)
    ok, buffer = cv2.imencode(".png", image)
    path = tmp_path / "part.png"
    path.write_bytes(buffer.tobytes())
    assert decode_image(path, max_pixels=12_000).shape == (100, 120, 3)
    with pytest.raises(ImageTooLargeError, match=r"part\.png: image of 120x100 = 12,000 pixels"):
        decode_image(path, max_pixels=11_999)
    with pytest.raises(ImageTooLargeError):
        decode_mask(path, max_pixels=100)


def test_non_image_bytes_still_get_the_plain_message():
    with pytest.raises(ImageDecodeError, match=r"x: not a decodable image \(9 bytes\)"):
        decode_image(b"not a png", "x")


@pytest.mark.parametrize("data", [b"x", b"BM", b"\x89PNG", b"II*\x00", b"\xff\xd8\xff"])
def test_a_few_bytes_are_a_plain_decode_error_never_a_struct_error(data):
    # found by the property-based API test: PIL's BMP probe fails on a 1-byte prefix
    with pytest.raises(ImageDecodeError):
        decode_image(data, "tiny")
