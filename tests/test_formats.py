"""Event and image format readers and writers: round trips, exact bytes, real files, corrupt files."""

from __future__ import annotations

import gzip
import os
import pickle
import struct
from pathlib import Path

import lz4.frame
import numpy as np
import pytest
from PIL import Image

from pipelines.errors import BadInput
from pipelines.formats import (
    EVENT_SUFFIXES,
    IMAGE_SUFFIXES,
    read_aedat2,
    read_aedat4,
    read_aedat31,
    read_cifar_batch,
    read_cifar_meta,
    read_events,
    read_gesture_labels,
    read_idx,
    read_image,
    read_nmnist,
    read_prophesee_dat,
    read_prophesee_raw,
    write_aedat2,
    write_aedat4,
    write_aedat31,
    write_cifar_batch,
    write_cifar_meta,
    write_idx,
    write_nmnist,
)
from pipelines.formats.aedat4 import _event_packet, _io_header
from pipelines.formats.idx import idx_shape, is_gzip, read_idx_rows
from storage.schema import EVENT_DTYPE

SIZES = [0, 1, 7, 5000]


def random_events(n: int, sensor_size: tuple[int, int], max_t: int, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    events = np.zeros(n, dtype=EVENT_DTYPE)
    events["x"] = rng.integers(0, sensor_size[0], n)
    events["y"] = rng.integers(0, sensor_size[1], n)
    events["t"] = np.sort(rng.integers(0, max_t + 1, n))
    events["p"] = rng.integers(0, 2, n)
    return events


@pytest.fixture(scope="session")
def real_data() -> Path:
    root = os.environ.get("TMKT_REAL_DATA")
    if not root or not Path(root).is_dir():
        pytest.skip("real recordings not available: set TMKT_REAL_DATA to the shared data folder")
    return Path(root)


def assert_bad(reader, path: Path, *fragments: str) -> None:
    """The reader raises BadInput whose message names the file (and says why)."""
    with pytest.raises(BadInput) as info:
        reader(path)
    assert path.name in str(info.value)
    for fragment in fragments:
        assert fragment in info.value.reason


# ---------------------------------------------------------------- round trips


@pytest.mark.parametrize("n", SIZES)
def test_nmnist_round_trip(tmp_path, n):
    events = random_events(n, (34, 34), 2**23 - 1, seed=n)
    path = tmp_path / "a.bin"
    write_nmnist(path, events)
    assert path.stat().st_size == 5 * n
    back = read_nmnist(path, sensor_size=(34, 34))
    assert back.dtype == EVENT_DTYPE
    np.testing.assert_array_equal(back, events)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("sensor_size", [(128, 128), (346, 260)])
def test_aedat2_round_trip(tmp_path, n, sensor_size):
    events = random_events(n, sensor_size, 2**32 - 1, seed=n)
    path = tmp_path / "a.aedat"
    write_aedat2(path, events, sensor_size)
    back, size = read_aedat2(path)
    assert size == sensor_size
    np.testing.assert_array_equal(back, events)


@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("sensor_size", [(128, 128), (346, 260), (64, 48)])
def test_aedat31_round_trip(tmp_path, n, sensor_size):
    # times up to 2**33 cross several 2**31 overflow boundaries, so packets carry overflow > 0
    events = random_events(n, sensor_size, 2**33, seed=n)
    path = tmp_path / "a.aedat"
    write_aedat31(path, events, sensor_size)
    back, size = read_aedat31(path)
    assert size == sensor_size
    np.testing.assert_array_equal(back, events)


@pytest.mark.parametrize("n", SIZES + [10000])
@pytest.mark.parametrize("compression", ["LZ4", "NONE"])
@pytest.mark.parametrize("sensor_size", [(34, 34), (128, 128), (320, 240), (1280, 720)])
def test_aedat4_round_trip_through_aedat_package(tmp_path, n, compression, sensor_size):
    import aedat

    events = random_events(n, sensor_size, 2**50, seed=n)
    path = tmp_path / "a.aedat4"
    write_aedat4(path, events, sensor_size, compression=compression)
    decoder = aedat.Decoder(str(path))
    assert decoder.id_to_stream() == {
        0: {"type": "events", "width": sensor_size[0], "height": sensor_size[1]}
    }
    packets = [p["events"] for p in decoder]
    assert len(packets) == -(-n // 4096)
    if n:
        raw = np.concatenate(packets)
        np.testing.assert_array_equal(raw["t"], events["t"])
        np.testing.assert_array_equal(raw["on"], events["p"].astype(bool))
    back, size = read_aedat4(path)
    assert size == sensor_size
    np.testing.assert_array_equal(back, events)


# ---------------------------------------------------------------- exact bytes


def test_nmnist_exact_bytes(tmp_path):
    events = np.array([(0, 1, 0x000102, 0), (3, 33, 0x4ABCDE, 1)], dtype=EVENT_DTYPE)
    path = tmp_path / "a.bin"
    write_nmnist(path, events)
    assert path.read_bytes() == bytes([0, 1, 0x00, 0x01, 0x02, 3, 33, 0x80 | 0x4A, 0xBC, 0xDE])


def test_aedat2_exact_bytes_and_jaer_image_axes(tmp_path):
    # DVS128 raw address: x_raw bits 1-7, y_raw bits 8-14, p_raw bit 0; jAER mirrors x, its y
    # points up and raw polarity 0 is ON: read as x = 127 - x_raw, y = 127 - y_raw, p = 1 - p_raw
    x_raw, y_raw, p_raw, t = 5, 100, 0, 123456
    path = tmp_path / "a.aedat"
    path.write_bytes(
        b"#!AER-DAT2.0\r\n# made by hand\r\n" + struct.pack(">Ii", y_raw << 8 | x_raw << 1 | p_raw, t)
    )
    events, size = read_aedat2(path)
    assert size == (128, 128)
    assert events.tolist() == [(127 - x_raw, 127 - y_raw, t, 1)]
    write_aedat2(tmp_path / "b.aedat", events)
    assert (
        (tmp_path / "b.aedat").read_bytes().endswith(struct.pack(">Ii", y_raw << 8 | x_raw << 1 | p_raw, t))
    )


def test_aedat2_drops_special_and_aps_records(tmp_path):
    dvs128 = tmp_path / "dvs.aedat"
    dvs128.write_bytes(b"#!AER-DAT2.0\n" + struct.pack(">IiIi", 0x8000 | 2, 1, 2, 5))
    assert read_aedat2(dvs128)[0].tolist() == [(126, 127, 5, 1)]
    davis = tmp_path / "davis.aedat"
    header = b"#!AER-DAT2.0\r\n# AEChip: eu.seebetter.ini.chips.davis.Davis346red\r\n"
    dvs_event = 7 << 22 | 9 << 12 | 1 << 11
    davis.write_bytes(header + struct.pack(">IiIiIi", 1 << 31 | 5, 1, dvs_event, 2, 1 << 10, 3))
    events, size = read_aedat2(davis)
    assert size == (346, 260)
    assert events.tolist() == [(345 - 9, 259 - 7, 2, 1)]


def test_aedat2_time_wrap_is_unwrapped(tmp_path):
    path = tmp_path / "wrap.aedat"
    path.write_bytes(b"#!AER-DAT2.0\r\n" + struct.pack(">IIII", 2, 2**32 - 10, 2, 5))
    assert read_aedat2(path)[0]["t"].tolist() == [2**32 - 10, 2**32 + 5]


def test_aedat31_exact_packet_layout(tmp_path):
    events = np.array([(100, 7, 2**31 + 5, 1)], dtype=EVENT_DTYPE)
    path = tmp_path / "a.aedat"
    write_aedat31(path, events)
    raw = path.read_bytes()
    header = b"#!AER-DAT3.1\r\n#Format: RAW\r\n#Source 1: DVS128\r\n#!END-HEADER\r\n"
    assert raw[: len(header)] == header
    packet = struct.pack("<hhiiiiii", 1, 1, 8, 4, 1, 1, 1, 1) + struct.pack(
        "<Ii", 100 << 17 | 7 << 2 | 1 << 1 | 1, 5
    )
    assert raw[len(header) :] == packet


def test_aedat31_skips_other_packets_and_invalid_events(tmp_path):
    path = tmp_path / "mixed.aedat"
    special = struct.pack("<hhiiiiii", 0, 1, 8, 4, 0, 1, 1, 1) + bytes(8)
    polarity = struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, 2, 2, 1) + struct.pack(
        "<IiIi",
        3 << 17 | 4 << 2 | 1,
        10,
        5 << 17 | 6 << 2 | 2,
        11,  # second one: valid bit clear
    )
    path.write_bytes(b"#!AER-DAT3.1\r\n#!END-HEADER\r\n" + special + polarity)
    events, size = read_aedat31(path)
    assert size == (128, 128)
    assert events.tolist() == [(3, 4, 10, 0)]


@pytest.mark.realdata
def test_aedat4_writer_layout_matches_the_real_dv_file(real_data):
    """The writer's IOHeader and EventPacket flatbuffers equal DV's bytes for the same content."""
    raw = (real_data / "samples/sample.aedat4").read_bytes()
    header_size = struct.unpack("<I", raw[14:18])[0]
    header = raw[18 : 18 + header_size]
    (data_table_position,) = struct.unpack("<q", header[36:44])
    (xml_size,) = struct.unpack("<I", header[44:48])
    assert _io_header(1, header[48 : 48 + xml_size].decode(), data_table_position) == header
    stream_id, size = struct.unpack("<iI", raw[18 + header_size : 26 + header_size])
    payload = lz4.frame.decompress(raw[26 + header_size : 26 + header_size + size])
    elements = np.frombuffer(
        payload, dtype=[("t", "<i8"), ("x", "<i2"), ("y", "<i2"), ("on", "u1"), ("_", "V3")], offset=32
    )
    events = np.zeros(len(elements), dtype=EVENT_DTYPE)
    for name, field in zip("xytp", ("x", "y", "t", "on"), strict=True):
        events[name] = elements[field]
    assert stream_id == 0 and len(events) > 0
    assert _event_packet(events) == payload


# ---------------------------------------------------------------- real files


@pytest.mark.realdata
def test_nmnist_real_files_match_tonic(real_data):
    import tonic.io

    files = sorted((real_data / "nmnist/Train").glob("*/*.bin")) + [real_data / "samples/sample_nmnist.bin"]
    assert len(files) == 601
    dtype = np.dtype([("x", np.int64), ("y", np.int64), ("t", np.int64), ("p", np.int64)])
    for path in files:
        ours = read_nmnist(path, sensor_size=(34, 34))
        theirs = tonic.io.read_mnist_file(str(path), dtype)
        for name in "xytp":
            np.testing.assert_array_equal(ours[name], theirs[name], err_msg=f"{path} field {name}")
    assert len(read_nmnist(real_data / "samples/sample_nmnist.bin")) == 4325


def test_nmnist_overflow_markers_match_tonic(tmp_path):
    import tonic.io

    path = tmp_path / "overflow.bin"
    records = [(1, 2, 0, 0, 10), (0, 240, 0, 0, 0), (3, 4, 0x80, 0, 5), (0, 240, 0, 0, 0), (5, 6, 0, 0, 1)]
    path.write_bytes(bytes(b for record in records for b in record))
    ours = read_nmnist(path)
    theirs = tonic.io.read_mnist_file(str(path), np.dtype([(n, np.int64) for n in "xytp"]))
    assert ours["t"].tolist() == [10, 5 + 2**13, 1 + 2**14] == theirs["t"].tolist()
    assert ours["p"].tolist() == [0, 1, 0]


@pytest.mark.realdata
def test_aedat4_real_sample_matches_tonic_and_aedat(real_data):
    import tonic.io

    path = real_data / "samples/sample.aedat4"
    events, size = read_aedat4(path)
    assert size == (320, 240)
    theirs = tonic.io.read_aedat4(str(path))
    assert len(events) == len(theirs) == 111954
    for ours_name, their_name in zip("xytp", ("x", "y", "t", "on"), strict=True):
        np.testing.assert_array_equal(events[ours_name], theirs[their_name].astype(np.int64))


@pytest.mark.realdata
def test_aedat2_real_header_only_sample_is_empty(real_data):
    events, size = read_aedat2(real_data / "samples/sample_aedat_header.aedat")
    assert len(events) == 0 and events.dtype == EVENT_DTYPE
    assert size == (346, 260)  # its header names a Davis346red
    assert len(read_events(real_data / "samples/sample_aedat_header.aedat")[0]) == 0


@pytest.mark.realdata
@pytest.mark.parametrize(
    ("name", "encoding", "reader", "size"),
    [
        ("sample_ncars.dat", "dat", read_prophesee_dat, (78, 42)),
        ("evt2_sample.raw", "evt2", read_prophesee_raw, (640, 480)),
        ("evt3_sample.raw", "evt3", read_prophesee_raw, (1280, 720)),
    ],
)
def test_prophesee_real_samples_match_expelliarmus(real_data, name, encoding, reader, size):
    from expelliarmus import Wizard

    path = real_data / "samples" / name
    events, sensor_size = reader(path)
    theirs = Wizard(encoding=encoding).read(str(path))
    assert sensor_size == size
    assert len(events) == len(theirs) > 1000
    for field in "xytp":
        np.testing.assert_array_equal(events[field].astype(np.int64), theirs[field].astype(np.int64))


def evt2_by_numpy(path: Path) -> np.ndarray:
    """An independent EVT 2.0 decoder written from the format description (the numpy loop the
    reader used before it moved to expelliarmus): the real sample must decode the same."""
    raw = path.read_bytes()
    pos = 0
    while raw.startswith(b"%", pos):
        pos = raw.index(b"\n", pos) + 1
    words = np.frombuffer(raw[pos:], dtype="<u4")
    kinds = words >> 28
    last_high = np.maximum.accumulate(np.where(kinds == 8, np.arange(len(words)), -1))
    time_high = np.where(last_high >= 0, words[np.maximum(last_high, 0)] & 0x0FFFFFFF, 0).astype(np.int64)
    cd = kinds <= 1
    w = words[cd]
    events = np.zeros(int(cd.sum()), dtype=EVENT_DTYPE)
    events["t"] = (time_high[cd] << 6) | ((w >> 22) & 0x3F)
    events["x"], events["y"], events["p"] = (w >> 11) & 0x7FF, w & 0x7FF, kinds[cd]
    return events


@pytest.mark.realdata
def test_evt2_real_sample_matches_the_numpy_decoder(real_data):
    path = real_data / "samples/evt2_sample.raw"
    np.testing.assert_array_equal(read_events(path)[0], evt2_by_numpy(path))


@pytest.mark.realdata
def test_mnist_idx_real_files(real_data):
    images = read_idx(real_data / "mnist/t10k-images-idx3-ubyte.gz")
    labels = read_idx(real_data / "mnist/t10k-labels-idx1-ubyte.gz")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,)
    # the published class counts of the MNIST test set
    assert np.bincount(labels).tolist() == [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]
    assert images.max() == 255 and images[:, 0, 0].max() == 0


