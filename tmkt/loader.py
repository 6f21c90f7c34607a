"""The Time-step Mixup loader: an NVIDIA DALI pipeline that pairs, augments and mixes on the device.

How one batch is made:

1. Host (``MixLoader._produce``): the next slice of this rank's shard of the epoch permutation, and the
   random draws for it (``tmkt.draws.draw_batch``: paired static per recording, cut point, crop offset, flip)
   from a numpy Generator seeded by (seed, epoch, rank). Drawing on the host makes every run
   reproducible and lets tests feed the very same draws to the pure-torch reference
   (``tmkt.reference``) and compare bit for bit. The mask ``t >= t*`` becomes a frame order over
   the sample's ``[e_1..e_T, s]`` (``t-1`` where the mask is 1, ``T`` where it is 0,
   ``frame_orders``).
2. Gather (``PairedFrames``): each recording's event counts as float32 followed by its paired
   static, mapped through the ``v / 255 * static_scale`` table and copied to both polarities:
   ``[T+1, 2, H, W]`` per sample. In host memory with numpy, or in GPU memory with torch when the data
   is resident there (then only indices cross PCIe). With roll, rotation, shear, cutout or pixel drop
   on (``tmkt.augment``), the gather goes through the sample's integer source map, which then holds
   the crop and the mirror too; with time drop an all-zero frame follows, for the dropped steps of
   the frame order to point at.
3. DALI graph (``tmkt.mix_graph.build_mix_graph``, one graph for CPU and GPU): crop with zero padding
   and mirror (unless the source map did them), the same for all ``T+1`` frames of a sample, and mix with
   ``sequence_rearrange`` by the frame order. That is ``out = s + (e - s) * mask`` for a 0/1 mask,
   done as a copy: exact, and one pass over the batch. With ``with_events`` (mode "mix") a second
   ``sequence_rearrange`` of the same augmented frames, by the all-events order, gives each sample's
   pure event sequence: the same crop, flip, source map and dropped steps as its mixed sequence.
   The cast and the static table belong to the gather, which touches every value anyway: as separate
   DALI operators on the CPU they cost three more passes, and the loader ran at half its speed.
4. Outputs go to torch: shared through DLPack on the CPU (no copy), copied on the current stream
   through ``feed_ndarray`` on the GPU.

DALI 2.4 pitfalls handled here: the last partial batch is fed as a smaller batch (a source that
raised StopIteration mid-batch would drop it); all random integers come from the host, never from
DALI's integer ``random.uniform`` (its range includes the upper end); sources return numpy arrays,
never numpy scalars. Sources are not ``parallel``: the host work per batch is one gather and a few
tiny draws, which spawned workers would only slow down with copies.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from tmkt.augment import drop_steps, drops_time, source_map
from tmkt.data import MixData
from tmkt.draws import AugmentConfig, MixedBatch, augment_active, draw_batch, frame_orders
from tmkt.mix_graph import LockstepFeed, PairedFrames, build_mix_graph
from tmkt.mixing import mag_targets, mrp_targets, solve_p
from tmkt.settings import DEVICES

MODES = ("mix", "event", "static", "pair")
RESIDENT = ("auto", "on", "off")


@dataclass
class LoaderConfig:
    batch_size: int = 64
    mode: str = "mix"  # "mix" | "event" | "static" | "pair"
    shuffle: bool = True
    seed: int = 0
    augment: AugmentConfig | None = None
    drop_last: bool = False
    resident: str = "auto"  # "auto" | "on" | "off": keep the frames in GPU memory ("auto": when on a GPU)
    device: str = "auto"  # "cpu" | "cuda" | "auto"
    num_threads: int = 2
    prefetch: int = 2  # DALI prefetch queue depth; a new ratio reaches batches (prefetch - 1) later
    # mode "mix": also emit each sample's pure event sequence (same crop and flip) as ``MixedBatch.events``
    with_events: bool = False

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode must be one of {MODES}, got {self.mode!r}")
        if self.resident not in RESIDENT:
            raise ValueError(f"resident must be one of {RESIDENT}, got {self.resident!r}")
        if self.device not in DEVICES:
            raise ValueError(f"device must be one of {DEVICES}, got {self.device!r}")
        if self.with_events and self.mode != "mix":
            raise ValueError(f"with_events needs mode 'mix', got {self.mode!r}")
        if self.batch_size < 1 or self.num_threads < 1 or self.prefetch < 1:
            raise ValueError("batch_size, num_threads and prefetch must be >= 1")


def cuda_device_count() -> int:
    """GPUs that DALI can use (0 on a machine without CUDA)."""
    from nvidia.dali import backend

    try:
        return int(backend.GetCUDADeviceCount())
    except RuntimeError:
        return 0


class MixLoader:
    """One epoch per ``iter()``: this rank's shard of a seeded permutation, mixed by the DALI graph.

    Sharding: every rank shuffles with the same (seed, epoch) and takes every ``world_size``-th
    recording from position ``rank``, so shards are disjoint and together hold every recording.
    With ``drop_last`` every shard is cut to ``N // world_size`` recordings and whole batches, so that
    all ranks run the same number of steps (DDP would hang otherwise).
    Like torch's DistributedSampler, the order changes only when ``set_epoch`` is called.
    """

    def __init__(self, data: MixData, cfg: LoaderConfig, rank: int = 0, world_size: int = 1) -> None:
        if not 0 <= rank < world_size:
            raise ValueError(f"rank must lie in [0, {world_size}), got {rank}")
        if cfg.mode != "event" and len(data.static_frames) == 0:
            raise ValueError(f"mode {cfg.mode!r} needs static images; this data has none")
        self.data, self.cfg, self.rank, self.world_size = data, cfg, rank, world_size
        self.device = self._pick_device(cfg.device)
        self.resident = cfg.resident == "on" or (cfg.resident == "auto" and self.device == "cuda")
        if self.resident and self.device != "cuda":
            raise ValueError("resident='on' needs device 'cuda'")
        self._statics = data.statics_by_class() if cfg.mode != "event" else None
        if self._statics is not None:
            missing = np.setdiff1d(np.unique(data.event_labels), np.flatnonzero(self._statics.count))
            if missing.size:
                raise ValueError(
                    f"classes {missing.tolist()} have recordings but no static image to pair with"
                )
        self._frames = PairedFrames(data, cfg.mode, on_gpu=self.resident, zero_frame=drops_time(cfg.augment))
        # host inputs of the graph; crop offsets and flips only when the graph uses them
        augment = cfg.augment if augment_active(cfg.augment) else None
        self._host_parts = ["order", "mag", "labels", "mrp", "index"]
        self._host_parts += ["static_order"] if cfg.mode == "pair" else []
        self._host_parts += ["event_order"] if cfg.with_events else []
        in_graph = augment is not None and not augment.warps  # else the source map crops and mirrors
        self._host_parts += ["offset"] if in_graph and augment.crop_padding > 0 else []
        self._host_parts += ["flip"] if in_graph and augment.hflip else []
        self._pipe = None
        self._open_epoch = None
        self._epoch = 0
        self.set_ratio(0.5)

    @staticmethod
    def _pick_device(device: str) -> str:
        gpus = cuda_device_count() if device != "cpu" else 0
        if device == "cuda" and gpus == 0:
            raise RuntimeError("device 'cuda' asked for, but DALI sees no CUDA device")
        return "cuda" if device == "cuda" or (device == "auto" and gpus > 0) else "cpu"

    # ---- public controls -------------------------------------------------------------------------

    def set_ratio(self, r_m: float) -> None:
        """Target event fraction for the batches drawn from now on (mode "mix" only)."""
        self.ratio = float(r_m)
        self._p = solve_p(self.ratio, self.data.time_steps)

    def set_epoch(self, epoch: int) -> None:
        """Select the permutation and the draws of ``epoch``: deterministic given (seed, epoch)."""
        self._epoch = int(epoch)

    def shard(self, epoch: int) -> np.ndarray:
        """The recording indices this rank visits in ``epoch``, in order."""
        n = len(self.data.event_frames)
        order = (
            np.random.default_rng([self.cfg.seed, epoch]).permutation(n) if self.cfg.shuffle else np.arange(n)
        )
        mine = order[self.rank :: self.world_size]
        if self.cfg.drop_last:
            mine = mine[: n // self.world_size]
            mine = mine[: len(mine) - len(mine) % self.cfg.batch_size]
        return mine

    def epoch_rng(self, epoch: int) -> np.random.Generator:
        """The generator of the batch draws in ``epoch`` (tests replay it through the reference)."""
        return np.random.default_rng([self.cfg.seed, epoch, self.rank, 1])

    def batches(self, epoch: int) -> list[np.ndarray]:
        """This rank's batches of recording indices in ``epoch``; the last one may be smaller."""
        mine, size = self.shard(epoch), self.cfg.batch_size
        return [mine[start : start + size] for start in range(0, len(mine), size)]

    def __len__(self) -> int:
        return len(self.batches(self._epoch))

    # ---- the epoch -------------------------------------------------------------------------------

    def __iter__(self) -> Iterator[MixedBatch]:
        if self._open_epoch is not None:
            self._pipe = None  # an earlier epoch is still open: give this one its own pipeline
        token = self._open_epoch = object()
        batches = iter(self.batches(self._epoch))
        rng = self.epoch_rng(self._epoch)
        pipe, feed = self._pipeline()
        feed.restart(lambda: self._produce(next(batches), rng))
        finished = False
        try:
            while True:
                try:
                    outputs = pipe.run()
                except StopIteration:
                    break
                yield self._to_batch(outputs)
            finished = True
        finally:
            if self._open_epoch is token:
                self._open_epoch = None
            if finished:
                pipe.reset()
            elif self._pipe is not None and self._pipe[0] is pipe:
                self._pipe = None  # left mid-epoch: its prefetched batches are stale, rebuild

    def _produce(self, index: np.ndarray, rng: np.random.Generator) -> tuple[list, list]:
        draws = draw_batch(self.data, index, self._p, rng, self.cfg.augment, self.cfg.mode, self._statics)
        T, zero = self.data.time_steps, self._frames.zero_slot
        parts = {
            "order": drop_steps(frame_orders(draws.cut, T, self.cfg.mode), draws.drop_time, zero),
            "static_order": drop_steps(np.full((len(index), T), T, dtype=np.int32), draws.drop_time, zero),
            "event_order": drop_steps(frame_orders(draws.cut, T, "event"), draws.drop_time, zero),
            "mag": mag_targets(draws.cut, T),
            "offset": draws.offset,
            "flip": draws.flip,
            "labels": self.data.event_labels[index],
            "mrp": mrp_targets(draws.cut, T),
            "index": index.astype(np.int64),
        }
        host = [parts[name] for name in self._host_parts]
        mapping = source_map(draws, self.data.frame_size, crop_flip=True)
        return host, self._frames.take(index, draws.static_index, mapping)

    def _pipeline(self):
        """The DALI pipeline and the feed its sources read, built together (one feed per pipeline)."""
        if self._pipe is None:
            feed = LockstepFeed(keep=self.cfg.prefetch + 2)
            self._pipe = (self._build_pipeline(feed), feed)
        return self._pipe

    def _build_pipeline(self, feed: LockstepFeed):
        from nvidia.dali import fn
        from nvidia.dali.pipeline import Pipeline

        cfg, data = self.cfg, self.data
        on_gpu = self.device == "cuda"
        pipe = Pipeline(
            batch_size=cfg.batch_size,
            num_threads=cfg.num_threads,
            device_id=torch.cuda.current_device() if on_gpu else None,
            prefetch_queue_depth=cfg.prefetch,
            exec_dynamic=True,
            seed=cfg.seed,
        )
        with pipe:
            host = dict(
                zip(
                    self._host_parts,
                    fn.external_source(
                        source=lambda: feed.take(0),
                        num_outputs=len(self._host_parts),
                        batch=True,
                        no_copy=True,
                    ),
                    strict=True,
                )
            )
            frames = fn.external_source(
                source=lambda: feed.take(1),
                batch=True,
                no_copy=True,
                layout="FCHW",
                device="gpu" if self.resident else "cpu",
            )
            outs = build_mix_graph(
                frames,
                host,
                cfg.mode,
                data.frame_size,
                cfg.augment,
                to_gpu=on_gpu and not self.resident,
                with_events=cfg.with_events,
            )
            pipe.set_outputs(*outs, host["mag"], host["labels"], host["mrp"], host["index"])
        pipe.build()
        return pipe

    def _to_batch(self, outputs) -> MixedBatch:
        tensors = [_to_torch(out, self.device) for out in outputs]
        static = tensors.pop(1) if self.cfg.mode == "pair" else None
        events = tensors.pop(1) if self.cfg.with_events else None
        frames, mag, labels, mrp, index = tensors
        return MixedBatch(
            frames=frames, labels=labels, mag=mag, mrp=mrp, static=static, events=events, index=index
        )


def _to_torch(tensor_list, device: str) -> torch.Tensor:
    """A DALI batch as a torch tensor on ``device``.

    CPU outputs are shared through DLPack without a copy: DALI's dynamic executor (``exec_dynamic``)
    hands out buffers it does not reuse while they are referenced (tests/test_loader.py holds batches
    across iterations to check it). GPU outputs are copied on torch's current stream.
    """
    from nvidia.dali.backend import TensorListGPU

    dense = tensor_list.as_tensor()
    if isinstance(tensor_list, TensorListGPU):
        from nvidia.dali.plugin.pytorch import feed_ndarray, to_torch_type

        out = torch.empty(dense.shape(), dtype=to_torch_type[dense.dtype], device=device)
        feed_ndarray(dense, out, cuda_stream=torch.cuda.current_stream())
        return out
    return torch.from_dlpack(dense).to(device)


def endless(loader: MixLoader) -> Iterator[MixedBatch]:
    """Batches without end, reshuffled each epoch: for benchmarks that time a number of steps."""
    epoch = 0
    while True:
        loader.set_epoch(epoch)
        yield from loader
        epoch += 1
