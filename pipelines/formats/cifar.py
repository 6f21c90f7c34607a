"""CIFAR-10 "python version" batches (``data_batch_1..5``, ``test_batch``, ``batches.meta``).

Each batch is a pickled dict with bytes keys: ``b"data"`` a uint8 array ``[N, 3072]`` (the
1024 red, then green, then blue values of each 32x32 image, row-major) and ``b"labels"`` a
list of N ints. ``batches.meta`` holds ``b"label_names"``.

Trust: a pickle can run code while loading. These files come from the dataset's official
download, checked by the build's content hash, and they are loaded with an unpickler that
only lets through the few numpy names an array needs, so a tampered file fails to load
(as ``BadInput``) instead of running anything.
"""

from __future__ import annotations

import io
import pickle
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.formats._common import read_bytes

IMAGE_SHAPE = (32, 32, 3)
#: the only globals a CIFAR batch pickle needs (old and new numpy module paths)
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        if (module, name) not in ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}")
        return super().find_class(module, name)


def _load(path: str | Path) -> dict:
    raw = read_bytes(path)
    try:
        content = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # any unpickling failure means an unusable file
        raise BadInput(path, f"not a readable CIFAR pickle: {err}") from err
    if not isinstance(content, dict):
        raise BadInput(path, f"expected a pickled dict, found {type(content).__name__}")
    return content


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 ``[N, 32, 32, 3]`` (HWC) and labels as int64 ``[N]``."""
    content = _load(path)
    if b"data" not in content or b"labels" not in content:
        raise BadInput(path, "CIFAR batch lacks b'data' or b'labels'")
    data = np.asarray(content[b"data"])
    labels = np.asarray(content[b"labels"], dtype=np.int64)
    if data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(labels):
        raise BadInput(path, f"data {data.dtype}{data.shape} does not match {len(labels)} 32x32x3 images")
    images = data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(images), labels


def write_cifar_batch(path: str | Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write a batch in the download's layout (pickle protocol 2, bytes keys)."""
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.shape[1:] != IMAGE_SHAPE:
        raise ValueError(f"images must be uint8 [N, 32, 32, 3], got {images.dtype}{images.shape}")
    if len(labels) != len(images):
        raise ValueError("one label per image")
    content = {
        b"batch_label": b"tmkt batch",
        b"labels": [int(label) for label in labels],
        b"data": np.ascontiguousarray(images.transpose(0, 3, 1, 2)).reshape(len(images), 3072),
        b"filenames": [f"image_{i:05d}.png".encode() for i in range(len(images))],
    }
    Path(path).write_bytes(pickle.dumps(content, protocol=2))


def read_cifar_meta(path: str | Path) -> list[str]:
    """Class names from ``batches.meta``, in label order."""
    content = _load(path)
    names = content.get(b"label_names")
    if not isinstance(names, list) or not names:
        raise BadInput(path, "batches.meta lacks a list b'label_names'")
    return [n.decode() if isinstance(n, bytes) else str(n) for n in names]


def write_cifar_meta(path: str | Path, label_names: list[str]) -> None:
    content = {
        b"label_names": [n.encode() for n in label_names],
        b"num_cases_per_batch": 10000,
        b"num_vis": 3072,
    }
    Path(path).write_bytes(pickle.dumps(content, protocol=2))
