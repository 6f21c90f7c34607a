"""Training splits larger than memory: event frames streamed from the store by whole shards.

The resident loader (``tmkt.loader``) holds a split in memory; that stops working when a split
outgrows the machine (N-ImageNet at T=10, 48x48 is about 160 GB of uint16 frames) and when every DDP
rank of a node loads the whole split. Here the same ``MixLoader`` (same draws, same host gather,
same DALI graph) reads its event frames from a ``ShardStream`` instead of an array:

- The unit of reading is the store's shard (``DatasetReader.frames_shard_rows``: 256 recordings):
  one bulk read decodes a shard's chunks together, where a read per sample costs milliseconds.
- Order (quasi-random, as FFCV's and WebDataset's shard shuffles): the shards are permuted with
  (seed, epoch); rank ``r`` of ``w`` takes every ``w``-th shard from position ``r``, so each rank
  reads only its own shards; consecutive shards form buffers of ``buffer_shards``, and the
  recordings of a buffer are permuted with (seed, epoch, rank). Every recording comes once per epoch.
- Memory: a background thread reads the next buffer (its shards on ``read_threads`` threads) while
  the loader gathers from the current one, and never holds more than two buffers: at most
  ``max_resident_bytes`` of event frames whatever the size of the split. Once an epoch's buffers are
  read, the thread reads the next epoch's first one, so that no epoch starts by waiting.
- Reading: each shard is fetched in one store request and its chunks decoded straight into the
  buffer (``storage.bulk``), several shards at once on ``read_threads`` threads.

The mean count that scales the statics (``static_scale_of``) is read once at start, from at most
``MEAN_SHARDS`` shards spread over the split (exact for smaller splits). Statics stay resident (a
uint8 image is ``2T`` times smaller than its recording's frames) unless they take more than half of
the budget: then each epoch pairs the recordings with a ``StaticPool`` of them that fills a quarter
of it, and the event buffers share the rest. A buffer holds at least one shard, so a budget below
two shards' frames is exceeded by that much.
"""

from __future__ import annotations

import dataclasses
import queue
import threading
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from tmkt.data import MixData, StaticsByClass, mean_value, recordings_read, scale_of_means
from tmkt.errors import BudgetTooSmall
from tmkt.loader import LoaderConfig, MixedBatch, MixLoader
from tmkt.settings import StreamConfig

if TYPE_CHECKING:
    from storage.reader import DatasetReader

#: Shards read to estimate a streamed split's mean count (4096 recordings at 256 a shard).
MEAN_SHARDS = 16


