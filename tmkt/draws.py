"""The host draws of a batch: every random choice (paired static, cut point, crop, flip, and the
augmentations of `tmkt.augment`), made with numpy on the host, and the mask ``t >= t*`` as a frame order.

Both mixers read them: the DALI loader (`tmkt.loader`) feeds them to its graph, and the pure-torch
specification (`tmkt.reference`) applies them directly, so a test can give both the very same draws
and compare the batches bit for bit, and the reference never imports DALI.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from tmkt.augment import AugmentConfig, augment_active, draw_extra
from tmkt.data import MixData, StaticsByClass
from tmkt.mixing import sample_cut


@dataclass
class MixedBatch:
    frames: torch.Tensor  # float32 [B, T, 2, H, W] (mixed, or events/statics by mode)
    labels: torch.Tensor  # int64 [B]
    mag: torch.Tensor  # float32 [B, T]   (1 = event frame)
    mrp: torch.Tensor  # float32 [B]      (event fraction of the sequence)
    static: torch.Tensor | None = None  # mode "pair": the paired static sequence [B, T, 2, H, W]
    events: torch.Tensor | None = None  # mode "mix" with_events: the pure event sequence [B, T, 2, H, W]
    index: torch.Tensor | None = None  # recording indices (epoch-coverage tests)


@dataclass
class Draws:
    """The random choices for one batch, made on the host and fed to the graph (and the reference)."""

    static_index: np.ndarray  # int64 [B]: paired static image; -1 where the mode uses none
    cut: np.ndarray  # int64 [B] in 1..T+1 (T+1 = no cut)
    offset: np.ndarray  # int32 [B, 2]: crop start (y, x) relative to the frame, in [-pad, pad]
    flip: np.ndarray  # int32 [B]: 1 = mirror left-right
    # tmkt.augment's draws (None = off): roll int32 [B, 2] (dy, dx); angle, shear float64 [B] degrees;
    # cutout int32 [B, 4] (y, x, h, w); drop_pixel bool [B, H, W]; drop_time bool [B, T] (True = dropped)
    roll: np.ndarray | None = None
    angle: np.ndarray | None = None
    shear: np.ndarray | None = None
    cutout: np.ndarray | None = None
    drop_pixel: np.ndarray | None = None
    drop_time: np.ndarray | None = None


def draw_batch(
    data: MixData,
    indices: np.ndarray,
    p: float,
    rng: np.random.Generator,
    augment: AugmentConfig | None,
    mode: str = "mix",
    statics: StaticsByClass | None = None,
) -> Draws:
    """All draws for one batch, always in the same order, so one Generator state gives one batch.

    Mode "event" and "pair" fix the cut at 1 (all events), "static" at T+1 (all static).
    """
    indices = np.asarray(indices, dtype=np.int64)
    n, T = len(indices), data.time_steps
    if mode == "event":
        static_index = np.full(n, -1, dtype=np.int64)
    else:
        statics = statics if statics is not None else data.statics_by_class()
        static_index = statics.pick(data.event_labels[indices], rng.random(n))
    if mode == "mix":
        cut = sample_cut(p, T, n, rng)
    else:
        cut = np.full(n, T + 1 if mode == "static" else 1, dtype=np.int64)
    offset = np.zeros((n, 2), dtype=np.int32)
    flip = np.zeros(n, dtype=np.int32)
    if augment_active(augment):
        pad = augment.crop_padding
        # floats then floor: uniform on the 2*pad+1 integers -pad..pad
        offset = (np.floor(rng.random((n, 2)) * (2 * pad + 1)) - pad).astype(np.int32)
        if augment.hflip:
            flip = (rng.random(n) < 0.5).astype(np.int32)
    extra = draw_extra(augment, n, T, data.frame_size, rng)
    return Draws(static_index=static_index, cut=cut, offset=offset, flip=flip, **extra)


def frame_orders(cut: np.ndarray, T: int, mode: str) -> np.ndarray:
    """int32 ``[B, T]``: which input frame becomes each output step, the mask ``t >= t*`` as an order.

    The graph's input per sample is ``[e_1..e_T, s]`` (modes mix and pair), ``[e_1..e_T]`` (event) or
    ``[s]`` (static). Mix takes ``e_t`` (index ``t-1``) where ``t >= t*`` and ``s`` (index ``T``)
    elsewhere; event takes every ``e_t``; static and the paired sequence of mode pair repeat ``s``.
    """
    steps = np.arange(1, T + 1, dtype=np.int32)
    cut = np.asarray(cut, dtype=np.int32)[:, None]
    if mode == "mix":
        return np.where(steps >= cut, steps - 1, T).astype(np.int32)
    if mode == "static":
        return np.zeros((len(cut), T), dtype=np.int32)
    return np.tile(steps - 1, (len(cut), 1))
