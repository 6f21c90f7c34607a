"""Orientation: a recording of an upright "F" comes out upright through the generic reader and as
CIFAR10-DVS's published readers show it through that dataset's adapter, end to end into the store."""

from __future__ import annotations

import struct

import numpy as np
import pytest

from pipelines.build import BuildConfig, run_build
from pipelines.formats import read_events, write_aedat2
from storage.reader import DatasetReader
from storage.schema import EVENT_DTYPE

#: an "F" in cells, row 0 on top: no flip, turn or transpose maps it onto itself
F = np.array(
    [
        [1, 1, 1, 1],
        [1, 0, 0, 0],
        [1, 1, 1, 0],
        [1, 0, 0, 0],
        [1, 0, 0, 0],
    ],
    dtype=bool,
)
CELL = 4  # sensor pixels per cell: 128 px -> 32 frame px maps one cell onto one frame pixel
STEPS = 5  # the F moves one cell to the right per step, one time bin per step
TOP, LEFT = 3, 2  # cell position of the F's top-left corner at step 0


def f_at(step: int, size: int = 32) -> np.ndarray:
    """The F mask on a ``size`` x ``size`` grid of cells at one step of its motion."""
    grid = np.zeros((size, size), dtype=bool)
    grid[TOP : TOP + F.shape[0], LEFT + step : LEFT + step + F.shape[1]] = F
    return grid


def moving_f_events() -> np.ndarray:
    """ON events, in image coordinates, of every pixel of the F at each step; equal counts per step."""
    chunks = []
    for step in range(STEPS):
        rows, cols = np.nonzero(np.kron(f_at(step), np.ones((CELL, CELL), dtype=bool)))
        ev = np.zeros(len(rows), dtype=EVENT_DTYPE)
        ev["x"], ev["y"], ev["p"] = cols, rows, 1
        ev["t"] = step * 10_000 + np.arange(len(rows))
        chunks.append(ev)
    return np.concatenate(chunks)


def test_writer_uses_jaer_dvs128_address_convention(tmp_path):
    # jAER's DVS128 extractor: x = 127 - x_raw, y = y_raw pointing up, ON = raw polarity bit 0
    events = moving_f_events()
    path = tmp_path / "f.aedat"
    write_aedat2(path, events)
    raw = path.read_bytes()
    address, t = struct.unpack(">Ii", raw[raw.index(b"DVS128\r\n") + 8 :][:8])
    first = events[0]  # top-left pixel of the F: image row TOP*CELL, column LEFT*CELL
    assert (first["y"], first["x"]) == (TOP * CELL, LEFT * CELL)
    assert address == (127 - TOP * CELL) << 8 | (127 - LEFT * CELL) << 1 | 0
    assert t == 0
    back, size = read_events(path)
    assert size == (128, 128)
    np.testing.assert_array_equal(back, events)


def build_frames(tmp_path, client, source: str, class_name: str) -> tuple[np.ndarray, DatasetReader]:
    raw = tmp_path / source / "raw"
    (raw / class_name).mkdir(parents=True)
    write_aedat2(raw / class_name / "f.aedat", moving_f_events())
    store = tmp_path / source / "store"
    config = BuildConfig(
        source=source, raw=str(raw), store=str(store), time_bins=STEPS, size=(32, 32), mode="count"
    )
    assert run_build(config, client=client).committed
    reader = DatasetReader(store)
    return reader.event_frames()[0], reader


def test_folder_build_shows_the_f_upright(tmp_path, client):
    frames, reader = build_frames(tmp_path, client, "folder", "letters")
    assert frames.shape == (STEPS, 2, 32, 32)
    assert frames[:, 0].sum() == 0  # every event was ON
    for step in range(STEPS):
        np.testing.assert_array_equal(frames[step, 1] > 0, f_at(step))
        assert (frames[step, 1][f_at(step)] == CELL * CELL).all()
    assert "row 0 on top" in reader.attrs["orientation"]
    assert reader.info()["orientation"] == reader.attrs["orientation"]


