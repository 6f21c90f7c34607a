"""The device half of the mixing loader: the gather of paired frames and the DALI graph that mixes
them (steps 2 and 3 of `tmkt.loader`'s docstring), and the feed that hands a batch's parts to the
graph's sources in lockstep. `tmkt.loader.MixLoader` draws on the host and drives these.
"""

from __future__ import annotations

from collections import deque

import numpy as np
import torch

from tmkt.augment import gather_pixels, remap_torch
from tmkt.data import MixData, static_lut
from tmkt.draws import AugmentConfig, augment_active


def build_mix_graph(
    frames,
    host: dict,
    mode: str,
    shape: tuple[int, int],
    augment: AugmentConfig | None,
    to_gpu: bool,
    with_events: bool = False,
) -> list:
    """The DALI operators for one batch: returns the output frames (+ the static sequence in "pair",
    + the pure event sequence in "mix" ``with_events``).

    ``frames``: float32 ``[F, 2, H, W]`` per sample (``F`` as in ``frame_orders``), on the CPU or
    already on the GPU; ``host``: the CPU nodes ``order`` (from ``frame_orders``), ``offset`` and
    ``flip``; ``shape``: ``(H, W)``. ``to_gpu``: move the frames to the GPU right after the source.
    Argument inputs (crop start, flip, frame order) stay on the CPU, as DALI requires.

    The crop and the flip act on all ``F`` frames of a sample at once, so an event sequence and its
    static move together; then ``sequence_rearrange`` mixes: a copy of the chosen frames, exact, and
    the one full pass over the batch that the graph makes.
    """
    from nvidia.dali import fn

    H, W = shape
    if to_gpu:
        frames = frames.gpu()
    if augment_active(augment) and not augment.warps:  # with a source map, the gather crops and mirrors
        if augment.crop_padding > 0:
            frames = fn.slice(
                frames, start=host["offset"], shape=[H, W], axis_names="HW", out_of_bounds_policy="pad"
            )
        if augment.hflip:
            frames = fn.flip(frames, horizontal=host["flip"])
    outputs = [fn.sequence_rearrange(frames, new_order=host["order"])]
    if mode == "pair":
        outputs.append(fn.sequence_rearrange(frames, new_order=host["static_order"]))
    if with_events:
        outputs.append(fn.sequence_rearrange(frames, new_order=host["event_order"]))
    return outputs


class PairedFrames:
    """Per batch, each recording's event frames followed by its paired static frame, as float32
    ``[B, F, 2, H, W]``: the graph's input. The static goes through the ``static_lut`` table and into
    both polarity channels here, during the gather, which touches every byte anyway. With time drop
    on, one all-zero frame follows (``zero_slot``), for the dropped steps to point at; with a source
    map (``tmkt.augment.source_map``), every frame of a sample is gathered through it.

    On the host the gather is numpy (a row copy-and-cast per sample: cheaper than a gather then a
    cast), or the compiled ``gather_pixels`` with a source map; with the data resident on the GPU it
    is torch, and only the indices cross PCIe.
    """

    def __init__(self, data: MixData, mode: str, on_gpu: bool, zero_frame: bool = False) -> None:
        self.time_steps = data.time_steps if mode != "static" else 0
        self.with_static = mode != "event"
        self.static_slot = self.time_steps  # 0 in mode "static", where the static is the only frame
        self.zero_slot = self.time_steps + self.with_static
        self.shape = (self.zero_slot + zero_frame, 2, *data.frame_size)
        self.events, self.statics, self.lut = (
            data.event_frames,
            data.static_frames,
            static_lut(data.static_scale),
        )
        self.on_gpu = on_gpu
        if on_gpu:  # only what the mode reads is copied to the GPU
            # int16 rows: torch's uint16 support is partial; _take_gpu reads the bits back unsigned
            self.events = torch.from_numpy(self.events.view(np.int16)).cuda() if self.time_steps else None
            self.statics = torch.from_numpy(self.statics).cuda() if self.with_static else None
            self.lut = torch.from_numpy(self.lut).cuda()

    def take(self, index: np.ndarray, static_index: np.ndarray, mapping: np.ndarray | None = None):
        if self.on_gpu:
            return self._take_gpu(index, static_index, mapping)
        return self._take_host(index, static_index, mapping)

    def _take_host(self, index: np.ndarray, static_index: np.ndarray, mapping) -> np.ndarray:
        T, (B, K) = self.time_steps, (len(index), self.shape[-2] * self.shape[-1])
        out = np.empty((B, *self.shape), dtype=np.float32)
        if mapping is not None and T:
            events, rows = self.events, index
            if not isinstance(events, np.ndarray):
                # a stream's cursor hands out rows in its order, each valid until the next is asked for
                events, rows = np.empty((B, T, *self.shape[1:]), dtype=np.uint16), np.arange(B)
                for row, i in enumerate(index.tolist()):
                    events[row] = self.events[i]
            events = events.reshape(len(events), 2 * T, K)
            gather_pixels(events, rows, mapping, out[:, :T].reshape(B, 2 * T, K))
        else:
            for row, i in enumerate(index.tolist() if T else []):
                out[row, :T] = self.events[i]
        if self.with_static:
            statics = self.lut[self.statics[static_index]]
            if mapping is not None:
                warped = np.empty_like(statics)
                gather_pixels(statics.reshape(B, 1, K), np.arange(B), mapping, warped.reshape(B, 1, K))
                statics = warped
            out[:, self.static_slot] = statics[:, None]
        out[:, self.zero_slot :] = 0
        return out

    def _take_gpu(self, index: np.ndarray, static_index: np.ndarray, mapping) -> torch.Tensor:
        T, device = self.time_steps, self.lut.device
        out = torch.empty((len(index), *self.shape), dtype=torch.float32, device=device)
        if T:
            rows = self.events.index_select(0, torch.from_numpy(index).to(device))
            out[:, :T] = rows.int().bitwise_and_(0xFFFF)  # the int16 bits back to their uint16 counts
        if self.with_static:
            statics = self.statics.index_select(0, torch.from_numpy(static_index).to(device))
            out[:, self.static_slot] = self.lut[statics.long()][:, None]
        if mapping is not None:
            out[:, : self.zero_slot] = remap_torch(out[:, : self.zero_slot], mapping)
        out[:, self.zero_slot :] = 0
        torch.cuda.current_stream().synchronize()  # DALI reads it on its own stream
        return out


class LockstepFeed:
    """Gives DALI's two external sources (host draws on the CPU, frames on the CPU or GPU) the parts of
    the same batch: whichever source asks first makes the batch, the other takes its part."""

    def __init__(self, keep: int) -> None:
        self.produce = None
        self.queues: tuple[deque, deque] = (deque(), deque())
        # the sources use no_copy: DALI reads these arrays until `prefetch` iterations later
        self.alive: deque = deque(maxlen=keep)

    def restart(self, produce) -> None:
        self.produce = produce
        self.queues = (deque(), deque())

    def take(self, part: int) -> list:
        queue = self.queues[part]
        if not queue:
            host, frames = self.produce()  # raises StopIteration at the end of the epoch
            self.queues[0].append(host)
            self.queues[1].append(frames)
            self.alive.append((host, frames))
        return queue.popleft()
