"""A split's event frames read from the store by whole shards, in a reproducible shuffled order,
with at most two buffers in memory: the reading half of `tmkt.streaming`.

- The unit of reading is the store's shard (``DatasetReader.frames_shard_rows``: 256 recordings):
  one bulk read decodes a shard's chunks together, where a read per sample costs milliseconds.
- Order (quasi-random, as FFCV's and WebDataset's shard shuffles): the shards are permuted with
  (seed, epoch); rank ``r`` of ``w`` takes every ``w``-th shard from position ``r``; consecutive
  shards form buffers of ``buffer_shards``, and the recordings of a buffer are permuted with
  (seed, epoch, rank). Every recording comes once per epoch.
- Memory: a background thread reads the next buffer (its shards on ``read_threads`` threads) while
  the loader gathers from the current one, and never holds more than two buffers. Once an epoch's
  buffers are read, the thread reads the next epoch's first one, so that no epoch starts by waiting.
"""

from __future__ import annotations

import queue
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

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
        self._active: ShardCursor | None = None

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

    def open(self, buffers: list[np.ndarray], following: list[np.ndarray] | None = None) -> ShardCursor:
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
        self._active = ShardCursor(self, buffers, following, ahead, offset)
        return self._active


class ShardCursor:
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
