"""Training splits larger than memory: event frames streamed from the store by whole shards.

The resident loader (``tmkt.loader``) holds a split in memory; that stops working when a split
outgrows the machine (N-ImageNet at T=10, 48x48 is about 160 GB of uint16 frames) and when every DDP
rank of a node loads the whole split. Here the same ``MixLoader`` (same draws, same host gather,
same DALI graph) reads its event frames from a ``ShardStream`` instead of an array:

`tmkt.shards` reads them: whole store shards (256 recordings) in one bulk request each, in an order
shuffled by (seed, epoch) and split between DDP ranks by shard, never more than two buffers at once
(at most ``max_resident_bytes`` of event frames whatever the size of the split), the next buffer
read in the background while the loader gathers from the current one.

The mean count that scales the statics (``static_scale_of``) is read once at start, from at most
``MEAN_SHARDS`` shards spread over the split (exact for smaller splits). Statics stay resident (a
uint8 image is ``2T`` times smaller than its recording's frames) unless they take more than half of
the budget: then each epoch pairs the recordings with a ``StaticPool`` of them that fills a quarter
of it, and the event buffers share the rest. A buffer holds at least one shard, so a budget below
two shards' frames is exceeded by that much.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tmkt.data import MixData, StaticsByClass, mean_value, recordings_read, scale_of_means
from tmkt.errors import BudgetTooSmall
from tmkt.loader import LoaderConfig, MixedBatch, MixLoader
from tmkt.settings import StreamConfig
from tmkt.shards import ShardCursor, ShardStream

if TYPE_CHECKING:
    from storage.reader import DatasetReader


class StaticPool:
    """Static images too many for the budget: each epoch a sample of ``capacity`` of them, drawn
    per class in proportion to the class's share (at least one of every class that has any: each
    recording is paired with a static of its own class), reproducible from (seed, epoch), and read
    from the store's shards in bulk (``DatasetReader.static_frames(indices=...)``).

    Rows rather than whole shards are sampled because folder sources store images class by class:
    a pool of a few whole shards would hold a few classes only.
    """

    def __init__(self, reader: DatasetReader, key: str, capacity: int) -> None:
        self.reader, self.key = reader, key  # a reader of one snapshot: every epoch's pool from it
        self.labels = np.asarray(reader.image_labels, dtype=np.int64)
        present = np.unique(self.labels)
        if capacity < len(present):
            raise BudgetTooSmall(
                f"{reader.path}: the static pool holds {capacity} images, fewer than the "
                f"{len(present)} classes they must cover: give a larger max_resident_bytes"
            )
        self.capacity = min(int(capacity), len(self.labels))
        self._epoch: tuple[tuple[int, int], tuple[np.ndarray, np.ndarray]] | None = None

    def rows(self, seed: int, epoch: int) -> np.ndarray:
        """The sorted store rows of the pool of ``epoch``."""
        rng = np.random.default_rng([seed, epoch, 3])
        classes, counts = np.unique(self.labels, return_counts=True)
        take = np.maximum(1, (self.capacity * counts) // len(self.labels))
        picked = [
            rng.choice(np.flatnonzero(self.labels == c), int(k), replace=False)
            for c, k in zip(classes, np.minimum(take, counts), strict=True)
        ]
        return np.sort(np.concatenate(picked))

    def draw(self, seed: int, epoch: int) -> tuple[np.ndarray, np.ndarray]:
        """uint8 ``[K, H, W]`` frames and int64 ``[K]`` labels of the pool of ``epoch`` (the last
        epoch's pool is kept: the loaders of one epoch share it)."""
        if self._epoch is None or self._epoch[0] != (seed, epoch):
            rows = self.rows(seed, epoch)
            self._epoch = ((seed, epoch), (self.reader.static_frames(self.key, rows), self.labels[rows]))
        return self._epoch[1]

    def mean(self) -> float:
        """The mean static pixel / 255 over ``capacity`` statics spread evenly over the store (fixed
        for the run: the static scale must not change between epochs)."""
        rows = np.unique(np.linspace(0, len(self.labels) - 1, self.capacity).astype(np.int64))
        return mean_value(self.reader.static_frames(self.key, rows)) / 255.0


@dataclass
class StreamedData(MixData):
    """A ``MixData`` whose ``event_frames`` is a ``ShardStream``; labels in memory, and the statics
    too, or with a ``static_pool`` the pool of the epoch (``static_frames`` is epoch 0's pool)."""

    static_pool: StaticPool | None = None

    def __post_init__(self) -> None:
        self.static_frames = np.ascontiguousarray(self.static_frames)
        self.event_labels = np.asarray(self.event_labels, dtype=np.int64)
        self.static_labels = np.asarray(self.static_labels, dtype=np.int64)
        if self.event_labels.shape != (len(self.event_frames),):
            raise ValueError("one label per event recording is required")


def load_split(
    path: str | Path,
    snapshot: str | None = None,
    split: str = "train",
    frames_key: str | None = None,
    max_recordings_per_class: int | None = None,
    seed: int = 0,
    stream: StreamConfig | None = None,
) -> MixData:
    """The split resident (``MixData.from_store``) when it fits the budget, streamed otherwise."""
    from storage.reader import DatasetReader

    stream = stream or StreamConfig()
    reader = DatasetReader(path, snapshot=snapshot)
    key = frames_key or reader.default_frame_key()
    rows = recordings_read(reader, split, max_recordings_per_class, seed, key)
    spec = reader.frame_spec(key)
    event_bytes = len(rows) * spec.time_bins * 2 * spec.size[0] * spec.size[1] * 2
    static_bytes = reader.n_images * spec.size[0] * spec.size[1]
    budget = stream.budget()
    if event_bytes + static_bytes <= budget:
        return MixData.from_store(path, reader.snapshot_id, split, key, max_recordings_per_class, seed)
    pool = None
    if static_bytes > budget // 2:  # the statics stream too: a pool of them in a quarter of the budget
        pool = StaticPool(reader, key, (budget // 4) // (spec.size[0] * spec.size[1]))
        static_bytes = pool.capacity * spec.size[0] * spec.size[1]
    buffer_bytes = (budget - static_bytes) // 2
    if stream.buffer_shards:
        buffer_bytes = (
            stream.buffer_shards * reader.frames_shard_rows(key) * (event_bytes // max(1, len(rows)))
        )
    frames = ShardStream(path, reader.snapshot_id, key, rows, buffer_bytes, stream.read_threads)
    if pool is None:
        static_frames, static_labels = reader.static_frames(key), reader.image_labels
        static_mean = mean_value(static_frames) / 255.0
    else:
        static_frames, static_labels = pool.draw(seed, 0)
        static_mean = pool.mean()
    return StreamedData(
        event_frames=frames,
        # one row per sample: a recording sliced into several samples lends each its label
        event_labels=np.asarray(reader.labels, dtype=np.int64)[reader.frame_recordings(key)][rows],
        static_frames=static_frames,
        static_labels=np.asarray(static_labels, dtype=np.int64),
        static_scale=scale_of_means(frames.event_mean(), static_mean),
        num_classes=len(reader.classes),
        snapshot=str(reader.snapshot_id),
        static_pool=pool,
    )


class StreamingLoader(MixLoader):
    """``MixLoader`` over a ``StreamedData``: the order comes from the stream's plan, the rows from
    its cursor. One epoch is open at a time: a new ``iter()`` closes the previous one's reads, an
    epoch iterated to its end keeps reading the next epoch's first buffer until then."""

    def __init__(self, data: StreamedData, cfg: LoaderConfig, rank: int = 0, world_size: int = 1) -> None:
        # the frames pass through host memory on their way to the graph; nothing is copied up front
        super().__init__(data, dataclasses.replace(cfg, resident="off"), rank, world_size)
        self.stream: ShardStream = data.event_frames
        self._cursor: ShardCursor | None = None

    def buffers(self, epoch: int) -> list[np.ndarray]:
        """This rank's buffers in ``epoch``; with ``drop_last`` cut like every rank's to the same
        whole number of batches (DDP ranks must run the same number of steps)."""
        plans = self.stream.plan(epoch, self.cfg.seed, self.cfg.shuffle, self.rank, self.world_size)
        mine = plans[self.rank]
        if not self.cfg.drop_last:
            return mine
        keep = min(sum(len(b) for b in plan) for plan in plans)
        keep -= keep % self.cfg.batch_size
        cut = []
        for buffer in mine:
            cut.append(buffer[: max(0, keep)])
            keep -= len(cut[-1])
        return [b for b in cut if len(b)]

    def shard(self, epoch: int) -> np.ndarray:
        buffers = self.buffers(epoch)
        return np.concatenate(buffers) if buffers else np.empty(0, np.int64)

    def __iter__(self) -> Iterator[MixedBatch]:
        pool = self.data.static_pool
        if pool is not None and self.cfg.mode != "event":  # this epoch's statics
            frames, labels = pool.draw(self.cfg.seed, self._epoch)
            self._frames.statics = frames
            self._statics = StaticsByClass.build(labels, self.data.num_classes)
        cursor = None
        if self.cfg.mode != "static":  # mode static reads no event frame
            following = self.buffers(self._epoch + 1)  # read ahead once this epoch's are read
            cursor = self._cursor = self.stream.open(self.buffers(self._epoch), following)
            self._frames.events = cursor
        finished = False
        try:
            yield from super().__iter__()
            finished = True
        finally:  # an epoch left mid-way stops reading; a finished one keeps reading ahead
            if not finished and cursor is not None and self._cursor is cursor:
                self.close()

    def close(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None


def make_loader(data: MixData, cfg: LoaderConfig, rank: int = 0, world_size: int = 1) -> MixLoader:
    """The loader for ``data``: streaming when its frames are a stream, resident otherwise."""
    if isinstance(data, StreamedData):
        return StreamingLoader(data, cfg, rank, world_size)
    return MixLoader(data, cfg, rank, world_size)
