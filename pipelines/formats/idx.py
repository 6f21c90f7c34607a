"""IDX files (MNIST and its relatives), plain or gzip-compressed.

Layout: two zero bytes, a type code byte, the number of dimensions ``n``, then ``n``
big-endian uint32 sizes, then the values in C order, big-endian.

Trust: the header declares the array's size, and a gzip stream can expand a thousandfold. So
the declared size is computed with Python integers (no int64 overflow), capped, and compared
with the data: a gzip file is inflated in steps and never past the declared size plus one
byte, so a bomb costs at most what its header honestly declares.
"""

from __future__ import annotations

import gzip
import math
import os
import struct
import zlib
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.formats._common import check_regular, read_bytes

TYPE_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CODE_OF_KIND = {np.dtype(v).newbyteorder("="): k for k, v in TYPE_CODES.items()}
GZIP_MAGIC = b"\x1f\x8b"
#: largest array read: MNIST's training images take 47 MB; an IDX static set beyond this is refused
MAX_IDX_BYTES = 512 << 20
#: numpy 1's dimension limit (IDX data sets use 1 to 4)
MAX_DIMS = 32
#: bytes inflated at a time when a gzip file is only measured (`idx_shape`)
BLOCK_BYTES = 1 << 20


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in one IDX file, in native byte order (``uint8`` for MNIST)."""
    raw = read_bytes(path)
    if raw.startswith(GZIP_MAGIC):
        raw, _ = _gunzip_declared(path, raw)
    shape, dtype, header_bytes = _header(path, raw)
    _check_length(path, shape, dtype, len(raw) - header_bytes)
    data = np.frombuffer(raw, dtype=dtype, offset=header_bytes).reshape(shape)
    return data.astype(dtype.newbyteorder("="), copy=False)


def _header(path: str | Path, raw: bytes) -> tuple[tuple[int, ...], np.dtype, int]:
    """Shape, dtype and header length, with the declared data size checked against the cap."""
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in TYPE_CODES:
        raise BadInput(path, f"not an IDX file: magic bytes {raw[:4].hex()}")
    ndim = raw[3]
    if ndim > MAX_DIMS:
        raise BadInput(path, f"{ndim} dimensions declared; at most {MAX_DIMS} are supported")
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        raise BadInput(path, "truncated: the dimension sizes run past the end of the file")
    shape = struct.unpack(f">{ndim}I", raw[4:header_bytes])
    dtype = np.dtype(TYPE_CODES[raw[2]])
    # Python ints, no overflow; an empty dimension does not excuse huge others (numpy's strides)
    declared = math.prod(max(side, 1) for side in shape) * dtype.itemsize
    if declared > MAX_IDX_BYTES:
        raise BadInput(path, f"shape {shape} declares {declared} bytes, over the {MAX_IDX_BYTES}-byte cap")
    return shape, dtype, header_bytes


def _gunzip_declared(path: str | Path, raw: bytes, keep: bool = True) -> tuple[bytes, int]:
    """Inflate the header, then at most the declared data and one byte more (to see a longer stream).

    Returns what was inflated and its length; with ``keep`` False only the header is returned and
    the data is inflated a block at a time and dropped, so measuring a file holds no more than a block.
    """
    inflater = zlib.decompressobj(wbits=31)
    try:
        out = inflater.decompress(raw, 4)
        if len(out) == 4 and out[3]:  # (a max_length of 0 would mean no limit at all)
            out += inflater.decompress(inflater.unconsumed_tail, 4 * out[3])
        shape, dtype, header_bytes = _header(path, out)
        wanted = header_bytes + math.prod(shape) * dtype.itemsize + 1
        length = len(out)
        while length < wanted and (tail := inflater.unconsumed_tail):
            step = wanted - length if keep else min(wanted - length, BLOCK_BYTES)
            chunk = inflater.decompress(tail, step)
            if not chunk and len(inflater.unconsumed_tail) == len(tail):  # corrupt data can stall zlib
                raise BadInput(path, "corrupt gzip stream: decompression stopped making progress")
            length += len(chunk)
            if keep:
                out += chunk
    except zlib.error as err:
        raise BadInput(path, f"unreadable gzip compression: {err}") from err
    if length == wanted:
        raise BadInput(path, f"decompressed data is longer than shape {shape} declares")
    if not inflater.eof:
        raise BadInput(path, "truncated gzip stream")
    return out, length


def is_gzip(path: str | Path) -> bool:
    """True for a gzip-compressed IDX file, which can only be read from its start."""
    check_regular(path)
    try:
        with open(path, "rb") as file:
            return file.read(2) == GZIP_MAGIC
    except OSError as err:
        raise BadInput(path, f"cannot read file: {err.strerror or err}") from err


def idx_shape(path: str | Path) -> tuple[int, ...]:
    """The shape of an IDX file's array, checked as `read_idx` checks the file, without holding its
    values: a listing learns how many images a 500 MB file holds for the memory of one block."""
    if is_gzip(path):
        header, length = _gunzip_declared(path, read_bytes(path), keep=False)
    else:
        header, length = _plain_header(path)
    shape, dtype, header_bytes = _header(path, header)
    _check_length(path, shape, dtype, length - header_bytes)
    return shape


def read_idx_rows(path: str | Path, first: int, last: int) -> np.ndarray:
    """Rows ``[first, last)`` of a plain (not gzipped) IDX file's array, reading only those bytes."""
    header, length = _plain_header(path)
    shape, dtype, header_bytes = _header(path, header)
    _check_length(path, shape, dtype, length - header_bytes)
    if not 0 <= first <= last <= (shape[0] if shape else 0):
        raise BadInput(path, f"rows {first}..{last} outside the {shape[0] if shape else 0} stored")
    row_bytes = math.prod(shape[1:]) * dtype.itemsize
    try:
        with open(path, "rb") as file:
            file.seek(header_bytes + first * row_bytes)
            raw = file.read((last - first) * row_bytes)
    except OSError as err:
        raise BadInput(path, f"cannot read file: {err.strerror or err}") from err
    if len(raw) != (last - first) * row_bytes:
        raise BadInput(path, "truncated: the file ended while its rows were read")
    data = np.frombuffer(raw, dtype=dtype).reshape(last - first, *shape[1:])
    return data.astype(dtype.newbyteorder("="), copy=False)


def _plain_header(path: str | Path) -> tuple[bytes, int]:
    """The bytes that may hold a plain IDX file's header, and the file's length."""
    check_regular(path)
    try:
        with open(path, "rb") as file:
            return file.read(4 + 4 * MAX_DIMS), os.fstat(file.fileno()).st_size
    except OSError as err:
        raise BadInput(path, f"cannot read file: {err.strerror or err}") from err


def _check_length(path: str | Path, shape: tuple[int, ...], dtype: np.dtype, data_bytes: int) -> None:
    expected = math.prod(shape) * dtype.itemsize
    if data_bytes != expected:
        raise BadInput(path, f"data is {data_bytes} bytes, shape {shape} needs {expected}")


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as IDX; a path ending in ``.gz`` is gzip-compressed."""
    array = np.asarray(array)
    code = CODE_OF_KIND.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    if array.ndim > MAX_DIMS:
        raise ValueError(f"IDX files here hold at most {MAX_DIMS} dimensions")
    payload = (
        bytes([0, 0, code, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(TYPE_CODES[code]).tobytes()
    )
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)  # fixed mtime: the same array gives the same bytes
    Path(path).write_bytes(payload)
