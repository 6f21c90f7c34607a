"""Augmentations of event frames, drawn on the host and applied the same way by the loader and the reference.

Besides the random crop and flip (done in the DALI graph), the augmentations that results on event
data depend on:

- NDA (Li et al. 2022, "Neuromorphic Data Augmentation for Training Spiking Neural Networks"):
  ``roll`` (a circular shift of up to ``roll`` pixels along each axis), ``rotate`` (an angle drawn in
  ``[-rotate, rotate]`` degrees, counter-clockwise as displayed), ``shear`` (a horizontal shear by an
  angle drawn in ``[-shear, shear]`` degrees: rows below the centre move right for a positive angle)
  and ``cutout`` (a box of sides drawn in ``1..cutout``, wholly inside the frame, set to zero);
- EventDrop (Gu et al. 2021): ``drop_pixel`` (each pixel dropped with this probability, at every
  step and polarity) and ``drop_time`` (a run of consecutive time steps set to zero; its length is
  drawn in ``0..floor(drop_time * T)``, like EventDrop's time window, a fraction of the recording).

Each is off at its default (0). All draws come from the batch's numpy Generator, so one seed gives
one batch. The geometric ones and the pixel masks are turned, on the host, into one integer source
map per sample (``source_map``): output pixel ``i`` takes input pixel ``map[i]``, or 0 where
``map[i] == -1``. That is nearest-neighbour sampling with zero fill, and a gather is exact: the DALI
loader and the torch reference apply the very same map and agree bit for bit, where two
interpolating warps (DALI's and torch's) would differ in their rounding. Time drop becomes a frame
order that points the dropped steps at an all-zero frame (``drop_steps``), so the graph's one copy
(``sequence_rearrange``) does it for free.

The map acts on every frame of a sample (events and its paired static alike), before the crop and
the flip; the time drop acts on the output steps after the mix. When the loader draws a map, it
folds the crop and the flip into it (``crop_flip``) and leaves them out of the DALI graph.
"""

from __future__ import annotations

import numba
import numpy as np
import torch

from tmkt.settings import AugmentConfig

#: The Draws fields this module adds (None = that augmentation is off for the batch).
EXTRA_FIELDS = ("roll", "angle", "shear", "cutout", "drop_pixel", "drop_time")


def augment_active(augment: AugmentConfig | None) -> bool:
    return augment is not None and augment.active


def drops_time(augment: AugmentConfig | None) -> bool:
    return augment_active(augment) and augment.drop_time > 0


def _uniform_int(rng: np.random.Generator, shape, low, high) -> np.ndarray:
    """Integers uniform on ``low..high`` (both included), from floats: one draw per value."""
    return (np.floor(rng.random(shape) * (np.asarray(high) - low + 1)) + low).astype(np.int32)


def draw_extra(
    augment: AugmentConfig | None, n: int, T: int, shape: tuple[int, int], rng: np.random.Generator
) -> dict[str, np.ndarray | None]:
    """The draws of the augmentations besides crop and flip, in a fixed order, for ``n`` samples.

    Returns a value for each name in ``EXTRA_FIELDS``; None for the augmentations that are off (and
    nothing is drawn for them, so turning one on leaves the draws of the others' batches alone).
    """
    out: dict[str, np.ndarray | None] = dict.fromkeys(EXTRA_FIELDS)
    if not augment_active(augment):
        return out
    H, W = shape
    if augment.roll:
        out["roll"] = _uniform_int(rng, (n, 2), -augment.roll, augment.roll)
    if augment.rotate:
        out["angle"] = (rng.random(n) * 2 - 1) * augment.rotate
    if augment.shear:
        out["shear"] = (rng.random(n) * 2 - 1) * augment.shear
    if augment.cutout:
        h = _uniform_int(rng, n, 1, min(augment.cutout, H))
        w = _uniform_int(rng, n, 1, min(augment.cutout, W))
        y, x = _uniform_int(rng, n, 0, H - h), _uniform_int(rng, n, 0, W - w)
        out["cutout"] = np.stack([y, x, h, w], axis=1)
    if augment.drop_pixel:
        out["drop_pixel"] = rng.random((n, H, W)) < augment.drop_pixel
    if augment.drop_time:
        length = _uniform_int(rng, n, 0, int(np.floor(augment.drop_time * T)))
        start = _uniform_int(rng, n, 0, T - length)
        steps = np.arange(T)[None, :]
        out["drop_time"] = (steps >= start[:, None]) & (steps < (start + length)[:, None])
    return out


