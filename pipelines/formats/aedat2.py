"""AEDAT 2.0 (jAER) files, as in the original CIFAR10-DVS download, read in image coordinates.

Layout: ASCII header lines that start with ``#`` (the first one ``#!AER-DAT2.0`` followed by
``\\r\\n`` or ``\\n``), then big-endian records of ``uint32 address, int32 timestamp`` (us).

The address layout depends on the chip, named by the header's ``# AEChip:`` line:

- DVS128 (no ``AEChip`` line, or any chip other than DAVIS346): polarity in bit 0, ``x_raw``
  in bits 1-7, ``y_raw`` in bits 8-14; bit 15 marks jAER's special (external input) events,
  which are dropped. jAER's DVS128 extractor (``ch.unizh.ini.jaer.chip.retina.DVS128.Extractor``)
  mirrors x (``x = 127 - x_raw``), keeps ``y = y_raw`` on an axis that points up (its display
  puts y = 0 at the bottom) and flips the polarity bit (raw 0 is an ON event). In image
  coordinates as the camera saw them (row 0 on top), as this reader returns them::

      x = 127 - x_raw,  y = 127 - y_raw,  p = 1 - p_raw   (p = 1: ON)

  Datasets that show their recordings turned (CIFAR10-DVS) apply their own transform in their
  source adapter, not here.
- DAVIS346 (``AEChip`` names a ``Davis346`` chip, 346x260): records with bit 31 (APS/ADC
  sample) or bit 10 (IMU and other non-DVS data) set are dropped; ``x_raw`` is bits 12-21,
  ``y_raw`` bits 22-30, polarity bit 11 (1: ON). jAER's DAVIS extractor mirrors x and keeps y
  pointing up, so in image coordinates, as ``tonic.io.read_davis_346`` gives them::

      x = 345 - x_raw,  y = 259 - y_raw,  p = p_raw

Time stamps are 32-bit and wrap after about 71 minutes: a drop of more than ``2**31`` us is
read as one wrap (``+2**32``); any other decrease makes the file bad.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.formats._common import (
    as_event_array,
    check_time_order,
    check_writable,
    make_events,
    read_bytes,
)
from pipelines.formats._header import split_header

MAGIC_LINE = "#!AER-DAT2.0"
RECORD_DTYPE = np.dtype([("address", ">u4"), ("t", ">u4")])
WRAP_US = 2**32


@dataclass(frozen=True)
class ChipLayout:
    """How one chip packs x, y and polarity into the 32-bit address."""

    name: str
    sensor_size: tuple[int, int]  # (width, height)

    def decode(self, path: str | Path, address: np.ndarray) -> tuple[np.ndarray, ...]:
        """``(keep, x, y, p)``: which records are polarity events and their fields."""
        a = address.astype(np.uint32)
        if self.name == "DVS128":
            if np.any(a >> 16):
                raise BadInput(path, "address bits above bit 15 are set: not a DVS128 recording")
            keep = (a & 0x8000) == 0
            a = a[keep]
            x_raw, y_raw, p_raw = (a >> 1) & 0x7F, (a >> 8) & 0x7F, a & 1
            return keep, 127 - x_raw, 127 - y_raw, 1 - p_raw
        keep = ((a >> 31) == 0) & (((a >> 10) & 1) == 0)
        a = a[keep]
        x_raw, y_raw = (a >> 12) & 0x3FF, (a >> 22) & 0x1FF
        width, height = self.sensor_size
        if a.size and (x_raw.max() >= width or y_raw.max() >= height):
            raise BadInput(path, f"event coordinates outside the {width}x{height} DAVIS346 sensor")
        return keep, width - 1 - x_raw, height - 1 - y_raw, (a >> 11) & 1

    def encode(self, events: np.ndarray) -> np.ndarray:
        x, y, p = (events[name].astype(np.uint32) for name in ("x", "y", "p"))
        if self.name == "DVS128":
            x_raw, y_raw = 127 - x, 127 - y
            return (y_raw << 8) | (x_raw << 1) | (1 - p)
        width, height = self.sensor_size
        return ((height - 1 - y) << 22) | ((width - 1 - x) << 12) | (p << 11)


DVS128 = ChipLayout("DVS128", (128, 128))
DAVIS346 = ChipLayout("DAVIS346", (346, 260))
LAYOUTS = {layout.sensor_size: layout for layout in (DVS128, DAVIS346)}


def _layout_from_header(lines: list[str]) -> ChipLayout:
    for line in lines:
        if line.startswith("# AEChip:") and "davis346" in line.lower():
            return DAVIS346
    return DVS128


def read_aedat2(path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Events and the sensor size ``(width, height)`` of one AEDAT 2.0 file."""
    raw = read_bytes(path)
    lines, body_start = split_header(path, raw, b"#")
    if not lines or lines[0] != MAGIC_LINE:
        found = lines[0][:40] if lines else raw[:12]
        raise BadInput(path, f"not an AEDAT 2.0 file: first line is {found!r}, expected {MAGIC_LINE!r}")
    body = memoryview(raw)[body_start:]
    if len(body) % RECORD_DTYPE.itemsize:
        raise BadInput(path, f"truncated: body of {len(body)} bytes is not a whole number of 8-byte events")
    records = np.frombuffer(body, dtype=RECORD_DTYPE)
    layout = _layout_from_header(lines)
    keep, x, y, p = layout.decode(path, records["address"])
    t = _unwrap(records["t"][keep].astype(np.int64))
    check_time_order(path, t)
    return make_events(x, y, t, p), layout.sensor_size


def _unwrap(t: np.ndarray) -> np.ndarray:
    """Undo 32-bit time stamp wraps: only a drop of more than half the range counts as a wrap."""
    if len(t) < 2:
        return t
    wraps = np.concatenate(([0], np.cumsum(np.diff(t) < -(WRAP_US // 2))))
    return t + wraps * WRAP_US


def write_aedat2(path: str | Path, events: np.ndarray, sensor_size: tuple[int, int] = (128, 128)) -> None:
    """Write a jAER AEDAT 2.0 file; ``sensor_size`` picks the chip: (128, 128) DVS128, (346, 260) DAVIS346.

    Time stamps must fit the 32-bit field (``0 <= t < 2**32`` us), so they are stored without wraps.
    """
    layout = LAYOUTS.get(tuple(sensor_size))
    if layout is None:
        raise ValueError(f"AEDAT 2.0 writer supports sensor sizes {sorted(LAYOUTS)}, got {sensor_size}")
    events = as_event_array(events)
    check_writable(events, layout.sensor_size, WRAP_US - 1)
    header = [
        MAGIC_LINE,
        "# This is a raw AE data file - do not edit",
        "# Data format is int32 address, int32 timestamp (8 bytes total), repeated for each event",
        "# Timestamps tick is 1 us",
        f"# AEChip: {layout.name}",
    ]
    records = np.empty(len(events), dtype=RECORD_DTYPE)
    records["address"] = layout.encode(events) if len(events) else 0
    records["t"] = events["t"]
    with open(path, "wb") as out:
        out.write("".join(line + "\r\n" for line in header).encode("ascii"))
        out.write(records.tobytes())
