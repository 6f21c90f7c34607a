"""One build = one transaction = one commit.

`Transaction` opens a writable session on the store's branch and a fork of it. Arrays are created
on the fork, so a `ShardTarget` can be pickled to parallel writers: each writes whole shards and
returns a `WriteToken`, an opaque receipt that the coordinator hands back to `merge`, which merges
the writer's work at once; `commit` merges the coordinator's fork last (its metadata is the newest)
and commits once. Callers never hold an Icechunk session. Until then nothing is visible: a build killed
half-way leaves the previous snapshot as it was.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import icechunk
import numpy as np
import zarr
from zarr.codecs import BloscCodec
from zarr.core.sync import sync

from storage import layout
from storage.digests import array_record, arrays_below, digest_parts, hash_array, part_count, part_rows
from storage.repo import BRANCH, StoreConflict, open_repository, writer_lock
from storage.schema import FrameSpec

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


#: The room of an open-ended array (`Transaction.growing_target`) before its rows are known: this
#: many shards (Icechunk's split manifests fail on 2^34), and never more elements than an int64 counts.
OPEN_SHARDS = 1 << 30
OPEN_ELEMENTS = 1 << 62


#: `Transaction(expected_parent=ANY_PARENT)` skips the check that the branch has not moved.
ANY_PARENT = "any"


@dataclass(frozen=True)
class WriteToken:
    """What one parallel write hands back; only `Transaction.merge` looks inside: the writer's fork
    and the digests of the shards it wrote (hashed as written, so digests cost no second read)."""

    fork: Any
    name: str
    parts: dict[int, str]


@dataclass(frozen=True)
class ShardTarget:
    """One array that parallel writers fill shard by shard; picklable to Dask workers."""

    array: zarr.Array

    @property
    def rows_per_shard(self) -> int:
        return int(self.array.shards[0])

    @property
    def rows(self) -> int:
        return int(self.array.shape[0])

    def write(self, first: int, last: int, data: np.ndarray) -> WriteToken:
        """Rows ``[first, last)``, whole shards only, so that no two writers touch one shard."""
        data = np.asarray(data, dtype=self.array.dtype)
        self.array[first:last] = data
        parts = digest_parts(data, part_rows(self.array), first)
        return WriteToken(self.array.store.session, self.array.path, parts)


class Transaction:
    """Write a complete new version of the dataset and commit it once.

    Use as a context manager; it holds the store's writer lock throughout (re-entrant, so a build that
    holds it from its plan on passes through), and an exception leaves the branch untouched.

    ``expected_parent``: the branch tip the caller planned on (None: the store held no dataset).
    When the branch has moved since, `StoreConflict` is raised before anything is written, and
    Icechunk refuses the commit if it moves while this transaction writes: the caller plans again.
    At commit every array's content digests are recorded (`storage.digests`) for `verify`.
    """

    def __init__(self, path: str | Path, expected_parent: str | None = ANY_PARENT) -> None:
        self.path = path
        self._lock = writer_lock(path)
        self._lock.__enter__()
        try:
            self.repo = open_repository(path, create=True)
            self.session = self.repo.writable_session(BRANCH)
            self.parent_snapshot = self.session.snapshot_id
            _check_parent(self.repo, self.parent_snapshot, expected_parent, path)
            self.fork = self.session.fork()
            # mode "w" starts from an empty hierarchy: every build writes the whole dataset.
            self.root = zarr.open_group(self.fork.store, mode="w")
        except BaseException:
            self._lock.__exit__(None, None, None)
            raise
        self._parts: dict[str, dict[int, str]] = {}
        self._rows: dict[str, int | None] = {}  # open-ended arrays: rows, once known
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
            dimension_names=layout.dimension_names(name),
            # every chunk is written as it is: zarr's check for chunks equal to the fill value
            # cost a pass over each one (8 % of a build's write time), for the rare all-zero chunk
            config={"write_empty_chunks": True},
        )

    def shard_target(self, name: str, shape: Sequence[int], dtype: Any, kind: str = "samples") -> ShardTarget:
        """`create_array` for parallel writers: they get a target, and return `WriteToken`s."""
        return ShardTarget(self.create_array(name, shape, dtype, kind))

    def growing_target(
        self, name: str, row_shape: Sequence[int], dtype: Any, kind: str = "samples"
    ) -> ShardTarget:
        """`shard_target` for an array whose length is not known yet: writers fill shards as their
        rows become known (a build writes each shard as soon as the recordings before it are
        counted, so no worker holds all its results), and `set_rows` gives the length before
        `commit`. Its shards are full-sized whatever the final length."""
        rows = min(
            shard_rows(kind) * OPEN_SHARDS, OPEN_ELEMENTS // max(1, int(np.prod(row_shape, dtype=np.int64)))
        )
        self._rows[name] = None
        return self.shard_target(name, (rows, *row_shape), dtype, kind)

    def set_rows(self, name: str, rows: int) -> None:
        """The final length of a `growing_target` array; rows past it must not have been written."""
        self._rows[name] = int(rows)

    def write_array(self, name: str, data: np.ndarray) -> zarr.Array:
        """A small array written at once by the coordinator (labels, offsets, ...)."""
        data = np.asarray(data)
        rows = max(1, data.shape[0] if data.ndim else 1)
        array = self.root.create_array(
            name, data=data, chunks=(rows, *data.shape[1:]), dimension_names=layout.dimension_names(name)
        )
        self._parts[array.path] = digest_parts(data, part_rows(array))
        return array

    def merge(self, tokens: Iterable[WriteToken]) -> None:
        """Take in the work of parallel writers (their `ShardTarget.write` tokens): their forks are
        merged into the session now, so that only their digests are kept until the commit; tokens
        of one writer that share a fork merge it once."""
        tokens = list(tokens)
        forks = {id(token.fork): token.fork for token in tokens}
        if forks:
            self.session.merge(*forks.values())
        for token in tokens:
            self._parts.setdefault(token.name, {}).update(token.parts)

    def set_frame_spec(self, spec: FrameSpec) -> None:
        """Describe the frame representation ``spec.key`` (the attrs of its group)."""
        self.root.require_group(layout.frames_group(spec.key)).attrs.update(spec.to_attrs())

    def set_root_attrs(self, attrs: dict[str, Any]) -> None:
        """The dataset-wide attributes (JSON values); names outside `layout.ROOT_ATTRS` are refused."""
        unknown = sorted(set(attrs) - set(layout.ROOT_ATTRS))
        if unknown:
            raise KeyError(f"not a root attribute of the store layout: {unknown}")
        self.root.attrs.update(attrs)

    def set_manifest(self, rows: list[dict[str, Any]]) -> None:
        self.root.require_group(layout.MANIFEST).attrs[layout.MANIFEST_ROWS] = rows

    def set_report(self, report: dict[str, Any]) -> None:
        self.root.require_group(layout.REPORT).attrs.update(report)

    def commit(self, message: str, metadata: dict[str, Any] | None = None) -> str:
        """Merge the coordinator's fork after the writers' work, record every array's digests, and
        commit once."""
        self.session.merge(self.fork)
        root = zarr.open_group(self.session.store, mode="r+")
        self._set_lengths(root)
        root.attrs[layout.DIGESTS] = self._records(root)
        try:
            return self.session.commit(message, metadata=metadata or {})
        except icechunk.ConflictError as err:
            raise StoreConflict(f"{self.path}: another build committed while this one wrote ({err})") from err

    def _set_lengths(self, root: zarr.Group) -> None:
        """Cut each growing array to its rows, in the merged session: a length set in the
        coordinator's fork would differ from the writers' forks, which Icechunk refuses to merge.
        Nothing lies past the rows, so no chunk is looked for or deleted (a search over the open
        length's shards would take minutes)."""
        unset = sorted(name for name, rows in self._rows.items() if rows is None)
        if unset:
            raise ValueError(f"growing arrays without their length (set_rows): {unset}")
        for name, rows in self._rows.items():
            array = root[name]
            sync(array.async_array.resize((rows, *array.shape[1:]), delete_outside_chunks=False))

    def _records(self, root: zarr.Group) -> dict[str, Any]:
        """Digest records of every array; arrays written outside the targets are hashed here."""
        records = {}
        for array in arrays_below(root):
            parts = dict(self._parts.get(array.path, {}))
            if len(parts) < part_count(array):
                parts = hash_array(array)
            records[array.path] = array_record(array, parts)
        return records


def _check_parent(repo: Any, tip: str, expected: str | None, path: str | Path) -> None:
    if expected == ANY_PARENT:
        return
    if expected is None:
        moved = sum(1 for _ in repo.ancestry(snapshot_id=tip)) > 1  # more than the initial snapshot
    else:
        moved = tip != expected
    if moved:
        raise StoreConflict(f"{path}: another build committed snapshot {tip} after this one planned")
