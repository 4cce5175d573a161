"""Decoding images: bytes or a file -> uint8 gray (H, W) or BGR (H, W, 3), the one decode path.

Used by ``prepare``, ``vigil ingest``, the MLflow package and serving alike (through
``vigil.data.preprocess``, which re-exports these names). Before any pixel is decoded the header
is read (``image_header_size``) and an image over the decoded-pixel budget is refused
(``ImageTooLargeError``): a decompression bomb costs its header only. Every decoder error
(``cv2.error``, PIL's) becomes an ``ImageDecodeError`` naming the image.
"""

from __future__ import annotations

import struct
from pathlib import Path

import cv2
import numpy as np

_JPEG_SOI = b"\xff\xd8"
_JPEG_EOI = b"\xff\xd9"
_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
_PNG_IEND = b"IEND"
_TIFF_WIDTH = 256
_TIFF_HEIGHT = 257
_TIFF_SAMPLES_PER_PIXEL = 277
_TIFF_EXTRA_SAMPLES = 338  # 1, 2: the extra channel is alpha


# Decoded pixels (width x height) one image may have unless the caller gives its own budget:
# 64 Mpx is 192 MB as BGR, far above any camera a line uses and far below what exhausts memory.
DEFAULT_MAX_IMAGE_PIXELS = 64_000_000


class ImageDecodeError(ValueError):
    """An image (or mask) cannot be used; the message names it and says why."""


class ImageTooLargeError(ImageDecodeError):
    """The image's header claims more pixels than the budget: refused before decoding it."""

    def __init__(self, message: str, width: int, height: int) -> None:
        super().__init__(message)
        self.width, self.height = width, height


# --- decoding --------------------------------------------------------------------------------


