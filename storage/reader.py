"""Read one snapshot of a store: recordings, images, frames, manifest and report.

Reads are bulk: the hot loop of training never calls into Zarr per sample (DESIGN 9).
"""

from __future__ import annotations

from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np
import zarr

from storage.repo import BRANCH, CorruptStore, StoreNotFound, open_repository, unreadable_snapshot
from storage.schema import EVENT_DTYPE, SPLITS, FrameSpec


def open_store(path: str | Path, snapshot: str | None = None) -> DatasetReader:
    """Open a store read-only at ``snapshot`` (the latest when None): the entry for Python users."""
    return DatasetReader(path, snapshot)


class DatasetReader:
    """A read-only view of one snapshot (the latest when ``snapshot`` is None)."""

    def __init__(self, path: str | Path, snapshot: str | None = None) -> None:
        self.path = path
        self.repo = open_repository(path)
        try:
            session = (
                self.repo.readonly_session(snapshot_id=snapshot)
                if snapshot
                else self.repo.readonly_session(branch=BRANCH)
            )
        except Exception as err:
            raise StoreNotFound(f"{path}: no snapshot {snapshot!r} ({err})") from err
        #: the Icechunk session of the snapshot: ``session.store`` is a Zarr store (xarray, zarr)
        self.session = session
        self.snapshot_id: str = session.snapshot_id
        try:
            self.root = zarr.open_group(session.store, mode="r")
        except zarr.errors.GroupNotFoundError:
            self.root = None
        if self.root is None or "events" not in self.root:
            damage = unreadable_snapshot(self.repo, self.snapshot_id)
            if damage:
                raise CorruptStore(f"{path}: snapshot {self.snapshot_id} cannot be read: {damage}")
            raise StoreNotFound(f"{path}: snapshot {self.snapshot_id} holds no dataset yet")

    # -- dataset-wide attributes -------------------------------------------------------------
    @cached_property
    def attrs(self) -> dict[str, Any]:
        return self.root.attrs.asdict()

    @property
    def classes(self) -> list[str]:
        return list(self.attrs["classes"])

    @property
    def build_params(self) -> dict[str, Any]:
        return dict(self.attrs.get("build_params", {}))

    # -- recordings --------------------------------------------------------------------------
    @cached_property
    def offsets(self) -> np.ndarray:
        return self.root["events/offsets"][:]

    @cached_property
    def labels(self) -> np.ndarray:
        return self.root["events/label"][:].astype(np.int64)

    @cached_property
    def splits(self) -> np.ndarray:
        return self.root["events/split"][:]

    @cached_property
    def sensor_sizes(self) -> np.ndarray:
        """``[N, 2]`` (width, height) of each recording's sensor."""
        return np.stack([self.root["events/width"][:], self.root["events/height"][:]], axis=1)

    @cached_property
    def sources(self) -> list[str]:
        return list(self.attrs["recording_sources"])

    @property
    def n_recordings(self) -> int:
        return len(self.offsets) - 1

    @property
    def n_events(self) -> int:
        return int(self.offsets[-1])

    def split_indices(self, split: str) -> np.ndarray:
        return np.flatnonzero(self.splits == SPLITS.index(split))

    def events(self, index: int) -> np.ndarray:
        """One recording's events, exactly as decoded."""
        start, stop = int(self.offsets[index]), int(self.offsets[index + 1])
        return self.events_range(start, stop)

    def events_range(self, start: int, stop: int) -> np.ndarray:
        out = np.empty(stop - start, dtype=EVENT_DTYPE)
        for name in EVENT_DTYPE.names:
            out[name] = self.root[f"events/{name}"][start:stop]
        return out

    # -- static images -----------------------------------------------------------------------
    @cached_property
    def image_labels(self) -> np.ndarray:
        return self.root["images/label"][:].astype(np.int64)

    @cached_property
    def image_splits(self) -> np.ndarray:
        return self.root["images/split"][:]

    @property
    def n_images(self) -> int:
        return int(self.root["images/label"].shape[0])

    def images(self) -> np.ndarray:
        return self.root["images/data"][:]

    # -- derived frames ----------------------------------------------------------------------
    def frame_keys(self) -> dict[str, FrameSpec]:
        if "frames" not in self.root:
            return {}
        return {
            key: FrameSpec.from_attrs(group.attrs.asdict()) for key, group in self.root["frames"].groups()
        }

    def default_frame_key(self) -> str:
        key = self.attrs.get("frames_key")
        if not key:
            raise KeyError(f"{self.path}: the store records no default frame representation")
        return key

    def _frames_group(self, key: str | None) -> zarr.Group:
        key = key or self.default_frame_key()
        if "frames" not in self.root or key not in self.root["frames"]:
            raise KeyError(f"{self.path}: no frames with key {key!r}; have {sorted(self.frame_keys())}")
        return self.root["frames"][key]

    def frame_spec(self, key: str | None = None) -> FrameSpec:
        return FrameSpec.from_attrs(self._frames_group(key).attrs.asdict())

    def event_frames(self, key: str | None = None, indices: np.ndarray | None = None) -> np.ndarray:
        """uint16 ``[N, T, 2, H, W]`` binned counts (all recordings, or ``indices``)."""
        array = self._frames_group(key)["events"]
        return array[:] if indices is None else array.get_orthogonal_selection((np.asarray(indices),))

    def static_frames(self, key: str | None = None) -> np.ndarray:
        """uint8 ``[M, H, W]`` static images at the frames' size."""
        return self._frames_group(key)["static"][:]

    # -- provenance --------------------------------------------------------------------------
    @cached_property
    def manifest(self) -> list[dict[str, Any]]:
        return list(self.root["manifest"].attrs["rows"])

    @cached_property
    def report(self) -> dict[str, Any]:
        return dict(self.root["report"].attrs.asdict())

    def history(self) -> list[dict[str, Any]]:
        """Snapshots of the branch, newest first."""
        return [
            {"id": s.id, "message": s.message, "written_at": s.written_at.isoformat()}
            for s in self.repo.ancestry(branch=BRANCH)
        ]

    def info(self) -> dict[str, Any]:
        frames = {}
        for key, spec in self.frame_keys().items():
            group = self.root["frames"][key]
            frames[key] = {
                "events_shape": list(group["events"].shape),
                "static_shape": list(group["static"].shape),
                "spec": spec.to_attrs(),
            }
        split_counts = {name: int((self.splits == i).sum()) for i, name in enumerate(SPLITS)}
        return {
            "path": str(self.path),
            "snapshot": self.snapshot_id,
            "source": self.attrs.get("source"),
            "classes": self.classes,
            "recordings": self.n_recordings,
            "events": self.n_events,
            "images": self.n_images,
            "splits": split_counts,
            "quarantined": [r for r in self.manifest if r["status"] == "quarantined"],
            "frames": frames,
            "frames_key": self.attrs.get("frames_key"),
            "split_rule": self.attrs.get("split_rule"),
            "report": self.report,
        }
