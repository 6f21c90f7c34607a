"""Whole-shard reads (`storage.bulk`): the values Zarr reads, and one clear error for damaged shards."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pytest
import zarr
from zarr.codecs import ZstdCodec

from storage.bulk import ShardRows
from storage.repo import CorruptStore
from storage.writer import BULK_CODEC

ROWS, CHUNK, SHARD, ROW = 45, 4, 16, (3, 2, 5, 6)  # 3 shards, the last one partial


def frames(n: int = ROWS) -> np.ndarray:
    rng = np.random.default_rng(0)
    values = rng.poisson(0.7, size=(n, *ROW)).astype(np.uint16)
    values[8:12] = 0  # one chunk of zeros: never written, read as the fill value
    return values


def sharded(path: Path, values: np.ndarray, compressors=BULK_CODEC) -> zarr.Array:
    array = zarr.create_array(
        zarr.storage.LocalStore(path),
        shape=values.shape,
        dtype=values.dtype,
        chunks=(CHUNK, *ROW),
        shards=(SHARD, *ROW),
        compressors=compressors,
        fill_value=0,
    )
    array[:] = values
    return array


def shard_file(path: Path, shard: int) -> Path:
    return path / "c" / str(shard) / "0" / "0" / "0" / "0"


def read(array: zarr.Array, rows, **kwargs) -> np.ndarray:
    rows = np.asarray(rows)
    return ShardRows.of(array, "/data/store").read(rows, np.empty((len(rows), *ROW), np.uint16), **kwargs)


def test_any_rows_in_any_order_equal_zarrs_read(tmp_path):
    values = frames()
    array = sharded(tmp_path / "a", values)
    bulk = ShardRows.of(array)
    assert (bulk.rows_per_shard, bulk.rows_per_chunk, bulk.chunks_per_shard) == (SHARD, CHUNK, 4)
    rows = np.random.default_rng(1).permutation(ROWS)
    np.testing.assert_array_equal(read(array, rows), values[rows])
    with ThreadPoolExecutor(2) as pool:  # shards decoded on a pool, the next rows fetched ahead
        np.testing.assert_array_equal(read(array, rows[:20], pool=pool, then=rows[20:]), values[rows[:20]])
        np.testing.assert_array_equal(read(array, rows[20:], pool=pool), values[rows[20:]])
    np.testing.assert_array_equal(read(array, [44, 0, 44]), values[[44, 0, 44]])  # repeats, the edge
    np.testing.assert_array_equal(read(array, []), values[:0])


def test_a_shard_never_written_reads_as_the_fill_value(tmp_path):
    values = frames()
    values[16:32] = 0
    array = sharded(tmp_path / "a", values)
    assert not shard_file(tmp_path / "a", 1).exists()
    np.testing.assert_array_equal(read(array, np.arange(ROWS)), values)


def test_other_layouts_are_left_to_zarr(tmp_path):
    values = frames()
    assert ShardRows.of(sharded(tmp_path / "zstd", values, ZstdCodec())) is None
    plain = zarr.create_array(
        zarr.storage.LocalStore(tmp_path / "plain"), shape=values.shape, dtype=values.dtype, chunks=(4, *ROW)
    )
    assert ShardRows.of(plain) is None


def test_bad_out_and_rows_are_refused(tmp_path):
    array = sharded(tmp_path / "a", frames())
    with pytest.raises(IndexError, match="outside"):
        read(array, [ROWS])
    with pytest.raises(ValueError, match="out must be"):
        ShardRows.of(array).read(np.arange(3), np.empty((2, *ROW), np.uint16))


def damage(path: Path, change) -> zarr.Array:
    values = frames()
    sharded(path, values)
    target = shard_file(path, 0)
    target.write_bytes(change(bytearray(target.read_bytes())))
    return zarr.open_array(zarr.storage.LocalStore(path), mode="r")


@pytest.mark.parametrize(
    ("name", "change", "reason"),
    [
        ("truncated", lambda b: bytes(b[:10]), "shorter than its index"),
        ("index flipped", lambda b: bytes(b[:-20] + bytes([b[-20] ^ 0xFF]) + b[-19:]), "checksum"),
        ("chunk header", lambda b: bytes(b[:4] + b"\xff\xff\xff\x7f" + b[8:]), "expected"),
        ("cut before the index", lambda b: bytes(b[:20] + b[-(16 * 4 + 4) :]), "outside the shard"),
    ],
)
def test_a_damaged_shard_raises_one_error_naming_the_array_and_shard(tmp_path, name, change, reason):
    array = damage(tmp_path / "a", change)
    with pytest.raises(CorruptStore, match=reason) as err:
        read(array, [0, 1, 20])
    assert str(err.value).startswith("/data/store: ")  # the store, then the shard
    assert "shard 0" in str(err.value) and "\n" not in str(err.value)
    np.testing.assert_array_equal(read(array, [20, 33]), frames()[[20, 33]])  # other shards still read
