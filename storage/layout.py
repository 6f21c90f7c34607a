"""Where a build puts each thing in the store: every array path and attribute name, in one place.

The writer, the reader and the verifier name arrays through this module only, so the layout of a
store is declared once::

    /                         attrs: ROOT_ATTRS (classes, source, split rule, build parameters, ...)
    events/x,y  uint16 [E]    all recordings concatenated, lossless, in decode order
    events/t    int64  [E]    microseconds
    events/p    uint8  [E]    polarity 0/1
    events/offsets int64 [N+1]  recording i is events[offsets[i]:offsets[i+1]]
    events/label int16 [N], events/split uint8 [N], events/width,height uint16 [N]
    images/data uint8 [M,H,W,C], images/label int16 [M], images/split uint8 [M]
    frames/<key>              attrs: the FrameSpec of the representation
    frames/<key>/events uint16 [N,T,2,H,W]   binned event counts; with ``slices``, [S,T,2,H,W]:
                              S samples cut from the N recordings
    frames/<key>/recording int64 [S]         (only with ``slices``) the recording of each sample
    frames/<key>/static uint8  [M,H,W]       static images at the frames' size (gray or V)
    manifest                  attrs["rows"]: a row per raw input (path, size, mtime_ns, sha256, status, why)
    report                    attrs: the build report (counts, quarantined, timings)
    /                         attrs[DIGESTS]: every array's content digests, per shard (storage.digests)

The raw file of recording ``i`` is ``attrs["recording_sources"][i]``, relative to ``attrs["raw_root"]``.
"""

from __future__ import annotations

from storage.schema import EVENT_DTYPE

EVENTS = "events"
OFFSETS = "events/offsets"
LABEL = "events/label"
SPLIT = "events/split"
WIDTH = "events/width"
HEIGHT = "events/height"
#: ``events/<field>`` for every field of EVENT_DTYPE, in field order.
EVENT_FIELDS: dict[str, str] = {name: f"{EVENTS}/{name}" for name in EVENT_DTYPE.names}

IMAGES = "images/data"
IMAGE_LABEL = "images/label"
IMAGE_SPLIT = "images/split"

FRAMES = "frames"
MANIFEST = "manifest"
MANIFEST_ROWS = "rows"
REPORT = "report"

#: Root attributes a build writes (`Transaction.set_root_attrs` refuses any other name).
CLASSES = "classes"
SOURCE = "source"
RAW_ROOT = "raw_root"
STATIC_ROOT = "static_root"
FRAMES_KEY = "frames_key"
SENSOR_SIZE = "sensor_size"
SPLIT_RULE = "split_rule"
#: how the source's x, y and polarity relate to the camera (each adapter says, e.g. AEDAT 2.0 DVS128)
ORIENTATION = "orientation"
SPLIT_NAMES = "splits"
BUILD_PARAMS = "build_params"
DATA_PARAMS = "data_params"
RECORDING_SOURCES = "recording_sources"
PARENT_SNAPSHOT = "parent_snapshot"
#: ``{array path: {"rows", "shape", "dtype", "parts": [hex]}}``, written by the transaction at commit
#: (`storage.digests`); not settable through `set_root_attrs`.
DIGESTS = "digests"
ROOT_ATTRS = (
    CLASSES,
    SOURCE,
    RAW_ROOT,
    STATIC_ROOT,
    FRAMES_KEY,
    SENSOR_SIZE,
    SPLIT_RULE,
    ORIENTATION,
    SPLIT_NAMES,
    BUILD_PARAMS,
    DATA_PARAMS,
    RECORDING_SOURCES,
    PARENT_SNAPSHOT,
)


#: Dimension names of every array, by path (``frames/*/...`` stands for every frames key). Zarr v3
#: stores them in each array's metadata, so xarray and other Zarr readers label axes without knowing
#: this package. Arrays of one group that share a name share a length, as xarray opens a group as one
#: Dataset: in a sliced representation the ``recording`` axis of ``frames/<key>`` counts samples, and
#: its ``recording`` array becomes the coordinate naming each sample's recording.
DIMENSION_NAMES: dict[str, tuple[str, ...]] = {
    **{path: ("event",) for path in EVENT_FIELDS.values()},
    OFFSETS: ("recording_bound",),
    LABEL: ("recording",),
    SPLIT: ("recording",),
    WIDTH: ("recording",),
    HEIGHT: ("recording",),
    IMAGES: ("image", "image_y", "image_x", "channel"),
    IMAGE_LABEL: ("image",),
    IMAGE_SPLIT: ("image",),
    f"{FRAMES}/*/events": ("recording", "time", "polarity", "y", "x"),
    f"{FRAMES}/*/recording": ("recording",),
    f"{FRAMES}/*/static": ("image", "y", "x"),
}


def dimension_names(path: str) -> tuple[str, ...] | None:
    """The dimension names of the array at ``path``; None for an array the layout does not name."""
    parts = path.strip("/").split("/")
    if len(parts) == 3 and parts[0] == FRAMES:
        parts[1] = "*"
    return DIMENSION_NAMES.get("/".join(parts))


def frames_group(key: str) -> str:
    """The group of one frame representation; its attrs are the FrameSpec."""
    return f"{FRAMES}/{key}"


def event_frames(key: str) -> str:
    return f"{FRAMES}/{key}/events"


def frame_recordings(key: str) -> str:
    """Only in sliced representations: int64 [S], the recording each sample was cut from."""
    return f"{FRAMES}/{key}/recording"


def static_frames(key: str) -> str:
    return f"{FRAMES}/{key}/static"
