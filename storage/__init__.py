"""The dataset store: schema, versions, writers and readers.

Knows nothing of Prefect, Dask or torch, so every other package can depend on it.
"""

from storage.reader import DatasetReader, open_store
from storage.schema import EVENT_DTYPE, SPLITS, FrameSpec

__all__ = ["EVENT_DTYPE", "SPLITS", "DatasetReader", "FrameSpec", "open_store"]
