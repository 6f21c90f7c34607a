"""Small pieces every event reader and writer shares: building the event array and checking it."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from storage.schema import EVENT_DTYPE


def make_events(x: np.ndarray, y: np.ndarray, t: np.ndarray, p: np.ndarray) -> np.ndarray:
    """Pack decoded columns into one ``EVENT_DTYPE`` array (callers have checked the ranges)."""
    events = np.empty(len(t), dtype=EVENT_DTYPE)
    events["x"] = x
    events["y"] = y
    events["t"] = t
    events["p"] = p
    return events


def check_regular(path: str | Path) -> None:
    """A FIFO, socket or device is a bad input: opening a FIFO to read it would block forever."""
    try:
        mode = os.stat(path).st_mode
    except OSError as err:
        raise BadInput(path, f"cannot read file: {err.strerror or err}") from err
    if not stat.S_ISREG(mode):
        raise BadInput(path, "not a regular file")


def read_bytes(path: str | Path) -> bytes:
    """The whole file; a missing or unreadable file is a bad input, not a crash of the build."""
    check_regular(path)
    try:
        return Path(path).read_bytes()
    except OSError as err:
        raise BadInput(path, f"cannot read file: {err.strerror or err}") from err


#: the store keeps sensor sizes as uint16: a larger one would wrap (70000 -> 4464) and pile every
#: event of the recording into the wrong pixels
MAX_SENSOR_SIDE = 0xFFFF


def check_sensor_size(path: str | Path, sensor_size: tuple[int, int]) -> tuple[int, int]:
    """The ``(width, height)`` a file declares, refused when the store cannot hold it exactly."""
    width, height = (int(v) for v in sensor_size)
    if not (0 <= width <= MAX_SENSOR_SIDE and 0 <= height <= MAX_SENSOR_SIDE):
        raise BadInput(path, f"sensor size {width}x{height} outside 0..{MAX_SENSOR_SIDE} per side")
    return width, height


def check_in_sensor(path: str | Path, events: np.ndarray, sensor_size: tuple[int, int]) -> None:
    """Coordinates must lie on the sensor ``(width, height)``: anything else is a corrupt file."""
    if len(events) == 0:
        return
    width, height = sensor_size
    max_x, max_y = int(events["x"].max()), int(events["y"].max())
    if max_x >= width or max_y >= height:
        raise BadInput(
            path, f"event coordinates up to x={max_x}, y={max_y} lie outside the {width}x{height} sensor"
        )


def check_time_order(path: str | Path, t: np.ndarray) -> None:
    """Time stamps may repeat but never go back (after the format's own wrap handling)."""
    if len(t) < 2:
        return
    back = np.flatnonzero(np.diff(t) < 0)
    if len(back):
        i = int(back[0])
        raise BadInput(path, f"time goes back from {int(t[i])} to {int(t[i + 1])} us at event {i + 1}")


def as_event_array(events: np.ndarray) -> np.ndarray:
    """Accept any structured array with fields x, y, t, p (writers take tonic's arrays too)."""
    events = np.asarray(events)
    if events.dtype.names is None or not {"x", "y", "t", "p"} <= set(events.dtype.names):
        raise ValueError(f"events need fields x, y, t, p; got dtype {events.dtype}")
    return events


def check_writable(events: np.ndarray, sensor_size: tuple[int, int], max_t: int) -> None:
    """Writers refuse what the format cannot hold instead of silently wrapping values."""
    if len(events) == 0:
        return
    width, height = sensor_size
    x, y, t, p = (events[name].astype(np.int64) for name in ("x", "y", "t", "p"))
    if x.min() < 0 or y.min() < 0 or x.max() >= width or y.max() >= height:
        raise ValueError(f"event coordinates outside the {width}x{height} sensor")
    if t.min() < 0 or t.max() > max_t:
        raise ValueError(f"time stamps must lie in [0, {max_t}] us for this format")
    if np.any(np.diff(t) < 0):
        raise ValueError("time stamps must not decrease")
    if not np.isin(p, (0, 1)).all():
        raise ValueError("polarity must be 0 or 1")