def decode_image(
    data: bytes | Path | str,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Decode image bytes or a file to uint8 gray (H, W) or BGR (H, W, 3).

    Raises ``ImageDecodeError`` naming ``name`` (default: the path) for a missing or empty file,
    non-image bytes, a truncated JPEG/PNG, or an unsupported channel count (only 1, 3 and 4 =
    BGRA, whose alpha is dropped, are accepted; a TIFF's count is read from its header, since
    OpenCV only says "cannot decode" for more than 4 channels and reads 2 as gray).

    Decompression bombs: the width and height are read from the header first
    (``image_header_size``) and an image of more than ``max_pixels`` pixels raises
    ``ImageTooLargeError`` before any pixel is decoded (``None``: no budget). No decoder error
    (``cv2.error``, PIL's) escapes: each becomes an ``ImageDecodeError`` naming the image.
    """
    if isinstance(data, (str, Path)):
        path = Path(data)
        name = name or str(path)
        try:
            data = path.read_bytes()
        except OSError as error:
            raise ImageDecodeError(f"{name}: cannot read file ({error.strerror})") from None
    name = name or "<bytes>"
    if len(data) == 0:
        raise ImageDecodeError(f"{name}: empty file (0 bytes)")
    _check_not_truncated(data, name)
    channels = _unsupported_tiff_channels(data)
    if channels is not None:
        raise ImageDecodeError(
            f"{name}: unsupported channel count {channels} (TIFF); expected 1, 3 or 4 "
            "(2 only as gray + alpha)"
        )
    width, height = image_header_size(data, name)
    check_pixel_budget(width, height, max_pixels, name)
    try:
        image = cv2.imdecode(np.frombuffer(data, dtype=np.uint8), cv2.IMREAD_UNCHANGED)
    except cv2.error as error:
        reason = str(error).strip().splitlines()[-1] if str(error).strip() else "decoder error"
        raise ImageDecodeError(f"{name}: cannot decode the image ({reason})") from None
    if image is None or image.size == 0:
        raise ImageDecodeError(f"{name}: not a decodable image ({len(data)} bytes)")
    check_pixel_budget(image.shape[1], image.shape[0], max_pixels, name)
    return _to_uint8_gray_or_bgr(image, name)


def check_pixel_budget(width: int, height: int, max_pixels: int | None, name: str) -> None:
    """Raise ``ImageTooLargeError`` naming ``name`` when width x height exceeds ``max_pixels``."""
    if max_pixels is not None and width * height > max_pixels:
        raise ImageTooLargeError(
            f"{name}: image of {width}x{height} = {width * height:,} pixels exceeds the budget "
            f"of {max_pixels:,} decoded pixels per image",
            width,
            height,
        )


def image_header_size(data: bytes, name: str = "<bytes>") -> tuple[int, int]:
    """(width, height) from an image's header, without decoding its pixels.

    Raises ``ImageDecodeError`` naming ``name`` when no image format is recognized (the same
    message ``decode_image`` gives for non-image bytes). PIL's format plugins read the header;
    they are called directly because ``PIL.Image.open`` refuses images above ~179 Mpx without
    saying their size, and the budget check, not PIL's, decides here.
    """
    size = _pil_header_size(data)
    if size is None:  # a minimal TIFF OpenCV reads and PIL does not: its size tags
        tags = _tiff_tags(data)
        if _TIFF_WIDTH in tags and _TIFF_HEIGHT in tags:
            size = tags[_TIFF_WIDTH], tags[_TIFF_HEIGHT]
    if size is None:
        raise ImageDecodeError(f"{name}: not a decodable image ({len(data)} bytes)")
    return size


def _pil_header_size(data: bytes) -> tuple[int, int] | None:
    """What ``PIL.Image.open`` does to identify a format (each plugin's ``accept`` on the first
    16 bytes, then its header parser), minus the decompression-bomb check; None: unknown."""
    import io

    from PIL import Image

    prefix = data[:16]
    for load_plugins in (Image.preinit, Image.init):
        load_plugins()
        for fmt in list(Image.ID):
            factory, accept = Image.OPEN[fmt]
            try:  # a plugin's accept may itself fail on a short prefix
                accepted = accept(prefix) if accept else True
                if not accepted or isinstance(accepted, str):
                    continue
                with factory(io.BytesIO(data), "") as header:
                    width, height = header.size
            except (SyntaxError, IndexError, TypeError, ValueError, OSError, EOFError, struct.error):
                continue
            return int(width), int(height)
    return None


def _check_not_truncated(data: bytes, name: str) -> None:
    """OpenCV returns a partly grey image for some truncated JPEGs: check the end marker."""
    tail = data.rstrip(b"\x00\r\n ")[-32:]
    if data.startswith(_JPEG_SOI) and _JPEG_EOI not in tail:
        raise ImageDecodeError(f"{name}: truncated JPEG (no end-of-image marker)")
    if data.startswith(_PNG_SIGNATURE) and _PNG_IEND not in tail:
        raise ImageDecodeError(f"{name}: truncated PNG (no IEND chunk)")


def _unsupported_tiff_channels(data: bytes) -> int | None:
    """The channel count of a TIFF vigil cannot use, or None (not a TIFF, or fine).

    OpenCV refuses TIFFs of more than 4 channels with only "cannot decode" and reads a
    2-channel one as gray whatever its second channel is; PIL cannot open either. Reading the
    header lets the answer name the count. 2 channels pass only as gray + alpha (ExtraSamples
    1 or 2). Other formats OpenCV reads hold 1 to 4 channels, handled by ``decode_image``.
    """
    tags = _tiff_tags(data)
    channels = tags.get(_TIFF_SAMPLES_PER_PIXEL)
    if channels is None or channels in (1, 3, 4):
        return None
    if channels == 2 and tags.get(_TIFF_EXTRA_SAMPLES) in (1, 2):
        return None
    return channels


def _tiff_tags(data: bytes) -> dict[int, int]:
    """tag -> value of the one-valued SHORT/LONG entries of a TIFF's first image; {} when
    ``data`` is not a TIFF."""
    order = {b"II*\x00": "<", b"MM\x00*": ">"}.get(data[:4])
    if order is None or len(data) < 8:
        return {}
    (offset,) = struct.unpack(order + "I", data[4:8])
    if offset + 2 > len(data):
        return {}
    (count,) = struct.unpack(order + "H", data[offset : offset + 2])
    tags = {}
    for start in range(offset + 2, min(offset + 2 + 12 * count, len(data) - 11), 12):
        tag, kind, n = struct.unpack(order + "HHI", data[start : start + 8])
        if n == 1 and kind in (3, 4):  # SHORT or LONG, left-justified in the value field
            fmt = order + ("H" if kind == 3 else "I")
            tags[tag] = struct.unpack(fmt, data[start + 8 : start + 8 + struct.calcsize(fmt)])[0]
    return tags


def _to_uint8_gray_or_bgr(image: np.ndarray, name: str) -> np.ndarray:
    if image.dtype == np.uint16:
        image = (image >> 8).astype(np.uint8)
    elif image.dtype != np.uint8:
        raise ImageDecodeError(
            f"{name}: unsupported pixel type {image.dtype} (expected 8 or 16 bit)"
        )
    if image.ndim == 3 and image.shape[2] == 1:
        image = image[:, :, 0]
    if image.ndim == 2:
        return image
    channels = image.shape[2] if image.ndim == 3 else None
    if channels == 3:
        return image
    if channels == 4:
        return cv2.cvtColor(image, cv2.COLOR_BGRA2BGR)
    raise ImageDecodeError(
        f"{name}: unsupported channel count {channels} (shape {image.shape}); expected 1, 3 or 4"
    )


def decode_mask(
    data: bytes | Path | str,
    name: str | None = None,
    max_pixels: int | None = DEFAULT_MAX_IMAGE_PIXELS,
) -> np.ndarray:
    """Decode a mask image -> uint8 (H, W) in {0, 1}, binarized at > 127 (color: any channel)."""
    mask = decode_image(data, name, max_pixels)
    if mask.ndim == 3:
        mask = mask.max(axis=2)
    return (mask > 127).astype(np.uint8)
