"""Stage 2 of a build, on the Dask workers: hash, decode or reuse, bin to frames, quarantine bad files.

Workers return arrays in memory (`BatchResult`); the write stage moves them into the store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.binning import frames_of
from pipelines.build.plan import BuildPlan, Work, content_digest, previous_reader
from pipelines.errors import BadInput
from pipelines.formats import READERS_VERSION
from pipelines.sources.base import EventItem
from storage.schema import EVENT_DTYPE
from storage.verify import events_digest


@dataclass
class BatchResult:
    rows: list[dict[str, Any]]  # manifest rows, in work order
    events: dict[str, np.ndarray]  # field -> the good recordings' values, concatenated
    counts: np.ndarray  # events per good recording
    sensors: np.ndarray  # [n_good, 2] (width, height)
    frames: dict[str, np.ndarray]  # key -> [samples, T, 2, H, W]
    samples: dict[str, np.ndarray]  # key -> samples per good recording (1 unless the spec slices)

    def meta(self) -> dict[str, Any]:
        return {"rows": self.rows, "counts": self.counts, "sensors": self.sensors, "samples": self.samples}

    def output(self, kind: str) -> dict[str, np.ndarray]:
        """The arrays of one kind of output: "events" (by field) or "frames" (by frame key).

        The write stage keeps each kind as a Dask result of its own: a shard of events then needs
        only the events of its batches in memory, not their frames too (and the other way round),
        so a worker's memory is bounded by the shard sizes, not by how many batches a shard spans.
        """
        return self.events if kind == "events" else self.frames


def hash_batch(plan: BuildPlan, indices: Sequence[int]) -> list[dict[str, Any]]:
    """Manifest rows (size, mtime, content hash) of one batch: enough to tell what changed. A file
    whose size and mtime match its previous row is not read (see `content_digest`)."""
    raw = Path(plan.config.raw)
    return [_manifest_row(raw, plan.work[i], plan.config.rehash) for i in indices]


def stat_batch(plan: BuildPlan, indices: Sequence[int]) -> list[dict[str, Any]] | None:
    """`hash_batch`'s rows when stat alone vouches for every file of the batch (none is read), else
    None. Cheap enough for the coordinator: a no-op refresh of 12,000 files sends no task to Dask."""
    raw = Path(plan.config.raw)
    rows = [_manifest_row(raw, plan.work[i], plan.config.rehash, read=False) for i in indices]
    return None if any(row["sha256"] is None for row in rows) else rows


def process_batch(
    plan: BuildPlan, indices: Sequence[int], hashed: list[dict[str, Any]] | None = None
) -> BatchResult:
    """Decode or reuse, and bin one batch of recordings. Bad files become quarantine rows.

    ``hashed``: the batch's rows from `hash_batch`; a first build passes none and hashes here, so
    that each file is read in one task instead of in two rounds.
    """
    source = plan.config.source_adapter()
    raw = Path(plan.config.raw)
    hashed = hashed if hashed is not None else hash_batch(plan, indices)
    rows, events, sensors = [], [], []
    frames: dict[str, list[np.ndarray]] = {spec.key: [] for spec in plan.specs}
    work = [plan.work[i] for i in indices]
    previous = _PreviousBatch.read(plan, work, hashed)
    for w, hashed_row in zip(work, hashed, strict=True):
        row = dict(hashed_row)
        reused = previous.reuse(w, row)
        if reused is not None:
            ev, sensor = reused
            row["action"] = "reused"
        elif row["status"] == "ok":
            ev, sensor = _decode(source, raw, w.item, row)
            row["action"] = "decoded"
        if row["status"] != "ok":
            rows.append(row)
            continue
        row["events"] = len(ev)
        # a reused recording's events are the previous snapshot's, whose digest its row recorded
        previous_hash = w.previous.get("data_hash") if reused is not None else None
        row["data_hash"] = previous_hash or events_digest(ev)
        for spec in plan.specs:
            old = previous.frames.get(spec.key, {}).get(w.previous_index) if reused is not None else None
            frames[spec.key].append(old[None] if old is not None else frames_of(ev, sensor, spec))
        rows.append(row)
        events.append(ev)
        sensors.append(sensor)
    spec_shape = {s.key: (s.time_bins, 2, *s.size) for s in plan.specs}
    # field by field: concatenating structured arrays then splitting them costs five times more
    return BatchResult(
        rows=rows,
        events={
            name: np.concatenate([e[name] for e in events]) if events else np.empty(0, EVENT_DTYPE[name])
            for name in EVENT_DTYPE.names
        },
        counts=np.array([len(e) for e in events], dtype=np.int64),
        sensors=np.array(sensors, dtype=np.int64).reshape(-1, 2),
        frames={
            k: np.concatenate(v) if v else np.zeros((0, *spec_shape[k]), np.uint16) for k, v in frames.items()
        },
        samples={k: np.array([len(f) for f in v], dtype=np.int64) for k, v in frames.items()},
    )


@dataclass
class _PreviousBatch:
    """What one batch reuses from the previous snapshot, read in bulk: each Zarr call costs
    milliseconds, so events come as one range and frames as one selection per key."""

    events: dict[int, np.ndarray] = field(default_factory=dict)
    sensors: dict[int, tuple[int, int]] = field(default_factory=dict)
    frames: dict[str, dict[int, np.ndarray]] = field(default_factory=dict)

    @classmethod
    def read(cls, plan: BuildPlan, work: list[Work], hashed: list[dict[str, Any]]) -> _PreviousBatch:
        wanted = sorted(
            w.previous_index
            for w, row in zip(work, hashed, strict=True)
            if w.unchanged(row)
            and w.previous["status"] == "ok"
            and row["status"] == "ok"
            and w.previous_index is not None
        )
        if not wanted:
            return cls()
        previous = previous_reader(plan.config.store, plan.previous_snapshot)
        offsets = previous.offsets
        events = {}
        for run in _runs(wanted):
            first, last = int(offsets[run[0]]), int(offsets[run[-1] + 1])
            block = previous.events_range(first, last)
            events.update({i: block[offsets[i] - first : offsets[i + 1] - first] for i in run})
        have = previous.frame_keys()
        index = np.array(wanted)
        return cls(
            events=events,
            sensors={i: tuple(int(v) for v in previous.sensor_sizes[i]) for i in wanted},
            frames={
                spec.key: dict(zip(wanted, previous.event_frames(spec.key, index), strict=True))
                for spec in plan.specs
                if spec.key in have and not spec.slices  # sliced frames are binned again
            },
        )

    def reuse(self, w: Work, row: dict[str, Any]) -> tuple[np.ndarray, tuple[int, int]] | None:
        """Events of an unchanged recording; an unchanged known-bad file is quarantined again."""
        if not w.unchanged(row):
            return None
        if w.previous["status"] != "ok":
            if row["status"] == "ok":
                row.update(status="quarantined", reason=w.previous["reason"])
            return None
        if w.previous_index not in self.events:
            return None
        return self.events[w.previous_index], self.sensors[w.previous_index]


#: Previous recordings of a batch further apart than this are read as separate ranges: a store
#: written before `store_order` holds a batch's recordings all over it, and one range from the
#: first to the last would be the whole store, for every batch.
MAX_GAP = 8


def _runs(indices: list[int]) -> list[list[int]]:
    """Sorted ``indices`` cut where two neighbours are more than `MAX_GAP` apart."""
    cuts = [k for k in range(1, len(indices)) if indices[k] - indices[k - 1] > MAX_GAP]
    return [indices[a:b] for a, b in zip([0, *cuts], [*cuts, len(indices)], strict=True)]


def _manifest_row(raw: Path, w: Work, rehash: bool, read: bool = True) -> dict[str, Any]:
    item = w.item
    row: dict[str, Any] = {
        "path": item.path,
        "kind": "events",
        "label": item.label,
        "split": w.split,
        "status": "ok",
        "reason": "",
        "file": item.raw_file,
        "readers": READERS_VERSION,
    }
    if item.reason:  # bad from the listing: the path may be a FIFO (opening it blocks) or a loop
        row.update(size=0, sha256="", status="quarantined", reason=item.reason)
        return row
    try:
        row.update(content_digest(raw / item.raw_file, w.previous, rehash, read))
    except OSError as err:
        row.update(size=0, sha256="", status="quarantined", reason=f"unreadable: {err.strerror or err}")
    return row


def _decode(source: Any, raw: Path, item: EventItem, row: dict[str, Any]) -> tuple[np.ndarray, Any]:
    try:
        events, sensor = source.decode(raw, item)
    except BadInput as err:
        row.update(status="quarantined", reason=err.reason)
        return np.empty(0, EVENT_DTYPE), (0, 0)
    except Exception as err:  # a reader bug must not cost the rest of the build: quarantine, named
        row.update(status="quarantined", reason=f"unexpected {type(err).__name__}: {err}")
        return np.empty(0, EVENT_DTYPE), (0, 0)
    if len(events) == 0:
        row.update(status="quarantined", reason="empty recording (no events)")
    return events, sensor


def probe_statics(plan: BuildPlan, files: Sequence[tuple[str, np.ndarray]]) -> dict[str, Any]:
    """The manifest rows of some static files and the sizes of their good images, but no pixels:
    what the coordinator needs to lay the images out before the workers write them (`write.py`).

    ``files``: each file with the indices of its items in ``plan.statics``. A file that cannot be
    read whole is quarantined here, so that the rows the writers fill are known before they start.
    Returns ``rows``, ``sizes`` (the distinct ``(H, W)``) and ``color`` (any image has 3 channels).
    """
    source = plan.config.source_adapter()
    root = static_root(plan)
    rows, sizes, color = [], set(), False
    for path, indices in files:
        row = {"path": path, "kind": "static", "status": "ok", "reason": "", "items": len(indices)}
        try:
            row.update(content_digest(root / path, None, True))
            shapes = source.static_shapes(root, [plan.statics[i] for i in indices])
        except BadInput as err:
            row.update(status="quarantined", reason=err.reason)
        except OSError as err:
            row.update(status="quarantined", reason=f"unreadable: {err.strerror or err}")
        else:
            sizes |= {shape[:2] for shape in shapes}
            color = color or any(len(shape) == 3 for shape in shapes)
        row.setdefault("size", 0)
        row.setdefault("sha256", "")
        rows.append(row)
    return {"rows": rows, "sizes": sizes, "color": color}


def load_static_rows(plan: BuildPlan, indices: np.ndarray) -> list[np.ndarray]:
    """The images of ``plan.statics[indices]`` in that order, as loaded: each run of items of one
    file in one call, so that a container is read once and only where the run lies."""
    source = plan.config.source_adapter()
    root = static_root(plan)
    items = [plan.statics[i] for i in indices]
    images: list[np.ndarray] = []
    start = 0
    for end in range(1, len(items) + 1):
        if end == len(items) or items[end].path != items[start].path:
            images += source.load_statics(root, items[start:end])
            start = end
    return images


def static_root(plan: BuildPlan) -> Path:
    """The folder static paths are relative to: the static folder, else the raw one (built-in)."""
    return Path(plan.config.static) if plan.config.static else Path(plan.config.raw)