# ---------------------------------------------------------------- corrupt files


def _write_valid(kind: str, path: Path) -> None:
    events = random_events(300, (34, 34), 200_000, seed=1)
    if kind == "nmnist":
        write_nmnist(path, events)
    elif kind == "aedat2":
        write_aedat2(path, events)
    elif kind == "aedat31":
        write_aedat31(path, events)
    elif kind == "aedat4":
        write_aedat4(path, events, (34, 34))


READ = {
    "nmnist": read_nmnist,
    "aedat2": read_aedat2,
    "aedat31": read_aedat31,
    "aedat4": read_aedat4,
}
SUFFIX = {"nmnist": ".bin", "aedat2": ".aedat", "aedat31": ".aedat", "aedat4": ".aedat4"}


@pytest.mark.parametrize("kind", sorted(READ))
@pytest.mark.parametrize("cut", [1, 3])
def test_truncated_files_are_bad(tmp_path, kind, cut):
    path = tmp_path / f"rec_{kind}{SUFFIX[kind]}"
    _write_valid(kind, path)
    path.write_bytes(path.read_bytes()[:-cut])
    assert_bad(READ[kind], path)
    assert_bad(read_events, path)


@pytest.mark.parametrize("kind", ["aedat2", "aedat31", "aedat4"])
def test_bad_magic_is_bad(tmp_path, kind):
    path = tmp_path / f"magic_{kind}{SUFFIX[kind]}"
    _write_valid(kind, path)
    raw = path.read_bytes()
    path.write_bytes(raw[:2] + b"X" + raw[3:])
    assert_bad(READ[kind], path)
    assert_bad(read_events, path)


