"""The dataset store: schema, versions, writers and readers.

Knows nothing of Prefect, Dask or torch, so every other package can depend on it. The reader (and
with it zarr and icechunk, a quarter of a second) is imported on first use of ``open_store`` or
``DatasetReader``, so that importing ``storage.schema`` for a constant costs nothing.
"""

from typing import TYPE_CHECKING, Any

from storage.schema import EVENT_DTYPE, SPLITS, FrameSpec

if TYPE_CHECKING:
    from storage.reader import DatasetReader, open_store

__all__ = ["EVENT_DTYPE", "SPLITS", "DatasetReader", "FrameSpec", "open_store"]


def __getattr__(name: str) -> Any:
    if name in ("DatasetReader", "open_store"):
        from storage import reader

        return getattr(reader, name)
    raise AttributeError(f"module 'storage' has no attribute {name!r}")
