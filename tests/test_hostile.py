"""Hostile inputs: each crafted file gives one ``BadInput`` naming it, in bounded memory and time.

Memory is measured in a child process (``ru_maxrss`` before and after the read, under an address
space limit), so a reader that allocates what a file declares shows up as a number, not as a
swapping machine.
"""

from __future__ import annotations

import gzip
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tempfile
import textwrap
import time
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.errors import BadInput
from pipelines.formats import (
    read_aedat4,
    read_aedat31,
    read_cifar_batch,
    read_cifar_meta,
    read_events,
    read_idx,
    read_image,
    write_aedat4,
    write_aedat31,
    write_cifar_batch,
)
from pipelines.formats.aedat3 import PACKET_HEADER, POLARITY_DTYPE
from storage.schema import EVENT_DTYPE

ROOT = Path(__file__).resolve().parents[1]
#: address-space limit of the measuring child: imports take about 600 MB of it
CHILD_AS_BYTES = 1536 << 20
#: what one hostile read may add to the child's peak resident memory
READ_BUDGET_MB = 120


def events(n: int = 50, width: int = 34) -> np.ndarray:
    ev = np.zeros(n, dtype=EVENT_DTYPE)
    ev["x"] = np.arange(n) % width
    ev["y"] = 3
    ev["t"] = np.arange(n) * 10
    ev["p"] = np.arange(n) % 2
    return ev


def assert_bad(reader, path: Path, *fragments: str) -> BadInput:
    with pytest.raises(BadInput) as info:
        reader(path)
    assert str(path) in str(info.value) or path.name in str(info.value)
    for fragment in fragments:
        assert fragment in info.value.reason, info.value.reason
    return info.value


