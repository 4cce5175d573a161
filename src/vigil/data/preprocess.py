"""Preprocessing shared by the prepare stage and serving: one code path, so they cannot drift.

A frame goes through, in this order (each step a field of ``ImagePrep``):

1. ``decode_image``: bytes or file -> uint8 array as OpenCV reads it (gray (H, W) or BGR (H, W, 3);
   BGRA drops alpha, 16-bit is scaled to 8-bit), with a clear ``ImageDecodeError`` otherwise.
2. ``to_color``: gray or RGB (OpenCV's BGR is converted, so the arrays hold RGB).
3. ``crop_roi``: optional region of interest ``(x, y, w, h)`` in source pixels.
4. ``resize``: to ``prep.size`` = (height, width) (INTER_AREA when shrinking, else INTER_LINEAR).
5. ``equalize``: none, global histogram equalization or CLAHE (on the luma channel for RGB).
6. ``align``: optional registration to a reference frame (already preprocessed, same size):
   ``ecc`` (Euclidean: rotation + translation) or ``phase`` (translation by phase correlation).

Normalization to the model's input space happens last, in ``to_tensor``.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from vigil.config import ImagePrep

if TYPE_CHECKING:  # torch is imported where tensors are made: the prepare stage never needs it
    import torch

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


class PreprocessError(ValueError):
    """A decoded image does not fit the preprocessing settings (e.g. ROI outside the image)."""


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


# --- the steps -------------------------------------------------------------------------------


def to_color(image: np.ndarray, channels: int) -> np.ndarray:
    """Gray (H, W) or BGR (H, W, 3) -> uint8 (H, W, channels): gray, or RGB (BGR converted)."""
    if image.ndim == 2:
        return image[:, :, None] if channels == 1 else cv2.cvtColor(image, cv2.COLOR_GRAY2RGB)
    if image.ndim != 3 or image.shape[2] != 3:
        raise PreprocessError(f"expected a gray (H, W) or BGR (H, W, 3) image, got {image.shape}")
    if channels == 1:
        return cv2.cvtColor(image, cv2.COLOR_BGR2GRAY)[:, :, None]
    return cv2.cvtColor(image, cv2.COLOR_BGR2RGB)


def crop_roi(image: np.ndarray, roi: tuple[int, int, int, int] | None) -> np.ndarray:
    """Crop (H, W[, C]) to ``roi`` = (x, y, w, h); the ROI must lie inside the image."""
    if roi is None:
        return image
    x, y, w, h = roi
    height, width = image.shape[:2]
    if x < 0 or y < 0 or w <= 0 or h <= 0 or x + w > width or y + h > height:
        raise PreprocessError(
            f"roi (x={x}, y={y}, w={w}, h={h}) does not fit inside the {width}x{height} image"
        )
    return image[y : y + h, x : x + w]


def resize(image: np.ndarray, size: tuple[int, int], nearest: bool = False) -> np.ndarray:
    """Resize (H, W[, C]) to ``size`` = (height, width), keeping a trailing channel axis."""
    height, width = size
    if image.shape[:2] == (height, width):
        return image
    if nearest:
        interpolation = cv2.INTER_NEAREST
    elif height < image.shape[0] and width < image.shape[1]:
        interpolation = cv2.INTER_AREA
    else:
        interpolation = cv2.INTER_LINEAR
    out = cv2.resize(image, (width, height), interpolation=interpolation)
    if image.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize a {0, 1} mask (H, W) to ``size``: a pixel is set when at least half of the area
    it covers is; a defect too small to cover half of any output pixel keeps the pixels it
    touches instead of vanishing (a labelled anomaly never loses its whole mask)."""
    if mask.shape[:2] == tuple(size):
        return mask
    covered = resize(mask.astype(np.float32), size)
    out = covered >= 0.5
    if not out.any() and mask.any():
        out = covered > 0
    return out.astype(np.uint8)


def equalize(image: np.ndarray, method: str, clahe_clip: float = 2.0) -> np.ndarray:
    """Histogram equalization of uint8 (H, W, C), C in {1, 3}; RGB is equalized on its luma."""
    if method == "none":
        return image
    if method == "hist":
        apply = cv2.equalizeHist
    elif method == "clahe":
        apply = cv2.createCLAHE(clipLimit=clahe_clip, tileGridSize=(8, 8)).apply
    else:
        raise PreprocessError(f"unknown equalization {method!r} (none, hist, clahe)")
    if image.shape[2] == 1:
        return apply(np.ascontiguousarray(image[:, :, 0]))[:, :, None]
    ycrcb = cv2.cvtColor(image, cv2.COLOR_RGB2YCrCb)
    ycrcb[:, :, 0] = apply(np.ascontiguousarray(ycrcb[:, :, 0]))
    return cv2.cvtColor(ycrcb, cv2.COLOR_YCrCb2RGB)


def _gray_float(image: np.ndarray) -> np.ndarray:
    if image.ndim == 3 and image.shape[2] == 3:
        image = cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)
    elif image.ndim == 3:
        image = image[:, :, 0]
    return image.astype(np.float32)