def test_cifar10dvs_build_shows_it_as_the_datasets_readers_do(tmp_path, client):
    frames, reader = build_frames(tmp_path, client, "cifar10dvs", "airplane")
    # the published CIFAR10-DVS readers (spikingjelly's CIFAR10DVS on the original files) decode
    # x = 127 - y_raw, y = 127 - x_raw, p = 1 - p_raw: the camera's image transposed
    raw = (tmp_path / "cifar10dvs/raw/airplane/f.aedat").read_bytes()
    records = np.frombuffer(raw[raw.index(b"DVS128\r\n") + 8 :], dtype=[("a", ">u4"), ("t", ">i4")])
    x_raw, y_raw, p_raw = (records["a"] >> 1) & 0x7F, (records["a"] >> 8) & 0x7F, records["a"] & 1
    published = np.zeros((32, 32), dtype=np.int64)
    first_step = slice(0, len(records) // STEPS)
    np.add.at(published, ((127 - x_raw[first_step]) // CELL, (127 - y_raw[first_step]) // CELL), 1)
    assert (1 - p_raw).min() == 1
    np.testing.assert_array_equal(frames[0, 1], published)
    for step in range(STEPS):  # transposed: the F lies on its side and moves down
        np.testing.assert_array_equal(frames[step, 1] > 0, f_at(step).T)
    assert "transposed" in reader.attrs["orientation"]


@pytest.mark.realdata
def test_real_nmnist_recordings_are_upright(real_data_dir):
    """ATIS .bin is read as stored: the mean event image of each digit matches the mean MNIST
    image of that digit better upright than flipped either way or transposed."""
    from pipelines.formats import read_idx, read_nmnist

    images = read_idx(real_data_dir / "mnist/t10k-images-idx3-ubyte.gz").astype(np.float64)
    labels = read_idx(real_data_dir / "mnist/t10k-labels-idx1-ubyte.gz")
    views = {
        "upright": lambda a: a,
        "up-down": np.flipud,
        "left-right": np.fliplr,
        "transposed": np.transpose,
    }
    score = dict.fromkeys(views, 0.0)
    for digit in range(10):
        counts = np.zeros((34, 34))
        for path in sorted((real_data_dir / f"nmnist/Train/{digit}").glob("*.bin"))[:20]:
            ev = read_nmnist(path)
            np.add.at(counts, (ev["y"].astype(int), ev["x"].astype(int)), 1)
        seen = counts[3:31, 3:31].ravel()  # the 28x28 digit sits in the middle of the 34x34 sensor
        mean_image = images[labels == digit].mean(axis=0)
        for name, view in views.items():
            score[name] += np.corrcoef(seen, view(mean_image).ravel())[0, 1]
    assert max(score, key=score.get) == "upright", score
    assert score["upright"] > 1.1 * max(v for k, v in score.items() if k != "upright"), score


@pytest.mark.realdata
def test_real_prophesee_raw_recordings_build_through_folder(tmp_path, client, real_data_dir):
    """EVT 2.0 and EVT 3.0 files side by side in one class-folder tree: each keeps its sensor size
    from its header and its frames hold every decoded event."""
    import shutil

    from pipelines.binning import bin_events

    raw = tmp_path / "raw"
    for cls, name in (("gen3", "evt2_sample.raw"), ("gen4", "evt3_sample.raw")):
        (raw / cls).mkdir(parents=True)
        shutil.copy(real_data_dir / "samples" / name, raw / cls / name)
    config = BuildConfig(source="folder", raw=str(raw), store=str(tmp_path / "s"), size=(48, 64))
    assert run_build(config, client=client).committed
    reader = DatasetReader(tmp_path / "s")
    sizes = dict(zip(reader.sources, map(tuple, reader.sensor_sizes.tolist()), strict=True))
    assert sizes == {"gen3/evt2_sample.raw": (640, 480), "gen4/evt3_sample.raw": (1280, 720)}
    frames = reader.event_frames()
    for i, path in enumerate(reader.sources):
        events, sensor = read_events(raw / path)
        assert reader.offsets[i + 1] - reader.offsets[i] == len(events) > 200_000
        np.testing.assert_array_equal(frames[i], bin_events(events, sensor, reader.frame_spec()))


def test_refresh_decodes_again_what_older_readers_decoded(tmp_path, client):
    """A store built before the AEDAT 2.0 orientation fix holds turned events: a refresh must not
    reuse them although the file did not change."""
    import zarr

    from storage.repo import BRANCH, open_repository

    raw = tmp_path / "raw"
    (raw / "letters").mkdir(parents=True)
    write_aedat2(raw / "letters/f.aedat", moving_f_events())
    store = tmp_path / "store"
    config = BuildConfig(
        source="folder", raw=str(raw), store=str(store), time_bins=STEPS, size=(32, 32), mode="count"
    )
    assert run_build(config, client=client).committed
    upright = DatasetReader(store).event_frames()

    # what the older code left: transposed events, manifest rows without a readers version
    session = open_repository(store).writable_session(BRANCH)
    root = zarr.open_group(session.store, mode="r+")
    x = root["events/x"][:]
    root["events/x"][:] = root["events/y"][:]
    root["events/y"][:] = x
    root["manifest"].attrs["rows"] = [
        {k: v for k, v in row.items() if k != "readers"} for row in root["manifest"].attrs["rows"]
    ]
    session.commit("as older readers left it")

    result = run_build(config, client=client)
    assert result.committed and result.report["decoded"] == 1 and result.report["reused"] == 0
    reader = DatasetReader(store)
    np.testing.assert_array_equal(reader.events(0), read_events(raw / "letters/f.aedat")[0])
    np.testing.assert_array_equal(reader.event_frames(), upright)
    # and with the readers unchanged, the next refresh reuses and commits nothing
    again = run_build(config, client=client)
    assert not again.committed
