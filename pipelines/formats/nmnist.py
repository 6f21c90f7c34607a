"""N-MNIST / N-Caltech101 40-bit ATIS binary files (Orchard et al. 2015).

Each event is 5 bytes::

    byte 0: x            byte 1: y
    byte 2: p << 7 | t[22:16]
    byte 3: t[15:8]      byte 4: t[7:0]

``t`` is in microseconds (23 bits). A record with ``y == 240`` is not an event but a time
stamp overflow marker: every later event gets ``2**13`` us added, exactly as in the dataset
authors' reader (and ``tonic.io.read_mnist_file``); the markers are dropped. The format has
no header, so the sensor size is not in the file: N-MNIST is 34x34, N-Caltech101 varies
(callers take ``max x + 1, max y + 1``).

Orientation: x is the column and y the row with row 0 on top (the dataset authors' MATLAB reader
and ``tonic.io.read_mnist_file`` read them as stored, and the digits come out upright: a test
checks the real N-MNIST recordings against the MNIST images).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.formats._common import (
    as_event_array,
    check_in_sensor,
    check_time_order,
    check_writable,
    make_events,
    read_bytes,
)

RECORD_BYTES = 5
RECORD_DTYPE = np.dtype([("x", "u1"), ("y", "u1"), ("p_t_high", "u1"), ("t_mid", "u1"), ("t_low", "u1")])
OVERFLOW_Y = 240
OVERFLOW_INCREMENT_US = 2**13
MAX_T_US = 2**23 - 1
NMNIST_SENSOR_SIZE = (34, 34)


def read_nmnist(path: str | Path, sensor_size: tuple[int, int] | None = None) -> np.ndarray:
    """Decode one recording; ``sensor_size=(W, H)`` also checks the coordinates against it."""
    raw = read_bytes(path)
    if len(raw) % RECORD_BYTES:
        raise BadInput(path, f"truncated: {len(raw)} bytes is not a whole number of 5-byte events")
    records = np.frombuffer(raw, dtype=RECORD_DTYPE)
    high = records["p_t_high"]
    # int32 arithmetic is enough for 23 bits and cheaper than int64 on these small arrays
    t = (high & 0x7F).astype(np.int32) << 16 | records["t_mid"].astype(np.int32) << 8 | records["t_low"]
    overflow = records["y"] == OVERFLOW_Y
    if overflow.any():
        # an overflow marker shifts itself and everything after it, as the authors' reader does
        t = t + np.cumsum(overflow, dtype=np.int64) * OVERFLOW_INCREMENT_US
        keep = ~overflow
        records, high, t = records[keep], high[keep], t[keep]
    events = make_events(records["x"], records["y"], t, high >> 7)
    check_time_order(path, events["t"])
    if sensor_size is not None:
        check_in_sensor(path, events, sensor_size)
    return events


def write_nmnist(path: str | Path, events: np.ndarray) -> None:
    """Write events bit-exactly in the 40-bit format (no overflow markers: ``t < 2**23`` us)."""
    events = as_event_array(events)
    check_writable(events, (256, 256), MAX_T_US)
    if len(events) and np.any(events["y"] == OVERFLOW_Y):
        raise ValueError(f"y={OVERFLOW_Y} is reserved for overflow markers in this format")
    t = events["t"].astype(np.int64)
    records = np.empty((len(events), RECORD_BYTES), dtype=np.uint8)
    records[:, 0] = events["x"]
    records[:, 1] = events["y"]
    records[:, 2] = (events["p"].astype(np.int64) << 7) | (t >> 16)
    records[:, 3] = (t >> 8) & 0xFF
    records[:, 4] = t & 0xFF
    Path(path).write_bytes(records.tobytes())
