"""Preprocessing shared by the prepare stage and serving: one code path, so they cannot drift.

A frame goes through, in this order (each step a field of ``ImagePrep``):

1. ``decode_image`` (``vigil.data.decode``): bytes or file -> uint8 array as OpenCV reads it (gray (H, W) or BGR (H, W, 3);
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

from typing import TYPE_CHECKING

import cv2
import numpy as np

from vigil.config import ImagePrep
from vigil.data.decode import (  # noqa: F401 - re-exported: decoding lives in vigil.data.decode
    DEFAULT_MAX_IMAGE_PIXELS,
    ImageDecodeError,
    ImageTooLargeError,
    check_pixel_budget,
    decode_image,
    decode_mask,
    image_header_size,
)

if TYPE_CHECKING:  # torch is imported where tensors are made: the prepare stage never needs it
    import torch


class PreprocessError(ValueError):
    """A decoded image does not fit the preprocessing settings (e.g. ROI outside the image)."""


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