@pytest.mark.parametrize("kind", sorted(READ))
def test_garbage_body_is_bad(tmp_path, kind):
    path = tmp_path / f"garbage_{kind}{SUFFIX[kind]}"
    _write_valid(kind, path)
    raw = path.read_bytes()
    body_start = {"nmnist": 0, "aedat2": raw.find(b"\n# AEChip: DVS128\r\n") + 19}.get(kind)
    if kind == "aedat31":
        body_start = raw.find(b"#!END-HEADER\r\n") + 14
    if kind == "aedat4":
        body_start = 18 + struct.unpack("<I", raw[14:18])[0]
    garbage = np.random.default_rng(7).integers(0, 256, 2400, dtype=np.uint8).tobytes()
    path.write_bytes(raw[:body_start] + garbage)
    assert_bad(READ[kind], path)


def test_aedat31_missing_end_header_is_bad(tmp_path):
    path = tmp_path / "noend.aedat"
    path.write_bytes(b"#!AER-DAT3.1\r\n#Format: RAW\r\n")
    assert_bad(read_aedat31, path, "END-HEADER")


def test_decreasing_time_is_bad(tmp_path):
    events = random_events(50, (34, 34), 100_000, seed=3)
    events["t"][20] = events["t"][30] + 1000  # goes back afterwards
    raw_nmnist = tmp_path / "back.bin"
    write_nmnist(raw_nmnist, np.sort(events, order="t"))
    raw = bytearray(raw_nmnist.read_bytes())
    raw[5 * 10 : 5 * 11], raw[5 * 40 : 5 * 41] = raw[5 * 40 : 5 * 41], raw[5 * 10 : 5 * 11]
    raw_nmnist.write_bytes(bytes(raw))
    assert_bad(read_nmnist, raw_nmnist, "time goes back")
    aedat2 = tmp_path / "back.aedat"
    aedat2.write_bytes(b"#!AER-DAT2.0\r\n" + struct.pack(">IiIi", 2, 100, 2, 99))
    assert_bad(read_aedat2, aedat2, "time goes back")
    aedat31 = tmp_path / "back31.aedat"
    packet = struct.pack("<hhiiiiii", 1, 1, 8, 4, 0, 2, 2, 2) + struct.pack("<IiIi", 1, 100, 1, 50)
    aedat31.write_bytes(b"#!AER-DAT3.1\r\n#!END-HEADER\r\n" + packet)
    assert_bad(read_aedat31, aedat31, "time goes back")


