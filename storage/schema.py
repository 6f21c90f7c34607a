"""Names, dtypes and keys shared by every writer and reader of the store.

Layout of one store (a Zarr v3 hierarchy inside an Icechunk repository)::

    /                         attrs: classes, sensor_size, source, split_rule, build_params
    events/x,y  uint16 [E]    all recordings concatenated, lossless, in decode order
    events/t    int64  [E]    microseconds
    events/p    uint8  [E]    polarity 0/1
    events/offsets int64 [N+1]  recording i is events[offsets[i]:offsets[i+1]]
    events/label int16 [N], events/split uint8 [N], events/width,height uint16 [N]
    events/source       [N]   path of the raw file, relative to the raw root
    images/data uint8 [M,H,W,C], images/label int16 [M], images/split uint8 [M], images/source [M]
    frames/<key>/events uint16 [N,T,2,H,W]   binned event counts (attrs: the FrameSpec)
    frames/<key>/static uint8  [M,H,W]       static images at the frames' size (gray or V)
    manifest                  attrs: one row per raw input (path, size, sha256, status, reason)
    report                    attrs: the build report (counts, quarantined, timings)
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cached_property

import numpy as np

#: One event. Fields are always used by name, never by position.
EVENT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])

#: Split names; the store holds their index in this tuple.
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Bumped whenever binning or static preprocessing code changes what it outputs,
#: so that frames made by older code get a different key and are never reused.
FRAMES_CODE_VERSION = "1"


#: Dimension names of every array, by path ("*" stands for a frames key). Zarr v3 stores them in each
#: array's metadata, so xarray and other Zarr readers label axes without knowing this package.
#: Arrays of one group that share a name share a length (xarray opens a group as one Dataset).
DIMENSION_NAMES: dict[str, tuple[str, ...]] = {
    "events/x": ("event",),
    "events/y": ("event",),
    "events/t": ("event",),
    "events/p": ("event",),
    "events/offsets": ("recording_bound",),
    "events/label": ("recording",),
    "events/split": ("recording",),
    "events/width": ("recording",),
    "events/height": ("recording",),
    "images/data": ("image", "image_y", "image_x", "channel"),
    "images/label": ("image",),
    "images/split": ("image",),
    "frames/*/events": ("recording", "time", "polarity", "y", "x"),
    "frames/*/static": ("image", "y", "x"),
}


def dimension_names(path: str) -> tuple[str, ...] | None:
    """The dimension names of the array at ``path``; None for an array the layout does not name."""
    parts = path.strip("/").split("/")
    if len(parts) == 3 and parts[0] == "frames":
        parts[1] = "*"
    return DIMENSION_NAMES.get("/".join(parts))


def split_code(name: str) -> int:
    try:
        return SPLITS.index(name)
    except ValueError:
        raise ValueError(f"unknown split {name!r}; expected one of {SPLITS}") from None


@dataclass(frozen=True)
class FrameSpec:
    """Every parameter that shapes a derived frame representation.

    ``key`` hashes all of them with the code version, so a change of any parameter
    gives new frames instead of stale ones.
    """

    time_bins: int = 10
    size: tuple[int, int] = (34, 34)  # (H, W) after spatial resize
    mode: str = "time"  # "time": equal time windows; "count": equal event counts
    denoise_us: int = 0  # 0 = off; else drop events with no neighbour within this many us
    static_mode: str = "gray"  # "gray" or "v" (the V channel of HSV)
    static_fit: str = "resize"  # "resize" to the frame size, or "pad" (centre at native scale)

    def __post_init__(self) -> None:
        if self.time_bins < 1:
            raise ValueError(f"time_bins must be >= 1, got {self.time_bins}")
        if self.mode not in ("time", "count"):
            raise ValueError(f"mode must be 'time' or 'count', got {self.mode!r}")
        if self.static_mode not in ("gray", "v"):
            raise ValueError(f"static_mode must be 'gray' or 'v', got {self.static_mode!r}")
        if self.static_fit not in ("resize", "pad"):
            raise ValueError(f"static_fit must be 'resize' or 'pad', got {self.static_fit!r}")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be (H, W) with positive sides, got {self.size}")
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))

    @cached_property
    def key(self) -> str:
        payload = json.dumps({**asdict(self), "code": FRAMES_CODE_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_attrs(self) -> dict:
        return {**asdict(self), "size": list(self.size), "key": self.key, "code": FRAMES_CODE_VERSION}

    @classmethod
    def from_attrs(cls, attrs: dict) -> FrameSpec:
        return cls(
            time_bins=int(attrs["time_bins"]),
            size=tuple(attrs["size"]),
            mode=attrs["mode"],
            denoise_us=int(attrs["denoise_us"]),
            static_mode=attrs["static_mode"],
            static_fit=attrs.get("static_fit", "resize"),
        )
