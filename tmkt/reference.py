"""The specification of Time-step Mixup in plain torch, written for clarity rather than speed.

The DALI loader (``tmkt.loader``) must produce exactly what this module produces from the same draws;
tests compare the two bit for bit. The trainer and the tests also share ``apply_mix``.
"""

from __future__ import annotations

import numpy as np
import torch

from tmkt.data import MixData, static_lut
from tmkt.draws import AugmentConfig, Draws, MixedBatch, augment_active, draw_batch
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


def mix_batch_reference(
    data: MixData,
    indices: np.ndarray,
    r_m: float,
    rng: np.random.Generator,
    augment: AugmentConfig | None = None,
    *,
    mode: str = "mix",
    draws: Draws | None = None,
) -> MixedBatch:
    """One batch as the method defines it, on the CPU.

    For each recording: a random static of the same label (uniform among that class's statics),
    scaled by ``data.static_scale``, copied to both polarities and all T steps; a cut ``t*`` drawn for
    the event ratio ``r_m``; the same crop and flip for the events and their static; then the mix
    and the MAG / MRP targets. ``draws`` (or the state of ``rng``) fixes every random choice, so the
    loader fed the same draws must return the same tensors. Modes as in ``LoaderConfig.mode``.
    """
    indices = np.asarray(indices, dtype=np.int64)
    T = data.time_steps
    if draws is None:
        draws = draw_batch(data, indices, solve_p(r_m, T), rng, augment, mode)
    if not augment_active(augment) and (draws.offset.any() or draws.flip.any()):
        raise ValueError("draws carry a crop or flip but augmentation is off")
    fixed_cut = {"event": 1, "pair": 1, "static": T + 1}.get(mode)
    if fixed_cut is not None and np.any(draws.cut != fixed_cut):
        raise ValueError(f"mode {mode!r} fixes the cut at {fixed_cut}")
    events = static_seq = None
    if mode != "static":
        events = torch.from_numpy(data.event_frames[indices].astype(np.float32))
        events = shift_and_flip(events, draws.offset, draws.flip)
    if mode != "event":
        lut = torch.from_numpy(static_lut(data.static_scale))
        statics = lut[torch.from_numpy(data.static_frames[draws.static_index]).long()]
        static_seq = expand_static(shift_and_flip(statics, draws.offset, draws.flip), T)
    if mode == "mix":
        frames = apply_mix(static_seq, events, draws.cut)
    else:
        frames = static_seq if mode == "static" else events
    return MixedBatch(
        frames=frames,
        labels=torch.from_numpy(data.event_labels[indices]),
        mag=torch.from_numpy(mag_targets(draws.cut, T)),
        mrp=torch.from_numpy(mrp_targets(draws.cut, T)),
        static=static_seq if mode == "pair" else None,
        index=torch.from_numpy(indices),
    )
