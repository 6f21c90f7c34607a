"""AEDAT 4.0 (DV) files, as in the ``.aedat4`` repack of CIFAR10-DVS and DVXplorer recordings.

Layout (all little-endian)::

    "#!AER-DAT4.0\\r\\n"
    uint32 size, IOHeader flatbuffer (file identifier "IOHE"):
        compression: int32 enum (0 NONE, 1 LZ4, 2 LZ4_HIGH, 3 ZSTD, 4 ZSTD_HIGH)
        dataTablePosition: int64 (-1: no file data table)
        infoNode: string, DV's XML tree; outInfo/<stream id> names each stream's
                  typeIdentifier ("EVTS" for polarity events) and info/sizeX, sizeY
    packets: int32 stream id, uint32 size, then ``size`` bytes: the (compressed) payload,
        a size-prefixed flatbuffer; for events an EventPacket (identifier "EVTS") whose only
        field is a vector of 16-byte structs ``int64 t, int16 x, int16 y, bool on, 3 pad``.

Decoding goes through the ``aedat`` package; the writer lays the flatbuffers out by hand
(there are only two tables), and writes no file data table, which is optional in the format.

Orientation: DV stores image coordinates (origin top-left, y down, as its viewer draws them), read
as stored (as ``aedat`` and ``tonic.io.read_aedat4`` give them).

Trust: ``aedat`` reads the IOHeader flatbuffer unchecked (a flipped offset panics inside Rust,
and ``pyo3_runtime.PanicException`` derives from ``BaseException``, past every ``except
Exception``), and it allocates each declared header or packet size (up to 4 GiB) before reading
it. So ``check_layout`` walks the file first, as the decoder will: the header flatbuffer with
bounds checks, every packet's declared size against the bytes left, every compressed packet
decompressed with a size cap; only a file that passes reaches the decoder, and a panic that
still comes out of it is a ``BadInput`` too.
"""

from __future__ import annotations

import struct
from pathlib import Path
from xml.sax.saxutils import escape

import lz4.frame
import numpy as np
import zstandard

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

