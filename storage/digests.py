"""Content digests of every stored array, recorded at build time and re-checked by `verify`.

An array is cut along its first axis into parts of `part_rows` rows: its shard, the unit that parallel
writers write and the unit a reader fetches. Each part's values in C order are hashed on their own, so
a writer hashes exactly what it wrote (no second read of the data), and a fault names the rows it is
in. A chunk that went missing on disk reads back as the fill value and fails its part's digest like a
flipped byte does.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from typing import Any

import numpy as np
import zarr

from storage.repo import read_error_line

#: Bytes of an array that `check_array` reads at once (a whole number of chunks, at least one).
PIECE_BYTES = 16 << 20


def arrays_below(group: Any) -> Iterator[Any]:
    """Every Zarr array in ``group`` and its subgroups: what a snapshot's digests cover."""
    for _, member in group.members(max_depth=None):
        if isinstance(member, zarr.Array):
            yield member


def part_rows(array: Any) -> int:
    """Rows per digest part of a Zarr array: its shard (or chunk) length along the first axis."""
    if not array.shape:
        return 1
    outer = array.shards or array.chunks
    return max(1, int(outer[0]))


def digest_values(values: np.ndarray) -> str:
    """blake2b-128 of the values in C order, with dtype and shape, so a reshaped part differs."""
    values = np.ascontiguousarray(values)
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{values.dtype.str}{values.shape}".encode())
    digest.update(values.reshape(-1).view(np.uint8))  # the buffer, not a copy: a part is a whole shard
    return digest.hexdigest()


def digest_parts(values: np.ndarray, rows: int, first: int = 0) -> dict[int, str]:
    """Digests of the whole parts in ``values``, which starts at row ``first`` (a part boundary)."""
    if first % rows:
        raise ValueError(f"rows start at {first}, not at a part boundary of {rows} rows")
    if values.ndim == 0:
        return {0: digest_values(values)}
    return {
        (first + start) // rows: digest_values(values[start : start + rows])
        for start in range(0, len(values), rows)
    }


def array_record(array: Any, parts: dict[int, str]) -> dict[str, Any]:
    """The record of one array, checking that every part of it was hashed."""
    count = part_count(array)
    missing = sorted(set(range(count)) - set(parts))
    if missing:
        raise ValueError(f"{array.path}: parts {missing[:5]} were written without a digest")
    return {
        "rows": part_rows(array),
        "shape": list(array.shape),
        "dtype": str(array.dtype),
        "parts": [parts[i] for i in range(count)],
    }


def part_count(array: Any) -> int:
    if not array.shape:
        return 1
    return -(-int(array.shape[0]) // part_rows(array))


def hash_array(array: Any) -> dict[int, str]:
    """Digests of an array read back part by part (for arrays no writer hashed)."""
    rows = part_rows(array)
    if not array.shape:
        return {0: digest_values(np.asarray(array[...]))}
    return {i: digest_values(array[i * rows : (i + 1) * rows]) for i in range(part_count(array))}


def check_array(name: str, array: Any, record: dict[str, Any]) -> list[str]:
    """FAULT lines for one array against its record: shape, dtype, then each part's bytes."""
    if list(array.shape) != list(record["shape"]) or str(array.dtype) != record["dtype"]:
        return [
            f"{name}: shape {list(array.shape)} {array.dtype} differs from the build's "
            f"{record['shape']} {record['dtype']}"
        ]
    rows = int(record["rows"])
    faults = []
    for index, expected in enumerate(record["parts"]):
        first = index * rows
        try:
            digest = _read_digest(array, first, rows)
        except Exception as err:  # a truncated or undecodable chunk: name it, keep checking the rest
            faults.append(f"{name}: rows {first}..{first + rows - 1} cannot be read: {read_error_line(err)}")
            continue
        if digest != expected:
            last = min(first + rows, int(record["shape"][0]) if record["shape"] else 1) - 1
            faults.append(f"{name}: rows {first}..{last} differ from the bytes written at build time")
    return faults


def _read_digest(array: Any, first: int, rows: int) -> str:
    """`digest_values` of rows ``[first, first + rows)``, read piece by piece (`part_pieces`)."""
    if not array.shape:
        return digest_values(np.asarray(array[...]))
    stop = min(first + rows, int(array.shape[0]))
    digest = hashlib.blake2b(digest_size=16)
    digest.update(f"{np.dtype(array.dtype).str}{(max(0, stop - first), *array.shape[1:])}".encode())
    for start, end in part_pieces(array, first, rows):
        digest.update(np.ascontiguousarray(array[start:end]).data)
    return digest.hexdigest()


def part_pieces(array: Any, first: int, rows: int) -> Iterator[tuple[int, int]]:
    """``(start, stop)`` row ranges of whole chunks, of about `PIECE_BYTES` each (at least one
    chunk), that cover the part of ``rows`` rows from ``first``: a part is a whole shard, and Zarr's
    read of one peaks at several times its size (hundreds of MB for a shard of 128x128 frames)."""
    stop = min(first + rows, int(array.shape[0]))
    row_bytes = int(np.prod(array.shape[1:], dtype=np.int64)) * np.dtype(array.dtype).itemsize
    chunk = max(1, int(array.chunks[0]))
    step = chunk * max(1, PIECE_BYTES // max(1, chunk * row_bytes))
    for start in range(first, stop, step):
        yield start, min(start + step, stop)


def array_pieces(array: Any) -> Iterator[tuple[int, int]]:
    """`part_pieces` of every part of an array with a first axis, in order."""
    rows = part_rows(array)
    for index in range(part_count(array)):
        yield from part_pieces(array, index * rows, rows)
