"""Event binning: structured event arrays to ``[T, 2, H, W]`` count frames.

Everything is vectorized: each event gets one flat index ``((t * 2 + p) * H + y) * W + x`` and the
frames are a single ``np.bincount`` over those indices.

Time bins follow ``tonic.transforms.ToFrame(n_time_bins=T)`` (tonic 1.7): the bin width is
``(t_last - t_first) // T`` (integer microseconds) and bin ``i`` covers
``[t_first + i * width, t_first + (i + 1) * width)``. Tonic drops every event at or after
``t_first + T * width`` -- always the last event, plus up to ``T - 1`` microseconds before it -- and
gives all-empty frames when the recording is shorter than ``T`` microseconds. Here the tail events
go into the last bin and a recording shorter than ``T`` us gets bins of 1 us, so that every event
is counted once: ``frames.sum() == len(events)`` for every mode without denoising or fixed windows.
``tonic_compatible=True`` reproduces tonic exactly (used by the tests that compare with it).

Fixed windows (``spec.window_us = W > 0``): bin ``i`` covers ``[start + i * W, start + (i + 1) * W)``
with ``start`` the first event's time, as ``tonic.transforms.ToFrame(time_window=W)`` and
spikingjelly's ``duration`` bin (both give as many frames as the recording lasts; here there are
always T). Events at or after ``start + T * W`` are dropped (the recording is cut at T windows); a
recording shorter than that keeps its last, partial window and gets empty frames after it. Its first
T frames equal tonic's first T frames.

Slices (``bin_slices``): a long recording becomes several samples of T windows each, consecutive
and not overlapping, the first starting at the first event, as tonic's ``SlicedDataset`` with
``SliceByTime(time_window=T * W)`` (DVS Gesture style). Its default is kept: the last, partial
slice is dropped, except that a recording shorter than one slice gives one sample (padded with empty
frames) instead of none.

Spatial resizing is sum pooling by integer coordinate mapping ``x' = x * W' // W``,
``y' = y * H' // H``. Both axes are mapped independently, so a non-square sensor binned to a
square size changes its aspect ratio; that is intended (every recording of a dataset ends up at
one network input size, as with the usual resize of frames).
"""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from storage.schema import FrameSpec

_UINT16_MAX = np.iinfo(np.uint16).max


def events_sensor_size(events: np.ndarray) -> tuple[int, int]:
    """``(W, H)`` as max coordinates + 1; for formats that do not store the sensor size."""
    if len(events) == 0:
        return (0, 0)
    return (int(events["x"].max()) + 1, int(events["y"].max()) + 1)


def denoise(events: np.ndarray, filter_time: int) -> np.ndarray:
    """Keep events whose 4-neighbour pixel fired less than ``filter_time`` us before them.

    Semantics of ``tonic.transforms.Denoise(filter_time)``: "before" means earlier in the array
    (events are in time order, so equal timestamps count when the neighbour comes first). Unlike
    tonic, a pixel that has never fired does not count as having fired at time 0: tonic initialises
    its timestamp memory to ``filter_time``, which keeps every event in the first ``filter_time``
    us of a recording that starts at t=0. The two agree once ``t >= filter_time`` for all events.

    Vectorized, one stable sort per neighbour direction: every event appears twice in array order,
    first as a query for its neighbour pixel, then as a firing of its own pixel. Stable-sorted by
    pixel, each query is preceded within its pixel group by exactly the earlier firings there, and
    a running maximum finds the latest of them.
    """
    n = len(events)
    if n == 0 or filter_time <= 0:
        return events.copy()
    # a border of one pixel on each side: a neighbour outside the sensor is a pixel that never fires
    x = events["x"].astype(np.int64) + 1
    y = events["y"].astype(np.int64) + 1
    t = events["t"].astype(np.int64)
    width = int(x.max()) + 2
    pixel_count = width * (int(y.max()) + 2)
    # small integer keys make numpy's stable sort a radix sort
    key_dtype = np.uint16 if pixel_count <= 2**16 else np.uint32 if pixel_count <= 2**32 else np.int64
    pixel = y * width + x
    keep = np.zeros(n, dtype=bool)
    rank = np.arange(2 * n, dtype=np.int64)
    for step in (-1, 1, -width, width):
        combined = np.empty(2 * n, dtype=key_dtype)
        combined[0::2] = pixel + step  # query of event i at position 2i
        combined[1::2] = pixel  # firing of event i at position 2i + 1, after its own query
        order = np.argsort(combined, kind="stable")
        is_firing = (order & 1).astype(bool)
        latest_firing = np.maximum.accumulate(np.where(is_firing, rank, -1))
        query_ranks = np.flatnonzero(~is_firing)
        found = latest_firing[query_ranks]
        query = order[query_ranks] >> 1
        fired = order[np.maximum(found, 0)] >> 1
        supported = (found >= 0) & (pixel[fired] == pixel[query] + step) & (t[query] - t[fired] < filter_time)
        keep[query[supported]] = True
    return events[keep]


