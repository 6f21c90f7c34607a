"""CIFAR10-DVS recordings with CIFAR-10 static images.

Events: ``raw/<class>/*.aedat`` (the original AEDAT 2.0 files, DVS128 128x128) or ``*.aedat4``
(the AEDAT 4 repack); both may be mixed. The generic AEDAT 2.0 reader gives the camera's image;
the published readers of the original files (spikingjelly's ``CIFAR10DVS``, tonic's reader of the
original files) show it transposed, ``x = 127 - y_raw, y = 127 - x_raw, p = 1 - p_raw``, which is
what the AEDAT 4 repack holds. So this adapter transposes the ``.aedat`` originals (``x <-> y``;
the polarity already agrees) and both kinds of file come out alike, as those readers show them.
There is no published split: the usual 9:1 per class
(``test_fraction=0.1``), validation carved from the rest.

Statics: the CIFAR-10 python batches, in ``static/cifar-10-batches-py/`` or directly in ``static/``:
``data_batch_1..5`` (split "train") and ``test_batch`` (split "test"). CIFAR-10 label indices use
the same class order as ``CIFAR10DVS_CLASSES``.
"""

from __future__ import annotations

import functools
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.formats import read_events
from pipelines.formats.cifar import read_cifar_batch
from pipelines.sources.base import EventItem, Listing, PublishedCounts, SplitParams, StaticItem, StaticItems
from pipelines.sources.folder import class_folder_events, require_dir

CIFAR10DVS_CLASSES = [
    "airplane",
    "automobile",
    "bird",
    "cat",
    "deer",
    "dog",
    "frog",
    "horse",
    "ship",
    "truck",
]
EVENT_SUFFIXES = (".aedat", ".aedat4")
BATCHES = [(f"data_batch_{i}", "train") for i in range(1, 6)] + [("test_batch", "test")]


@functools.lru_cache(maxsize=6)
def _cached_batch(key: tuple[str, int, int]) -> tuple[np.ndarray, np.ndarray]:
    # keyed by mtime and size too, so that a replaced file is read again
    return read_cifar_batch(key[0])


def read_batch_cached(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """A whole CIFAR batch, read once per worker process: a pickle cannot be read in part, and a
    build's shards of images each take a run of one batch's images."""
    try:
        stat = Path(path).stat()
    except OSError as err:
        raise BadInput(path, f"cannot read: {err}") from err
    return _cached_batch((str(path), stat.st_mtime_ns, stat.st_size))


def batches_root(static: Path) -> Path:
    nested = static / "cifar-10-batches-py"
    return nested if nested.is_dir() else static


def list_cifar_statics(static: Path) -> tuple[StaticItems, list[tuple[str, str]]]:
    root = batches_root(static)
    parts: list[StaticItems] = []
    bad: list[tuple[str, str]] = []
    for name, split in BATCHES:
        path = root / name
        if not os.path.lexists(path):  # anything else there (a FIFO, a broken link) is read and reported
            continue
        rel = path.relative_to(static).as_posix()
        try:  # not cached: the coordinator lists, the workers read the images (`read_batch_cached`)
            _, labels = read_cifar_batch(path)
        except BadInput as err:
            bad.append((rel, err.reason))
            continue
        labels = np.asarray(labels)
        if len(labels) and (labels.min() < 0 or labels.max() >= len(CIFAR10DVS_CLASSES)):
            bad.append((rel, "labels outside 0..9"))
            continue
        parts.append(StaticItems.of_file(rel, labels, split))
    return StaticItems.concat(parts), bad


def transpose(events: np.ndarray) -> np.ndarray:
    """Swap x and y: the camera's image turned as CIFAR10-DVS's published readers show it."""
    out = events.copy()
    out["x"], out["y"] = events["y"], events["x"]
    return out


@dataclass
class CIFAR10DVSSource(SplitParams):
    name: str = "cifar10dvs"
    published_split = "no published split (9:1 per class)"
    #: 1,000 per class: spikingjelly's CIFAR10DVSTEBNSplit takes samples 0-99 of each class for
    #: test and 100-999 for train
    published = PublishedCounts(
        "CIFAR10-DVS: 1,000 recordings per class",
        per_class={"all": dict.fromkeys(CIFAR10DVS_CLASSES, 1000)},
    )
    orientation = (
        "as CIFAR10-DVS's published readers show it: AEDAT 2.0 originals transposed from the "
        "camera's image (x = 127 - y_raw, y = 127 - x_raw, p = 1 - p_raw); AEDAT 4 repack as stored"
    )

    def list(self, raw: Path, static: Path | None) -> Listing:
        raw = require_dir(raw)
        events = class_folder_events(raw, raw, CIFAR10DVS_CLASSES, EVENT_SUFFIXES)
        statics, bad = [], []
        if static is not None:
            statics, bad = list_cifar_statics(require_dir(static, "static folder"))
        return Listing(classes=list(CIFAR10DVS_CLASSES), events=events, statics=statics, bad_statics=bad)

    def default_static(self, raw: Path) -> Path | None:
        """Static root to use when none is given: this layout keeps none inside ``raw``."""
        return None

    def decode(self, raw: Path, item: EventItem) -> tuple[np.ndarray, tuple[int, int]]:
        # .aedat: the version line decides (2.0 for the original files); .aedat4: the repack
        path = Path(raw) / item.path
        events, sensor_size = read_events(path)
        if path.suffix.lower() == ".aedat":
            events = transpose(events)
            sensor_size = (sensor_size[1], sensor_size[0])
        return events, sensor_size

    def load_static(self, static: Path, item: StaticItem) -> np.ndarray:
        path = Path(static) / item.path
        images, _ = read_batch_cached(path)
        if not 0 <= item.index < len(images):
            raise BadInput(path, f"index {item.index} outside {len(images)} images")
        return np.ascontiguousarray(images[item.index])