def test_writers_refuse_decreasing_time(tmp_path):
    events = np.array([(1, 1, 10, 0), (1, 1, 5, 1)], dtype=EVENT_DTYPE)
    for write in (write_nmnist, write_aedat2, write_aedat31):
        with pytest.raises(ValueError, match="decrease"):
            write(tmp_path / "x", events)


def test_coordinates_outside_sensor_are_bad(tmp_path):
    nmnist = tmp_path / "wide.bin"
    write_nmnist(nmnist, np.array([(40, 3, 5, 1)], dtype=EVENT_DTYPE))
    assert_bad(lambda p: read_nmnist(p, sensor_size=(34, 34)), nmnist, "outside")
    aedat31 = tmp_path / "wide.aedat"
    write_aedat31(aedat31, np.array([(200, 3, 5, 1)], dtype=EVENT_DTYPE), (256, 256))
    aedat31.write_bytes(aedat31.read_bytes().replace(b"#Source 1: DVS 256x256", b"#Source 1: DVS128"))
    assert_bad(read_aedat31, aedat31, "outside")
    aedat4 = tmp_path / "wide.aedat4"
    write_aedat4(aedat4, np.array([(300, 3, 5, 1)], dtype=EVENT_DTYPE), (320, 240))
    raw = aedat4.read_bytes()
    small = raw.replace(b'"sizeX" type="int">320<', b'"sizeX" type="int">200<')
    aedat4.write_bytes(small)  # same length, so the header's size field still holds
    assert_bad(read_aedat4, aedat4, "outside")


