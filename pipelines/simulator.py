"""A DVS simulator: a static image seen by an event camera making N-MNIST-like saccades.

Each pixel keeps a reference log intensity. When the log intensity ``L = log(I + eps)`` moves
above the reference by the pixel's ON threshold (or below by its OFF threshold), the pixel emits
one event per threshold crossed and the reference follows by whole thresholds. Between two
simulation steps ``L`` is taken as linear in time, so the k-th crossing of a step gets the
timestamp where the line crosses ``ref + k * C``. Thresholds differ per pixel (Gaussian mismatch,
fixed for a recording), a pixel is blind for a refractory period after each event (crossings in
that time are lost, the reference still follows), and background noise adds Poisson events.

Motion: like the N-MNIST recordings (Orchard et al. 2015), the sensor makes three saccades that
trace a triangle, about 100 ms each and a few pixels wide; the image is shifted sub-pixel with
bilinear interpolation (edges repeat the border, so the border itself does not make events).
Everything per step is vectorized over pixels; the loop runs over the ~300 time steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from storage.schema import EVENT_DTYPE


@dataclass(frozen=True)
class DvsSimulatorConfig:
    """Sensor and motion parameters; every field is recorded with data made from it."""

    sensor_size: tuple[int, int] = (34, 34)  # (W, H); smaller images are centred in it
    contrast_on: float = 0.2  # log-intensity threshold of ON events
    contrast_off: float = 0.2  # log-intensity threshold of OFF events
    threshold_sigma: float = 0.03  # per-pixel threshold mismatch (std, log units)
    min_threshold: float = 0.01  # mismatch never drives a threshold below this
    refractory_us: int = 1000
    noise_rate_hz: float = 0.1  # background events per pixel per second
    log_eps: float = 0.1  # L = log(I + eps), I in [0, 1]: keeps black pixels finite
    #: (dx, dy) sensor offsets in pixels visited in turn; one saccade per segment
    saccade_vertices: tuple[tuple[float, float], ...] = ((0.0, 0.0), (1.5, 3.0), (3.0, 0.0), (0.0, 0.0))
    saccade_us: int = 100_000
    step_us: int = 1000

    def __post_init__(self) -> None:
        if self.contrast_on <= 0 or self.contrast_off <= 0:
            raise ValueError("contrast thresholds must be positive")
        if self.step_us < 1 or self.saccade_us < self.step_us:
            raise ValueError("need 1 <= step_us <= saccade_us")
        if len(self.saccade_vertices) < 1:
            raise ValueError("need at least one saccade vertex")
        object.__setattr__(self, "sensor_size", (int(self.sensor_size[0]), int(self.sensor_size[1])))
        vertices = tuple((float(dx), float(dy)) for dx, dy in self.saccade_vertices)
        object.__setattr__(self, "saccade_vertices", vertices)

    @property
    def duration_us(self) -> int:
        return max(len(self.saccade_vertices) - 1, 1) * self.saccade_us


def place_in_frame(image: np.ndarray, sensor_size: tuple[int, int]) -> np.ndarray:
    """Centre a uint8 ``[h, w]`` image in a black ``[H, W]`` sensor frame (N-MNIST: 28 in 34)."""
    width, height = sensor_size
    h, w = image.shape
    if h > height or w > width:
        raise ValueError(f"image {w}x{h} does not fit the sensor {width}x{height}")
    frame = np.zeros((height, width), dtype=image.dtype)
    top, left = (height - h) // 2, (width - w) // 2
    frame[top : top + h, left : left + w] = image
    return frame


def _offsets(config: DvsSimulatorConfig) -> tuple[np.ndarray, np.ndarray]:
    """Step end times (us) and the (dx, dy) sensor offset at each, piecewise linear."""
    times = np.arange(config.step_us, config.duration_us + 1, config.step_us, dtype=np.int64)
    vertices = np.asarray(config.saccade_vertices, dtype=np.float64)
    if len(vertices) == 1:
        return times, np.repeat(vertices, len(times), axis=0)
    knots = np.arange(len(vertices)) * config.saccade_us
    offsets = np.stack([np.interp(times, knots, vertices[:, k]) for k in range(2)], axis=1)
    return times, offsets


def _log_frame(intensity: np.ndarray, offset: np.ndarray, eps: float) -> np.ndarray:
    from scipy import ndimage  # here, not at import: scipy.ndimage alone is 0.3 s of `tmkt --help`

    # sensor moves by +offset, so the scene moves by -offset on the sensor; (rows, cols) = (y, x)
    shifted = ndimage.shift(intensity, (-offset[1], -offset[0]), order=1, mode="nearest")
    return np.log(shifted + eps)


def _crossing_events(
    delta: np.ndarray,
    thresholds: np.ndarray,
    t_start: int,
    step_us: int,
    last_event: np.ndarray,
    refractory_us: int,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Events of one polarity in one step: (flat pixel, time, crossings per pixel).

    ``delta`` is the positive log change beyond the reference over the step. Crossing k (1-based)
    happens at ``t_start + step * k * C / delta``; crossings closer than the refractory period to
    the previous emitted event are dropped, greedily in time order.
    """
    crossings = np.floor(delta / thresholds).astype(np.int64)
    pixels = np.flatnonzero(crossings > 0)
    if len(pixels) == 0:
        return pixels, np.zeros(0, dtype=np.float64), crossings
    n = crossings.ravel()[pixels]
    spacing = step_us * thresholds.ravel()[pixels] / delta.ravel()[pixels]  # us between crossings
    pixel_of = np.repeat(pixels, n)
    first = np.cumsum(n) - n
    k = np.arange(n.sum()) - np.repeat(first, n)  # 0-based crossing number within the pixel
    times = t_start + (k + 1) * np.repeat(spacing, n)
    # the first crossing past the refractory period, then every ceil(refractory / spacing)-th one
    ready = last_event.ravel()[pixels] + refractory_us
    k0 = np.maximum(np.ceil((ready - t_start) / spacing - 1.0), 0.0)
    stride = np.maximum(np.ceil(refractory_us / spacing), 1.0)
    rel = k - np.repeat(k0, n)
    keep = (rel >= 0) & (rel % np.repeat(stride, n) == 0)
    return pixel_of[keep], times[keep], crossings


