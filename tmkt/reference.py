"""The specification of Time-step Mixup in plain torch, written for clarity rather than speed.

The DALI loader (``tmkt.loader``) must produce exactly what this module produces from the same draws;
tests compare the two bit for bit. The trainer and the tests also share ``apply_mix``.
"""

from __future__ import annotations

import numpy as np
import torch

from tmkt.augment import EXTRA_FIELDS, AugmentConfig, augment_active, remap_torch, source_map, zero_steps
from tmkt.data import MixData, static_lut
from tmkt.draws import Draws, MixedBatch, draw_batch
from tmkt.mixing import mag_targets, mrp_targets, solve_p


def event_mask(cut: torch.Tensor | np.ndarray, T: int) -> torch.Tensor:
    """bool ``[B, T]``: ``mask[b, t-1] = t >= cut[b]`` for ``t = 1..T`` (True = event frame)."""
    cut = torch.as_tensor(cut)
    steps = torch.arange(1, T + 1, device=cut.device)
    return steps[None, :] >= cut[:, None]


def apply_mix(
    static_seq: torch.Tensor, event_seq: torch.Tensor, cut: torch.Tensor | np.ndarray
) -> torch.Tensor:
    """Mixed sequences ``[B, T, ...]``: the static before the cut ``t*``, the events from ``t*`` on.

    This is ``out = s + (e - s) * mask`` with ``mask_t = 1[t >= t*]``, written as a selection: for a
    0/1 mask both are the same, but ``s + (e - s)`` can miss ``e`` by one rounding step in float32,
    and a selection returns the frames untouched. ``static_seq`` may be any shape that broadcasts to
    the events' (``[B, 1, 1, H, W]`` saves expanding the static to every step first).
    """
    try:
        same = torch.broadcast_shapes(static_seq.shape, event_seq.shape) == event_seq.shape
    except RuntimeError:
        same = False
    if not same:
        raise ValueError(f"static {tuple(static_seq.shape)} does not fit events {tuple(event_seq.shape)}")
    B, T = event_seq.shape[:2]
    mask = event_mask(cut, T).to(event_seq.device)
    mask = mask.reshape(B, T, *([1] * (event_seq.dim() - 2)))
    return torch.where(mask, event_seq, static_seq)


def expand_static(statics: torch.Tensor, T: int) -> torch.Tensor:
    """``[B, H, W]`` static images -> ``[B, T, 2, H, W]``: same image in both polarities and all steps."""
    B, H, W = statics.shape
    return statics[:, None, None].expand(B, T, 2, H, W).contiguous()


def shift_and_flip(images: torch.Tensor, offset: np.ndarray, flip: np.ndarray) -> torch.Tensor:
    """Per sample, crop an ``H x W`` window starting at ``offset = (y, x)`` from the image padded with
    zeros (so ``out[i, j] = in[i + y, j + x]``, 0 outside), then mirror left-right where ``flip``.
    ``images``: ``[B, ..., H, W]``; every leading axis of a sample (time, polarity) moves together."""
    out = torch.zeros_like(images)
    H, W = images.shape[-2:]
    for b, ((y, x), mirror) in enumerate(zip(offset.tolist(), flip.tolist(), strict=True)):
        dst_rows, src_rows = slice(max(0, -y), min(H, H - y)), slice(max(0, y), min(H, H + y))
        dst_cols, src_cols = slice(max(0, -x), min(W, W - x)), slice(max(0, x), min(W, W + x))
        out[b, ..., dst_rows, dst_cols] = images[b, ..., src_rows, src_cols]
        if mirror:
            out[b] = torch.flip(out[b], dims=[-1])
    return out


def warp(images: torch.Tensor, mapping: np.ndarray | None) -> torch.Tensor:
    """``images [B, ..., H, W]`` through a per-sample source map (``tmkt.augment.source_map``): the
    roll, rotation, shear, cutout and pixel drop, all of a sample's frames alike."""
    return images if mapping is None else remap_torch(images, mapping)


def mix_batch_reference(
    data: MixData,
    indices: np.ndarray,
    r_m: float,
    rng: np.random.Generator,
    augment: AugmentConfig | None = None,
    *,
    mode: str = "mix",
    draws: Draws | None = None,
    with_events: bool = False,
) -> MixedBatch:
    """One batch as the method defines it, on the CPU.

    For each recording: a random static of the same label (uniform among that class's statics),
    scaled by ``data.static_scale``, copied to both polarities and all T steps; a cut ``t*`` drawn for
    the event ratio ``r_m``; the same crop and flip for the events and their static; then the mix
    and the MAG / MRP targets. ``draws`` (or the state of ``rng``) fixes every random choice, so the
    loader fed the same draws must return the same tensors. Modes as in ``LoaderConfig.mode``.
    The augmentations of ``tmkt.augment`` act before the crop (the source map, on events and static
    alike) and after the mix (time drop, on every sequence of the sample). ``with_events`` (mode "mix")
    also returns each sample's event sequence under the same augmentation, as ``events``.
    """
    if with_events and mode != "mix":
        raise ValueError(f"with_events needs mode 'mix', got {mode!r}")
    indices = np.asarray(indices, dtype=np.int64)
    T = data.time_steps
    if draws is None:
        draws = draw_batch(data, indices, solve_p(r_m, T), rng, augment, mode)
    extra = [getattr(draws, name) is not None for name in EXTRA_FIELDS]
    if not augment_active(augment) and (draws.offset.any() or draws.flip.any() or any(extra)):
        raise ValueError("draws carry an augmentation but augmentation is off")
    fixed_cut = {"event": 1, "pair": 1, "static": T + 1}.get(mode)
    if fixed_cut is not None and np.any(draws.cut != fixed_cut):
        raise ValueError(f"mode {mode!r} fixes the cut at {fixed_cut}")
    mapping = source_map(draws, data.frame_size)
    events = static_seq = None
    if mode != "static":
        events = torch.from_numpy(data.event_frames[indices].astype(np.float32))
        events = shift_and_flip(warp(events, mapping), draws.offset, draws.flip)
    if mode != "event":
        lut = torch.from_numpy(static_lut(data.static_scale))
        statics = lut[torch.from_numpy(data.static_frames[draws.static_index]).long()]
        static_seq = expand_static(shift_and_flip(warp(statics, mapping), draws.offset, draws.flip), T)
    if mode == "mix":
        frames = apply_mix(static_seq, events, draws.cut)
    else:
        frames = static_seq if mode == "static" else events
    frames = zero_steps(frames, draws.drop_time)
    static_seq = zero_steps(static_seq, draws.drop_time) if static_seq is not None else None
    return MixedBatch(
        frames=frames,
        labels=torch.from_numpy(data.event_labels[indices]),
        mag=torch.from_numpy(mag_targets(draws.cut, T)),
        mrp=torch.from_numpy(mrp_targets(draws.cut, T)),
        static=static_seq if mode == "pair" else None,
        events=zero_steps(events, draws.drop_time) if with_events else None,
        index=torch.from_numpy(indices),
    )