def test_empty_recordings_are_not_errors(tmp_path):
    empty = np.zeros(0, dtype=EVENT_DTYPE)
    write_nmnist(tmp_path / "e.bin", empty)
    write_aedat2(tmp_path / "e2.aedat", empty)
    write_aedat31(tmp_path / "e3.aedat", empty)
    write_aedat4(tmp_path / "e.aedat4", empty, (34, 34))
    for name in ("e.bin", "e2.aedat", "e3.aedat", "e.aedat4"):
        events, _ = read_events(tmp_path / name)
        assert len(events) == 0 and events.dtype == EVENT_DTYPE


# ---------------------------------------------------------------- dispatch


def test_read_events_dispatches_on_suffix_and_version(tmp_path):
    events = random_events(100, (34, 34), 100_000, seed=5)
    write_nmnist(tmp_path / "a.bin", events)
    write_aedat2(tmp_path / "b.aedat", events)
    write_aedat31(tmp_path / "c.aedat", events)
    write_aedat4(tmp_path / "d.AEDAT4", events, (34, 34))
    bin_events, bin_size = read_events(tmp_path / "a.bin")
    assert bin_size == (int(events["x"].max()) + 1, int(events["y"].max()) + 1)
    assert read_events(tmp_path / "b.aedat")[1] == (128, 128)
    assert read_events(tmp_path / "c.aedat")[1] == (128, 128)
    assert read_events(tmp_path / "d.AEDAT4")[1] == (34, 34)
    for name in ("a.bin", "b.aedat", "c.aedat", "d.AEDAT4"):
        np.testing.assert_array_equal(read_events(tmp_path / name)[0], events)
    (tmp_path / "e.txt").write_text("x")
    assert_bad(read_events, tmp_path / "e.txt", "suffix")
    (tmp_path / "f.aedat").write_bytes(b"#!AER-DAT1.0\r\n")
    assert_bad(read_events, tmp_path / "f.aedat", "version")
    assert set(EVENT_SUFFIXES) == {".bin", ".aedat", ".aedat4", ".dat", ".raw"}
    assert set(IMAGE_SUFFIXES) == {".png", ".jpg", ".jpeg"}


