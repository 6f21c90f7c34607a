"""Rows of a sharded array read a whole shard at a time, each chunk decoded into the caller's memory.

Zarr's own read of every row of a 48x48 N-MNIST store ran at 27.7 k rows/s on this project's
2-core machine; fetching each shard once and decoding its chunks with numcodecs into a reused block
ran at 54.0 k rows/s on one thread (87.2 k on two), and the decode alone reaches about 4.5 GB/s: the
difference is Zarr's per-chunk machinery (async tasks, a fresh array per chunk, a copy into the
result). Streaming a split larger than memory is bound by exactly this read, so for the arrays this
project writes (``storage.writer``: Zarr v3 sharding, index at the end with a CRC32C, inner codecs
bytes + Blosc) `ShardRows` fetches each shard's bytes in one store request (object stores included;
the requests of a call go out together) and decodes its chunks with numcodecs itself. Any other
layout is read by Zarr (`ShardRows.of` returns None).

Every length and offset is checked before it is used: a damaged shard raises `CorruptStore` naming
the array and the shard, never reads outside its bytes.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from concurrent.futures import Executor, Future, ThreadPoolExecutor

import numcodecs
import numpy as np
import zarr
from numcodecs import blosc
from zarr.buffer import default_buffer_prototype
from zarr.codecs import BloscCodec, BytesCodec, Crc32cCodec, ShardingCodec
from zarr.codecs.sharding import ShardingCodecIndexLocation
from zarr.core.sync import sync

from storage.repo import CorruptStore

#: Shards whose compressed bytes one call holds at once (a resident load of a large split reads
#: its shards in groups of this many, so the transient bytes stay small).
FETCH_SHARDS = 16

#: Chunks one task of a decoding pool decodes (a shard's 16 chunks of N-MNIST go to 4 tasks).
DECODE_RUN = 4

#: An absent chunk in a shard's index (it holds only the fill value).
_MISSING = np.uint64(2**64 - 1)

_BLOSC_HEADER = 16


class ShardRows:
    """Rows along the first axis of one sharded Zarr array; see the module docstring."""

    def __init__(self, array: zarr.Array, sharding: ShardingCodec, store: str = "") -> None:
        self.array = array
        self.name = array.store_path.path
        #: how errors name the array: the store's location, then the array's path in it
        self.where = f"{store}: {self.name}" if store else self.name
        self.rows_per_shard = int(array.shards[0])
        self.rows_per_chunk = int(sharding.chunk_shape[0])
        self.chunks_per_shard = self.rows_per_shard // self.rows_per_chunk
        self.row_shape = tuple(int(n) for n in array.shape[1:])
        self.dtype = np.dtype(array.dtype)
        self.chunk_bytes = self.rows_per_chunk * int(np.prod(self.row_shape)) * self.dtype.itemsize
        self.fill = array.metadata.fill_value
        self._scratch = threading.local()
        self._fetcher = ThreadPoolExecutor(1, thread_name_prefix="tmkt-fetch")
        self._ahead: dict[int, Future] = {}

    @classmethod
    def of(cls, array: zarr.Array, store: str = "") -> ShardRows | None:
        """A reader for ``array`` (of the store at ``store``, for messages) when it has the layout
        this module decodes, else None."""
        codecs = getattr(array.metadata, "codecs", ())
        if len(codecs) != 1 or not isinstance(codecs[0], ShardingCodec):
            return None
        sharding = codecs[0]
        inner, index = sharding.codecs, sharding.index_codecs
        plain = (
            len(inner) == 2
            and isinstance(inner[0], BytesCodec)
            and isinstance(inner[1], BloscCodec)
            and (inner[0].endian is None or inner[0].endian.value == "little")
            and len(index) == 2
            and isinstance(index[0], BytesCodec)
            and isinstance(index[1], Crc32cCodec)
            and sharding.index_location == ShardingCodecIndexLocation.end
            and tuple(sharding.chunk_shape[1:]) == tuple(array.shape[1:])
            and tuple(array.shards[1:]) == tuple(array.shape[1:])
            and array.shards[0] % sharding.chunk_shape[0] == 0
        )
        return cls(array, sharding, store) if plain else None

    def read(
        self,
        rows: np.ndarray,
        out: np.ndarray,
        pool: Executor | None = None,
        then: np.ndarray | None = None,
    ) -> np.ndarray:
        """``out[i] = array[rows[i]]`` for every i, any order; shards decoded on ``pool`` if given.

        ``then``: the rows the next call will read. Their shards' bytes are fetched in the
        background while this call decodes (a stream decodes one buffer while the next one's bytes
        arrive); only the first ``FETCH_SHARDS`` shards, and only until the next call, are kept."""
        rows = np.asarray(rows, dtype=np.int64)
        if out.shape != (len(rows), *self.row_shape) or out.dtype != self.dtype:
            raise ValueError(f"out must be {self.dtype} {(len(rows), *self.row_shape)}, not {out.shape}")
        if len(rows) and (rows.min() < 0 or rows.max() >= self.array.shape[0]):
            raise IndexError(f"{self.where}: rows outside [0, {self.array.shape[0]})")
        shard = rows // self.rows_per_shard
        ids = [int(s) for s in np.unique(shard)]
        ahead, self._ahead = self._ahead, {}
        if then is not None:
            self._read_ahead(then)
        for start in range(0, len(ids), FETCH_SHARDS):
            group = ids[start : start + FETCH_SHARDS]
            missing = [s for s in group if s not in ahead]
            blobs = dict(zip(missing, self.fetch(missing), strict=True))
            blobs.update({s: ahead[s].result()[s] for s in group if s in ahead})
            jobs = [job for s in group for job in self._jobs(s, blobs.pop(s), rows, shard == s)]
            if pool is not None and len(jobs) > 1:
                runs = [jobs[k : k + DECODE_RUN] for k in range(0, len(jobs), DECODE_RUN)]
                list(pool.map(lambda run: [self._decode(*job, rows, out) for job in run], runs))
            else:
                for job in jobs:
                    self._decode(*job, rows, out)
        return out

    def _read_ahead(self, rows: np.ndarray) -> None:
        shards = [int(s) for s in np.unique(np.asarray(rows, dtype=np.int64) // self.rows_per_shard)]
        shards = shards[:FETCH_SHARDS]
        future = self._fetcher.submit(lambda: dict(zip(shards, self.fetch(shards), strict=True)))
        self._ahead = dict.fromkeys(shards, future)

    def fetch(self, shards: Sequence[int]) -> list[np.ndarray | None]:
        """The stored bytes of ``shards`` as uint8 arrays, not copied (None for a shard never
        written), requested together."""
        rest = (0,) * len(self.row_shape)
        keys = [self.array.metadata.encode_chunk_key((s, *rest)) for s in shards]
        keys = [f"{self.name}/{key}" for key in keys] if self.name else keys
        store, prototype = self.array.store, default_buffer_prototype()

        async def get_all() -> list:
            return await asyncio.gather(*(store.get(key, prototype) for key in keys))

        return [None if b is None else b.as_numpy_array() for b in sync(get_all())]

    def _jobs(self, shard: int, blob: np.ndarray | None, rows: np.ndarray, mine: np.ndarray) -> list[tuple]:
        """(shard, blob, index, chunk, where) for each chunk of ``shard`` that ``rows[mine]`` touch."""
        index = self._index(shard, blob)
        where = np.flatnonzero(mine)
        chunk = (rows[where] - shard * self.rows_per_shard) // self.rows_per_chunk
        return [(shard, blob, index, int(c), where[chunk == c]) for c in np.unique(chunk)]

    def _decode(
        self,
        shard: int,
        blob: np.ndarray | None,
        index: np.ndarray | None,
        c: int,
        where: np.ndarray,
        rows: np.ndarray,
        out: np.ndarray,
    ) -> None:
        """``out[where] = array[rows[where]]`` for rows all in chunk ``c`` of ``shard``."""
        block = self._chunk(shard, blob, index, c)
        out[where] = block[rows[where] - shard * self.rows_per_shard - c * self.rows_per_chunk]

    def _index(self, shard: int, blob: np.ndarray | None) -> np.ndarray | None:
        """The shard's ``[chunks, 2]`` (offset, length) table, checked; None for an absent shard."""
        if blob is None:
            return None
        size = 16 * self.chunks_per_shard + 4
        if len(blob) < size:
            raise CorruptStore(f"{self.where}: shard {shard} is {len(blob)} bytes, shorter than its index")
        try:
            table = numcodecs.CRC32C().decode(blob[-size:])
        except Exception as err:
            raise CorruptStore(f"{self.where}: shard {shard}: index checksum fails ({err})") from err
        index = np.frombuffer(table, dtype="<u8").reshape(self.chunks_per_shard, 2)
        present = index[:, 0] != _MISSING
        ends = index[present, 0] + index[present, 1]
        if np.any(ends > len(blob) - size) or np.any(index[present, 1] < _BLOSC_HEADER):
            raise CorruptStore(f"{self.where}: shard {shard}: its index points outside the shard")
        return index

    def _chunk(self, shard: int, blob: np.ndarray | None, index: np.ndarray | None, c: int) -> np.ndarray:
        """Chunk ``c`` of a shard decoded into this thread's scratch block (reused: no page faults)."""
        scratch = getattr(self._scratch, "block", None)
        if scratch is None:
            scratch = self._scratch.block = np.empty((self.rows_per_chunk, *self.row_shape), self.dtype)
        if index is None or index[c, 0] == _MISSING:
            scratch.fill(self.fill)
            return scratch
        offset, length = int(index[c, 0]), int(index[c, 1])
        data = memoryview(blob)[offset : offset + length]
        # Blosc's header: nbytes, blocksize, cbytes as little-endian u32 at bytes 4..16
        nbytes, _, cbytes = np.frombuffer(data[4:_BLOSC_HEADER], dtype="<u4")
        if nbytes != self.chunk_bytes or cbytes != length:
            raise CorruptStore(
                f"{self.where}: shard {shard}, chunk {c}: holds {nbytes} bytes in {cbytes}, "
                f"expected {self.chunk_bytes} in {length}"
            )
        try:
            blosc.decompress(data, scratch)
        except Exception as err:
            raise CorruptStore(f"{self.where}: shard {shard}, chunk {c} does not decode ({err})") from err
        return scratch
