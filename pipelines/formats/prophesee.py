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
``EVT3``) names the encoding. Decoding is expelliarmus' (a maintained C decoder, several times
faster than numpy over the words). Its C code trusts its input (a header line without a line end
makes it loop forever; unknown word types abort it), so it never sees the user's file: the body is
checked here (whole words, only word types it knows, an event count within ``MAX_EVENTS``) and
handed over in a private copy behind a fixed header and one neutral word.

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

import os
import re
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.formats._common import check_time_order, make_events, read_bytes
from storage.schema import EVENT_DTYPE

DAT_RECORD = np.dtype([("t", "<u4"), ("data", "<u4")])
DAT_EVENT_TYPES = {0x00, 0x0C}  # Event2d, EventCD
WRAP_US = 2**32
EVT2_CD_ON = 0x1
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


@dataclass(frozen=True)
class RawEncoding:
    """What the checks before decoding need to know about one RAW encoding."""

    name: str  # as in the header: "2.0", "3.0"
    wizard: str  # expelliarmus' name for it
    word: str  # numpy dtype of one word
    type_shift: int
    known_types: frozenset[int]
    neutral_word: int  # a word that decodes to nothing (type "other")

    def event_count(self, words: np.ndarray, kinds: np.ndarray, per_type: np.ndarray) -> int:
        if self.wizard == "evt2":
            return int(per_type[: EVT2_CD_ON + 1].sum())
        vect12 = (words[kinds == EVT3_VECT_12] & 0xFFF).astype("<u2")
        vect8 = (words[kinds == EVT3_VECT_8] & 0xFF).astype("<u2")
        return int(per_type[EVT3_ADDR_X]) + sum(
            int(np.unpackbits(v.view(np.uint8)).sum()) for v in (vect12, vect8) if len(v)
        )


EVT2 = RawEncoding("2.0", "evt2", "<u4", 28, frozenset(EVT2_KNOWN_TYPES), 0xE << 28)
EVT3 = RawEncoding(
    "3.0", "evt3", "<u2", 12, frozenset({0x0, 0x2, 0x3, 0x4, 0x5, 0x6, 0x8, 0xC, 0xE, 0xF}), 0xE << 12
)
EVT3_ADDR_X, EVT3_VECT_12, EVT3_VECT_8 = 0x2, 0x4, 0x5
#: more events than this in one file is refused: a corrupt EVT 3.0 body can claim up to six events
#: per byte, and a recording this long is better sliced before it is stored
MAX_EVENTS = 100_000_000


def _raw_encoding(path: str | Path, lines: list[str]) -> RawEncoding:
    text = "\n".join(lines)
    if re.search(r"^% evt 2\.0\b", text, re.M) or re.search(r"^% format EVT2\b", text, re.M):
        return EVT2
    if re.search(r"^% evt 3\.0\b", text, re.M) or re.search(r"^% format EVT3\b", text, re.M):
        return EVT3
    raise BadInput(path, "not an EVT 2.0 or EVT 3.0 RAW file: the header names no 'evt 2.0' or 'evt 3.0'")


def read_prophesee_raw(path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """CD events and sensor size ``(width, height)`` of a Prophesee EVT 2.0 or EVT 3.0 RAW file."""
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
    kinds = (words >> encoding.type_shift).astype(np.uint8)
    per_type = np.bincount(kinds, minlength=16)
    unknown = [kind for kind in np.flatnonzero(per_type) if kind not in encoding.known_types]
    if unknown:
        i = int(np.flatnonzero(np.isin(kinds, unknown))[0])
        raise BadInput(path, f"unknown EVT {encoding.name} word type {int(kinds[i]):#x} at word {i}")
    count = encoding.event_count(words, kinds, per_type)
    if count > MAX_EVENTS:
        raise BadInput(path, f"{count} events, more than the {MAX_EVENTS} one recording may hold")
    events = _expelliarmus_decode(path, encoding, body, count) if count else np.empty(0, EVENT_DTYPE)
    return _finish(path, events, _header_sensor_size(lines))


#: memory-backed where Linux has it, so the private copy never touches a disk
PRIVATE_DIR = "/dev/shm" if os.access("/dev/shm", os.W_OK) else None


@contextmanager
def _private_file(*parts: bytes | memoryview) -> Iterator[str]:
    """A path to a new file holding ``parts``, removed afterwards (expelliarmus reads only paths)."""
    with tempfile.TemporaryDirectory(prefix="tmkt-raw-", dir=PRIVATE_DIR) as tmp:
        path = Path(tmp) / "body.raw"
        with open(path, "wb") as out:
            for part in parts:
                out.write(part)
        yield str(path)


def _expelliarmus_decode(path: str | Path, encoding: RawEncoding, body: memoryview, count: int) -> np.ndarray:
    """Decode a checked body with expelliarmus, from a private copy with a header it parses safely."""
    from expelliarmus import Wizard

    header = f"% evt {encoding.name}\n".encode()
    neutral = np.array([encoding.neutral_word], dtype=encoding.word).tobytes()
    with _private_file(header + neutral, body) as copy:
        decoded = Wizard(encoding=encoding.wizard).read(copy)
    if decoded is None or len(decoded) != count:
        got = "nothing" if decoded is None else f"{len(decoded)} events"
        raise BadInput(path, f"EVT {encoding.name} decoder gave {got}, the words hold {count} events")
    if decoded["x"].min() < 0 or decoded["y"].min() < 0:  # int16: vectors ran past x = 32767
        raise BadInput(path, "negative event coordinates: corrupt vector events")
    return make_events(decoded["x"], decoded["y"], decoded["t"], decoded["p"])