def _time_bin_index(t: np.ndarray, time_bins: int, tonic_compatible: bool) -> np.ndarray:
    """Bin of each event (``-1`` = dropped, only with ``tonic_compatible``)."""
    t0 = int(t.min())  # == t[0] and t[-1] below for time-ordered events, as tonic assumes
    width = (int(t.max()) - t0) // time_bins
    offset = t.astype(np.int64) - t0
    if tonic_compatible:
        if width == 0:
            return np.full(len(t), -1, dtype=np.int64)
        index = offset // width
        return np.where(index < time_bins, index, -1)
    index = offset // max(width, 1)
    return np.clip(index, 0, time_bins - 1)


def _window_bin_index(t: np.ndarray, time_bins: int, window_us: int) -> np.ndarray:
    """Bin of each event by fixed windows from the first event (``-1`` = after the last window)."""
    index = (t.astype(np.int64) - int(t.min())) // window_us
    return np.where(index < time_bins, index, -1)


def _count_bin_index(n: int, time_bins: int, tonic_compatible: bool) -> np.ndarray:
    """Bin of each event by its rank: equal event counts per bin."""
    rank = np.arange(n, dtype=np.int64)
    if tonic_compatible:
        # tonic: n // T events per bin, the remainder (the last events) is dropped
        per_bin = n // time_bins
        if per_bin == 0:
            return np.full(n, -1, dtype=np.int64)
        index = rank // per_bin
        return np.where(index < time_bins, index, -1)
    # bins differ by at most one event and the remainder is spread instead of dropped
    return rank * time_bins // n


def bin_events(
    events: np.ndarray,
    sensor_size: tuple[int, int],
    spec: FrameSpec,
    *,
    tonic_compatible: bool = False,
) -> np.ndarray:
    """Count frames ``uint16 [T, 2, H', W']`` indexed ``[t, p, y, x]`` with ``(H', W') = spec.size``.

    ``events`` must be in time order (as decoded). ``sensor_size`` is ``(W, H)`` of the recording.
    Counts saturate at 65535. An empty recording gives all-zero frames. With
    ``tonic_compatible=True`` and no resize/denoise the result equals tonic's ``ToFrame``; the
    default counts every event (see the module docstring).
    """
    width, height = int(sensor_size[0]), int(sensor_size[1])
    out_h, out_w = spec.size
    time_bins = spec.time_bins
    shape = (time_bins, 2, out_h, out_w)
    _check_events(events, width, height)
    if spec.denoise_us > 0:
        events = denoise(events, spec.denoise_us)
    if len(events) == 0:
        return np.zeros(shape, dtype=np.uint16)

    if spec.mode == "time" and spec.window_us:
        t_index = _window_bin_index(events["t"], time_bins, spec.window_us)
    elif spec.mode == "time":
        t_index = _time_bin_index(events["t"], time_bins, tonic_compatible)
    else:
        t_index = _count_bin_index(len(events), time_bins, tonic_compatible)
    x = events["x"].astype(np.int64) * out_w // width
    y = events["y"].astype(np.int64) * out_h // height
    p = events["p"].astype(np.int64)
    flat = ((t_index * 2 + p) * out_h + y) * out_w + x
    flat = flat[t_index >= 0]
    counts = np.bincount(flat, minlength=time_bins * 2 * out_h * out_w)
    return np.minimum(counts, _UINT16_MAX).astype(np.uint16).reshape(shape)


def slice_count(events: np.ndarray, spec: FrameSpec) -> int:
    """How many whole slices of ``T * window_us`` the recording holds (at least one)."""
    if not spec.window_us:
        raise ValueError("slicing needs fixed windows: set window_us")
    if len(events) == 0:
        return 1
    duration = int(events["t"].max()) - int(events["t"].min())
    return max(1, duration // (spec.time_bins * spec.window_us))


def bin_slices(events: np.ndarray, sensor_size: tuple[int, int], spec: FrameSpec) -> np.ndarray:
    """Count frames ``uint16 [S, T, 2, H', W']`` of consecutive slices of ``T`` windows each.

    Slice ``k`` covers ``[t0 + k*T*W, t0 + (k+1)*T*W)``: binning ``S * T`` windows at once and
    splitting them gives exactly that, with the events after the last whole slice dropped.
    """
    slices = slice_count(events, spec)
    frames = bin_events(events, sensor_size, replace(spec, time_bins=slices * spec.time_bins))
    return frames.reshape(slices, spec.time_bins, *frames.shape[1:])


def frames_of(events: np.ndarray, sensor_size: tuple[int, int], spec: FrameSpec) -> np.ndarray:
    """The samples one recording gives under ``spec``: ``[S, T, 2, H', W']``, S = 1 unless sliced."""
    if spec.slices:
        return bin_slices(events, sensor_size, spec)
    return bin_events(events, sensor_size, spec)[None]


def _check_events(events: np.ndarray, width: int, height: int) -> None:
    """Out-of-range values would silently land in another pixel or bin: refuse them."""
    if width < 1 or height < 1:
        if len(events):
            raise ValueError(f"sensor size ({width}, {height}) is empty but there are {len(events)} events")
        return
    if len(events) == 0:
        return
    if int(events["x"].max()) >= width or int(events["y"].max()) >= height:
        raise ValueError(
            f"event coordinates up to ({int(events['x'].max())}, {int(events['y'].max())}) "
            f"outside the sensor size ({width}, {height})"
        )
    if int(events["p"].max()) > 1:
        raise ValueError(f"polarity must be 0 or 1, got up to {int(events['p'].max())}")
