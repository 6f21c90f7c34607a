"""One build = one transaction = one commit.

`Transaction` opens a writable session on the store's branch and a fork of it. Arrays are created
on the fork, so the fork can be pickled to parallel writers (each writes whole shards and returns
its fork); `commit` merges the writers' forks first and the coordinator's fork last (its metadata is
the newest) and commits once. Until then nothing is visible: a build killed half-way leaves the
previous snapshot as it was.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import zarr
from zarr.codecs import BloscCodec

from storage.repo import BRANCH, commit_lock, open_repository
from storage.schema import dimension_names

#: Inner chunk and shard sizes along the first axis. Frames: 16 samples a chunk keeps bulk reads
#: fast, 256 a shard keeps file counts low. Flat event arrays: 256 k events a chunk.
SAMPLE_CHUNK = 16
SAMPLE_SHARD = 256
EVENT_CHUNK = 1 << 18
EVENT_SHARD = 1 << 22
#: Codec of the big arrays (events, frames): LZ4 over byte-shuffled values compresses and
#: decompresses several times faster than Zarr's default Zstandard, for about 20 % more bytes.
BULK_CODEC = BloscCodec(cname="lz4", clevel=5, shuffle="shuffle")


def shard_rows(kind: str) -> int:
    """Rows per shard for arrays of a kind: "events" (flat) or "samples" (one row per item)."""
    return EVENT_SHARD if kind == "events" else SAMPLE_SHARD


class Transaction:
    """Write a complete new version of the dataset and commit it once.

    Use as a context manager; it holds the store's commit lock throughout, and an exception leaves
    the branch untouched.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = path
        self._lock = commit_lock(path)
        self._lock.__enter__()
        try:
            self.repo = open_repository(path, create=True)
            self.session = self.repo.writable_session(BRANCH)
            self.parent_snapshot = self.session.snapshot_id
            self.fork = self.session.fork()
            # mode "w" starts from an empty hierarchy: every build writes the whole dataset.
            self.root = zarr.open_group(self.fork.store, mode="w")
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        self._writer_forks: list[Any] = []
        self.started = time.time()

    def __enter__(self) -> Transaction:
        return self

    def __exit__(self, *exc: object) -> None:
        self._lock.__exit__(None, None, None)

    def create_array(self, name: str, shape: Sequence[int], dtype: Any, kind: str = "samples") -> zarr.Array:
        """An empty array whose shards parallel writers fill; see `shard_rows`."""
        shape = tuple(int(s) for s in shape)
        inner = EVENT_CHUNK if kind == "events" else SAMPLE_CHUNK
        rows = max(1, min(shard_rows(kind), shape[0]))
        chunk = min(inner, rows)
        shard = -(-rows // chunk) * chunk  # a whole number of chunks
        rest = shape[1:]
        return self.root.create_array(
            name,
            shape=shape,
            dtype=dtype,
            chunks=(chunk, *rest),
            shards=(shard, *rest),
            fill_value=0,
            compressors=BULK_CODEC,
            dimension_names=dimension_names(name),
        )

    def write_array(self, name: str, data: np.ndarray) -> zarr.Array:
        """A small array written at once by the coordinator (labels, offsets, ...)."""
        data = np.asarray(data)
        rows = max(1, data.shape[0] if data.ndim else 1)
        return self.root.create_array(
            name, data=data, chunks=(rows, *data.shape[1:]), dimension_names=dimension_names(name)
        )

    def add_writer_forks(self, forks: Sequence[Any]) -> None:
        """Register the forks returned by parallel writers, to be merged at commit."""
        self._writer_forks.extend(forks)

    def commit(self, message: str, metadata: dict[str, Any] | None = None) -> str:
        if self._writer_forks:
            self.session.merge(*self._writer_forks)
        self.session.merge(self.fork)
        return self.session.commit(message, metadata=metadata or {})
