"""AEDAT 3.1 (cAER) files, as in DVS128 Gesture, and that dataset's ``<name>_labels.csv``.

Layout: ASCII header lines starting with ``#``, the first ``#!AER-DAT3.1`` and the last
``#!END-HEADER`` (each ending in ``\\r\\n``). Then packets, each a 28-byte little-endian
header::

    int16 eventType, int16 eventSource, int32 eventSize, int32 eventTSOffset,
    int32 eventTSOverflow, int32 eventCapacity, int32 eventNumber, int32 eventValid

followed by ``eventCapacity * eventSize`` bytes. Polarity events (type 1) are 8 bytes:
``uint32 data`` (bit 0 valid, bit 1 polarity, bits 2-16 y, bits 17-31 x) and ``int32``
timestamp; the full time is ``eventTSOverflow << 31 | timestamp``. Packets of other types
(special, frame, IMU) are skipped, and so are events whose valid bit is clear.

The sensor size comes from the ``#Source <id>: <name>`` header line: a known device name
(DVS128, DAVIS240, DAVIS346, DVXplorer) or a ``<W>x<H>`` token in the name (what the writer
puts there for other sizes); without one the sensor is taken to be a DVS128.

Orientation: x and y are read as stored, as tonic's ``DVSGesture`` and spikingjelly's
``DVS128Gesture`` read them: cAER/DV draw them with the origin top-left, y down. For a DVS128,
libcaer's driver stores ``x = 127 - x_raw, y = y_raw`` (``dvs128.c``), while jAER (AEDAT 2.0, see
``aedat2``) keeps the same y but draws it pointing up: the two tools show one sensor's output
mirrored top to bottom, and each format is read here as its own tool shows it. No recording here
settles which one shows a DVS128 scene upright.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.formats._common import (
    as_event_array,
    check_in_sensor,
    check_sensor_size,
    check_time_order,
    check_writable,
    make_events,
    read_bytes,
)
from pipelines.formats._header import split_header

MAGIC_LINE = "#!AER-DAT3.1"
END_LINE = b"#!END-HEADER"
POLARITY_EVENT = 1
PACKET_HEADER = np.dtype(
    [
        ("type", "<i2"),
        ("source", "<i2"),
        ("size", "<i4"),
        ("ts_offset", "<i4"),
        ("ts_overflow", "<i4"),
        ("capacity", "<i4"),
        ("number", "<i4"),
        ("valid", "<i4"),
    ]
)
POLARITY_DTYPE = np.dtype([("data", "<u4"), ("t", "<i4")])
#: events per packet in written files (cAER writes packets of a few thousand events)
PACKET_EVENTS = 4096
KNOWN_SOURCES = {
    "DVS128": (128, 128),
    "DAVIS240": (240, 180),
    "DAVIS346": (346, 260),
    "DVXPLORER": (640, 480),
}


def _sensor_from_header(lines: list[str]) -> tuple[int, int]:
    for line in lines:
        match = re.match(r"#Source \d+:\s*(.*)", line)
        if not match:
            continue
        name = match.group(1).strip()
        size = re.search(r"(\d+)x(\d+)", name)
        if size:
            return int(size.group(1)), int(size.group(2))
        for known, sensor_size in KNOWN_SOURCES.items():
            if name.upper().startswith(known):
                return sensor_size
    return KNOWN_SOURCES["DVS128"]


def _polarity_packets(path: str | Path, raw: bytes, start: int) -> list[tuple[int, np.ndarray]]:
    """``(ts_overflow, records)`` of every polarity packet; walks the packet headers only."""
    packets = []
    pos = start
    while pos < len(raw):
        if pos + PACKET_HEADER.itemsize > len(raw):
            raise BadInput(path, f"truncated: packet header at byte {pos} runs past the end of the file")
        head = np.frombuffer(raw, dtype=PACKET_HEADER, count=1, offset=pos)[0]
        size, capacity, number = int(head["size"]), int(head["capacity"]), int(head["number"])
        if size <= 0 or capacity < 0 or not 0 <= number <= capacity:
            raise BadInput(path, f"corrupt packet header at byte {pos} (size {size}, capacity {capacity})")
        pos += PACKET_HEADER.itemsize
        end = pos + size * capacity
        if end > len(raw):
            raise BadInput(path, f"truncated: packet at byte {pos} runs past the end of the file")
        if int(head["type"]) == POLARITY_EVENT:
            if size != POLARITY_DTYPE.itemsize:
                raise BadInput(path, f"polarity packet at byte {pos} has event size {size}, expected 8")
            records = np.frombuffer(raw, dtype=POLARITY_DTYPE, count=number, offset=pos)
            packets.append((int(head["ts_overflow"]), records))
        pos = end
    return packets


def read_aedat31(path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Polarity events and the sensor size ``(width, height)`` of one AEDAT 3.1 file."""
    raw = read_bytes(path)
    if not raw.startswith(MAGIC_LINE.encode()):
        raise BadInput(path, f"not an AEDAT 3.1 file: it does not start with {MAGIC_LINE!r}")
    lines, body_start = split_header(path, raw, b"#", end_line=END_LINE)
    sensor_size = check_sensor_size(path, _sensor_from_header(lines))
    packets = _polarity_packets(path, raw, body_start)
    if not packets:
        return make_events(*(np.empty(0, dtype=np.int64) for _ in range(4))), sensor_size
    data = np.concatenate([records["data"] for _, records in packets])
    t = np.concatenate(
        [(np.int64(overflow) << 31) | records["t"].astype(np.int64) for overflow, records in packets]
    )
    valid = (data & 1) == 1
    data, t = data[valid], t[valid]
    if len(t) and int(t.min()) < 0:  # a negative stamp or overflow count: nothing can place it in time
        raise BadInput(path, f"negative time stamp {int(t.min())} us")
    events = make_events((data >> 17) & 0x7FFF, (data >> 2) & 0x7FFF, t, (data >> 1) & 1)
    check_in_sensor(path, events, sensor_size)
    check_time_order(path, events["t"])
    return events, sensor_size