def test_missing_file_is_bad(tmp_path):
    for name in ("gone.bin", "gone.aedat", "gone.aedat4", "gone.dat", "gone.raw"):
        assert_bad(read_events, tmp_path / name)


# ---------------------------------------------------------------- gesture labels


def test_gesture_labels(tmp_path):
    path = tmp_path / "user01_fluorescent_labels.csv"
    path.write_text("class,startTime_usec,endTime_usec\n1,80048239,85092709\n11,85092710,90000000\n")
    assert read_gesture_labels(path) == [(1, 80048239, 85092709), (11, 85092710, 90000000)]
    path.write_text("class,startTime_usec,endTime_usec\n12,1,2\n")
    assert_bad(read_gesture_labels, path, "class 12")
    path.write_text("a,b,c\n")
    assert_bad(read_gesture_labels, path, "header")


# ---------------------------------------------------------------- static formats


@pytest.mark.parametrize(
    ("dtype", "shape"),
    [(np.uint8, (5, 28, 28)), (np.uint8, (7,)), (np.int16, (3, 4)), (np.float32, (2, 2, 2))],
)
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_round_trip(tmp_path, dtype, shape, suffix):
    array = (np.random.default_rng(0).random(shape) * 200).astype(dtype)
    path = tmp_path / f"a-idx{suffix}"
    write_idx(path, array)
    back = read_idx(path)
    assert back.dtype == np.dtype(dtype) and back.shape == shape
    np.testing.assert_array_equal(back, array)


def test_idx_exact_bytes_and_corruption(tmp_path):
    path = tmp_path / "labels-idx1-ubyte"
    write_idx(path, np.array([3, 1, 4], dtype=np.uint8))
    assert path.read_bytes() == bytes([0, 0, 8, 1, 0, 0, 0, 3, 3, 1, 4])
    path.write_bytes(path.read_bytes()[:-1])
    assert_bad(read_idx, path, "needs")
    path.write_bytes(b"\x12\x34\x08\x01" + bytes(8))
    assert_bad(read_idx, path, "magic")
    gz = tmp_path / "bad-idx.gz"
    gz.write_bytes(gzip.compress(bytes([0, 0, 8, 1, 0, 0, 0, 1, 9]))[:-6])
    assert_bad(read_idx, gz, "gzip")


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_idx_shape_and_rows_read_no_more_than_asked(tmp_path, suffix):
    """A listing measures an IDX file without its values, and a build's shard reads its rows only;
    both refuse what `read_idx` refuses."""
    array = np.random.default_rng(0).integers(0, 256, (300, 28, 28), dtype=np.uint8)
    path = tmp_path / f"images-idx3-ubyte{suffix}"
    write_idx(path, array)
    assert idx_shape(path) == (300, 28, 28)
    assert is_gzip(path) == (suffix == ".gz")
    if not suffix:
        np.testing.assert_array_equal(read_idx_rows(path, 17, 42), array[17:42])
        assert_bad(lambda p: read_idx_rows(p, 290, 301), path, "outside")
        path.write_bytes(path.read_bytes()[:-1])
        assert_bad(idx_shape, path, "needs")
        assert_bad(lambda p: read_idx_rows(p, 0, 1), path, "needs")
    else:
        raw = gzip.decompress(path.read_bytes())
        path.write_bytes(gzip.compress(raw + b"\0"))  # one byte more than the header declares
        assert_bad(idx_shape, path, "longer")
        path.write_bytes(gzip.compress(raw)[:-6])
        assert_bad(idx_shape, path, "gzip")


def test_cifar_round_trip_and_meta(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (6, 32, 32, 3), dtype=np.uint8)
    labels = np.array([0, 9, 3, 3, 1, 2])
    write_cifar_batch(tmp_path / "data_batch_1", images, labels)
    back_images, back_labels = read_cifar_batch(tmp_path / "data_batch_1")
    np.testing.assert_array_equal(back_images, images)
    assert back_labels.dtype == np.int64 and back_labels.tolist() == labels.tolist()
    # the download's layout: channel planes (all red, then green, then blue) per row
    raw = pickle.loads((tmp_path / "data_batch_1").read_bytes(), encoding="bytes")
    assert raw[b"data"][1, 1024 + 33] == images[1, 1, 1, 1]
    names = ["airplane", "automobile", "bird"]
    write_cifar_meta(tmp_path / "batches.meta", names)
    assert read_cifar_meta(tmp_path / "batches.meta") == names


