"""Reading a scoring request's images: raw or multipart bodies, then their headers and pixels.

Bodies are read whole here (``vigil.serving.limits.BodyLimit`` stops any read past
``max_request_bytes`` with a 413). Every image header of a request is read before any pixel is
decoded: over ``max_image_side`` / ``max_image_pixels`` per image or ``max_request_pixels`` in all
is a 413, anything that is not a usable image a 422, each naming the image and the limit.
"""

from __future__ import annotations

import numpy as np
from fastapi import HTTPException, Request

from vigil.serving import LimitSettings

RAW_TYPES = ("image/", "application/octet-stream")


class InputError(HTTPException):
    """A request whose input cannot be scored; ``status`` 413 or 422 with a specific message."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(status_code=status, detail=message)


async def one_image_body(request: Request) -> tuple[bytes, str]:
    """(bytes, name) of the single image in a raw or multipart body."""
    content_type = request.headers.get("content-type", "")
    if content_type.startswith("multipart/form-data"):
        form = await request.form(max_files=1)
        upload = form.get("file")
        if upload is None or isinstance(upload, str):
            raise InputError(422, "multipart body has no file field 'file'")
        return await upload.read(), upload.filename or "file"
    if content_type and not content_type.startswith(RAW_TYPES):
        raise InputError(
            415,
            f"unsupported content type {content_type!r}: send image bytes (image/*, "
            "application/octet-stream) or multipart/form-data with a 'file' field",
        )
    return await request.body(), "body"


async def many_images(request: Request, max_items: int, what: str) -> list[tuple[bytes, str]]:
    """(bytes, name) of the multipart ``files`` fields of a batch or clip request, in order."""
    content_type = request.headers.get("content-type", "")
    if not content_type.startswith("multipart/form-data"):
        raise InputError(422, f"a {what} is multipart/form-data with one 'files' field per image")
    form = await request.form(max_files=max_items + 1)
    uploads = [item for item in form.getlist("files") if not isinstance(item, str)]
    if not uploads:
        raise InputError(422, f"empty {what}: send at least one image as multipart field 'files'")
    if len(uploads) > max_items:
        raise InputError(413, f"{what} of {len(uploads)} images exceeds the limit of {max_items}")
    return [
        (await upload.read(), f"files[{i}] ({upload.filename or 'unnamed'})")
        for i, upload in enumerate(uploads)
    ]


def decode_all(
    blobs: list[tuple[bytes, str]], limits: LimitSettings, model_channels: int
) -> list[np.ndarray]:
    """Decode a request's images, with 413/422 answers naming the problem.

    Every header is read first (no pixel decoded yet): an image over ``max_image_side`` or
    ``max_image_pixels``, or a request whose images sum to more than ``max_request_pixels``,
    gets 413 before any decoding (decompression bombs cost their header only).
    """
    sizes = [_header_size(data, name, limits) for data, name in blobs]
    total = sum(width * height for width, height in sizes)
    if total > limits.max_request_pixels:
        raise InputError(
            413,
            f"request of {len(blobs)} image(s) with {total:,} pixels in all exceeds the limit of "
            f"{limits.max_request_pixels:,} decoded pixels per request",
        )
    return [_decode(data, name, limits, model_channels) for data, name in blobs]


def _decode(data: bytes, name: str, limits: LimitSettings, model_channels: int) -> np.ndarray:
    """Image bytes -> decoded array, with 413/422 answers naming the problem.

    ``model_channels``: what the model takes (1 gray, 3 RGB), named when the channel count of
    the image is one the service cannot convert to it.
    """
    from vigil.data.preprocess import ImageDecodeError, ImageTooLargeError, decode_image

    try:
        image = decode_image(data, name, limits.max_image_pixels)
    except ImageTooLargeError as error:
        raise InputError(413, str(error)) from None
    except ImageDecodeError as error:
        message = str(error)
        if "channel count" in message:  # a count decode_image refuses: say what to send
            message = f"{message}; {_model_takes(model_channels)}"
        raise InputError(422, message) from None
    _check_side(image.shape[1], image.shape[0], name, limits.max_image_side)
    return image


def _model_takes(model_channels: int) -> str:
    """What the model expects, and which images the service converts to it."""
    kind = "gray" if model_channels == 1 else "RGB"
    return (
        f"the model takes {model_channels}-channel ({kind}) images: send 1 (gray), 2 (gray + "
        "alpha), 3 (color) or 4 (color + alpha) channels; alpha is dropped"
    )


def _header_size(data: bytes, name: str, limits: LimitSettings) -> tuple[int, int]:
    """(width, height) from the header, refused with 413 over the per-image limits and with
    422 when no image format is recognized (decompression bombs are never decoded)."""
    from vigil.data.preprocess import (
        ImageDecodeError,
        ImageTooLargeError,
        check_pixel_budget,
        image_header_size,
    )

    if not data:
        raise InputError(422, f"{name}: empty image (0 bytes)")
    try:
        width, height = image_header_size(data, name)
        check_pixel_budget(width, height, limits.max_image_pixels, name)
    except ImageDecodeError as error:  # ImageTooLargeError included
        raise InputError(413 if isinstance(error, ImageTooLargeError) else 422, str(error)) from None
    _check_side(width, height, name, limits.max_image_side)
    return width, height


def _check_side(width: int, height: int, name: str, max_side: int) -> None:
    if max(width, height) > max_side:
        raise InputError(
            413,
            f"{name}: image of {width}x{height} exceeds the limit of {max_side} pixels per side",
        )
