"""Static images (PNG, JPEG) as uint8 arrays, decoded at no more than about twice the stored size.

Trust: a 1 KB file can declare 9000x9000 pixels, and a decoder allocates what is declared. The
stored statics are at most 128x128 and the frames 34x34 to 128x128, so nothing needs more than a
few hundred pixels a side. So the declared size is read first (``Image.open`` decodes nothing),
JPEGs are decoded by libjpeg's DCT scaling straight to at least ``DECODE_SIDE`` a side
(``Image.draft``), an image that would still decode to more than ``MAX_DECODE_PIXELS`` is refused
before any pixel is allocated, and what is decoded is reduced by an integer box filter to between
``DECODE_SIDE`` and twice that on its short side. Images already that small are returned as
stored, pixel for pixel. Only PNG and JPEG are opened, whatever Pillow else could parse.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.errors import BadInput
from pipelines.formats._common import check_regular

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}
#: short side images are reduced to (at least this, less than twice this): twice the largest frame
DECODE_SIDE = 256
#: most pixels decoded at once (after a JPEG's draft scaling): 72 MB as RGB
MAX_DECODE_PIXELS = 24_000_000
#: the only decoders used: what IMAGE_SUFFIXES name (MPO is a camera's multi-picture JPEG)
FORMATS = ("PNG", "JPEG", "MPO")


def read_image(path: str | Path) -> np.ndarray:
    """uint8 ``[H, W]`` for gray images, ``[H, W, 3]`` otherwise.

    Alpha is dropped (the pixels are kept as stored), palettes are expanded, 16-bit gray is
    scaled to 8 bits. The image is decoded here, so a truncated file fails now, not later.
    Every failure of the decoder on this file (Pillow raises ``SyntaxError`` for a broken PNG
    chunk, among others) is a ``BadInput`` naming it.
    """
    check_regular(path)
    try:
        with Image.open(path, formats=FORMATS) as image:
            if image.info.get("progressive"):  # libjpeg keeps every DCT coefficient of the full size
                _check_pixels(path, image.size)
            image.draft(image.mode, (DECODE_SIDE, DECODE_SIDE))  # JPEG only; a no-op elsewhere
            _check_pixels(path, image.size)
            image.load()
            return _reduced(_to_uint8(image))
    except BadInput:
        raise
    except Exception as err:  # a decoder's error on this file's bytes, whatever its class
        raise BadInput(path, f"unreadable image: {type(err).__name__}: {err}") from err


def _check_pixels(path: str | Path, size: tuple[int, int]) -> None:
    width, height = size
    if width * height > MAX_DECODE_PIXELS:
        raise BadInput(path, f"declares {width}x{height} pixels, more than the {MAX_DECODE_PIXELS}-pixel cap")


def _reduced(array: np.ndarray) -> np.ndarray:
    """Box-reduce by the largest integer factor that keeps the short side at ``DECODE_SIDE`` or more."""
    factor = min(array.shape[0], array.shape[1]) // DECODE_SIDE
    if factor < 2:
        return array
    return np.asarray(Image.fromarray(array).reduce(factor), dtype=np.uint8)


def _to_uint8(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit int) gray: keep the top 8 of the 16 bits
        return (np.asarray(image).clip(0, 65535) >> 8).astype(np.uint8)  # uint16 or int32: no int64 copy
    if image.mode in GRAY_MODES:
        return np.asarray(image.convert("L"), dtype=np.uint8)
    if image.mode == "P":
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
