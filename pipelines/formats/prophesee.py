"""Prophesee recordings: DAT files (N-CARS and other Prophesee datasets) and EVT 2.0 / 3.0 RAW files.

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

RAW (EVT 2.0 and EVT 3.0): the header's ``% evt 2.0`` / ``% evt 3.0`` line (or ``% format EVT2`` /
``EVT3``) names the encoding. The body is decoded from the bytes in memory by compiled passes
(``pipelines.formats.evt``) that follow expelliarmus' decoder word for word: one pass checks the
words (whole words, only known word types, an event count within ``MAX_EVENTS``) before anything
is allocated, the next writes the events and the extent the sensor-size check needs.

- EVT 2.0: little-endian 32-bit words, the type in bits 28-31. ``CD_OFF`` (0) / ``CD_ON`` (1)
  carry the 6 low time bits in 22-27, x in 11-21 and y in 0-10; ``EV_TIME_HIGH`` (8) carries
  the 28 high time bits for the words after it; trigger (0xA), other (0xE) and continued (0xF)
  words are skipped. Events before the first time-high word take a time high of 0.
- EVT 3.0: little-endian 16-bit words, the type in bits 12-15: ``EVT_ADDR_Y`` (0), ``EVT_ADDR_X``
  (2, one event; polarity bit 11), ``VECT_BASE_X`` (3), ``VECT_12`` / ``VECT_8`` (4, 5: one event
  per set bit at consecutive x), ``TIME_LOW`` / ``TIME_HIGH`` (6, 8: 12 bits each, wraps counted),
  trigger (0xC), other (0xE) and continued (0xF) words are skipped. ``CONTINUED_4`` (7), which
  expelliarmus does not know, makes the file bad.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.formats._common import check_time_order, make_events, read_bytes
from storage.schema import EVENT_DTYPE

DAT_RECORD = np.dtype([("t", "<u4"), ("data", "<u4")])
DAT_EVENT_TYPES = {0x00, 0x0C}  # Event2d, EventCD
WRAP_US = 2**32
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


def _sensor_size(
    path: str | Path, count: int, max_x: int, max_y: int, header_size: tuple[int, int] | None
) -> tuple[int, int]:
    """The header's sensor size, which every event must lie on; without one, the events' extent."""
    if header_size is None:
        return (max_x + 1, max_y + 1) if count else (0, 0)
    width, height = header_size
    if count and (max_x >= width or max_y >= height):
        raise BadInput(path, f"event coordinates outside the {width}x{height} sensor")
    return header_size


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
    check_time_order(path, events["t"])
    max_x, max_y = (int(events[name].max()) if len(events) else 0 for name in ("x", "y"))
    return events, _sensor_size(path, len(events), max_x, max_y, _header_sensor_size(lines))


@dataclass(frozen=True)
class RawEncoding:
    """What reading one RAW encoding needs: its word, the word types it may hold, its passes."""

    name: str  # as in the header: "2.0", "3.0"
    word: str  # numpy dtype of one word
    known_types: frozenset[int]
    passes: str  # prefix of its count / decode functions in pipelines.formats.evt

    @property
    def known_mask(self) -> int:
        return sum(1 << kind for kind in self.known_types)


EVT2 = RawEncoding("2.0", "<u4", frozenset({0x0, 0x1, 0x8, 0xA, 0xE, 0xF}), "evt2")
#: CONTINUED_4 (7) is left out: expelliarmus, which the decoding follows, does not know it either
EVT3 = RawEncoding("3.0", "<u2", frozenset({0x0, 0x2, 0x3, 0x4, 0x5, 0x6, 0x8, 0xC, 0xE, 0xF}), "evt3")
#: more events than this in one file is refused: a corrupt EVT 3.0 body can claim up to six events
#: per byte, and a recording this long is better sliced before it is stored
MAX_EVENTS = 100_000_000
#: EVT 3.0 vectors run x on past the 11-bit address field: beyond this the file is corrupt (and
#: expelliarmus' int16 coordinates turn negative)
MAX_VECTOR_X = 0x7FFF


def _raw_encoding(path: str | Path, lines: list[str]) -> RawEncoding:
    text = "\n".join(lines)
    if re.search(r"^% evt 2\.0\b", text, re.M) or re.search(r"^% format EVT2\b", text, re.M):
        return EVT2
    if re.search(r"^% evt 3\.0\b", text, re.M) or re.search(r"^% format EVT3\b", text, re.M):
        return EVT3
    raise BadInput(path, "not an EVT 2.0 or EVT 3.0 RAW file: the header names no 'evt 2.0' or 'evt 3.0'")


def read_prophesee_raw(path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """CD events and sensor size ``(width, height)`` of a Prophesee EVT 2.0 or EVT 3.0 RAW file."""
    from pipelines.formats import evt  # numba: imported by the first RAW read, not by every command

    raw = read_bytes(path)
    lines, pos = _split_percent_header(raw)
    encoding = _raw_encoding(path, lines)
    body = memoryview(raw)[pos:]
    size = np.dtype(encoding.word).itemsize
    if len(body) % size:
        raise BadInput(
            path, f"truncated: body of {len(body)} bytes is not a whole number of {8 * size}-bit words"
        )
    words = np.frombuffer(body, dtype=encoding.word)
    unknown, count = getattr(evt, f"{encoding.passes}_count")(words, encoding.known_mask)
    if unknown >= 0:
        kind = int(words[unknown]) >> (8 * size - 4)
        raise BadInput(path, f"unknown EVT {encoding.name} word type {kind:#x} at word {unknown}")
    if count > MAX_EVENTS:
        raise BadInput(path, f"{count} events, more than the {MAX_EVENTS} one recording may hold")
    events = np.empty(count, dtype=EVENT_DTYPE)
    back, max_x, max_y = getattr(evt, f"{encoding.passes}_decode")(words, events)
    if back >= 0:
        t = events["t"]
        raise BadInput(path, f"time goes back from {int(t[back - 1])} to {int(t[back])} us at event {back}")
    if max_x > MAX_VECTOR_X:
        raise BadInput(path, f"event x up to {max_x}: corrupt vector events")
    return events, _sensor_size(path, count, max_x, max_y, _header_sensor_size(lines))
