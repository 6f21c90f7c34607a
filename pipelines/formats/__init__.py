"""Readers and bit-exact writers for the raw event and image formats of the supported datasets.

Every event reader returns a structured array of ``storage.schema.EVENT_DTYPE`` (x, y, t in
microseconds, p in {0, 1}) in file order, and raises ``pipelines.errors.BadInput`` naming
the file for anything it cannot trust. A valid file with no events gives an empty array.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.formats._common import check_regular, check_sensor_size
from pipelines.formats.aedat2 import read_aedat2, write_aedat2
from pipelines.formats.aedat3 import read_aedat31, read_gesture_labels, write_aedat31
from pipelines.formats.aedat4 import read_aedat4, write_aedat4
from pipelines.formats.cifar import read_cifar_batch, read_cifar_meta, write_cifar_batch, write_cifar_meta
from pipelines.formats.idx import read_idx, write_idx
from pipelines.formats.images import read_image
from pipelines.formats.nmnist import read_nmnist, write_nmnist
from pipelines.formats.prophesee import read_prophesee_dat, read_prophesee_raw

EVENT_SUFFIXES: tuple[str, ...] = (".bin", ".aedat", ".aedat4", ".dat", ".raw")
#: bumped whenever a reader gives other events for the same file, so that a refresh decodes such
#: files again instead of reusing what older code decoded (2: AEDAT 2.0 DVS128 files in the
#: camera's image coordinates instead of CIFAR10-DVS's turned view)
READERS_VERSION = 2
IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")

__all__ = [
    "EVENT_SUFFIXES",
    "READERS_VERSION",
    "IMAGE_SUFFIXES",
    "read_events",
    "read_nmnist",
    "write_nmnist",
    "read_aedat2",
    "write_aedat2",
    "read_aedat31",
    "write_aedat31",
    "read_gesture_labels",
    "read_aedat4",
    "write_aedat4",
    "read_prophesee_dat",
    "read_prophesee_raw",
    "read_idx",
    "write_idx",
    "read_cifar_batch",
    "write_cifar_batch",
    "read_cifar_meta",
    "write_cifar_meta",
    "read_image",
]


def _read_bin(path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """N-MNIST style: the file has no sensor size, so it is the extent of the events."""
    events = read_nmnist(path)
    if len(events) == 0:
        return events, (0, 0)
    return events, (int(events["x"].max()) + 1, int(events["y"].max()) + 1)


def _read_aedat(path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """``.aedat`` holds AEDAT 2.0 or 3.1: the version line at the top decides."""
    check_regular(path)
    try:
        with open(path, "rb") as f:
            first = f.readline(64).rstrip(b"\r\n")
    except OSError as err:
        raise BadInput(path, f"cannot read file: {err.strerror or err}") from err
    if first == b"#!AER-DAT2.0":
        return read_aedat2(path)
    if first == b"#!AER-DAT3.1":
        return read_aedat31(path)
    raise BadInput(path, f"unsupported .aedat version line {first[:20]!r} (expected AER-DAT2.0 or 3.1)")


READERS = {
    ".bin": _read_bin,
    ".aedat": _read_aedat,
    ".aedat4": read_aedat4,
    ".dat": read_prophesee_dat,
    ".raw": read_prophesee_raw,
}


def read_events(path: str | Path) -> tuple[np.ndarray, tuple[int, int]]:
    """Events and sensor size ``(width, height)`` of any supported event file, by its suffix.

    The sensor size is checked here once more, whatever the reader: the store keeps it as uint16.
    """
    reader = READERS.get(Path(path).suffix.lower())
    if reader is None:
        raise BadInput(
            path, f"unsupported event file suffix {Path(path).suffix!r}; expected {EVENT_SUFFIXES}"
        )
    events, sensor_size = reader(path)
    return events, check_sensor_size(path, sensor_size)