def simulate(image: np.ndarray, config: DvsSimulatorConfig, rng: np.random.Generator) -> np.ndarray:
    """Events (``EVENT_DTYPE``, sorted by t, then y, x) of a uint8 ``[H, W]`` image in saccades."""
    image = np.asarray(image)
    if image.ndim != 2 or image.dtype != np.uint8:
        raise ValueError(f"expected a uint8 gray image [H, W], got {image.dtype} {image.shape}")
    width, height = config.sensor_size
    intensity = place_in_frame(image, config.sensor_size).astype(np.float64) / 255.0
    mismatch = rng.standard_normal((2, height, width)) * config.threshold_sigma
    c_on = np.maximum(config.contrast_on + mismatch[0], config.min_threshold)
    c_off = np.maximum(config.contrast_off + mismatch[1], config.min_threshold)

    times, offsets = _offsets(config)
    reference = _log_frame(intensity, np.asarray(config.saccade_vertices[0]), config.log_eps)
    last_event = np.full((height, width), -np.inf)
    pix_parts, t_parts, p_parts = [], [], []
    for t_end, offset in zip(times, offsets, strict=True):
        t_start = t_end - config.step_us
        change = _log_frame(intensity, offset, config.log_eps) - reference
        for polarity, sign, thresholds in ((1, 1.0, c_on), (0, -1.0, c_off)):
            delta = np.maximum(sign * change, 0.0)
            pix, t, crossings = _crossing_events(
                delta, thresholds, t_start, config.step_us, last_event, config.refractory_us
            )
            reference += sign * crossings * thresholds
            if len(pix):
                # per pixel the latest kept event sets the refractory window
                np.maximum.at(last_event.ravel(), pix, t)
                pix_parts.append(pix)
                t_parts.append(t)
                p_parts.append(np.full(len(pix), polarity, dtype=np.uint8))

    noise = _noise(config, rng)
    pix = np.concatenate([*pix_parts, noise[0]]).astype(np.int64)
    t = np.concatenate([*t_parts, noise[1]])
    p = np.concatenate([*p_parts, noise[2]])
    events = np.empty(len(pix), dtype=EVENT_DTYPE)
    events["x"] = pix % width
    events["y"] = pix // width
    events["t"] = np.floor(t).astype(np.int64)
    events["p"] = p
    order = np.lexsort((events["x"], events["y"], events["t"]))
    return events[order]


def _noise(config: DvsSimulatorConfig, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Background events: Poisson count, uniform in pixels, time and polarity."""
    width, height = config.sensor_size
    expected = config.noise_rate_hz * width * height * config.duration_us * 1e-6
    count = int(rng.poisson(expected)) if expected > 0 else 0
    pix = rng.integers(0, width * height, count)
    t = rng.uniform(0, config.duration_us, count)
    p = rng.integers(0, 2, count).astype(np.uint8)
    return pix, t, p