def read_in_child(reader: str, path: Path, timeout: float = 60) -> dict:
    """Run ``reader(path)`` in a child under an address-space limit; its outcome and memory growth."""
    code = textwrap.dedent(
        f"""
        import json, resource, sys
        resource.setrlimit(resource.RLIMIT_AS, ({CHILD_AS_BYTES}, {CHILD_AS_BYTES}))
        import numpy, PIL.Image, aedat, lz4.frame
        from pipelines.errors import BadInput
        import pipelines.formats as formats
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        try:
            formats.{reader}(sys.argv[1])
            outcome, reason = "ok", ""
        except BadInput as err:
            outcome, reason = "bad", str(err)
        except BaseException as err:
            outcome, reason = type(err).__name__, str(err)
        grown = (resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before) / 1024
        print(json.dumps({{"outcome": outcome, "reason": reason, "grown_mb": grown}}))
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1"}
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=timeout, env=env
    )
    assert done.returncode == 0, f"child died with {done.returncode}: {done.stderr[-2000:]}"
    return json.loads(done.stdout.strip().splitlines()[-1])


def assert_bad_in_budget(reader: str, path: Path, *fragments: str) -> None:
    result = read_in_child(reader, path)
    assert result["outcome"] == "bad", result
    assert path.name in result["reason"]
    for fragment in fragments:
        assert fragment in result["reason"], result
    assert result["grown_mb"] < READ_BUDGET_MB, result


# ---------------------------------------------------------------- AEDAT 4


@pytest.fixture
def aedat4_file(tmp_path: Path) -> Path:
    path = tmp_path / "rec.aedat4"
    write_aedat4(path, events(), (34, 34))
    return path


def test_aedat4_header_bit_flip_that_panics_the_decoder_is_bad(aedat4_file):
    raw = bytearray(aedat4_file.read_bytes())
    raw[18] ^= 1 << 2  # the IOHeader's root offset: aedat reads the flatbuffer unchecked and panics
    aedat4_file.write_bytes(raw)
    assert_bad(read_aedat4, aedat4_file)
    assert_bad(read_events, aedat4_file)


@pytest.mark.parametrize("at", ["header", "packet"])
def test_aedat4_declared_sizes_beyond_the_file_are_refused_before_allocation(aedat4_file, at):
    raw = bytearray(aedat4_file.read_bytes())
    header = struct.unpack("<I", raw[14:18])[0]
    offset = 14 if at == "header" else 18 + header + 4
    raw[offset : offset + 4] = struct.pack("<I", 0xFFFFFFF0)
    aedat4_file.write_bytes(raw)
    assert_bad_in_budget("read_aedat4", aedat4_file, "size")


def test_aedat4_lz4_packet_bomb_is_refused(tmp_path):
    import lz4.frame

    from pipelines.formats.aedat4 import _event_packet, _info_xml, _io_header

    path = tmp_path / "bomb.aedat4"
    payload = _event_packet(events(4))
    bomb = lz4.frame.compress(payload + b"\0" * (300 << 20))  # 300 MB of padding after the packet
    with open(path, "wb") as out:
        header = _io_header(1, _info_xml(34, 34, "LZ4"))
        out.write(b"#!AER-DAT4.0\r\n" + struct.pack("<I", len(header)) + header)
        out.write(struct.pack("<iI", 0, len(bomb)) + bomb)
    assert path.stat().st_size < 2 << 20
    assert_bad_in_budget("read_aedat4", path, "decompress")


def aedat4_with_payloads(path: Path, compression: int, payloads: list[bytes]) -> Path:
    from pipelines.formats.aedat4 import _info_xml, _io_header

    header = _io_header(compression, _info_xml(34, 34, "ZSTD" if compression == 3 else "LZ4"))
    with open(path, "wb") as out:
        out.write(b"#!AER-DAT4.0\r\n" + struct.pack("<I", len(header)) + header)
        for payload in payloads:
            out.write(struct.pack("<iI", 0, len(payload)) + payload)
    return path


def test_aedat4_zstd_packets_read_and_zstd_bombs_are_refused(tmp_path):
    import zstandard

    from pipelines.formats.aedat4 import _event_packet

    ev = events(300)
    packets = [zstandard.ZstdCompressor().compress(_event_packet(ev[i : i + 100])) for i in (0, 100, 200)]
    got, size = read_aedat4(aedat4_with_payloads(tmp_path / "zstd.aedat4", 3, packets))
    assert size == (34, 34)
    for name in ("x", "y", "t", "p"):
        np.testing.assert_array_equal(got[name], ev[name])
    bomb = zstandard.ZstdCompressor(level=19).compress(_event_packet(ev[:4]) + bytes(300 << 20))
    path = aedat4_with_payloads(tmp_path / "zbomb.aedat4", 3, [bomb])
    assert path.stat().st_size < 100_000
    assert_bad_in_budget("read_aedat4", path, "decompress")


def test_aedat4_description_that_is_not_utf8_is_bad(aedat4_file):
    raw = bytearray(aedat4_file.read_bytes())
    at = raw.find(b"<dv version")
    raw[at + 1] = 0xFF
    aedat4_file.write_bytes(raw)
    # refused before the decoder, which would view the bytes as a Rust str without checking them
    assert_bad(read_aedat4, aedat4_file, "not UTF-8")


# ---------------------------------------------------------------- sensor sizes, AEDAT 3.1 times


def test_sensor_sizes_above_uint16_are_bad(tmp_path):
    path = tmp_path / "wide.aedat"
    write_aedat31(path, events(), (34, 34))
    raw = path.read_bytes().replace(b"#Source 1: DVS 34x34", b"#Source 1: DVS 70000x70000")
    path.write_bytes(raw)
    assert_bad(read_aedat31, path, "70000")
    assert_bad(read_events, path, "70000")
    dat = tmp_path / "wide.dat"
    body = np.zeros(3, dtype=[("t", "<u4"), ("d", "<u4")])
    dat.write_bytes(b"% Width 70000\n% Height 8\n" + bytes([0x0C, 0x08]) + body.tobytes())
    assert_bad(read_events, dat, "70000")


def _aedat31_with_times(path: Path, times: list[int], overflow: int = 0) -> None:
    write_aedat31(path, events(0), (34, 34))
    head = np.zeros(1, dtype=PACKET_HEADER)
    head["type"], head["source"], head["size"], head["ts_offset"] = 1, 1, 8, 4
    head["ts_overflow"] = overflow
    head["capacity"] = head["number"] = head["valid"] = len(times)
    records = np.zeros(len(times), dtype=POLARITY_DTYPE)
    records["data"] = (np.uint32(5) << 17) | (np.uint32(2) << 2) | 1
    records["t"] = times
    with open(path, "ab") as out:
        out.write(head.tobytes() + records.tobytes())


def test_negative_aedat31_timestamps_are_bad(tmp_path):
    path = tmp_path / "neg.aedat"
    _aedat31_with_times(path, [-5, -3, 0])
    assert_bad(read_aedat31, path, "negative")
    _aedat31_with_times(path, [1, 2, 3], overflow=-1)
    assert_bad(read_aedat31, path, "negative")


# ---------------------------------------------------------------- images


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png_bytes(width: int, height: int, idat: list[bytes]) -> bytes:
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    chunks = b"".join(png_chunk(b"IDAT", d) for d in idat)
    return b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", ihdr) + chunks + png_chunk(b"IEND", b"")


def test_broken_png_chunk_is_bad_not_syntax_error(tmp_path):
    noise = np.random.default_rng(0).integers(0, 256, (20, 20), dtype=np.uint8)
    data = zlib.compress(b"".join(b"\x00" + row.tobytes() for row in noise))
    raw = png_bytes(20, 20, [data[: len(data) // 2], data[len(data) // 2 :]])
    second = raw.rfind(b"IDAT")
    path = tmp_path / "chunk.png"
    path.write_bytes(raw[:second] + b"\x00DAT" + raw[second + 4 :])
    assert_bad(read_image, path)


def test_png_declaring_13000x13000_is_refused_before_decoding(tmp_path):
    rows = zlib.compressobj(9)
    data = b"".join(rows.compress(b"\x00" + bytes(13000)) for _ in range(13000)) + rows.flush()
    path = tmp_path / "huge.png"
    path.write_bytes(png_bytes(13000, 13000, [data]))
    assert path.stat().st_size < 400_000
    assert_bad_in_budget("read_image", path, "pixels")


def tiny_jpeg_declaring(tmp_path: Path, name: str, side: int, progressive: bool = False) -> Path:
    """A real 16x16 JPEG whose frame header is patched to declare ``side`` x ``side`` pixels."""
    buffer = io.BytesIO()
    Image.fromarray(np.full((16, 16, 3), 120, np.uint8)).save(
        buffer, "JPEG", quality=50, progressive=progressive
    )
    raw = bytearray(buffer.getvalue())
    sof = raw.find(b"\xff\xc2" if progressive else b"\xff\xc0")
    raw[sof + 5 : sof + 9] = struct.pack(">HH", side, side)
    path = tmp_path / name
    path.write_bytes(bytes(raw))
    return path


@pytest.mark.parametrize("progressive", [False, True])
def test_tiny_jpeg_declaring_9000x9000_costs_no_gigabytes(tmp_path, progressive):
    path = tiny_jpeg_declaring(tmp_path, "bomb.jpg", 9000, progressive)
    assert path.stat().st_size < 2000
    result = read_in_child("read_image", path)
    if progressive:  # libjpeg would buffer every coefficient of the full size: refused first
        assert result["outcome"] == "bad" and "pixels" in result["reason"], result
    else:  # decoded at 1/8 scale, then reduced: a small image (libjpeg pads the missing data)
        assert result["outcome"] in ("ok", "bad"), result
    assert result["grown_mb"] < READ_BUDGET_MB / 4, result


def test_large_images_are_reduced_to_near_the_stored_size(tmp_path):
    from pipelines.formats.images import DECODE_SIDE

    gradient = np.tile(np.arange(2000, dtype=np.uint16) % 256, (1500, 1)).astype(np.uint8)
    for suffix in (".jpg", ".png"):
        path = tmp_path / f"big{suffix}"
        Image.fromarray(np.stack([gradient] * 3, axis=-1)).save(path)
        image = read_image(path)
        assert image.shape[2] == 3
        assert DECODE_SIDE <= min(image.shape[:2]) < 2 * DECODE_SIDE  # reduced, aspect kept
        assert abs(image.shape[1] / image.shape[0] - 2000 / 1500) < 0.02
    small = tmp_path / "small.png"
    Image.fromarray(gradient[:300, :200]).save(small)
    np.testing.assert_array_equal(read_image(small), gradient[:300, :200])  # untouched


# ---------------------------------------------------------------- CIFAR pickles


def cifar_pickle(path: Path, data: object, labels: object) -> Path:
    path.write_bytes(pickle.dumps({b"data": data, b"labels": labels}, protocol=2))
    return path


def test_cifar_ragged_and_huge_labels_are_bad(tmp_path):
    data = np.zeros((2, 3072), np.uint8)
    assert_bad(read_cifar_batch, cifar_pickle(tmp_path / "ragged", data, [[1, 2], [3]]), "labels")
    assert_bad(read_cifar_batch, cifar_pickle(tmp_path / "huge", data, [10**30, 1]), "labels")
    assert_bad(read_cifar_batch, cifar_pickle(tmp_path / "float", data, [1.5, 1]), "labels")
    assert_bad(read_cifar_batch, cifar_pickle(tmp_path / "short", data, [1]), "labels")
    assert_bad(read_cifar_batch, cifar_pickle(tmp_path / "objects", data.astype(object), [1, 2]), "data")
    names = tmp_path / "batches.meta"
    names.write_bytes(pickle.dumps({b"label_names": [[b"a"], 3]}, protocol=2))
    assert_bad(read_cifar_meta, names, "label_names")


def test_cifar_shared_reference_pickle_costs_no_gigabytes(tmp_path):
    level = [0] * 400
    for _ in range(2):
        level = [level] * 400  # 64 million ints once numpy expands the shared lists
    path = cifar_pickle(tmp_path / "data_batch_1", np.zeros((2, 3072), np.uint8), [level, level])
    assert path.stat().st_size < 10_000
    assert_bad_in_budget("read_cifar_batch", path, "labels")


def test_cifar_memo_index_bomb_costs_no_gigabytes(tmp_path):
    # LONG_BINPUT with a huge index: CPython's unpickler grows (and zeroes) its memo table to it
    bomb = b"\x80\x02}q\x00" + b"r" + struct.pack("<I", 1 << 26) + b"."
    path = tmp_path / "data_batch_2"
    path.write_bytes(bomb)
    assert_bad_in_budget("read_cifar_batch", path, "memo")


# ---------------------------------------------------------------- IDX


def test_idx_with_255_dimensions_is_bad(tmp_path):
    path = tmp_path / "dims-idx3-ubyte"
    path.write_bytes(bytes([0, 0, 8, 255]) + struct.pack(">255I", *([1] * 255)) + b"\x07")
    assert_bad(read_idx, path, "dimensions")


def test_idx_dimensions_whose_product_overflows_int64_are_bad(tmp_path):
    path = tmp_path / "overflow-idx3-ubyte"
    shape = (2**32 - 1, 2**32 - 1, 2**32 - 1)  # product wraps around int64
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", *shape) + bytes(16))
    assert_bad(read_idx, path)
    zero = tmp_path / "zero-idx3-ubyte"
    zero.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 0, 2**32 - 1, 2**32 - 1))
    assert_bad(read_idx, zero, "cap")  # no data, but numpy cannot even describe that shape
    empty = tmp_path / "empty-idx3-ubyte"
    empty.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 0, 28, 28))
    assert read_idx(empty).shape == (0, 28, 28)


def test_idx_gzip_of_zeros_costs_no_gigabytes(tmp_path):
    """A gzip bomb whose header is zeros too: a 0-dimension IDX must not inflate the rest."""
    body = zlib.compressobj(9, zlib.DEFLATED, 31)
    data = b"".join(body.compress(bytes(1 << 20)) for _ in range(300)) + body.flush()
    path = tmp_path / "zeros-idx3-ubyte.gz"
    path.write_bytes(data)
    assert_bad_in_budget("read_idx", path)


def test_idx_gzip_stream_that_stops_yielding_is_bad_not_a_hang(tmp_path):
    """Fuzz mutant idx_gz 723 (16 bytes inserted into a gzip IDX): zlib stops producing output
    with input left over, and a loop waiting for the declared size spun forever."""
    path = tmp_path / "stall-idx1-ubyte.gz"
    path.write_bytes(
        bytes.fromhex(
            "1f8b08000000000002036360e060646060106160646266616563e7e044b000fa24c3111c00000067"
            "219871df8a2d44afd0aab78a951a70"
        )
    )
    result = read_in_child("read_idx", path, timeout=20)
    assert result["outcome"] == "bad", result


def test_idx_gzip_bomb_costs_no_gigabytes(tmp_path):
    path = tmp_path / "train-images-idx3-ubyte.gz"
    body = zlib.compressobj(9, zlib.DEFLATED, 31)
    header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 28, 28)
    block = bytes(1 << 20)
    data = body.compress(header) + b"".join(body.compress(block) for _ in range(300)) + body.flush()
    path.write_bytes(data)
    assert path.stat().st_size < 400_000
    assert_bad_in_budget("read_idx", path, "longer")
    declared = tmp_path / "declared-idx3-ubyte.gz"
    declared.write_bytes(gzip.compress(bytes([0, 0, 8, 3]) + struct.pack(">3I", 2**20, 2**10, 2**10)))
    assert_bad_in_budget("read_idx", declared, "cap")


def test_cifar_round_trip_still_reads(tmp_path):
    images = np.random.default_rng(0).integers(0, 256, (5, 32, 32, 3), dtype=np.uint8)
    write_cifar_batch(tmp_path / "data_batch_1", images, [0, 1, 2, 9, 4])
    got, labels = read_cifar_batch(tmp_path / "data_batch_1")
    np.testing.assert_array_equal(got, images)
    assert labels.tolist() == [0, 1, 2, 9, 4]


# ---------------------------------------------------------------- raw trees: nothing skipped silently


def hostile_tree(tmp_path: Path) -> tuple[Path, dict[str, str]]:
    """A class-folder tree of AEDAT 4 files with every kind of entry a listing must report.

    Returns the raw root and the expected ``{path: reason fragment}`` of what must be quarantined.
    """
    raw, outside = tmp_path / "raw", tmp_path / "elsewhere"
    outside.mkdir()
    write_aedat4(outside / "foreign.aedat4", events(), (34, 34))
    for cls in ("c0", "c1"):
        (raw / cls).mkdir(parents=True)
        for i in range(4):
            write_aedat4(raw / cls / f"r{i}.aedat4", events(40 + i), (34, 34))
    os.mkfifo(raw / "c0" / "pipe.aedat4")
    (raw / "c0" / "loop").symlink_to(raw / "c0")  # back to its own folder
    (raw / "c1" / "up").symlink_to(raw)  # to the root: c0 would be listed again, labelled c1
    (raw / "c0" / "self.aedat4").symlink_to(raw / "c0" / "self.aedat4")
    (raw / "c0" / "gone.aedat4").symlink_to(raw / "c0" / "missing.aedat4")
    (raw / "c1" / "out.aedat4").symlink_to(outside / "foreign.aedat4")
    (raw / "c1" / "outdir").symlink_to(outside)
    (raw / "c1" / "inside.aedat4").symlink_to(raw / "c0" / "r0.aedat4")  # stays inside: followed
    write_aedat4(raw / "c1" / os.fsdecode(b"caf\xe9.aedat4"), events(), (34, 34))  # latin-1 name
    expected = {
        "c0/pipe.aedat4": "FIFO",
        "c0/loop": "loop",
        "c1/up": "enclosing folder",
        "c0/self.aedat4": "loop",
        "c0/gone.aedat4": "broken symlink",
        "c1/out.aedat4": "leaves the folder",
        "c1/outdir": "leaves the folder",
        "c1/caf\\xe9.aedat4": "UTF-8",
    }
    return raw, expected


def test_listing_reports_every_entry_it_cannot_use(tmp_path):
    from pipelines.sources.folder import FolderSource

    raw, expected = hostile_tree(tmp_path)
    listing = FolderSource().list(raw, None)
    reasons = {item.path: item.reason for item in listing.events if item.reason}
    assert set(reasons) == set(expected)
    for path, fragment in expected.items():
        assert fragment in reasons[path], (path, reasons[path])
    good = sorted(item.path for item in listing.events if not item.reason)
    assert good == sorted([f"c{c}/r{i}.aedat4" for c in (0, 1) for i in range(4)] + ["c1/inside.aedat4"])
    assert listing.classes == ["c0", "c1"]


LIST_IN_CHILD = """
import json, os, sys
from pipelines.sources.folder import FolderSource
if os.geteuid() == 0:  # root reads every folder: list as nobody, as a user's build would
    os.setgid(65534)
    os.setuid(65534)
listing = FolderSource().list(sys.argv[1], None)
print(json.dumps({"classes": listing.classes, "events": [[e.path, e.reason] for e in listing.events]}))
"""


def test_unreadable_class_folder_is_reported_not_dropped():
    # a folder of its own in the system temp folder: pytest's is private to its user, and the
    # listing runs as an unprivileged user when the tests run as root (root reads every folder)
    base = Path(tempfile.mkdtemp(prefix="tmkt-unreadable-"))
    base.chmod(0o755)
    raw = base / "raw"
    try:
        for cls in ("c0", "c1"):
            (raw / cls).mkdir(parents=True)
            write_aedat4(raw / cls / "r.aedat4", events(), (34, 34))
        raw.chmod(0o755)
        (raw / "c1").chmod(0o000)
        env = {**os.environ, "PYTHONPATH": str(ROOT)}
        done = subprocess.run(
            [sys.executable, "-c", LIST_IN_CHILD, str(raw)],
            capture_output=True,
            text=True,
            env=env,
            timeout=60,
        )
    finally:
        (raw / "c1").chmod(0o755)
        shutil.rmtree(base)
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    assert listing["classes"] == ["c0", "c1"]  # the class stays, so no label shifts
    assert listing["events"] == [["c0/r.aedat4", ""], ["c1", "folder cannot be read: Permission denied"]]


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_build_quarantines_hostile_files_and_commits_the_rest(tmp_path, client):
    """The AEDAT 4 mutant that made the decoder panic used to hang the build through Dask."""
    from pipelines.build import BuildConfig, run_build
    from storage.reader import DatasetReader
    from storage.verify import verify_store

    raw, expected = hostile_tree(tmp_path)
    panic = raw / "c0" / "r3.aedat4"
    flipped = bytearray(panic.read_bytes())
    flipped[18] ^= 1 << 2
    panic.write_bytes(bytes(flipped))
    expected["c0/r3.aedat4"] = "IOHeader"
    static = tmp_path / "static"
    for cls in ("c0", "c1"):
        (static / cls).mkdir(parents=True)
        Image.fromarray(np.full((40, 30), 50 + len(cls), np.uint8)).save(static / cls / "ok.png")
    noise = np.random.default_rng(0).integers(0, 256, (20, 20), dtype=np.uint8)
    data = zlib.compress(b"".join(b"\x00" + row.tobytes() for row in noise))
    raw_png = png_bytes(20, 20, [data[:40], data[40:]])
    second = raw_png.rfind(b"IDAT")
    (static / "c0" / "chunk.png").write_bytes(raw_png[:second] + b"\x00DAT" + raw_png[second + 4 :])
    tiny_jpeg_declaring(static / "c1", "bomb.jpg", 9000, progressive=True)

    config = BuildConfig(
        source="folder",
        raw=str(raw),
        static=str(static),
        store=str(tmp_path / "s"),
        size=(34, 34),
        max_bad_fraction=0.9,
    )
    result = run_build(config, client=client)
    assert result.committed
    reasons = {q["path"]: q["reason"] for q in result.report["quarantined"]}
    expected.update({"c0/chunk.png": "broken PNG", "c1/bomb.jpg": "pixels"})
    assert set(reasons) == set(expected)
    for path, fragment in expected.items():
        assert fragment in reasons[path], (path, reasons[path])
    reader = DatasetReader(tmp_path / "s")
    assert sorted(reader.sources) == sorted(
        [f"c{c}/r{i}.aedat4" for c in (0, 1) for i in range(4) if (c, i) != (0, 3)] + ["c1/inside.aedat4"]
    )
    assert reader.n_images == 2
    for i, source in enumerate(reader.sources):
        np.testing.assert_array_equal(reader.events(i)["t"], read_aedat4(raw / source)[0]["t"])
    # the store verifies against the hostile raw folder itself: what was quarantined at listing (the
    # FIFO, the loops, the link out) is not re-read, and everything that was hashed still matches
    assert verify_store(tmp_path / "s", raw=raw) == []


# ---------------------------------------------------------------- peak memory of whole builds

BUILD_IN_CHILD = """
import sys
from pipelines.build import BuildConfig, run_build
source, raw, static, store = sys.argv[1:5]
result = run_build(BuildConfig(source=source, raw=raw, static=static, store=store, workers=2,
                               max_bad_fraction=0.9))
print(len(result.report["quarantined"]), "quarantined;", result.report["recordings"], "recordings")
"""


def peak_build_rss_mb(source: str, raw: Path, static: Path, store: Path) -> tuple[float, str]:
    """Run a real build (local Dask cluster, 2 workers) in a child; the peak summed RSS of its
    process tree (client, scheduler, workers), sampled every 20 ms, and what it printed."""
    import psutil

    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    args = [sys.executable, "-c", BUILD_IN_CHILD, source, str(raw), str(static), str(store)]
    child = subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    root, peak = psutil.Process(child.pid), 0
    while child.poll() is None:
        try:
            tree = [root, *root.children(recursive=True)]
            peak = max(peak, sum(p.memory_info().rss for p in tree))
        except psutil.Error:
            pass
        time.sleep(0.02)
    out, err = child.communicate()
    assert child.returncode == 0, err[-3000:]
    return peak / 2**20, out.strip()


def hostile_static_trees(base: Path, hostile: bool) -> list[tuple[str, Path, Path]]:
    """(source, raw, static) of three builds whose statics hold the tiny-but-huge files of a
    hostile download (or, with ``hostile=False``, the same trees without them, as the baseline)."""
    from pipelines.formats import write_idx, write_nmnist

    trees = []
    raw, static = base / "folder" / "raw", base / "folder" / "static"
    for cls in ("c0", "c1"):
        (raw / cls).mkdir(parents=True)
        (static / cls).mkdir(parents=True)
        for i in range(6):
            write_aedat4(raw / cls / f"r{i}.aedat4", events(300 + i), (34, 34))
        Image.fromarray(np.full((40, 30), 80, np.uint8)).save(static / cls / "ok.png")
    if hostile:
        for i in range(6):  # six 1.2 KB JPEGs declaring 9000x9000
            tiny_jpeg_declaring(static / f"c{i % 2}", f"bomb{i}.jpg", 9000)
        rows = zlib.compressobj(9)
        data = b"".join(rows.compress(b"\x00" + bytes(13000)) for _ in range(13000)) + rows.flush()
        (static / "c0" / "huge.png").write_bytes(png_bytes(13000, 13000, [data]))
    trees.append(("folder", raw, static))

    raw, static = base / "cifar" / "raw", base / "cifar" / "static"
    for cls in ("airplane", "automobile"):
        (raw / cls).mkdir(parents=True)
        for i in range(6):
            write_aedat4(raw / cls / f"r{i}.aedat4", events(300 + i), (34, 34))
    static.mkdir(parents=True)
    images = np.random.default_rng(0).integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
    write_cifar_batch(static / "data_batch_2", images, [0, 1, 0, 1])
    if hostile:  # a pickle of shared references: about a gigabyte once numpy expands it
        level = [0] * 300
        for _ in range(2):
            level = [level] * 300
        cifar_pickle(static / "data_batch_1", np.zeros((4, 3072), np.uint8), [level] * 4)
    trees.append(("cifar10dvs", raw, static))

    raw, static = base / "nmnist" / "raw", base / "nmnist" / "static"
    for digit in ("0", "1"):
        (raw / "Train" / digit).mkdir(parents=True)
        for i in range(6):
            write_nmnist(raw / "Train" / digit / f"{i}.bin", events(300 + i))
    static.mkdir(parents=True)
    write_idx(static / "t10k-images-idx3-ubyte.gz", np.zeros((10, 28, 28), np.uint8))
    write_idx(static / "t10k-labels-idx1-ubyte.gz", np.arange(10, dtype=np.uint8))
    if hostile:  # a 1 MB gzip IDX declaring MNIST's shape and holding a gigabyte
        write_idx(static / "train-labels-idx1-ubyte.gz", np.zeros(60000, np.uint8))
        body = zlib.compressobj(9, zlib.DEFLATED, 31)
        header = bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 28, 28)
        data = body.compress(header) + b"".join(body.compress(bytes(1 << 20)) for _ in range(1000))
        (static / "train-images-idx3-ubyte.gz").write_bytes(data + body.flush())
    trees.append(("nmnist", raw, static))
    return trees


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_builds_over_hostile_statics_cost_no_more_than_clean_ones(tmp_path):
    peaks = {}
    for hostile in (False, True):
        for source, raw, static in hostile_static_trees(tmp_path / str(hostile), hostile):
            peak, printed = peak_build_rss_mb(source, raw, static, tmp_path / f"store-{source}-{hostile}")
            peaks[(source, hostile)] = peak
            print(f"{source} {'hostile' if hostile else 'clean'}: peak {peak:.0f} MB ({printed})")
    for source in ("folder", "cifar10dvs", "nmnist"):
        assert peaks[(source, True)] < peaks[(source, False)] + 300, peaks


def test_readers_refuse_a_fifo_instead_of_blocking_on_it(tmp_path):
    for name, reader in (("rec.bin", read_events), ("x-idx1-ubyte", read_idx), ("img.png", read_image)):
        fifo = tmp_path / name
        os.mkfifo(fifo)
        assert_bad(reader, fifo, "not a regular file")


def test_fixed_static_names_that_are_not_files_are_reported(tmp_path):
    from pipelines.sources.cifar10dvs import list_cifar_statics
    from pipelines.sources.nmnist import list_mnist_statics

    os.mkfifo(tmp_path / "t10k-images-idx3-ubyte")
    from pipelines.formats import write_idx

    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.zeros(3, np.uint8))
    items, bad = list_mnist_statics(tmp_path)
    assert items == [] and bad == [("t10k-images-idx3-ubyte", "not a regular file")]  # not "missing"
    os.mkfifo(tmp_path / "data_batch_1")
    items, bad = list_cifar_statics(tmp_path)
    assert items == [] and bad == [("data_batch_1", "not a regular file")]