class _Exploit:
    def __reduce__(self):
        return (os.system, ("touch exploited",))


def test_cifar_pickle_with_code_is_refused(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    path = tmp_path / "test_batch"
    path.write_bytes(pickle.dumps({b"data": _Exploit(), b"labels": []}, protocol=2))
    assert_bad(read_cifar_batch, path, "refusing")
    assert not (tmp_path / "exploited").exists()
    path.write_bytes(b"not a pickle")
    assert_bad(read_cifar_batch, path)


@pytest.mark.parametrize(
    ("mode", "suffix", "shape"),
    [
        ("L", ".png", (9, 7)),
        ("RGB", ".png", (9, 7, 3)),
        ("RGBA", ".png", (9, 7, 3)),
        ("P", ".png", (9, 7, 3)),
        ("I;16", ".png", (9, 7)),
        ("RGB", ".jpg", (9, 7, 3)),
        ("L", ".jpeg", (9, 7)),
    ],
)
def test_read_image_modes(tmp_path, mode, suffix, shape):
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 256, (9, 7, 3), dtype=np.uint8)
    if mode == "I;16":
        image = Image.fromarray(rgb[..., 0].astype(np.uint16) * 257)
    else:
        image = Image.fromarray(rgb).convert(mode)
    path = tmp_path / f"img{suffix}"
    image.save(path)
    array = read_image(path)
    assert array.dtype == np.uint8 and array.shape == shape
    if suffix == ".png" and mode in ("L", "RGB", "RGBA"):
        np.testing.assert_array_equal(array, np.asarray(image.convert("L" if mode == "L" else "RGB")))
    if mode == "I;16":
        np.testing.assert_array_equal(array, rgb[..., 0])


def test_unreadable_images_are_bad(tmp_path):
    path = tmp_path / "cut.png"
    Image.fromarray(np.zeros((64, 64, 3), dtype=np.uint8) + 90).save(path)
    path.write_bytes(path.read_bytes()[:60])
    assert_bad(read_image, path)
    (tmp_path / "text.jpg").write_text("hello")
    assert_bad(read_image, tmp_path / "text.jpg")


# ---------------------------------------------------------------- Prophesee, hand-made files

DAT_HEADER = b"% Data file containing CD events\n% Version 2\n% Width 10\n% Height 8\n"


def test_prophesee_dat_decodes_and_rejects(tmp_path):
    records = struct.pack("<IIII", 5, 3 | 7 << 14 | 1 << 28, 9, 9 | 2 << 14)
    path = tmp_path / "rec.dat"
    path.write_bytes(DAT_HEADER + bytes([0x0C, 8]) + records)
    events, size = read_prophesee_dat(path)
    assert size == (10, 8)
    assert events.tolist() == [(3, 7, 5, 1), (9, 2, 9, 0)]
    path.write_bytes(DAT_HEADER + bytes([0x0C, 8]) + records[:-3])
    assert_bad(read_prophesee_dat, path, "truncated")
    path.write_bytes(DAT_HEADER + bytes([0x0C, 8]) + struct.pack("<II", 5, 30))
    assert_bad(read_prophesee_dat, path, "outside")
    path.write_bytes(b"\x00\x08" + records)
    assert_bad(read_prophesee_dat, path, "header")


def test_evt2_decodes_and_rejects(tmp_path):
    header = b"% evt 2.0\n% geometry 640x480\n"
    words = [
        0x8 << 28 | 3,  # time high 3
        0x1 << 28 | 5 << 22 | 100 << 11 | 50,  # CD_ON at t = 3 << 6 | 5
        0xA << 28,  # trigger: skipped
        0x0 << 28 | 9 << 22 | 639 << 11 | 479,  # CD_OFF at t = 3 << 6 | 9
    ]
    path = tmp_path / "rec.raw"
    path.write_bytes(header + struct.pack("<4I", *words))
    events, size = read_prophesee_raw(path)
    assert size == (640, 480)
    assert events.tolist() == [(100, 50, 3 << 6 | 5, 1), (639, 479, 3 << 6 | 9, 0)]
    path.write_bytes(header + struct.pack("<4I", *words)[:-1])
    assert_bad(read_prophesee_raw, path, "truncated")
    path.write_bytes(header + struct.pack("<I", 0x5 << 28))
    assert_bad(read_prophesee_raw, path, "unknown EVT 2.0 word type")
    path.write_bytes(header + struct.pack("<3I", words[0], words[3], words[1]))
    assert_bad(read_prophesee_raw, path, "time goes back")
    assert evt2_by_numpy(path).tolist() != []  # the reference decoder reads the same layout
    path.write_bytes(header + struct.pack("<4I", *words))
    np.testing.assert_array_equal(read_prophesee_raw(path)[0], evt2_by_numpy(path))


