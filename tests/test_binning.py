"""Event binning against tonic 1.7 and its own invariants."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest
import tonic

from pipelines.binning import bin_events, bin_slices, denoise, events_sensor_size, slice_count
from storage.schema import EVENT_DTYPE, FrameSpec


def random_events(rng: np.random.Generator, n: int, width: int = 34, height: int = 34, t_max: int = 300_000):
    events = np.empty(n, dtype=EVENT_DTYPE)
    events["x"] = rng.integers(0, width, n)
    events["y"] = rng.integers(0, height, n)
    events["t"] = np.sort(rng.integers(0, t_max, n))
    events["p"] = rng.integers(0, 2, n)
    return events


def real_nmnist_files(limit: int) -> list[Path]:
    root = os.environ.get("TMKT_REAL_DATA")
    if not root or not (Path(root) / "nmnist").is_dir():
        pytest.skip("TMKT_REAL_DATA is unset or has no nmnist/ folder: real N-MNIST tests skipped")
    return sorted((Path(root) / "nmnist" / "Train").glob("*/*.bin"))[:limit]


def tonic_frames(events: np.ndarray, sensor_size: tuple[int, int], time_bins: int) -> np.ndarray:
    to_frame = tonic.transforms.ToFrame(sensor_size=(*sensor_size, 2), n_time_bins=time_bins)
    return to_frame(events.copy())


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("time_bins", [1, 7, 10])
def test_time_bins_equal_tonic_on_random_events(seed, time_bins):
    rng = np.random.default_rng(seed)
    width, height = (34, 34) if seed % 2 else (40, 23)
    events = random_events(
        rng, int(rng.integers(50, 3000)), width, height, t_max=int(rng.integers(100, 10**6))
    )
    spec = FrameSpec(time_bins=time_bins, size=(height, width))
    ours = bin_events(events, (width, height), spec, tonic_compatible=True)
    assert ours.dtype == np.uint16 and ours.shape == (time_bins, 2, height, width)
    np.testing.assert_array_equal(ours, tonic_frames(events, (width, height), time_bins))


def test_default_time_bins_add_tonics_dropped_tail_to_last_bin():
    rng = np.random.default_rng(1)
    events = random_events(rng, 2000, t_max=100_003)
    spec = FrameSpec(time_bins=10)
    ours = bin_events(events, (34, 34), spec).astype(np.int64)
    reference = tonic_frames(events, (34, 34), 10).astype(np.int64)
    np.testing.assert_array_equal(ours[:-1], reference[:-1])
    width = (int(events["t"][-1]) - int(events["t"][0])) // 10
    tail = events[events["t"] >= events["t"][0] + 10 * width]
    assert len(tail) >= 1  # the last event is always in tonic's dropped tail
    assert ours[-1].sum() - reference[-1].sum() == len(tail)
    assert ours.sum() == len(events)


def test_time_bins_equal_tonic_on_real_nmnist():
    files = real_nmnist_files(25)
    for path in files:
        events = tonic.io.read_mnist_file(str(path), dtype=EVENT_DTYPE)
        ours = bin_events(events, (34, 34), FrameSpec(time_bins=10), tonic_compatible=True)
        np.testing.assert_array_equal(ours, tonic_frames(events, (34, 34), 10), err_msg=str(path))
        assert bin_events(events, (34, 34), FrameSpec(time_bins=10)).sum() == len(events)


def test_count_bins_match_tonic_event_bins_and_conserve_counts():
    rng = np.random.default_rng(2)
    events = random_events(rng, 1003)
    spec = FrameSpec(time_bins=10, mode="count")
    ref = tonic.transforms.ToFrame(sensor_size=(34, 34, 2), n_event_bins=10)(events.copy())
    np.testing.assert_array_equal(bin_events(events, (34, 34), spec, tonic_compatible=True), ref)
    ours = bin_events(events, (34, 34), spec)
    per_bin = ours.reshape(10, -1).sum(axis=1)
    assert ours.sum() == 1003
    assert per_bin.max() - per_bin.min() <= 1
    # every bin holds consecutive events: bin i starts at event floor-ceil(i * n / T)
    assert per_bin.tolist() == [101, 100, 100, 101, 100, 100, 101, 100, 100, 100]


def test_frames_index_t_p_y_x():
    events = np.zeros(3, dtype=EVENT_DTYPE)
    events["x"], events["y"], events["t"], events["p"] = [3, 5, 7], [1, 2, 4], [0, 50, 100], [1, 0, 1]
    frames = bin_events(events, (8, 6), FrameSpec(time_bins=2, size=(6, 8)))
    assert frames.sum() == 3
    assert frames[0, 1, 1, 3] == 1
    assert frames[1, 0, 2, 5] == 1  # t=50 starts the second bin of width 50
    assert frames[1, 1, 4, 7] == 1  # the last event goes into the last bin


@pytest.mark.parametrize("mode", ["time", "count"])
def test_resize_is_sum_pooling_by_coordinate_mapping(mode):
    rng = np.random.default_rng(3)
    events = random_events(rng, 5000, width=128, height=96)
    spec = FrameSpec(time_bins=5, size=(48, 48), mode=mode)
    frames = bin_events(events, (128, 96), spec)
    assert frames.shape == (5, 2, 48, 48)
    assert frames.sum() == len(events)
    full = bin_events(events, (128, 96), FrameSpec(time_bins=5, size=(96, 128), mode=mode)).astype(np.int64)
    # pooling the full-resolution frames by the same mapping gives the resized frames
    pooled = np.zeros((5, 2, 48, 48), dtype=np.int64)
    ys = np.arange(96) * 48 // 96
    xs = np.arange(128) * 48 // 128
    np.add.at(pooled, (slice(None), slice(None), ys[:, None], xs[None, :]), full)
    np.testing.assert_array_equal(frames, pooled)


def test_empty_recording_gives_zero_frames():
    empty = np.zeros(0, dtype=EVENT_DTYPE)
    for mode in ("time", "count"):
        frames = bin_events(empty, (34, 34), FrameSpec(time_bins=4, mode=mode))
        assert frames.shape == (4, 2, 34, 34) and frames.dtype == np.uint16
        assert not frames.any()
    assert not bin_events(empty, (34, 34), FrameSpec(denoise_us=1000)).any()


def test_short_recording_counts_every_event():
    # shorter than T microseconds: tonic's bin width is 0 and it returns empty frames
    events = np.zeros(5, dtype=EVENT_DTYPE)
    events["t"] = [10, 11, 12, 13, 14]
    events["x"] = [0, 1, 2, 3, 4]
    frames = bin_events(events, (34, 34), FrameSpec(time_bins=10))
    # bins of 1 us instead: event i in bin i
    assert frames.reshape(10, -1).sum(axis=1).tolist() == [1, 1, 1, 1, 1, 0, 0, 0, 0, 0]
    assert bin_events(events, (34, 34), FrameSpec(time_bins=10), tonic_compatible=True).sum() == 0


def test_counts_saturate_at_uint16_max():
    events = np.zeros(70_000, dtype=EVENT_DTYPE)
    events["t"] = np.arange(70_000)
    frames = bin_events(events, (2, 2), FrameSpec(time_bins=1, size=(2, 2)))
    assert frames[0, 0, 0, 0] == 65535


def test_out_of_range_coordinates_are_refused():
    events = np.zeros(1, dtype=EVENT_DTYPE)
    events["x"] = 34
    with pytest.raises(ValueError, match="outside the sensor size"):
        bin_events(events, (34, 34), FrameSpec())
    events["x"], events["p"] = 0, 2
    with pytest.raises(ValueError, match="polarity"):
        bin_events(events, (34, 34), FrameSpec())


def test_events_sensor_size():
    events = np.zeros(2, dtype=EVENT_DTYPE)
    events["x"], events["y"] = [5, 239], [179, 3]
    assert events_sensor_size(events) == (240, 180)
    assert events_sensor_size(events[:0]) == (0, 0)


@pytest.mark.parametrize("seed", range(4))
def test_denoise_equals_tonic(seed):
    rng = np.random.default_rng(seed)
    filter_time = 2000
    events = random_events(rng, 3000, width=16, height=12, t_max=200_000)
    # tonic treats never-fired pixels as fired at t=0; from t >= filter_time on the rules agree
    events["t"] += filter_time
    ours = denoise(events, filter_time)
    reference = tonic.transforms.Denoise(filter_time=filter_time)(events.copy())
    assert 0 < len(ours) < len(events)
    np.testing.assert_array_equal(ours, reference)


def test_denoise_keeps_only_supported_events():
    events = np.zeros(4, dtype=EVENT_DTYPE)
    # (5,5) at 100; its right neighbour at 150 is supported; a diagonal one at 160 is not;
    # the right neighbour again 10 ms later is too late
    events["x"], events["y"], events["t"] = [5, 6, 7, 6], [5, 5, 6, 5], [100, 150, 160, 10_150]
    kept = denoise(events, filter_time=1000)
    assert kept["t"].tolist() == [150]


def test_denoise_equals_tonic_on_real_nmnist_and_in_bin_events():
    files = real_nmnist_files(5)
    for path in files:
        events = tonic.io.read_mnist_file(str(path), dtype=EVENT_DTYPE)
        events["t"] += 5000
        reference = tonic.transforms.Denoise(filter_time=5000)(events.copy())
        np.testing.assert_array_equal(denoise(events, 5000), reference, err_msg=str(path))
        frames = bin_events(events, (34, 34), FrameSpec(denoise_us=5000))
        assert frames.sum() == len(reference) < len(events)


# ---------------------------------------------------------------- fixed windows (window_us)


@pytest.mark.parametrize("seed", range(4))
def test_window_bins_equal_tonics_first_frames_and_spikingjellys(seed):
    from spikingjelly.datasets.utils import integrate_events_by_fixed_duration

    rng = np.random.default_rng(seed)
    events = random_events(rng, 3000, t_max=300_000)
    window, time_bins = 20_000, 8  # the recording lasts about 15 windows: tonic gives more than 8
    spec = FrameSpec(time_bins=time_bins, size=(34, 34), window_us=window)
    ours = bin_events(events, (34, 34), spec)
    tonic_windows = tonic.transforms.ToFrame(sensor_size=(34, 34, 2), time_window=window)(events.copy())
    assert len(tonic_windows) > time_bins
    np.testing.assert_array_equal(ours, tonic_windows[:time_bins])
    as_dict = {name: events[name].astype(np.int64) for name in "xytp"}
    sj = integrate_events_by_fixed_duration(as_dict, window, 34, 34)
    np.testing.assert_array_equal(ours, sj[:time_bins].astype(np.uint16))
    # what lies after the T windows is cut off, nothing else is lost
    inside = events["t"] < events["t"][0] + time_bins * window
    assert ours.sum() == inside.sum() < len(events)


def test_window_bins_keep_the_last_partial_window_and_pad_with_empty_frames():
    events = np.zeros(4, dtype=EVENT_DTYPE)
    events["t"] = [1000, 1500, 3999, 4100]  # windows of 1000 us from t = 1000: bins 0, 0, 2, 3
    events["x"] = [0, 1, 2, 3]
    spec = FrameSpec(time_bins=6, size=(34, 34), window_us=1000)
    frames = bin_events(events, (34, 34), spec)
    assert frames.sum(axis=(1, 2, 3)).tolist() == [2, 0, 1, 1, 0, 0]
    assert frames[3, 0, 0, 3] == 1  # the partial fourth window [4000, 5000) keeps its event


def test_window_us_enters_the_frame_key_only_when_set():
    # keys of stores built before window_us existed (computed by that code) stay what they were
    assert FrameSpec().key == "a98b530b30809e55"
    legacy = FrameSpec(
        time_bins=16, size=(48, 48), mode="count", denoise_us=5000, static_mode="v", static_fit="pad"
    )
    assert legacy.key == "6892a52b42ca5c38"
    assert "window_us" not in FrameSpec().to_attrs()
    windowed = FrameSpec(window_us=50_000)
    assert windowed.key not in (FrameSpec().key, FrameSpec(window_us=50_001).key)
    assert FrameSpec.from_attrs(windowed.to_attrs()) == windowed
    assert FrameSpec.from_attrs(FrameSpec().to_attrs()) == FrameSpec()
    with pytest.raises(ValueError, match="needs mode 'time'"):
        FrameSpec(mode="count", window_us=1000)
    with pytest.raises(ValueError, match="window_us must be >= 0"):
        FrameSpec(window_us=-1)


@pytest.mark.parametrize("duration", [45_000, 160_000, 199_999, 200_000, 390_000])
def test_slices_equal_tonics_sliced_dataset_frames(duration):
    rng = np.random.default_rng(duration)
    events = random_events(rng, 4000, t_max=duration)
    events["t"][0], events["t"][-1] = 0, duration  # the recording lasts exactly `duration`
    window, time_bins = 10_000, 5  # slices of 50 ms
    spec = FrameSpec(time_bins=time_bins, size=(34, 34), window_us=window)
    ours = bin_slices(events, (34, 34), spec)
    length = window * time_bins
    # tonic: SliceByTime(T * W) with its default include_incomplete=False, then T windows per slice
    slicer = tonic.slicers.SliceByTime(time_window=length)
    expected = []
    for k, part in enumerate(slicer.slice(events.copy(), 0)[0]):
        start = k * length
        expected.append(
            tonic.functional.to_frame_numpy(
                part, (34, 34, 2), time_window=window, start_time=start, end_time=start + length
            )
            if len(part)
            else np.zeros((time_bins, 2, 34, 34))
        )
    assert (
        ours.shape == (max(1, duration // length), time_bins, 2, 34, 34) == (len(expected), *ours.shape[1:])
    )
    np.testing.assert_array_equal(ours, np.stack(expected))
    assert slice_count(events, spec) == len(ours)


def test_slicing_needs_windows():
    with pytest.raises(ValueError, match="set window_us"):
        bin_slices(np.zeros(1, EVENT_DTYPE), (34, 34), FrameSpec())
