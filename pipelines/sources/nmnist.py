"""N-MNIST recordings with MNIST static images.

Events: ``raw/{Train,Test}/<digit>/*.bin`` (ATIS 40-bit format, sensor 34x34); the folder fixes the
split ("train"/"test"); validation items are carved from "train" later (see ``pipelines.splits``).

Statics: MNIST IDX files in ``static/``: ``train-images-idx3-ubyte[.gz]`` with
``train-labels-idx1-ubyte[.gz]`` (split "train") and ``t10k-images-idx3-ubyte[.gz]`` with
``t10k-labels-idx1-ubyte[.gz]`` (split "test"); whatever is present is used. When only the t10k
files are there (as in the project's real-data folder), they are the static source domain of
training, so their split is "train": no static image ever meets an evaluation, which is on event
data only, and a t10k digit is never the same instance as an N-MNIST *train* recording.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.formats.idx import idx_shape, is_gzip, read_idx, read_idx_rows
from pipelines.formats.nmnist import read_nmnist
from pipelines.sources.base import EventItem, Listing, PublishedCounts, SplitParams, StaticItem, StaticItems
from pipelines.sources.folder import class_folder_events, require_dir

NMNIST_CLASSES = [str(digit) for digit in range(10)]
NMNIST_SENSOR_SIZE = (34, 34)
MNIST_TEST_PER_DIGIT = (980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009)
#: (folder, fixed split) of the official download
EVENT_FOLDERS = (("Train", "train"), ("Test", "test"))


def _file_key(path: Path) -> tuple[str, int, int]:
    stat = path.stat()
    return (str(path), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=4)
def _cached_idx(key: tuple[str, int, int]) -> np.ndarray:
    # keyed by mtime and size too, so that a replaced file is read again
    return read_idx(key[0])


def read_idx_cached(path: Path) -> np.ndarray:
    """A whole IDX file, read once per process: a gzip stream cannot be entered where a build's
    shard of images starts, so each worker inflates it once for all its shards."""
    try:
        key = _file_key(Path(path))
    except OSError as err:
        raise BadInput(path, f"cannot read: {err}") from err
    return _cached_idx(key)


def _find(static: Path, stem: str) -> Path | None:
    """The file of this name, plain or gzipped; whatever is there (a FIFO, a broken link) is
    returned so that reading it reports it, instead of being taken for a missing file."""
    for name in (stem, f"{stem}.gz"):
        if os.path.lexists(static / name):
            return static / name
    return None


def list_mnist_statics(static: Path) -> tuple[StaticItems, list[tuple[str, str]]]:
    """StaticItems of the IDX pairs present in ``static`` (see the module docstring for splits)."""
    pairs = {
        prefix: (_find(static, f"{prefix}-images-idx3-ubyte"), _find(static, f"{prefix}-labels-idx1-ubyte"))
        for prefix in ("train", "t10k")
    }
    only_t10k = pairs["train"] == (None, None)
    parts: list[StaticItems] = []
    bad: list[tuple[str, str]] = []
    for prefix, (images_path, labels_path) in pairs.items():
        if images_path is None and labels_path is None:
            continue
        if images_path is None or labels_path is None:
            present = images_path or labels_path
            bad.append(
                (
                    present.name,
                    f"the matching {prefix} {'labels' if labels_path is None else 'images'} file is missing",
                )
            )
            continue
        try:
            shape = idx_shape(images_path)  # the images are read by the workers, shard by shard
            labels = read_idx(labels_path)
        except BadInput as err:
            bad.append((Path(err.path).name, err.reason))
            continue
        if len(shape) != 3 or labels.ndim != 1 or shape[0] != len(labels):
            bad.append((images_path.name, f"images {shape} do not match labels {labels.shape}"))
            continue
        if len(labels) and (labels.min() < 0 or labels.max() > 9):
            bad.append((labels_path.name, "labels outside 0..9"))
            continue
        split = "train" if prefix == "train" or only_t10k else "test"
        parts.append(StaticItems.of_file(images_path.name, labels, split))
    return StaticItems.concat(parts), bad


@dataclass
class NMNISTSource(SplitParams):
    test_fraction: float = 0.0  # the download fixes the test split
    name: str = "nmnist"
    published_split = "published Train/Test folders"
    #: one recording per MNIST image: 60,000 train and 10,000 test (the counts tonic's NMNIST checks
    #: for); per digit in Test, the MNIST test set's label counts (read from the real t10k labels file)
    published = PublishedCounts(
        "N-MNIST: one recording per MNIST image",
        per_split={"train": 60000, "test": 10000},
        per_class={"test": dict(zip(NMNIST_CLASSES, MNIST_TEST_PER_DIGIT, strict=True))},
    )

    def list(self, raw: Path, static: Path | None) -> Listing:
        raw = require_dir(raw)
        events: list[EventItem] = []
        for folder, split in EVENT_FOLDERS:
            events += class_folder_events(raw, raw / folder, NMNIST_CLASSES, (".bin",), split)
        statics, bad = [], []
        if static is not None:
            statics, bad = list_mnist_statics(require_dir(static, "static folder"))
        return Listing(classes=list(NMNIST_CLASSES), events=events, statics=statics, bad_statics=bad)

    def default_static(self, raw: Path) -> Path | None:
        """Static root to use when none is given: this layout keeps none inside ``raw``."""
        return None

    def decode(self, raw: Path, item: EventItem) -> tuple[np.ndarray, tuple[int, int]]:
        return read_nmnist(Path(raw) / item.path, NMNIST_SENSOR_SIZE), NMNIST_SENSOR_SIZE

    def load_static(self, static: Path, item: StaticItem) -> np.ndarray:
        return self.load_statics(static, [item])[0]

    def load_statics(self, static: Path, items: Sequence[StaticItem]) -> list[np.ndarray]:
        """The images of ``items`` (one IDX file): a plain file is read only from the first to the
        last of them, a gzipped one inflated once per process (`read_idx_cached`)."""
        path = Path(static) / items[0].path
        if is_gzip(path):
            images = read_idx_cached(path)
            self._index_range(path, items, len(images))
            first = 0
        else:
            first, last = self._index_range(path, items, idx_shape(path)[0])
            images = read_idx_rows(path, first, last)
        return [np.ascontiguousarray(images[item.index - first], dtype=np.uint8) for item in items]

    def static_shapes(self, static: Path, items: Sequence[StaticItem]) -> list[tuple[int, ...]]:
        """From the IDX header: ``[H, W]`` for every item (the listing checked the file holds 3 axes)."""
        path = Path(static) / items[0].path
        shape = idx_shape(path)
        self._index_range(path, items, shape[0])
        return [tuple(shape[1:])] * len(items)

    @staticmethod
    def _index_range(path: Path, items: Sequence[StaticItem], count: int) -> tuple[int, int]:
        """``[first, last)`` of the items' entries, each checked to be one of the ``count`` stored."""
        indices = [item.index for item in items]
        first, last = min(indices), max(indices) + 1
        if first < 0 or last > count:
            bad = next(i for i in indices if not 0 <= i < count)
            raise BadInput(path, f"index {bad} outside {count} images")
        return first, last
