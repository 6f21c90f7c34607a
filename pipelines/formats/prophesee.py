"""Prophesee recordings: DAT files (N-CARS and other Prophesee datasets) and EVT 2.0 RAW files.

Orientation: Metavision writes image coordinates (origin top-left, y down), read as stored, as
expelliarmus and Metavision's own readers give them.

Both start with ASCII header lines ``% <keyword> <value>``. The sensor size comes from the
header (``% Width``/``% Height``, ``% geometry WxH``, ``% format ...;width=W;height=H``, or
the Gen3 / Gen4 camera plugin name); without any of them it is ``max x + 1, max y + 1``
(N-CARS samples are crops of varying size).

DAT: after the header, two bytes (event type, event size = 8), then little-endian events of
``uint32 t`` (us) and ``uint32 data`` with x in bits 0-13, y in bits 14-27, polarity in bits
28-31. The 32-bit time wraps after about 71 minutes: a drop of more than ``2**31`` us counts
as one wrap.

EVT 2.0: little-endian 32-bit words, the type in bits 28-31. ``CD_OFF`` (0) / ``CD_ON`` (1)
carry the 6 low time bits in 22-27, x in 11-21 and y in 0-10; ``EV_TIME_HIGH`` (8) carries
the 28 high time bits for the words after it; trigger (0xA), other (0xE) and continued (0xF)
words are skipped. Events before the first time-high word take a time high of 0.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.formats._common import check_time_order, make_events, read_bytes

DAT_RECORD = np.dtype([("t", "<u4"), ("data", "<u4")])
DAT_EVENT_TYPES = {0x00, 0x0C}  # Event2d, EventCD
WRAP_US = 2**32
EVT2_CD_OFF, EVT2_CD_ON, EVT2_TIME_HIGH = 0x0, 0x1, 0x8
EVT2_KNOWN_TYPES = {0x0, 0x1, 0x8, 0xA, 0xE, 0xF}
PLUGIN_SIZES = {"gen3": (640, 480), "gen31": (640, 480), "gen4": (1280, 720), "gen41": (1280, 720)}


def _split_percent_header(raw: bytes) -> tuple[list[str], int]:
    """``% `` lines of printable ASCII; the first line that is not one starts the body."""
    lines, pos = [], 0
    while raw.startswith(b"% ", pos) or raw.startswith(b"%\n", pos):
        newline = raw.find(b"\n", pos)
        if newline < 0:
            break
        line = raw[pos:newline]
        if not all(32 <= c < 127 or c == 9 or c == 13 for c in line):
            break  # a binary event that happens to begin with "% "
        lines.append(line.decode("ascii").rstrip("\r"))
        pos = newline + 1
    return lines, pos


def _header_sensor_size(lines: list[str]) -> tuple[int, int] | None:
    text = "\n".join(lines)
    width = re.search(r"^% Width (\d+)", text, re.M)
    height = re.search(r"^% Height (\d+)", text, re.M)
    if width and height:
        return int(width.group(1)), int(height.group(1))
    geometry = re.search(r"^% geometry (\d+)x(\d+)", text, re.M)
    if geometry:
        return int(geometry.group(1)), int(geometry.group(2))
    fmt_w, fmt_h = re.search(r"width=(\d+)", text), re.search(r"height=(\d+)", text)
    if fmt_w and fmt_h:
        return int(fmt_w.group(1)), int(fmt_h.group(1))
    plugin = re.search(r"^% plugin_name \S*?(gen\d+)", text, re.M)
    if plugin and plugin.group(1) in PLUGIN_SIZES:
        return PLUGIN_SIZES[plugin.group(1)]
    return None


def _finish(path: str | Path, events: np.ndarray, header_size: tuple[int, int] | None):
    check_time_order(path, events["t"])
    if header_size is None:
        if len(events) == 0:
            return events, (0, 0)
        return events, (int(events["x"].max()) + 1, int(events["y"].max()) + 1)
    width, height = header_size
    if len(events) and (events["x"].max() >= width or events["y"].max() >= height):
        raise BadInput(path, f"event coordinates outside the {width}x{height} sensor")
    return events, header_size


def read_prophesee_dat(path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Events and sensor size ``(width, height)`` of a Prophesee DAT file."""
    raw = read_bytes(path)
    lines, pos = _split_percent_header(raw)
    if not lines:
        raise BadInput(path, "not a Prophesee DAT file: no '% ' header")
    if len(raw) < pos + 2:
        raise BadInput(path, "truncated: no event type and size after the header")
    event_type, event_size = raw[pos], raw[pos + 1]
    if event_type not in DAT_EVENT_TYPES or event_size != DAT_RECORD.itemsize:
        raise BadInput(path, f"unsupported DAT event type {event_type} of size {event_size}")
    body = memoryview(raw)[pos + 2 :]
    if len(body) % DAT_RECORD.itemsize:
        raise BadInput(path, f"truncated: body of {len(body)} bytes is not a whole number of 8-byte events")
    records = np.frombuffer(body, dtype=DAT_RECORD)
    t = records["t"].astype(np.int64)
    if len(t) > 1:
        t = t + np.concatenate(([0], np.cumsum(np.diff(t) < -(WRAP_US // 2)))) * WRAP_US
    data = records["data"]
    events = make_events(data & 0x3FFF, (data >> 14) & 0x3FFF, t, ((data >> 28) & 0xF) > 0)
    return _finish(path, events, _header_sensor_size(lines))


def read_evt2(path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """CD events and sensor size ``(width, height)`` of a Prophesee EVT 2.0 RAW file."""
    raw = read_bytes(path)
    lines, pos = _split_percent_header(raw)
    text = "\n".join(lines)
    if not re.search(r"^% evt 2\.0\b", text, re.M) and "format EVT2" not in text:
        raise BadInput(path, "not an EVT 2.0 RAW file: the header names no 'evt 2.0' format")
    body = memoryview(raw)[pos:]
    if len(body) % 4:
        raise BadInput(path, f"truncated: body of {len(body)} bytes is not a whole number of 32-bit words")
    words = np.frombuffer(body, dtype="<u4")
    kinds = words >> 28
    unknown = ~np.isin(kinds, list(EVT2_KNOWN_TYPES))
    if unknown.any():
        i = int(np.flatnonzero(unknown)[0])
        raise BadInput(path, f"unknown EVT 2.0 word type {int(kinds[i]):#x} at word {i}")
    # carry each time-high word forward to the words after it
    is_high = kinds == EVT2_TIME_HIGH
    last_high = np.maximum.accumulate(np.where(is_high, np.arange(len(words)), -1))
    time_high = np.where(last_high >= 0, words[np.maximum(last_high, 0)] & 0x0FFFFFFF, 0).astype(np.int64)
    cd = kinds <= EVT2_CD_ON
    w = words[cd]
    t = (time_high[cd] << 6) | ((w >> 22) & 0x3F).astype(np.int64)
    events = make_events((w >> 11) & 0x7FF, w & 0x7FF, t, kinds[cd])
    return _finish(path, events, _header_sensor_size(lines))
