"""A dataset that needs no download: real digit images recorded by the DVS simulator.

The images are scikit-learn's ``load_digits`` (1797 real hand-written digits, 8x8, values 0..16),
scaled to 0..255 and upscaled to 28x28 with PIL bilinear like an MNIST digit; the simulator centres
them in a 34x34 sensor and records N-MNIST-like saccades. Per class the images are split by a seeded
permutation into two disjoint halves: the first half is recorded (``recordings_per_class`` of it)
and written as N-MNIST ``.bin`` files to ``raw/Train/<digit>/<index>.bin``; the second half is
written as PNG statics to ``raw/static/<digit>/<index>.png``. So, as with N-MNIST and the MNIST test
set, no static image is the same instance as a recording, and pairing is by class only.

``list()`` first materializes the folder when it is missing, incomplete or made with another
generator configuration (``raw/builtin.json`` records it, with every file's size); after that the
folder is read like any download, so the data flows through the same pipeline as real recordings:
events from ``raw/Train`` with no fixed split (no test set was published, so val and test are carved
per class), statics from ``raw/static`` unless a static folder is given. Without a static folder the
static paths are relative to ``raw`` (``static/<digit>/<index>.png``), so ``load_static(raw, item)``
reads them.
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import tempfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from pipelines.formats.images import read_image
from pipelines.formats.nmnist import read_nmnist, write_nmnist
from pipelines.images import static_frames
from pipelines.simulator import DvsSimulatorConfig, simulate
from pipelines.sources.base import EventItem, Listing, SplitParams, StaticItem
from pipelines.sources.folder import class_folder_events, class_folder_statics, require_dir

BUILTIN_CLASSES = [str(digit) for digit in range(10)]
MARKER = "builtin.json"
#: bump when the generator changes what it writes, so that old folders are regenerated
GENERATOR_VERSION = 1
IMAGE_SIZE = (28, 28)


@functools.lru_cache(maxsize=1)
def digit_images() -> tuple[np.ndarray, np.ndarray]:
    """``load_digits`` as uint8 ``[1797, 28, 28]`` (0..255, bilinear upscale) and int labels (read-only)."""
    from sklearn.datasets import load_digits  # imported here: only generation needs scikit-learn

    digits = load_digits()
    small = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    images, labels = static_frames(small, IMAGE_SIZE, "gray"), digits.target.astype(np.int64)
    images.flags.writeable = labels.flags.writeable = False  # shared by every caller of the cache
    return images, labels


def split_halves(labels: np.ndarray, seed: int) -> dict[int, tuple[np.ndarray, np.ndarray]]:
    """Per class: (indices to record, indices for statics), disjoint, from a seeded permutation."""
    halves = {}
    for label in range(len(BUILTIN_CLASSES)):
        order = np.random.default_rng([seed, label]).permutation(np.flatnonzero(labels == label))
        half = len(order) // 2
        halves[label] = (order[:half], order[half:])
    return halves


@dataclass
class BuiltinSource(SplitParams):
    recordings_per_class: int = 40
    seed: int = 0
    simulator: DvsSimulatorConfig = field(default_factory=DvsSimulatorConfig)
    name: str = "builtin"
    #: raw/Train mirrors the N-MNIST layout but fixes no split: no test set was published
    published_split = "no published split"

    def generator_config(self) -> dict:
        return {
            "generator": "sklearn load_digits -> 28x28 bilinear -> DVS simulator (N-MNIST saccades)",
            "version": GENERATOR_VERSION,
            "recordings_per_class": self.recordings_per_class,
            "seed": self.seed,
            "simulator": json.loads(json.dumps(asdict(self.simulator))),
        }

    def default_static(self, raw: Path) -> Path:
        """Root of the static paths of ``list(raw, None)``: ``raw`` (paths start with ``static/``)."""
        return Path(raw)

    def is_materialized(self, raw: Path) -> bool:
        marker = Path(raw) / MARKER
        try:
            recorded = json.loads(marker.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        files = recorded.pop("files", None)
        if recorded != self.generator_config() or not isinstance(files, dict):
            return False
        for rel, size in files.items():
            path = Path(raw) / rel
            if not path.is_file() or path.stat().st_size != size:
                return False
        return True

    def materialize(self, raw: Path) -> bool:
        """Write the folder unless it is complete and made by this configuration; True if written."""
        raw = Path(raw)
        if self.is_materialized(raw):
            return False
        images, labels = digit_images()
        halves = split_halves(labels, self.seed)
        smallest = min(len(record) for record, _ in halves.values())
        if not 1 <= self.recordings_per_class <= smallest:
            raise ValueError(
                f"recordings_per_class must be in 1..{smallest}, got {self.recordings_per_class}"
            )
        raw.mkdir(parents=True, exist_ok=True)
        # write beside the target, then swap in: a crash never leaves a half-written folder marked done
        with tempfile.TemporaryDirectory(prefix=".builtin-", dir=raw) as tmp:
            files = self._write(Path(tmp), images, halves)
            for sub in ("Train", "static"):
                shutil.rmtree(raw / sub, ignore_errors=True)
                os.replace(Path(tmp) / sub, raw / sub)
        marker = {**self.generator_config(), "files": files}
        tmp_marker = raw / f".{MARKER}.tmp"
        tmp_marker.write_text(json.dumps(marker, indent=1, sort_keys=True), encoding="utf-8")
        os.replace(tmp_marker, raw / MARKER)
        return True

    def _write(self, root: Path, images: np.ndarray, halves: dict) -> dict[str, int]:
        files = {}
        for label, (record, statics) in halves.items():
            for index in record[: self.recordings_per_class].tolist():
                events = simulate(images[index], self.simulator, np.random.default_rng([self.seed, index]))
                path = root / "Train" / str(label) / f"{index:04d}.bin"
                path.parent.mkdir(parents=True, exist_ok=True)
                write_nmnist(path, events)
                files[path.relative_to(root).as_posix()] = path.stat().st_size
            for index in statics.tolist():
                path = root / "static" / str(label) / f"{index:04d}.png"
                path.parent.mkdir(parents=True, exist_ok=True)
                Image.fromarray(images[index]).save(path, format="PNG")
                files[path.relative_to(root).as_posix()] = path.stat().st_size
        return dict(sorted(files.items()))

    def list(self, raw: Path, static: Path | None) -> Listing:
        raw = Path(raw)
        self.materialize(raw)
        events: list[EventItem] = class_folder_events(raw, raw / "Train", BUILTIN_CLASSES, (".bin",))
        # without a static folder the statics are raw/static/..., listed relative to raw like the events
        root = raw if static is None else require_dir(static, "static folder")
        base = raw / "static" if static is None else root
        statics: list[StaticItem]
        statics, bad = class_folder_statics(root, base, BUILTIN_CLASSES)
        return Listing(classes=list(BUILTIN_CLASSES), events=events, statics=statics, bad_statics=bad)

    def decode(self, raw: Path, item: EventItem) -> tuple[np.ndarray, tuple[int, int]]:
        sensor_size = self.simulator.sensor_size
        return read_nmnist(Path(raw) / item.path, sensor_size), sensor_size

    def load_static(self, static: Path, item: StaticItem) -> np.ndarray:
        return read_image(Path(static) / item.path)
