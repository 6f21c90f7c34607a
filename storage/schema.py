"""The value types of the store: the event dtype, the split codes and the frame parameters.

Where each array lives is `storage.layout`; this module says what the values are.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import asdict, dataclass
from functools import cached_property
from typing import ClassVar

import numpy as np

#: One event. Fields are always used by name, never by position.
EVENT_DTYPE = np.dtype([("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")])

#: Split names; the store holds their index in this tuple.
SPLITS: tuple[str, ...] = ("train", "val", "test")

#: Binning modes: "time" (equal time windows) or "count" (equal event counts).
BIN_MODES = ("time", "count")
#: Static image channels: "gray", or "v" (the V channel of HSV).
STATIC_MODES = ("gray", "v")
#: How statics meet the frame size: "resize" to it, or "pad" (centred at native scale).
STATIC_FITS = ("resize", "pad")

#: Bumped whenever binning or static preprocessing code changes what it outputs,
#: so that frames made by older code get a different key and are never reused.
FRAMES_CODE_VERSION = "1"


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
    #: 0: the T bins split the whole recording; else each bin is this many us from the first event
    #: (``pipelines.binning`` says what happens before and after the T windows)
    window_us: int = 0
    #: cut each recording into consecutive samples of T windows (needs window_us); the frames then
    #: have one row per sample and ``frames/<key>/recording`` names each sample's recording
    slices: bool = False

    #: fields added after stores existed: they enter the key (and the attrs) only when set, so the
    #: frames those stores hold keep their keys
    LATER_FIELDS: ClassVar[dict[str, object]] = {"window_us": 0, "slices": False}

    def __post_init__(self) -> None:
        if self.time_bins < 1:
            raise ValueError(f"time_bins must be >= 1, got {self.time_bins}")
        if self.mode not in BIN_MODES:
            raise ValueError(f"mode must be 'time' or 'count', got {self.mode!r}")
        if self.static_mode not in STATIC_MODES:
            raise ValueError(f"static_mode must be 'gray' or 'v', got {self.static_mode!r}")
        if self.static_fit not in STATIC_FITS:
            raise ValueError(f"static_fit must be 'resize' or 'pad', got {self.static_fit!r}")
        if self.window_us < 0:
            raise ValueError(f"window_us must be >= 0, got {self.window_us}")
        if self.window_us and self.mode != "time":
            raise ValueError("window_us bins by time: it needs mode 'time'")
        if self.slices and not self.window_us:
            raise ValueError("slices cut recordings into T windows of window_us: set window_us")
        if len(self.size) != 2 or min(self.size) < 1:
            raise ValueError(f"size must be (H, W) with positive sides, got {self.size}")
        object.__setattr__(self, "size", (int(self.size[0]), int(self.size[1])))

    def _fields(self) -> dict:
        later = self.LATER_FIELDS
        return {k: v for k, v in asdict(self).items() if k not in later or v != later[k]}

    @cached_property
    def key(self) -> str:
        payload = json.dumps({**self._fields(), "code": FRAMES_CODE_VERSION}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]

    def to_attrs(self) -> dict:
        return {**self._fields(), "size": list(self.size), "key": self.key, "code": FRAMES_CODE_VERSION}

    @classmethod
    def from_attrs(cls, attrs: dict) -> FrameSpec:
        return cls(
            time_bins=int(attrs["time_bins"]),
            size=tuple(attrs["size"]),
            mode=attrs["mode"],
            denoise_us=int(attrs["denoise_us"]),
            static_mode=attrs["static_mode"],
            static_fit=attrs.get("static_fit", "resize"),
            **{name: type(default)(attrs.get(name, default)) for name, default in cls.LATER_FIELDS.items()},
        )