MAGIC = b"#!AER-DAT4.0\r\n"
COMPRESSION = {"NONE": 0, "LZ4": 1}
#: the IOHeader's compression enum: NONE, LZ4, LZ4_HIGH, ZSTD, ZSTD_HIGH
LZ4_CODES, ZSTD_CODES = (1, 2), (3, 4)
#: largest decompressed packet accepted: DV writes packets of a few thousand 16-byte events
MAX_PACKET_BYTES = 64 << 20
EVENT_STRUCT = np.dtype([("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("on", "u1"), ("pad", "V3")])
#: events per packet in written files (DV writes packets of a few thousand events)
PACKET_EVENTS = 4096


def read_aedat4(path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Events of the first polarity stream and its sensor size ``(width, height)``."""
    check_layout(path, read_bytes(path))
    stream, chunks = _decode(path)
    sensor_size = check_sensor_size(path, (int(stream["width"]), int(stream["height"])))
    if chunks:
        raw = np.concatenate(chunks)
        events = make_events(raw["x"], raw["y"], raw["t"].astype(np.int64), raw["on"])
        if len(events) and int(events["t"].min()) < 0:
            raise BadInput(path, f"negative time stamp {int(events['t'].min())} us")
    else:
        events = make_events(*(np.empty(0, dtype=np.int64) for _ in range(4)))
    check_in_sensor(path, events, sensor_size)
    check_time_order(path, events["t"])
    return events, sensor_size


def _decode(path: str | Path) -> tuple[dict, list[np.ndarray]]:
    """The first polarity stream's description and its event chunks, through ``aedat``; whatever
    the decoder raises is a bad input."""
    import aedat  # the Rust decoder; imported here so the other formats work without it

    try:
        decoder = aedat.Decoder(str(path))
        streams = decoder.id_to_stream()
        event_ids = sorted(i for i, s in streams.items() if s.get("type") == "events")
        if not event_ids:
            raise BadInput(path, "no polarity event stream in the file")
        chunks = [packet["events"] for packet in decoder if packet["stream_id"] == event_ids[0]]
    except (BadInput, KeyboardInterrupt, SystemExit):
        raise
    except BaseException as err:  # noqa: B036 - a Rust panic arrives as pyo3's BaseException
        raise BadInput(path, f"cannot decode AEDAT 4.0: {type(err).__name__}: {err}") from err
    return streams[event_ids[0]], chunks


def check_layout(path: str | Path, raw: bytes) -> None:
    """Walk the header and the packets as ``aedat`` will, refusing what it would trust blindly."""
    if not raw.startswith(MAGIC):
        raise BadInput(path, "not an AEDAT 4.0 file: missing '#!AER-DAT4.0' magic")
    pos = len(MAGIC)
    if len(raw) < pos + 4:
        raise BadInput(path, "truncated: no IOHeader size")
    (size,) = struct.unpack_from("<I", raw, pos)
    if size > len(raw) - pos - 4:
        raise BadInput(path, f"IOHeader size {size} runs past the end of the file ({len(raw)} bytes)")
    compression, data_table = _check_io_header(path, raw[pos + 4 : pos + 4 + size])
    pos += 4 + size
    while not (pos == data_table or (data_table < 0 and pos == len(raw))):
        if pos + 8 > len(raw):
            raise BadInput(path, f"truncated: packet header at byte {pos} runs past the end of the file")
        (length,) = struct.unpack_from("<I", raw, pos + 4)
        if length > len(raw) - pos - 8:
            raise BadInput(path, f"packet at byte {pos} declares size {length}, past the end of the file")
        _check_payload(path, pos, compression, raw[pos + 8 : pos + 8 + length])
        pos += 8 + length


def _check_io_header(path: str | Path, buf: bytes) -> tuple[int, int]:
    """``(compression, dataTablePosition)`` of the IOHeader flatbuffer, every offset bounds-checked."""

    def read(fmt: str, at: int) -> int:
        if at < 0 or at + struct.calcsize(fmt) > len(buf):
            raise BadInput(path, f"corrupt IOHeader: offset {at} outside its {len(buf)} bytes")
        return struct.unpack_from(fmt, buf, at)[0]

    table = read("<I", 0)
    vtable = table - read("<i", table)
    vtable_size = read("<H", vtable)
    if vtable_size < 4 or vtable_size % 2:
        raise BadInput(path, f"corrupt IOHeader: vtable size {vtable_size}")

    def field(index: int) -> int:  # offset of field ``index`` in the table, 0 when absent
        at = 4 + 2 * index
        return read("<H", vtable + at) if at < vtable_size else 0

    compression = read("<i", table + field(0)) if field(0) else 0
    data_table = read("<q", table + field(1)) if field(1) else -1
    if compression not in range(5):
        raise BadInput(path, f"unknown AEDAT 4.0 compression code {compression}")
    if not field(2):
        raise BadInput(path, "IOHeader has no stream description")
    text = table + field(2) + read("<I", table + field(2))
    length = read("<I", text)
    if text + 4 + length >= len(buf) or buf[text + 4 + length] != 0:
        raise BadInput(path, "corrupt IOHeader: description string runs past the header")
    try:
        buf[text + 4 : text + 4 + length].decode("utf-8")
    except UnicodeDecodeError as err:
        raise BadInput(path, f"IOHeader description is not UTF-8: {err}") from None
    return compression, data_table


def _check_payload(path: str | Path, pos: int, compression: int, payload: bytes) -> None:
    """A compressed packet must decompress completely to at most ``MAX_PACKET_BYTES``."""
    if compression in LZ4_CODES:
        size = _lz4_size(payload)
    elif compression in ZSTD_CODES:
        size = _zstd_size(payload)
    else:
        return
    if size is None:
        raise BadInput(path, f"packet at byte {pos}: cannot decompress (corrupt or truncated)")
    if size > MAX_PACKET_BYTES:
        raise BadInput(path, f"packet at byte {pos} would decompress to more than {MAX_PACKET_BYTES} bytes")


def _lz4_size(payload: bytes) -> int | None:
    """Decompressed size of concatenated LZ4 frames, counted up to the cap; None when corrupt."""
    total = 0
    while payload:
        decompressor = lz4.frame.LZ4FrameDecompressor()
        try:
            total += len(decompressor.decompress(payload, max_length=MAX_PACKET_BYTES + 1 - total))
        except RuntimeError:
            return None
        if total > MAX_PACKET_BYTES:
            return total
        if not decompressor.eof:
            return None
        payload = decompressor.unused_data
    return total


def _zstd_size(payload: bytes) -> int | None:
    """Decompressed size of concatenated zstd frames, counted up to the cap; None when corrupt."""
    decompressor = zstandard.ZstdDecompressor(max_window_size=MAX_PACKET_BYTES)
    try:
        with decompressor.stream_reader(payload, read_across_frames=True) as reader:
            return len(reader.read(MAX_PACKET_BYTES + 1))
    except (zstandard.ZstdError, ValueError):
        return None


def write_aedat4(
    path: str | Path, events: np.ndarray, sensor_size: tuple[int, int], compression: str = "LZ4"
) -> None:
    """Write one polarity stream (id 0) as an AEDAT 4.0 file, LZ4-compressed or uncompressed."""
    if compression not in COMPRESSION:
        raise ValueError(f"compression must be one of {sorted(COMPRESSION)}, got {compression!r}")
    events = as_event_array(events)
    width, height = int(sensor_size[0]), int(sensor_size[1])
    if not (0 < width <= 0x7FFF and 0 < height <= 0x7FFF):
        raise ValueError(f"sensor size must fit int16 coordinates, got {sensor_size}")
    check_writable(events, (width, height), 2**63 - 1)
    header = _io_header(COMPRESSION[compression], _info_xml(width, height, compression))
    with open(path, "wb") as out:
        out.write(MAGIC)
        out.write(struct.pack("<I", len(header)))
        out.write(header)
        for start in range(0, len(events), PACKET_EVENTS):
            payload = _event_packet(events[start : start + PACKET_EVENTS])
            if compression == "LZ4":
                payload = lz4.frame.compress(payload)
            out.write(struct.pack("<iI", 0, len(payload)))
            out.write(payload)


def _info_xml(width: int, height: int, compression: str) -> str:
    """DV's description of the one event stream; ``aedat`` reads the type and size from it."""
    attrs = [
        ("compression", "string", compression),
        ("originalModuleName", "string", "capture"),
        ("originalOutputName", "string", "events"),
        ("typeDescription", "string", "Array of events (polarity ON/OFF)."),
        ("typeIdentifier", "string", "EVTS"),
    ]
    info = [("sizeX", "int", str(width)), ("sizeY", "int", str(height)), ("source", "string", "tmkt")]

    def lines(items: list[tuple[str, str, str]], indent: str) -> str:
        return "".join(f'{indent}<attr key="{k}" type="{t}">{escape(v)}</attr>\n' for k, t, v in items)

    return (
        '<dv version="2.0">\n'
        '    <node name="outInfo" path="/mainloop/Recorder/outInfo/">\n'
        '        <node name="0" path="/mainloop/Recorder/outInfo/0/">\n'
        + lines(attrs, " " * 12)
        + '            <node name="info" path="/mainloop/Recorder/outInfo/0/info/">\n'
        + lines(info, " " * 16)
        + "            </node>\n        </node>\n    </node>\n</dv>\n"
    )


def _io_header(compression: int, info: str, data_table_position: int = -1) -> bytes:
    """The IOHeader flatbuffer, laid out byte for byte as DV's own writer lays it out.

    Offsets (bytes, after the uint32 size that precedes it in the file): 0 root -> 24;
    4 "IOHE"; 14 vtable (3 fields); 24 table with the compression at +4, the string offset
    at +8 and the int64 dataTablePosition at +12; 44 the info string (length, bytes, NUL,
    zero padding to 4). The int64 must sit 8-aligned counting the size prefix, and the whole
    prefixed buffer is a multiple of 8: when the string block breaks that, 4 zero bytes go
    between the table and the string, as a flatbuffers builder would put them.
    """
    text = info.encode()
    string = struct.pack("<I", len(text)) + text + b"\0"
    string += b"\0" * (-len(string) % 4)
    gap = b"" if (48 + len(string)) % 8 == 0 else b"\0" * 4
    vtable = struct.pack("<5H", 10, 20, 4, 12, 8)
    table = struct.pack("<iiIq", 24 - 14, compression, 44 + len(gap) - 32, data_table_position)
    return struct.pack("<I", 24) + b"IOHE" + b"\0" * 6 + vtable + table + gap + string


def _event_packet(events: np.ndarray) -> bytes:
    """A size-prefixed EventPacket flatbuffer.

    Offsets after the 4-byte size prefix: 0 root -> 16; 4 "EVTS"; 10 vtable (1 field);
    16 table whose field points at the vector at 24; 28 the 16-byte structs (8-aligned
    counting the prefix, as int64 members need).
    """
    elements = np.zeros(len(events), dtype=EVENT_STRUCT)
    elements["t"] = events["t"]
    elements["x"] = events["x"]
    elements["y"] = events["y"]
    elements["on"] = events["p"]
    body = (
        struct.pack("<I", 16)
        + b"EVTS"
        + b"\0\0"
        + struct.pack("<3H", 6, 8, 4)
        + struct.pack("<iII", 6, 4, len(events))
        + elements.tobytes()
    )
    return struct.pack("<I", len(body)) + body
