"""Static images (PNG, JPEG) as uint8 arrays."""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from pipelines.errors import BadInput

GRAY_MODES = {"1", "L", "LA", "I", "I;16", "I;16B", "I;16L", "F"}


def read_image(path: str | Path) -> np.ndarray:
    """uint8 ``[H, W]`` for gray images, ``[H, W, 3]`` otherwise.

    Alpha is dropped (the pixels are kept as stored), palettes are expanded, 16-bit gray is
    scaled to 8 bits. The image is decoded here, so a truncated file fails now, not later.
    """
    try:
        with Image.open(path) as image:
            image.load()
            return _to_uint8(image)
    except (OSError, UnidentifiedImageError, ValueError, Image.DecompressionBombError) as err:
        raise BadInput(path, f"unreadable image: {err}") from err


def _to_uint8(image: Image.Image) -> np.ndarray:
    if image.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16-bit (or 32-bit int) gray: keep the top 8 of the 16 bits
        return (np.asarray(image, dtype=np.int64).clip(0, 65535) >> 8).astype(np.uint8)
    if image.mode in GRAY_MODES:
        return np.asarray(image.convert("L"), dtype=np.uint8)
    if image.mode == "P":
        image = image.convert("RGBA")
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
