"""Static preprocessing: channel reduction bit-exact with PIL, PIL bilinear resize."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from pipelines.images import static_frame, static_frames


@pytest.fixture
def rgb_images() -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)


def test_gray_equals_pil_luma_exactly(rgb_images):
    for image in rgb_images:
        expected = np.asarray(Image.fromarray(image).convert("L"))
        np.testing.assert_array_equal(static_frame(image, (32, 32), "gray"), expected)


def test_v_is_max_over_rgb():
    image = np.array([[[10, 200, 30], [255, 0, 0]], [[0, 0, 0], [7, 8, 9]]], dtype=np.uint8)
    np.testing.assert_array_equal(static_frame(image, (2, 2), "v"), [[200, 255], [0, 9]])
    np.testing.assert_array_equal(static_frame(image, (2, 2), "gray"), [[124, 76], [0, 8]])


def test_gray_input_is_used_as_is_in_both_modes():
    gray = np.random.default_rng(1).integers(0, 256, (28, 28), dtype=np.uint8)
    for mode in ("gray", "v"):
        np.testing.assert_array_equal(static_frame(gray, (28, 28), mode), gray)
        np.testing.assert_array_equal(static_frame(gray[..., None], (28, 28), mode), gray)


def test_resize_is_pil_bilinear_with_antialias():
    gray = np.random.default_rng(2).integers(0, 256, (28, 28), dtype=np.uint8)
    out = static_frame(gray, (34, 48), "gray")
    expected = np.asarray(Image.fromarray(gray).resize((48, 34), Image.Resampling.BILINEAR))
    assert out.shape == (34, 48) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    # downscaling a fine checkerboard averages it (antialias) instead of sampling one phase
    checker = (np.indices((64, 64)).sum(axis=0) % 2 * 255).astype(np.uint8)
    small = static_frame(checker, (16, 16), "gray")
    assert np.all(np.abs(small.astype(int) - 128) <= 2)


@pytest.mark.parametrize("mode", ["gray", "v"])
def test_batch_equals_single(rgb_images, mode):
    batch = static_frames(rgb_images, (20, 24), mode)
    assert batch.shape == (6, 20, 24) and batch.dtype == np.uint8
    for image, out in zip(rgb_images, batch, strict=True):
        np.testing.assert_array_equal(out, static_frame(image, (20, 24), mode))


def test_batch_of_gray_images_three_pixels_wide_is_not_colour():
    gray = np.random.default_rng(3).integers(0, 256, (4, 5, 3), dtype=np.uint8)
    np.testing.assert_array_equal(static_frames(gray, (5, 3), "v"), gray)


def test_bad_shapes_and_modes_are_refused():
    with pytest.raises(ValueError, match="mode"):
        static_frame(np.zeros((4, 4), np.uint8), (4, 4), "hsv")
    with pytest.raises(ValueError, match="expected an image"):
        static_frame(np.zeros((4, 4, 4), np.uint8), (4, 4), "gray")
    with pytest.raises(ValueError, match="uint8"):
        static_frame(np.zeros((4, 4), np.float32), (4, 4), "gray")


@pytest.mark.parametrize("shape", [(28, 28), (20, 30), (34, 34)])
def test_pad_keeps_scale_and_centres(shape):
    image = np.full(shape, 200, dtype=np.uint8)
    out = static_frame(image, (34, 34), fit="pad")
    rows, cols = np.nonzero(out)
    assert out.sum() == image.sum()  # nothing resampled: the same pixels on a black canvas
    assert (rows.min(), 33 - rows.max()) in {((34 - shape[0]) // 2, (34 - shape[0] + 1) // 2)}
    assert cols.min() == (34 - shape[1]) // 2


def test_pad_shrinks_larger_images_keeping_aspect():
    out = static_frame(np.full((100, 50), 255, np.uint8), (34, 34), fit="pad")
    cols = np.flatnonzero(out.any(axis=0))
    assert out.any(axis=1).all() and len(cols) == 17