def evt3_words(*words: int) -> bytes:
    return struct.pack(f"<{len(words)}H", *words)


def test_evt3_decodes_every_event_word(tmp_path):
    header = b"% evt 3.0\n% format EVT3;height=720;width=1280\n"
    body = evt3_words(
        0x8 << 12 | 2,  # time high 2
        0x6 << 12 | 5,  # time low 5: t = 2 << 12 | 5
        0x0 << 12 | 100,  # y = 100
        0x2 << 12 | 1 << 11 | 7,  # one ON event at x = 7
        0x3 << 12 | 0 << 11 | 20,  # vectors of OFF events from x = 20
        0x4 << 12 | 0b1000_0000_0101,  # x = 20, 22, 31
        0x5 << 12 | 0b0000_0011,  # x = 32, 33
        0xE << 12,  # other: skipped
        0x6 << 12 | 9,  # t = 2 << 12 | 9
        0x2 << 12 | 1279,  # OFF at x = 1279
    )
    path = tmp_path / "rec.raw"
    path.write_bytes(header + body)
    events, size = read_prophesee_raw(path)
    assert size == (1280, 720)
    t0, t1 = 2 << 12 | 5, 2 << 12 | 9
    assert events.tolist() == [
        (7, 100, t0, 1),
        (20, 100, t0, 0),
        (22, 100, t0, 0),
        (31, 100, t0, 0),
        (32, 100, t0, 0),
        (33, 100, t0, 0),
        (1279, 100, t1, 0),
    ]
    # a body whose first byte is "%" is still body, not header (the low byte of y = 0x25)
    path.write_bytes(b"% evt 3.0\n" + evt3_words(0x25, 0x2 << 12 | 3))
    assert read_prophesee_raw(path)[0].tolist() == [(3, 0x25, 0, 0)]
    path.write_bytes(b"% evt 3.0\n")
    assert len(read_prophesee_raw(path)[0]) == 0


def test_evt3_corrupt_files_are_refused_without_hanging(tmp_path, monkeypatch):
    from pipelines.formats import prophesee

    path = tmp_path / "bad.raw"
    path.write_bytes(b"% evt 3.0")  # a header line with no line end: expelliarmus would loop forever
    assert_bad(read_prophesee_raw, path, "names no 'evt 2.0' or 'evt 3.0'")
    path.write_bytes(b"% evt 3.0\n" + evt3_words(0x2 << 12 | 3) + b"\x00")
    assert_bad(read_prophesee_raw, path, "truncated")
    path.write_bytes(b"% evt 3.0\n" + evt3_words(0x7 << 12))  # CONTINUED_4: unknown to expelliarmus
    assert_bad(read_prophesee_raw, path, "unknown EVT 3.0 word type 0x7")
    path.write_bytes(b"% evt 3.0\n% geometry 640x480\n" + evt3_words(0x2 << 12 | 700))
    assert_bad(read_prophesee_raw, path, "outside the 640x480 sensor")
    # a time low that goes back counts as a wrap of the 12-bit field (expelliarmus' rule): forward
    path.write_bytes(b"% evt 3.0\n" + evt3_words(0x6 << 12 | 9, 0x2 << 12, 0x6 << 12 | 3, 0x2 << 12))
    assert read_prophesee_raw(path)[0]["t"].tolist() == [9, 1 << 12 | 3]
    path.write_bytes(b"% evt 3.0\n" + evt3_words(*[0x4 << 12 | 0xFFF] * 10))
    monkeypatch.setattr(prophesee, "MAX_EVENTS", 100)
    assert_bad(read_prophesee_raw, path, "120 events, more than the 100")


@pytest.mark.realdata
def test_bench_decode_reports_like_for_like_numbers(real_data):
    from benches.decode import SAMPLES, run

    result = run(real_data / "samples", repeats=1)
    assert set(result["formats"]) == {kind for kind, _, _ in SAMPLES}
    for kind, row in result["formats"].items():
        # both readers decoded the same events from the same file
        assert row["events"] == row["baseline_events"] > 1000, kind
        assert row["ratio"] == pytest.approx(row["ours_events_per_s"] / row["baseline_events_per_s"])
        assert (
            row["ours_events_per_s"] > 0
            and row["bytes"] == (real_data / "samples" / row["file"]).stat().st_size
        )