def estimate_alignment(image: np.ndarray, reference: np.ndarray, method: str) -> np.ndarray:
    """2x3 affine warp that maps ``image`` onto ``reference`` (both (H, W, C), same size).

    ``phase``: translation from ``cv2.phaseCorrelate``. ``ecc``: Euclidean warp from
    ``cv2.findTransformECC``; when ECC does not converge (flat images) the identity is returned.
    """
    if image.shape[:2] != reference.shape[:2]:
        raise PreprocessError(
            f"cannot align a {image.shape[:2]} frame to a {reference.shape[:2]} reference"
        )
    moving, fixed = _gray_float(image), _gray_float(reference)
    warp = np.eye(2, 3, dtype=np.float32)
    if method == "phase":
        window = cv2.createHanningWindow(moving.shape[::-1], cv2.CV_32F)
        (dx, dy), _ = cv2.phaseCorrelate(fixed, moving, window)
        warp[0, 2], warp[1, 2] = dx, dy
        return warp
    if method == "ecc":
        criteria = (cv2.TERM_CRITERIA_EPS | cv2.TERM_CRITERIA_COUNT, 50, 1e-4)
        try:
            _, warp = cv2.findTransformECC(
                fixed, moving, warp, cv2.MOTION_EUCLIDEAN, criteria, None, 5
            )
        except cv2.error:
            return np.eye(2, 3, dtype=np.float32)
        return warp
    raise PreprocessError(f"unknown alignment {method!r} (none, ecc, phase)")


def apply_alignment(image: np.ndarray, warp: np.ndarray, nearest: bool = False) -> np.ndarray:
    """Warp (H, W[, C]) with the 2x3 ``warp`` from ``estimate_alignment`` (border replicated)."""
    height, width = image.shape[:2]
    flags = (cv2.INTER_NEAREST if nearest else cv2.INTER_LINEAR) | cv2.WARP_INVERSE_MAP
    out = cv2.warpAffine(image, warp, (width, height), flags=flags, borderMode=cv2.BORDER_REPLICATE)
    if image.ndim == 3 and out.ndim == 2:
        out = out[:, :, None]
    return out


# --- the whole chain -------------------------------------------------------------------------


def preprocess_frame(
    image: np.ndarray, prep: ImagePrep, reference: np.ndarray | None = None
) -> np.ndarray:
    """Decoded gray (H, W) or BGR (H, W, 3) -> uint8 (h, w, C), C = ``prep.channels``, RGB order.

    ``reference`` (uint8 (h, w, C), an already preprocessed frame) is needed only when
    ``prep.align`` is not ``none``; without it the frame is not aligned (it is the reference).
    """
    frame, _ = preprocess_with_mask(image, None, prep, reference)
    return frame


def preprocess_with_mask(
    image: np.ndarray,
    mask: np.ndarray | None,
    prep: ImagePrep,
    reference: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """``preprocess_frame`` plus the same geometry (ROI, resize, alignment) on a mask (H, W).

    Returns (frame uint8 (h, w, C), mask uint8 (h, w) in {0, 1} or None).
    """
    if mask is not None and mask.shape[:2] != image.shape[:2]:
        raise PreprocessError(
            f"mask size {mask.shape[1]}x{mask.shape[0]} does not match the image size "
            f"{image.shape[1]}x{image.shape[0]}"
        )
    frame = to_color(image, prep.channels)
    frame = resize(crop_roi(frame, prep.roi), prep.size)
    frame = equalize(frame, prep.equalize, prep.clahe_clip)
    if mask is not None:
        mask = resize_mask(crop_roi(mask, prep.roi), prep.size)
    if prep.align != "none" and reference is not None:
        warp = estimate_alignment(frame, reference, prep.align)
        frame = apply_alignment(frame, warp)
        if mask is not None:
            mask = apply_alignment(mask, warp, nearest=True)
    return np.ascontiguousarray(frame), mask


def to_tensor(frames: np.ndarray, prep: ImagePrep) -> torch.Tensor:
    """uint8 frames (N, H, W, C) or (H, W, C) -> float32 tensor (N, C, H, W) in model space.

    ``unit`` maps [0, 255] to [0, 1]; ``zscore`` standardizes each image to mean 0, std 1.
    """
    import torch

    array = np.asarray(frames)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4:
        raise ValueError(f"expected frames of shape (N, H, W, C), got {array.shape}")
    # Prepared frames are read-only memory maps; torch.from_numpy wants a writable array (it
    # only reads it here, but warns), so copy when the array is not both contiguous and writable.
    array = np.require(array, requirements=("C_CONTIGUOUS", "WRITEABLE"))
    tensor = torch.from_numpy(array).permute(0, 3, 1, 2).float()
    tensor = tensor / 255.0
    if prep.normalize == "zscore":
        mean = tensor.mean(dim=(1, 2, 3), keepdim=True)
        std = tensor.std(dim=(1, 2, 3), keepdim=True).clamp_min(1e-6)
        tensor = (tensor - mean) / std
    return tensor