def source_map(draws, shape: tuple[int, int], crop_flip: bool = False) -> np.ndarray | None:
    """int64 ``[B, H*W]``: for each output pixel the input pixel it takes (row-major), -1 for zero.

    Output = roll(shear-then-rotate(input)), nearest neighbour about the frame's centre, zero outside;
    then the cutout box and the dropped pixels are set to -1. None when the draws hold none of these.
    ``draws``: anything with the ``EXTRA_FIELDS`` attributes (a ``Draws``). ``crop_flip``: also take
    the draws' crop (``offset``) and mirror (``flip``) after all that, as ``reference.shift_and_flip``
    does them: the loader then makes one gather instead of a gather and DALI's slice and flip, which
    on the CPU cost more than all the other augmentations together.
    """
    names = ("roll", "angle", "shear", "cutout", "drop_pixel")
    present = [getattr(draws, name, None) for name in names]
    if all(value is None for value in present):
        return None
    roll, angle, shear, cutout, drop_pixel = present
    B = len(next(value for value in present if value is not None))
    H, W = shape
    # rows [B, H, 1] and columns [B, 1, W] stay apart until a rotation or shear mixes them
    y, x = np.arange(H)[None, :, None], np.arange(W)[None, None, :]
    if roll is not None:  # out[y, x] = in[(y - dy) % H, (x - dx) % W], as np.roll
        y = (y - roll[:, 0, None, None]) % H
        x = (x - roll[:, 1, None, None]) % W
    u, v = x - (W - 1) / 2, y - (H - 1) / 2
    if angle is not None:  # the inverse rotation takes each output pixel to its source
        a = np.deg2rad(angle)[:, None, None]
        u, v = u * np.cos(a) - v * np.sin(a), u * np.sin(a) + v * np.cos(a)
    if shear is not None:
        u = u - np.tan(np.deg2rad(shear))[:, None, None] * v
    src_y, src_x = np.rint(v + (H - 1) / 2).astype(np.int64), np.rint(u + (W - 1) / 2).astype(np.int64)
    inside = (src_y >= 0) & (src_y < H) & (src_x >= 0) & (src_x < W)
    out = np.where(inside, src_y * W + src_x, -1)
    out = np.broadcast_to(out, (B, H, W)).copy()
    if cutout is not None:
        rows, cols = np.arange(H)[None, :, None], np.arange(W)[None, None, :]
        top, left, h, w = (cutout[:, k, None, None] for k in range(4))
        out[(rows >= top) & (rows < top + h) & (cols >= left) & (cols < left + w)] = -1
    if drop_pixel is not None:
        out[drop_pixel] = -1
    out = out.reshape(B, H * W)
    return crop_and_mirror(out, draws.offset, draws.flip, shape) if crop_flip else out


def crop_and_mirror(
    mapping: np.ndarray, offset: np.ndarray, flip: np.ndarray, shape: tuple[int, int]
) -> np.ndarray:
    """``mapping`` followed by the crop at ``offset`` (zero padding) and the mirror where ``flip``:
    ``out[y, x] = mapping[y + dy, x' + dx]`` with ``x' = W-1-x`` where mirrored, -1 outside."""
    H, W = shape
    y = np.arange(H)[None, :, None] + offset[:, 0, None, None]
    x = np.arange(W)[None, None, :]
    x = np.where(flip[:, None, None] == 1, W - 1 - x, x) + offset[:, 1, None, None]
    inside = (y >= 0) & (y < H) & (x >= 0) & (x < W)
    picked = np.take_along_axis(
        mapping, (np.clip(y, 0, H - 1) * W + np.clip(x, 0, W - 1)).reshape(len(mapping), -1), 1
    )
    return np.where(inside.reshape(len(mapping), -1), picked, -1)


@numba.njit(cache=True, nogil=True)
def gather_pixels(src: np.ndarray, rows: np.ndarray, mapping: np.ndarray, out: np.ndarray) -> None:
    """``out[b, c, k] = src[rows[b], c, mapping[b, k]]`` (0 where ``mapping[b, k] < 0``), cast to
    ``out``'s type: the row copy, the cast and the source map in one pass.

    ``src [N, C, K]``, ``out [B, C, K]`` (views are fine). Compiled: numpy's fancy indexing ran this
    gather 5-10x slower than the copy it replaces and cut the loader's throughput to a few thousand
    samples/s at 34x34.
    """
    B, C, K = out.shape
    for b in range(B):
        r = rows[b]
        for c in range(C):
            for k in range(K):
                j = mapping[b, k]
                out[b, c, k] = src[r, c, j] if j >= 0 else 0


def remap_torch(frames: torch.Tensor, mapping: np.ndarray) -> torch.Tensor:
    """``frames [B, ..., H, W]`` gathered through ``mapping[b]`` (from ``source_map``), on their device."""
    B, H, W = frames.shape[0], *frames.shape[-2:]
    flat = frames.reshape(B, -1, H * W)
    index = torch.from_numpy(mapping).to(frames.device)
    out = torch.gather(flat, 2, index.clamp(min=0)[:, None, :].expand_as(flat))
    out.masked_fill_((index < 0)[:, None, :], 0)
    return out.reshape(frames.shape)


def drop_steps(order: np.ndarray, drop_time: np.ndarray | None, zero_frame: int) -> np.ndarray:
    """A frame order (``[B, T]`` indices into a sample's input frames) with the dropped steps pointed
    at ``zero_frame``, an all-zero input frame."""
    if drop_time is None:
        return order
    return np.where(drop_time, zero_frame, order).astype(order.dtype)


def zero_steps(frames: torch.Tensor, drop_time: np.ndarray | None) -> torch.Tensor:
    """``frames [B, T, ...]`` with the dropped steps set to zero (the reference's time drop)."""
    if drop_time is None:
        return frames
    keep = torch.from_numpy(~drop_time).reshape(*drop_time.shape, *([1] * (frames.dim() - 2)))
    return torch.where(keep.to(frames.device), frames, torch.zeros((), dtype=frames.dtype))
