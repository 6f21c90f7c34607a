"""CIFAR-10 "python version" batches (``data_batch_1..5``, ``test_batch``, ``batches.meta``).

Each batch is a pickled dict with bytes keys: ``b"data"`` a uint8 array ``[N, 3072]`` (the
1024 red, then green, then blue values of each 32x32 image, row-major) and ``b"labels"`` a
list of N ints. ``batches.meta`` holds ``b"label_names"``.

Trust: a pickle can run code while loading. These files come from the dataset's official
download, checked by the build's content hash, and they are loaded with an unpickler that
only lets through the few numpy names an array needs, so a tampered file fails to load
(as ``BadInput``) instead of running anything. A pickle is also a tiny program that can
describe far more than its size: memo slots at huge indices (CPython's unpickler grows and
zeroes its memo table up to the index), arrays created at a declared shape, lists of lists
that share one another (103 KB of them make gigabytes once numpy expands them). So the
opcodes are scanned before loading, only numpy's own pickling path may create an array (an
empty one, then filled from bytes that are in the file), and the loaded values are checked
by type and length in plain Python before anything becomes a numpy array.
"""

from __future__ import annotations

import codecs
import io
import pickle
import pickletools
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.formats._common import read_bytes

IMAGE_SHAPE = (32, 32, 3)
#: memo slots a CIFAR batch uses (one per label name or file name); larger indices are an attack
MAX_MEMO_INDEX = 1 << 20
#: labels are class indices, stored as int16
MAX_LABEL = 2**15 - 1
#: ``batches.meta``: at most this many class names of at most this many characters
MAX_NAMES, MAX_NAME_LENGTH = 1000, 200
MEMO_OPCODES = {"PUT", "BINPUT", "LONG_BINPUT"}


class _NdarrayClass:
    """Stands for ``numpy.ndarray`` inside a pickle: it may be named, never called."""


def _reconstruct(subtype: object, shape: object, dtype: object) -> np.ndarray:
    """numpy's pickling path: an empty array that ``__setstate__`` then fills from the file's bytes."""
    if subtype is not _NdarrayClass or shape != (0,):
        raise pickle.UnpicklingError("arrays may only be built empty, as numpy's own pickles do")
    return np.ndarray((0,), dtype=np.dtype(dtype))


def _latin1(text: str, encoding: str) -> bytes:
    """``_codecs.encode`` as protocol 2 uses it: array bytes stored as a latin-1 string."""
    if codecs.lookup(encoding).name != "iso8859-1":
        raise pickle.UnpicklingError(f"refusing codec {encoding!r}")
    return codecs.encode(text, "latin-1")


#: the only globals a CIFAR batch pickle needs (old and new numpy module paths)
ALLOWED_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy._core.multiarray", "_reconstruct"): _reconstruct,
    ("numpy", "ndarray"): _NdarrayClass,
    ("numpy", "dtype"): np.dtype,
    ("_codecs", "encode"): _latin1,
}


class _ArrayOnlyUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str):
        try:
            return ALLOWED_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load global {module}.{name}") from None


def _scan(raw: bytes) -> None:
    """Walk the opcodes without running them: a malformed stream or a huge memo index is refused."""
    for opcode, arg, _ in pickletools.genops(raw):
        if opcode.name in MEMO_OPCODES and int(arg) > MAX_MEMO_INDEX:
            raise pickle.UnpicklingError(f"memo index {arg} is larger than {MAX_MEMO_INDEX}")


def _load(path: str | Path) -> dict:
    raw = read_bytes(path)
    try:
        _scan(raw)
        content = _ArrayOnlyUnpickler(io.BytesIO(raw), encoding="bytes").load()
    except Exception as err:  # any unpickling failure means an unusable file
        raise BadInput(path, f"not a readable CIFAR pickle: {err}") from err
    if not isinstance(content, dict):
        raise BadInput(path, f"expected a pickled dict, found {type(content).__name__}")
    return content


def _checked_labels(path: str | Path, labels: object, count: int) -> np.ndarray:
    """``count`` plain ints in ``0..MAX_LABEL``, checked before numpy sees them."""
    if type(labels) is not list or len(labels) != count:
        found = type(labels).__name__ + (f" of {len(labels)}" if isinstance(labels, list) else "")
        raise BadInput(path, f"labels must be a list of {count} ints (one per image), found {found}")
    if not all(type(v) is int and 0 <= v <= MAX_LABEL for v in labels):
        raise BadInput(path, f"labels must be ints in 0..{MAX_LABEL}")
    return np.array(labels, dtype=np.int64)


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Images as uint8 ``[N, 32, 32, 3]`` (HWC) and labels as int64 ``[N]``."""
    content = _load(path)
    if b"data" not in content or b"labels" not in content:
        raise BadInput(path, "CIFAR batch lacks b'data' or b'labels'")
    data = content[b"data"]
    if type(data) is not np.ndarray or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        found = f"{data.dtype}{data.shape}" if isinstance(data, np.ndarray) else type(data).__name__
        raise BadInput(path, f"data must be a uint8 [N, 3072] array of 32x32x3 images, found {found}")
    labels = _checked_labels(path, content[b"labels"], len(data))
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
    if (
        type(names) is not list
        or not 0 < len(names) <= MAX_NAMES
        or not all(type(n) in (bytes, str) and len(n) <= MAX_NAME_LENGTH for n in names)
    ):
        raise BadInput(path, f"b'label_names' must be a list of 1..{MAX_NAMES} short names")
    try:
        return [n.decode() if isinstance(n, bytes) else n for n in names]
    except UnicodeDecodeError as err:
        raise BadInput(path, f"b'label_names' holds a name that is not UTF-8: {err}") from None


def write_cifar_meta(path: str | Path, label_names: list[str]) -> None:
    content = {
        b"label_names": [n.encode() for n in label_names],
        b"num_cases_per_batch": 10000,
        b"num_vis": 3072,
    }
    Path(path).write_bytes(pickle.dumps(content, protocol=2))
