"""Static image preprocessing: one intensity channel at the event frames' size.

The method copies one channel of the static image into both polarity channels, so colour is
reduced first: "v" is the V channel of HSV (the max over R, G, B) and "gray" is ITU-R 601 luma,
bit-exact with PIL's ``Image.convert("L")``. A gray input is used as is in both modes. The
reduced image is then fitted to the frame size in one of two ways:

- "resize": PIL's antialiasing bilinear filter to exactly (H, W);
- "pad": keep the image's scale and centre it on a black canvas (shrinking it with the aspect
  ratio kept only when it is larger). This is how N-MNIST was recorded: each 28x28 MNIST digit
  was shown at its own scale and the 34x34 sensor sees it with a 3-pixel margin for the saccades,
  so padding puts a static digit where the recorded digit is and resizing would not.
"""

from __future__ import annotations

import numpy as np
from PIL import Image

STATIC_MODES = ("gray", "v")
STATIC_FITS = ("resize", "pad")


def _reduce(images: np.ndarray, mode: str, color: bool) -> np.ndarray:
    """uint8 ``[..., H, W]`` from gray ``[..., H, W]`` (as is) or RGB ``[..., H, W, 3]``."""
    if mode not in STATIC_MODES:
        raise ValueError(f"mode must be one of {STATIC_MODES}, got {mode!r}")
    if images.dtype != np.uint8:
        raise ValueError(f"images must be uint8, got {images.dtype}")
    if not color:
        return images
    if mode == "v":
        return images.max(axis=-1)
    # PIL's fixed-point ITU-R 601 luma: (R*19595 + G*38470 + B*7471 + 2**15) >> 16
    rgb = images.astype(np.uint32)
    luma = rgb[..., 0] * 19595 + rgb[..., 1] * 38470 + rgb[..., 2] * 7471 + 0x8000
    return (luma >> 16).astype(np.uint8)


def _resize(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = int(size[0]), int(size[1])
    if gray.shape == (height, width):
        return np.ascontiguousarray(gray)
    resized = Image.fromarray(np.ascontiguousarray(gray)).resize((width, height), Image.Resampling.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def _pad(gray: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    height, width = int(size[0]), int(size[1])
    h, w = gray.shape
    if h > height or w > width:
        scale = min(height / h, width / w)
        h, w = max(1, round(h * scale)), max(1, round(w * scale))
        gray = _resize(gray, (h, w))
    out = np.zeros((height, width), dtype=np.uint8)
    top, left = (height - h) // 2, (width - w) // 2
    out[top : top + h, left : left + w] = gray
    return out


def _fit(gray: np.ndarray, size: tuple[int, int], fit: str) -> np.ndarray:
    if fit not in STATIC_FITS:
        raise ValueError(f"fit must be one of {STATIC_FITS}, got {fit!r}")
    return _pad(gray, size) if fit == "pad" else _resize(gray, size)


def static_frame(
    image: np.ndarray, size: tuple[int, int], mode: str = "gray", fit: str = "resize"
) -> np.ndarray:
    """uint8 ``[H, W]`` at ``size = (H, W)`` from a uint8 ``[h, w]`` or ``[h, w, 3]`` image."""
    image = np.asarray(image)
    if image.ndim == 3 and image.shape[-1] == 1:
        image = image[..., 0]
    if not (image.ndim == 2 or (image.ndim == 3 and image.shape[-1] == 3)):
        raise ValueError(f"expected an image [H, W] or [H, W, 3], got shape {image.shape}")
    return _fit(_reduce(image, mode, color=image.ndim == 3), size, fit)


def static_frames(
    images: np.ndarray, size: tuple[int, int], mode: str = "gray", fit: str = "resize"
) -> np.ndarray:
    """Batch of ``static_frame``: uint8 ``[N, H, W]`` from ``[N, h, w]`` or ``[N, h, w, 3]``.

    The channel reduction is one vectorized step over the batch; PIL has no batched resize, so
    that step is one call per image (microseconds each at these sizes).
    """
    images = np.asarray(images)
    if images.ndim == 4 and images.shape[-1] == 1:
        images = images[..., 0]
    if not (images.ndim == 3 or (images.ndim == 4 and images.shape[-1] == 3)):
        raise ValueError(f"expected images [N, H, W] or [N, H, W, 3], got shape {images.shape}")
    gray = _reduce(images, mode, color=images.ndim == 4)
    out = np.empty((len(gray), int(size[0]), int(size[1])), dtype=np.uint8)
    for i, one in enumerate(gray):
        out[i] = _fit(one, size, fit)
    return out
