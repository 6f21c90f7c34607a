"""Fixed-duration windows end to end: the build flag, the frame key and the stored frames."""

from __future__ import annotations

import numpy as np
import pytest

from pipelines.binning import bin_events
from pipelines.build import BuildConfig, run_build
from pipelines.formats import read_events, write_aedat2
from storage.reader import DatasetReader
from storage.schema import EVENT_DTYPE, FrameSpec


def make_recording(seed: int, duration: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    events = np.zeros(3000, dtype=EVENT_DTYPE)
    events["x"], events["y"] = rng.integers(0, 128, (2, 3000))
    events["t"] = np.sort(rng.integers(0, duration, 3000))
    events["p"] = rng.integers(0, 2, 3000)
    return events


def test_cli_flag_reaches_the_build_config():
    from flows.cli import _parser
    from pipelines.build import build_config_from_args

    args = _parser().parse_args(
        ["build-dataset", "--source", "folder", "--raw", "r", "--store", "s", "--window-us", "25000"]
    )
    config = build_config_from_args(args)
    assert config.window_us == 25_000
    assert config.frame_spec().window_us == 25_000
    assert BuildConfig(source="folder", raw="r", store="s").frame_spec().key == FrameSpec(size=(48, 48)).key


def test_window_build_stores_window_frames_under_their_own_key(tmp_path, client):
    raw = tmp_path / "raw"
    for name, seed, duration in (("a/short.aedat", 0, 90_000), ("b/long.aedat", 1, 900_000)):
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        write_aedat2(raw / name, make_recording(seed, duration))
    store = tmp_path / "store"
    config = BuildConfig(source="folder", raw=str(raw), store=str(store), time_bins=6, window_us=50_000)
    assert run_build(config, client=client).committed
    reader = DatasetReader(store)
    spec = reader.frame_spec()
    assert spec.window_us == 50_000 and reader.default_frame_key() == config.frame_spec().key
    frames = reader.event_frames()
    for i, path in enumerate(reader.sources):
        events, sensor = read_events(raw / path)
        np.testing.assert_array_equal(frames[i], bin_events(events, sensor, spec))
    short, long = (frames[reader.sources.index(p)] for p in ("a/short.aedat", "b/long.aedat"))
    assert short[:2].sum() > 0 and short[2:].sum() == 0  # 90 ms: two windows, then empty frames
    assert long.sum() < 3000 and (long.sum(axis=(1, 2, 3)) > 0).all()  # 900 ms cut at 300 ms
    from storage.verify import verify_store

    assert verify_store(store) == []  # the counts it expects are those inside the windows


def test_the_build_flow_takes_the_window():
    import inspect

    from flows.dataset import build_dataset, flow_parameters

    config = BuildConfig(source="folder", raw="r", store="s", window_us=30_000)
    params = flow_parameters(config)
    assert params["window_us"] == 30_000
    assert "window_us" in inspect.signature(build_dataset.fn).parameters


def test_sliced_build_stores_one_row_per_slice_and_its_recording(tmp_path, client):
    import xarray as xr

    from pipelines.binning import bin_slices
    from storage.verify import verify_store
    from tmkt.data import MixData
    from tmkt.evaluate import split_rows
    from tmkt.streaming import StreamConfig, StreamedData, load_split

    raw = tmp_path / "raw"
    durations = {"a/short.aedat": 90_000, "b/long.aedat": 950_000}
    for i, (name, duration) in enumerate(durations.items()):
        (raw / name).parent.mkdir(parents=True, exist_ok=True)
        events = make_recording(i, duration)
        events["t"][0], events["t"][-1] = 0, duration  # spans exactly `duration`
        write_aedat2(raw / name, events)
    store = tmp_path / "store"
    config = BuildConfig(
        source="folder",
        raw=str(raw),
        store=str(store),
        time_bins=6,
        window_us=50_000,
        slices=True,
        val_fraction=0.0,
        test_fraction=0.0,
    )
    assert run_build(config, client=client).committed

    def check(reader: DatasetReader) -> None:
        owner = reader.frame_recordings()
        frames = reader.event_frames()
        # slices of 6 x 50 ms: 90 ms gives one (padded), 950 ms three whole ones (the rest dropped)
        expected = {"a/short.aedat": 1, "b/long.aedat": 3}
        assert np.bincount(owner).tolist() == [expected[p] for p in reader.sources]
        for i, path in enumerate(reader.sources):
            events, sensor = read_events(raw / path)
            np.testing.assert_array_equal(frames[owner == i], bin_slices(events, sensor, reader.frame_spec()))
        assert verify_store(store) == []
        data = MixData.from_store(store, split="train")
        assert len(data.event_frames) == 4
        np.testing.assert_array_equal(data.event_labels, np.asarray(reader.labels)[owner])
        # streamed (a budget below the split's size), the samples and their labels are the same
        streamed = load_split(store, split="train", stream=StreamConfig(max_resident_bytes=120_000))
        assert isinstance(streamed, StreamedData) and len(streamed.event_frames) == 4
        np.testing.assert_array_equal(streamed.event_labels, data.event_labels)
        # evaluation counts samples too, and xarray sees each sample's recording as its coordinate
        assert split_rows(reader, "all", reader.default_frame_key()).tolist() == list(range(len(owner)))
        group = xr.open_zarr(
            reader.session.store, group=f"frames/{reader.default_frame_key()}", consolidated=False
        )
        assert group["events"].dims[0] == "recording" and group.sizes["recording"] == len(owner)
        np.testing.assert_array_equal(group["recording"].values, owner)

    check(DatasetReader(store))
    # a refresh that adds a recording re-bins the slices of the reused ones
    (raw / "a/third.aedat").write_bytes((raw / "a/short.aedat").read_bytes())
    assert run_build(config, client=client).committed
    reader = DatasetReader(store)
    assert reader.n_recordings == 3 and len(reader.frame_recordings()) == 5
    owner = reader.frame_recordings()
    for i, path in enumerate(reader.sources):
        events, sensor = read_events(raw / path)
        np.testing.assert_array_equal(
            reader.event_frames()[owner == i], bin_slices(events, sensor, reader.frame_spec())
        )
    assert verify_store(store) == []


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--slices"], "set window_us"),
        (["--window-us", "1000", "--mode", "count"], "needs mode 'time'"),
        (["--window-us", "-5"], "window_us must be >= 0"),
    ],
)
def test_inconsistent_window_flags_are_one_line_and_exit_2(tmp_path, capsys, flags, message):
    from flows.cli import main

    args = ["build-dataset", "--source", "folder", "--raw", str(tmp_path), "--store", str(tmp_path / "s")]
    assert main(args + flags) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("tmkt: error:") and message in err[0]
    assert not (tmp_path / "s").exists()
