"""IDX files (MNIST and its relatives), plain or gzip-compressed.

Layout: two zero bytes, a type code byte, the number of dimensions ``n``, then ``n``
big-endian uint32 sizes, then the values in C order, big-endian.
"""

from __future__ import annotations

import gzip
import struct
import zlib
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.formats._common import read_bytes

TYPE_CODES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
CODE_OF_KIND = {np.dtype(v).newbyteorder("="): k for k, v in TYPE_CODES.items()}
GZIP_MAGIC = b"\x1f\x8b"


def read_idx(path: str | Path) -> np.ndarray:
    """The array stored in one IDX file, in native byte order (``uint8`` for MNIST)."""
    raw = read_bytes(path)
    if raw.startswith(GZIP_MAGIC):
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise BadInput(path, f"unreadable gzip compression: {err}") from err
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in TYPE_CODES:
        raise BadInput(path, f"not an IDX file: magic bytes {raw[:4].hex()}")
    ndim = raw[3]
    header_bytes = 4 + 4 * ndim
    if len(raw) < header_bytes:
        raise BadInput(path, "truncated: the dimension sizes run past the end of the file")
    shape = struct.unpack(f">{ndim}I", raw[4:header_bytes])
    dtype = np.dtype(TYPE_CODES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header_bytes != expected:
        raise BadInput(path, f"data is {len(raw) - header_bytes} bytes, shape {shape} needs {expected}")
    data = np.frombuffer(raw, dtype=dtype, offset=header_bytes).reshape(shape)
    return data.astype(dtype.newbyteorder("="))


def write_idx(path: str | Path, array: np.ndarray) -> None:
    """Write ``array`` as IDX; a path ending in ``.gz`` is gzip-compressed."""
    array = np.asarray(array)
    code = CODE_OF_KIND.get(array.dtype.newbyteorder("="))
    if code is None:
        raise ValueError(f"IDX cannot store dtype {array.dtype}")
    if array.ndim > 255:
        raise ValueError("IDX stores at most 255 dimensions")
    payload = (
        bytes([0, 0, code, array.ndim])
        + struct.pack(f">{array.ndim}I", *array.shape)
        + array.astype(TYPE_CODES[code]).tobytes()
    )
    if str(path).endswith(".gz"):
        payload = gzip.compress(payload, mtime=0)  # fixed mtime: the same array gives the same bytes
    Path(path).write_bytes(payload)
