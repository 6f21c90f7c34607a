"""The DVS simulator: physics sanity, bounds, order and determinism."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from pipelines.simulator import DvsSimulatorConfig, place_in_frame, simulate
from storage.schema import EVENT_DTYPE


def digit_like() -> np.ndarray:
    """A bright ring on black, 28x28, like an MNIST zero."""
    yy, xx = np.mgrid[:28, :28]
    radius = np.hypot(yy - 13.5, xx - 13.5)
    return (((radius > 6) & (radius < 10)) * 255).astype(np.uint8)


def test_constant_image_without_motion_or_noise_gives_no_events():
    config = DvsSimulatorConfig(saccade_vertices=((0.0, 0.0),), noise_rate_hz=0.0)
    events = simulate(digit_like(), config, np.random.default_rng(0))
    assert events.dtype == EVENT_DTYPE and len(events) == 0
    # the same with motion but a flat image: nothing changes on the sensor
    flat = np.full((34, 34), 90, np.uint8)
    moving = replace(config, saccade_vertices=((0.0, 0.0), (2.0, 1.0)))
    assert len(simulate(flat, moving, np.random.default_rng(0))) == 0


def test_edge_moving_into_dark_pixels_gives_on_events_at_the_edge():
    image = np.zeros((34, 34), np.uint8)
    image[:, :17] = 200  # bright left half; the scene moves right when the sensor moves left
    config = DvsSimulatorConfig(
        saccade_vertices=((0.0, 0.0), (-2.0, 0.0)), noise_rate_hz=0.0, threshold_sigma=0.0
    )
    events = simulate(image, config, np.random.default_rng(0))
    on, off = events[events["p"] == 1], events[events["p"] == 0]
    assert len(on) > 100 and len(off) == 0
    # the bright region grows from column 17 to column 19: only those pixels brighten
    assert set(np.unique(on["x"]).tolist()) == {17, 18}
    assert set(np.unique(on["y"]).tolist()) == set(range(34))
    # column 17 brightens first
    assert on["t"][on["x"] == 17].min() < on["t"][on["x"] == 18].min()


def test_event_rate_grows_as_threshold_falls():
    image = place_in_frame(digit_like(), (34, 34))
    counts = []
    for contrast in (0.4, 0.2, 0.1):
        config = DvsSimulatorConfig(contrast_on=contrast, contrast_off=contrast, noise_rate_hz=0.0)
        counts.append(len(simulate(image, config, np.random.default_rng(0))))
    assert counts[0] < counts[1] < counts[2]
    assert counts[2] > 1.5 * counts[0]


def test_nmnist_like_output_sorted_in_bounds_and_sized():
    config = DvsSimulatorConfig()
    events = simulate(digit_like(), config, np.random.default_rng(4))
    assert np.all(np.diff(events["t"]) >= 0)
    assert events["x"].max() < 34 and events["y"].max() < 34
    assert events["t"].min() >= 0 and events["t"].max() < config.duration_us == 300_000
    assert set(np.unique(events["p"]).tolist()) == {0, 1}
    assert 1000 < len(events) < 20_000  # N-MNIST recordings hold a few thousand events
    # three saccades: events in each third of the recording
    thirds = np.bincount(events["t"] // 100_000, minlength=3)
    assert np.all(thirds > 0.15 * len(events))


def test_refractory_period_spaces_events_of_a_pixel():
    config = DvsSimulatorConfig(refractory_us=5000, noise_rate_hz=0.0)
    events = simulate(digit_like(), config, np.random.default_rng(0))
    pixel = events["y"].astype(np.int64) * 34 + events["x"]
    order = np.lexsort((events["t"], pixel))
    same_pixel = pixel[order][1:] == pixel[order][:-1]
    gaps = np.diff(events["t"][order])[same_pixel]
    assert len(gaps) > 0 and gaps.min() >= 5000 - 1  # timestamps are floored to whole us


def test_noise_events_follow_the_rate():
    blank = np.zeros((34, 34), np.uint8)
    config = DvsSimulatorConfig(noise_rate_hz=20.0, saccade_vertices=((0.0, 0.0), (0.0, 0.0)))
    events = simulate(blank, config, np.random.default_rng(0))
    expected = 20.0 * 34 * 34 * 0.1  # 2312
    assert abs(len(events) - expected) < 5 * np.sqrt(expected)


def test_deterministic_given_seed():
    config = DvsSimulatorConfig()
    a = simulate(digit_like(), config, np.random.default_rng(11))
    b = simulate(digit_like(), config, np.random.default_rng(11))
    c = simulate(digit_like(), config, np.random.default_rng(12))
    assert a.tobytes() == b.tobytes()
    assert a.tobytes() != c.tobytes()


def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="does not fit"):
        simulate(np.zeros((40, 40), np.uint8), DvsSimulatorConfig(), np.random.default_rng(0))
    with pytest.raises(ValueError, match="uint8"):
        simulate(np.zeros((28, 28), np.float32), DvsSimulatorConfig(), np.random.default_rng(0))