class ShardStream:
    """The uint16 event frames ``[N, T, 2, H, W]`` of one split, read from a store snapshot by shard.

    Looks like the array it stands for (``shape``, ``dtype``, ``len``) so that code which only asks
    for sizes works unchanged; the rows themselves come from an epoch's ``open`` cursor, in order.
    """

    def __init__(
        self,
        path: str | Path,
        snapshot: str,
        key: str,
        rows: np.ndarray,
        buffer_bytes: int,
        read_threads: int,
    ) -> None:
        from storage.reader import DatasetReader

        self.path, self.key, self.read_threads = path, key, read_threads
        self.reader = DatasetReader(path, snapshot=snapshot)
        self.rows = np.asarray(rows, dtype=np.int64)  # the split's rows in the store, ascending
        spec = self.reader.frame_spec(key)
        self.shape = (len(self.rows), spec.time_bins, 2, *spec.size)
        self.dtype = np.dtype(np.uint16)
        self.shard_rows = self.reader.frames_shard_rows(key)
        # split-local indices grouped by the store shard that holds them
        cuts = np.flatnonzero(np.diff(self.rows // self.shard_rows)) + 1
        self.shards = np.split(np.arange(len(self.rows)), cuts) if len(self.rows) else []
        row_bytes = int(np.prod(self.shape[1:])) * self.dtype.itemsize
        self.buffer_shards = max(1, buffer_bytes // max(1, self.shard_rows * row_bytes))
        self._pool: ThreadPoolExecutor | None = None
        self._slots: list[np.ndarray] = []
        self._active: _Cursor | None = None

    def __len__(self) -> int:
        return self.shape[0]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape)) * self.dtype.itemsize

    def read(
        self, indices: np.ndarray, out: np.ndarray | None = None, then: np.ndarray | None = None
    ) -> np.ndarray:
        """Frames of split-local ``indices`` (in that order) into ``out`` (first rows) when given:
        each store shard fetched in one request and decoded on the stream's threads, while the
        shards of ``then`` (the next read's indices) are fetched."""
        if out is None:
            out = np.empty((len(indices), *self.shape[1:]), dtype=self.dtype)
        out = out[: len(indices)]
        if self._pool is None and self.read_threads > 1:
            # kept: fresh threads each time would each grow a malloc arena
            self._pool = ThreadPoolExecutor(self.read_threads, thread_name_prefix="tmkt-shards")
        later = None if then is None else self.rows[then]
        return self.reader.event_frames_into(self.rows[indices], out, self.key, self._pool, later)

    def slot(self, k: int) -> np.ndarray:
        """Buffer ``k`` of the two that every epoch reuses: allocated once, so that the memory held
        stays two buffers however many are read (freed and reallocated buffers fragment the heap)."""
        while len(self._slots) <= k:
            most = sum(sorted((len(s) for s in self.shards), reverse=True)[: self.buffer_shards])
            self._slots.append(np.empty((most, *self.shape[1:]), dtype=self.dtype))
        return self._slots[k]

    def event_mean(self, most_shards: int = MEAN_SHARDS) -> float:
        """The mean count of the split (``static_scale_of`` needs it): exact over all shards when
        there are at most ``most_shards``, else over that many spread evenly over the split, so that
        starting a run (on every rank) never reads a large split whole."""
        picked = np.unique(
            np.linspace(0, len(self.shards) - 1, min(most_shards, len(self.shards))).astype(int)
        )
        total = sum(int(self.read(self.shards[k]).sum(dtype=np.int64)) for k in picked)
        values = sum(len(self.shards[k]) for k in picked) * int(np.prod(self.shape[1:]))
        return total / max(1, values)  # integer sums: the value of a float64 mean of integers

    def plan(
        self, epoch: int, seed: int, shuffle: bool, rank: int, world_size: int
    ) -> list[list[np.ndarray]]:
        """Every rank's buffers in ``epoch`` (split-local indices, in the order they are read)."""
        n = len(self.shards)
        order = np.random.default_rng([seed, epoch]).permutation(n) if shuffle else np.arange(n)
        plans = []
        for r in range(world_size):
            mine = order[r::world_size]
            rng = np.random.default_rng([seed, epoch, r, 2])
            buffers = []
            for start in range(0, len(mine), self.buffer_shards):
                members = np.concatenate([self.shards[s] for s in mine[start : start + self.buffer_shards]])
                buffers.append(rng.permutation(members) if shuffle else members)
            plans.append(buffers)
        return plans

    def open(self, buffers: list[np.ndarray], following: list[np.ndarray] | None = None) -> _Cursor:
        """A pass over ``buffers``; once it has read them, it reads ``following[0]`` (the next
        epoch's first buffer) into the free slot, and the next ``open`` whose first buffer it is
        starts from it: an epoch then never waits for its first read.

        The two buffers are the stream's, so the pass still open (another loader of the same split
        left mid-epoch, or a finished epoch still reading ahead) is closed first: it can never
        overwrite this one."""
        ahead, offset = None, 0
        previous, self._active = self._active, None
        if previous is not None:
            ahead, offset = previous.close(take=buffers[0] if buffers else None)
        self._active = _Cursor(self, buffers, following, ahead, offset)
        return self._active


class _Cursor:
    """One epoch's pass over a stream: rows handed out strictly in plan order, two buffers at most.

    ``cursor[i]`` returns recording ``i``'s frames if ``i`` is the next recording of the plan (the
    gather copies the row at once); anything else is an error, never a silently wrong row. Buffer
    ``k`` lives in slot ``(k + offset) % 2``; ``ahead`` is buffer 0 already read (by the previous
    pass, into slot ``offset``).
    """

    def __init__(
        self,
        stream: ShardStream,
        buffers: list[np.ndarray],
        following: list[np.ndarray] | None = None,
        ahead: np.ndarray | None = None,
        offset: int = 0,
    ) -> None:
        self.buffers = [np.asarray(b, dtype=np.int64) for b in buffers if len(b)]
        self.following = [np.asarray(b, dtype=np.int64) for b in following or () if len(b)]
        self.offset = offset
        self.prefetched: np.ndarray | None = None  # following[0]'s frames, once read
        # buffers alive: the one in use and the one being read (or read ahead)
        self._slots = threading.Semaphore(2 if ahead is None else 1)
        self._ready: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._order, self._frames, self._pos, self._next = np.empty(0, np.int64), None, 0, 0
        first = 0
        if ahead is not None and self.buffers:
            self._ready.put(ahead)
            first = 1
        self._thread = threading.Thread(target=self._read_all, args=(stream, first), daemon=True)
        self._thread.start()

    def _acquire(self) -> bool:
        while not self._slots.acquire(timeout=0.1):
            if self._stop.is_set():
                return False
        return not self._stop.is_set()

    def _read_all(self, stream: ShardStream, first: int) -> None:
        try:
            todo = [*self.buffers, *self.following[:1]]  # the next epoch's first buffer read ahead
            for k in range(first, len(todo)):
                if not self._acquire():
                    return
                then = todo[k + 1] if k + 1 < len(todo) else None  # fetched while k decodes
                frames = stream.read(todo[k], out=stream.slot((k + self.offset) % 2), then=then)
                if k < len(self.buffers):
                    self._ready.put(frames)
                else:
                    self.prefetched = frames
        except BaseException as err:  # handed to the consumer, which raises it
            self._ready.put(err)

    def __getitem__(self, i: int) -> np.ndarray:
        if self._pos == len(self._order):
            self._advance()
        if self._order[self._pos] != i:
            raise RuntimeError(
                f"recording {i} asked for out of the stream's order (next is {self._order[self._pos]})"
            )
        row = self._frames[self._pos]
        self._pos += 1
        return row

    def _advance(self) -> None:
        if self._stop.is_set():
            raise RuntimeError("this pass over the stream was closed: another epoch of the split opened")
        if self._next == len(self.buffers):
            raise RuntimeError("the stream's epoch is exhausted")
        if self._frames is not None:
            self._frames = None
            self._slots.release()
        item = self._ready.get()
        if isinstance(item, BaseException):
            raise item
        self._order, self._frames, self._pos = self.buffers[self._next], item, 0
        self._next += 1

    def close(self, take: np.ndarray | None = None) -> tuple[np.ndarray | None, int]:
        """Stop reading. If this pass was read to its end and ``take`` is the buffer it reads
        ahead, wait for that read and return (its frames, its slot); else (None, 0)."""
        wanted = (
            take is not None
            and self._next == len(self.buffers)
            and bool(self.following)
            and np.array_equal(self.following[0], take)
        )
        if not wanted:
            self._stop.set()
        self._frames = None
        self._thread.join()
        ahead, self.prefetched, self.following = self.prefetched, None, []  # handed over once
        if wanted and ahead is not None:
            return ahead, (len(self.buffers) + self.offset) % 2
        return None, 0


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
        self._cursor: _Cursor | None = None

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