def _source_name(sensor_size: tuple[int, int]) -> str:
    for name, size in KNOWN_SOURCES.items():
        if size == tuple(sensor_size):
            return "DVXplorer" if name == "DVXPLORER" else name
    return f"DVS {sensor_size[0]}x{sensor_size[1]}"


def write_aedat31(path: str | Path, events: np.ndarray, sensor_size: tuple[int, int] = (128, 128)) -> None:
    """Write a cAER AEDAT 3.1 file of polarity packets (all events valid).

    Packets never straddle a ``2**31`` us boundary, so each has one ``eventTSOverflow``.
    """
    events = as_event_array(events)
    width, height = int(sensor_size[0]), int(sensor_size[1])
    if not (0 < width <= 0x8000 and 0 < height <= 0x8000):
        raise ValueError(f"sensor size must fit 15-bit coordinates, got {sensor_size}")
    check_writable(events, (width, height), 2**62)
    header = [MAGIC_LINE, "#Format: RAW", f"#Source 1: {_source_name((width, height))}", END_LINE.decode()]
    t = events["t"].astype(np.int64)
    data = (
        (events["x"].astype(np.uint32) << 17)
        | (events["y"].astype(np.uint32) << 2)
        | (events["p"].astype(np.uint32) << 1)
        | 1
    )
    with open(path, "wb") as out:
        out.write("".join(line + "\r\n" for line in header).encode("ascii"))
        for start, stop in _packet_bounds(t):
            _write_packet(out, data[start:stop], t[start:stop])


def _packet_bounds(t: np.ndarray) -> list[tuple[int, int]]:
    """Cut the events into packets of at most PACKET_EVENTS that share one overflow value."""
    cuts = set(range(0, len(t), PACKET_EVENTS))
    cuts.update(np.flatnonzero(np.diff(t >> 31)) + 1)
    ordered = sorted(cuts) + [len(t)]
    return [(a, b) for a, b in zip(ordered[:-1], ordered[1:], strict=True) if b > a]


def _write_packet(out, data: np.ndarray, t: np.ndarray) -> None:
    head = np.zeros(1, dtype=PACKET_HEADER)
    head["type"], head["source"], head["size"], head["ts_offset"] = POLARITY_EVENT, 1, 8, 4
    head["ts_overflow"] = t[0] >> 31
    head["capacity"] = head["number"] = head["valid"] = len(t)
    records = np.empty(len(t), dtype=POLARITY_DTYPE)
    records["data"] = data
    records["t"] = t & 0x7FFFFFFF
    out.write(head.tobytes())
    out.write(records.tobytes())


def read_gesture_labels(csv_path: str | Path) -> list[tuple[int, int, int]]:
    """``(class, start_us, end_us)`` rows of a DVS128 Gesture ``<name>_labels.csv`` (classes 1..11)."""
    try:
        text = Path(csv_path).read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as err:
        raise BadInput(csv_path, f"cannot read label file: {err}") from err
    rows = [line.strip() for line in text.splitlines() if line.strip()]
    if not rows or [c.strip() for c in rows[0].split(",")] != ["class", "startTime_usec", "endTime_usec"]:
        raise BadInput(csv_path, "label file must start with the header 'class,startTime_usec,endTime_usec'")
    labels = []
    for number, row in enumerate(rows[1:], start=2):
        try:
            label, start, end = (int(cell) for cell in row.split(","))
        except ValueError:
            raise BadInput(csv_path, f"line {number}: expected three integers, got {row!r}") from None
        if not 1 <= label <= 11 or end < start:
            raise BadInput(csv_path, f"line {number}: class {label} or interval [{start}, {end}] is invalid")
        labels.append((label, start, end))
    return labels
