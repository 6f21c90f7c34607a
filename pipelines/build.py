"""Raw recordings and static images in, one new store snapshot out.

A build runs in stages that pass paths and ids, never arrays, so an orchestrator can wrap each:

1. `plan_build`: list the source, read the previous snapshot's manifest, assign splits, and cut the
   work into batches. A refresh and a full build are the same plan: a recording whose content hash
   is unchanged since the previous snapshot is *reused* (its events and frames are read back from
   that snapshot) instead of decoded, a changed or new one is decoded, a removed one is dropped.
2. `process_batch` (on Dask workers): hash, decode or reuse, bin to frames, quarantine bad files.
3. `write_snapshot`: lay the good recordings out flat, write whole shards from the workers into one
   Icechunk transaction, attach manifest and report, and commit once. Nothing is visible before
   the commit, so a killed build leaves the previous snapshot untouched.

When nothing changed (same files, same parameters, same frame keys) no commit is made.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import dask
import numpy as np

from pipelines.binning import bin_events
from pipelines.errors import BadInput
from pipelines.images import static_frames
from pipelines.sources import get_source
from pipelines.sources.base import EventItem, Listing, StaticItem
from pipelines.splits import DEFAULT_VAL_FRACTION, assign_splits
from storage.reader import DatasetReader
from storage.repo import StoreNotFound
from storage.schema import EVENT_DTYPE, SPLITS, FrameSpec
from storage.verify import events_digest, file_sha256
from storage.writer import Transaction

log = logging.getLogger("tmkt.build")

#: Network input size per source when ``--size`` is not given (the sizes used in the literature).
DEFAULT_SIZES = {
    "nmnist": (34, 34),
    "builtin": (34, 34),
    "cifar10dvs": (48, 48),
    "ncaltech101": (48, 48),
    "dvsgesture": (64, 64),
    "folder": (48, 48),
}
#: How statics meet the frame size when ``--static-fit`` is not given: N-MNIST showed each 28x28
#: digit at its own scale on a 34x34 sensor, so its statics are centred, not stretched.
DEFAULT_STATIC_FITS = {"nmnist": "pad", "builtin": "pad"}
#: Static images of uneven sizes (Caltech101) are stored resized to this size.
STATIC_STORE_SIZE = (128, 128)


class BuildError(RuntimeError):
    """A build that cannot produce a useful snapshot; nothing was committed."""


@dataclass
class BuildConfig:
    """Parameters of a build; they are recorded in the store and reused by refreshes."""

    source: str
    raw: str
    store: str
    static: str | None = None
    time_bins: int = 10
    size: tuple[int, int] | None = None
    mode: str = "time"
    denoise_us: int = 0
    static_mode: str = "gray"
    static_fit: str | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float | None = None
    seed: int = 0
    workers: int = 2
    dask_address: str | None = None
    max_bad_fraction: float = 0.1
    batch_size: int = 32
    #: options of the source adapter (its dataclass fields), e.g. {"recordings_per_class": 10} for builtin
    source_options: dict[str, Any] = field(default_factory=dict)

    def source_adapter(self) -> Any:
        """The source, with this build's split parameters: the adapter knows whether its download
        publishes a test split (then its default test fraction is 0) and describes the rule."""
        split = {"val_fraction": self.val_fraction, "split_seed": self.seed}
        if self.test_fraction is not None:
            split["test_fraction"] = self.test_fraction
        return get_source(self.source, **{**split, **self.source_options})

    def frame_spec(self) -> FrameSpec:
        size = self.size or DEFAULT_SIZES.get(self.source, (48, 48))
        fit = self.static_fit or DEFAULT_STATIC_FITS.get(self.source, "resize")
        return FrameSpec(self.time_bins, tuple(size), self.mode, self.denoise_us, self.static_mode, fit)

    def effective_test_fraction(self) -> float:
        return float(self.source_adapter().test_fraction)

    def data_params(self) -> dict[str, Any]:
        """What shapes the data (not where it is or how many workers made it)."""
        return {
            "source": self.source,
            "spec": self.frame_spec().to_attrs(),
            "val_fraction": self.val_fraction,
            "test_fraction": self.effective_test_fraction(),
            "seed": self.seed,
            "source_options": self.source_options,
        }


@dataclass
class Work:
    """One recording to produce, in store order."""

    item: EventItem
    split: str
    previous: dict[str, Any] | None = None  # its manifest row in the previous snapshot
    previous_index: int | None = None  # its row in the previous snapshot's events


@dataclass
class BuildPlan:
    config: BuildConfig
    classes: list[str]
    work: list[Work]
    statics: list[StaticItem]
    static_splits: list[str]
    bad_statics: list[tuple[str, str]]
    specs: list[FrameSpec]
    previous_snapshot: str | None
    reuse_statics: bool
    unchanged_params: bool
    removed: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def batches(self) -> list[list[int]]:
        size = max(1, self.config.batch_size)
        return [list(range(i, min(i + size, len(self.work)))) for i in range(0, len(self.work), size)]


@dataclass
class BuildResult:
    snapshot: str
    committed: bool
    report: dict[str, Any]


# --------------------------------------------------------------------------------------------
# 1. plan
# --------------------------------------------------------------------------------------------
def plan_build(config: BuildConfig) -> BuildPlan:
    started = time.perf_counter()
    source = config.source_adapter()
    raw = Path(config.raw)
    if config.source != "builtin" and not raw.is_dir():
        raise BuildError(f"raw folder not found: {raw}")
    static = Path(config.static) if config.static else None
    if static is not None and not static.exists():
        raise BuildError(f"static folder not found: {static}")
    listing: Listing = source.list(raw, static)
    if not listing.events:
        raise BuildError(f"{raw}: no recordings of source '{config.source}' found")

    previous = _open_previous(config.store)
    spec = config.frame_spec()
    specs = [spec]
    prev_rows: dict[str, dict[str, Any]] = {}
    prev_index: dict[str, int] = {}
    unchanged_params = False
    if previous is not None:
        prev_rows = {row["path"]: row for row in previous.manifest}
        prev_index = {path: i for i, path in enumerate(previous.sources)}
        # Refreshes keep every representation the store already has.
        specs += [s for k, s in previous.frame_keys().items() if k != spec.key]
        unchanged_params = previous.attrs.get("data_params") == _jsonable(config.data_params())

    labels = np.array([item.label for item in listing.events])
    splits = assign_splits(
        labels,
        [item.split for item in listing.events],
        config.val_fraction,
        config.effective_test_fraction(),
        config.seed,
        keys=[item.path for item in listing.events],
    )
    work = [
        Work(item, str(split), prev_rows.get(item.path), prev_index.get(item.path))
        for item, split in zip(listing.events, splits, strict=True)
    ]
    static_splits = [s.split or "train" for s in listing.statics]
    listed = {w.item.path for w in work} | {s.path for s in listing.statics}
    removed = sorted(p for p, row in prev_rows.items() if p not in listed and row.get("kind") == "events")
    plan = BuildPlan(
        config=config,
        classes=listing.classes,
        work=work,
        statics=listing.statics,
        static_splits=static_splits,
        bad_statics=listing.bad_statics,
        specs=specs,
        previous_snapshot=previous.snapshot_id if previous else None,
        reuse_statics=previous is not None and _statics_unchanged(previous, listing, static, specs),
        unchanged_params=unchanged_params,
        removed=removed,
    )
    plan.timings["plan"] = time.perf_counter() - started
    return plan


def _open_previous(store: str) -> DatasetReader | None:
    try:
        return DatasetReader(store)
    except StoreNotFound:
        return None


def _statics_unchanged(
    previous: DatasetReader, listing: Listing, static: Path | None, specs: list[FrameSpec]
) -> bool:
    """True when the static files hash as before and every wanted representation exists."""
    if static is None and listing.statics:
        return False
    old = {row["path"]: row["sha256"] for row in previous.manifest if row.get("kind") == "static"}
    files = sorted({item.path for item in listing.statics})
    if sorted(old) != files or not set(s.key for s in specs) <= set(previous.frame_keys()):
        return False
    root = static if static is not None else Path()
    return all(file_sha256(root / path) == old[path] for path in files)


# --------------------------------------------------------------------------------------------
# 2. process (runs on workers)
# --------------------------------------------------------------------------------------------
@dataclass
class BatchResult:
    rows: list[dict[str, Any]]  # manifest rows, in work order
    events: dict[str, np.ndarray]  # field -> the good recordings' values, concatenated
    counts: np.ndarray  # events per good recording
    sensors: np.ndarray  # [n_good, 2] (width, height)
    frames: dict[str, np.ndarray]  # key -> [n_good, T, 2, H, W]

    def meta(self) -> dict[str, Any]:
        return {"rows": self.rows, "counts": self.counts, "sensors": self.sensors}

    def part(self, name: str) -> np.ndarray:
        """The rows of one store array: "events/<field>" or "frames/<key>/events"."""
        kind, _, rest = name.partition("/")
        return self.events[rest] if kind == "events" else self.frames[rest.split("/")[0]]


def hash_batch(plan: BuildPlan, indices: Sequence[int]) -> list[dict[str, Any]]:
    """Manifest rows (size, content hash) of one batch: enough to tell what changed."""
    raw = Path(plan.config.raw)
    return [_manifest_row(raw, plan.work[i]) for i in indices]


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
        row["data_hash"] = events_digest(ev)
        for spec in plan.specs:
            old = previous.frames.get(spec.key, {}).get(w.previous_index) if reused is not None else None
            frames[spec.key].append(old if old is not None else bin_events(ev, sensor, spec))
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
        frames={k: np.stack(v) if v else np.zeros((0, *spec_shape[k]), np.uint16) for k, v in frames.items()},
    )


def _unchanged(w: Work, row: dict[str, Any]) -> bool:
    return w.previous is not None and w.previous.get("sha256") == row.get("sha256")


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
            if _unchanged(w, row)
            and w.previous["status"] == "ok"
            and row["status"] == "ok"
            and w.previous_index is not None
        )
        if not wanted:
            return cls()
        previous = _previous_reader(plan.config.store, plan.previous_snapshot)
        offsets = previous.offsets
        first, last = int(offsets[wanted[0]]), int(offsets[wanted[-1] + 1])
        block = previous.events_range(first, last)
        have = previous.frame_keys()
        index = np.array(wanted)
        return cls(
            events={i: block[offsets[i] - first : offsets[i + 1] - first] for i in wanted},
            sensors={i: tuple(int(v) for v in previous.sensor_sizes[i]) for i in wanted},
            frames={
                spec.key: dict(zip(wanted, previous.event_frames(spec.key, index), strict=True))
                for spec in plan.specs
                if spec.key in have
            },
        )

    def reuse(self, w: Work, row: dict[str, Any]) -> tuple[np.ndarray, tuple[int, int]] | None:
        """Events of an unchanged recording; an unchanged known-bad file is quarantined again."""
        if not _unchanged(w, row):
            return None
        if w.previous["status"] != "ok":
            if row["status"] == "ok":
                row.update(status="quarantined", reason=w.previous["reason"])
            return None
        if w.previous_index not in self.events:
            return None
        return self.events[w.previous_index], self.sensors[w.previous_index]


def _manifest_row(raw: Path, w: Work) -> dict[str, Any]:
    item = w.item
    row: dict[str, Any] = {
        "path": item.path,
        "kind": "events",
        "label": item.label,
        "split": w.split,
        "status": "ok",
        "reason": "",
    }
    file = raw / item.path.split("#", 1)[0]
    try:
        row["size"] = file.stat().st_size
        row["sha256"] = file_sha256(file)
    except OSError as err:
        row.update(size=0, sha256="", status="quarantined", reason=f"unreadable: {err.strerror or err}")
        return row
    if item.reason:
        row.update(status="quarantined", reason=item.reason)
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


@lru_cache(maxsize=4)
def _previous_reader(store: str, snapshot: str) -> DatasetReader:
    return DatasetReader(store, snapshot)


def load_statics(plan: BuildPlan, paths: Sequence[str]) -> dict[str, Any]:
    """Load the static images of some files (containers are read once), with their frames."""
    source = plan.config.source_adapter()
    root = Path(plan.config.static) if plan.config.static else Path(plan.config.raw)
    wanted = set(paths)
    images, labels, splits, rows = [], [], [], []
    by_file: dict[str, list[tuple[StaticItem, str]]] = {}
    for item, split in zip(plan.statics, plan.static_splits, strict=True):
        if item.path in wanted:
            by_file.setdefault(item.path, []).append((item, split))
    for path, entries in by_file.items():
        file = root / path
        row = {"path": path, "kind": "static", "status": "ok", "reason": "", "items": len(entries)}
        try:
            row["size"] = file.stat().st_size
            row["sha256"] = file_sha256(file)
            loaded = [source.load_static(root, item) for item, _ in entries]
        except BadInput as err:
            row.update(status="quarantined", reason=err.reason)
        except OSError as err:
            row.update(status="quarantined", reason=f"unreadable: {err.strerror or err}")
        else:
            images += loaded
            labels += [item.label for item, _ in entries]
            splits += [split for _, split in entries]
        row.setdefault("size", 0)
        row.setdefault("sha256", "")
        rows.append(row)
    return {"images": images, "labels": labels, "splits": splits, "rows": rows}


# --------------------------------------------------------------------------------------------
# 3. write + commit
# --------------------------------------------------------------------------------------------
def run_build(config: BuildConfig, client: Any = None, force: bool = False) -> BuildResult:
    """Plan, process on Dask, and commit; the one entry point of the CLI and the flows."""
    started = time.perf_counter()
    plan = plan_build(config)
    with _dask_client(config, client) as dask_client:
        result = execute_plan(plan, dask_client, force=force)
    result.report["timings"]["total"] = time.perf_counter() - started
    return result


def execute_plan(plan: BuildPlan, client: Any, force: bool = False) -> BuildResult:
    batches = plan.batches()
    plan_future = client.scatter(plan, broadcast=True)
    hashed: list[Any] = [None] * len(batches)  # a first build hashes while it decodes
    if plan.previous_snapshot is not None:
        # a refresh hashes first: what is unchanged is reused, and nothing changed means no commit
        started = time.perf_counter()
        hashed = client.gather([client.submit(hash_batch, plan_future, b, pure=False) for b in batches])
        plan.timings["hash"] = time.perf_counter() - started
        changes = _changes(plan, [row for rows in hashed for row in rows])
        if not force and plan.unchanged_params and not any(changes.values()):
            log.info("nothing changed since snapshot %s; no commit", plan.previous_snapshot)
            report = _previous_reader(plan.config.store, plan.previous_snapshot).report
            report.update(committed=False, snapshot=plan.previous_snapshot, changes={k: 0 for k in changes})
            report["timings"] = dict(plan.timings)
            return BuildResult(plan.previous_snapshot, False, report)

    started = time.perf_counter()
    futures = [
        client.submit(process_batch, plan_future, b, h, pure=False)
        for b, h in zip(batches, hashed, strict=True)
    ]
    metas = _gather_with_progress(client, [client.submit(BatchResult.meta, f) for f in futures], started)
    plan.timings["process"] = time.perf_counter() - started
    rows = [row for meta in metas for row in meta["rows"]]
    if plan.previous_snapshot is None:
        changes = _changes(plan, rows)

    quarantined = [r for r in rows if r["status"] != "ok"]
    bad_fraction = len(quarantined) / max(1, len(rows))
    if bad_fraction > plan.config.max_bad_fraction:
        names = "; ".join(f"{r['path']}: {r['reason']}" for r in quarantined[:5])
        raise BuildError(
            f"{len(quarantined)} of {len(rows)} recordings are bad ({bad_fraction:.1%} > "
            f"--max-bad-fraction {plan.config.max_bad_fraction:.1%}); nothing was committed. First: {names}"
        )
    if len(quarantined) == len(rows):
        raise BuildError("no usable recordings; nothing was committed")

    static = _gather_statics(plan, client)
    started = time.perf_counter()
    with Transaction(plan.config.store) as tx:
        sensors = _write_recordings(tx, plan, client, futures, metas, rows)
        _write_statics(tx, plan, static)
        report = _report(plan, rows, static["rows"], changes, bad_fraction)
        _write_provenance(tx, plan, rows + static["rows"], _common_sensor_size(sensors))
        plan.timings["write"] = time.perf_counter() - started
        report["timings"] = dict(plan.timings)
        tx.root["report"].attrs.update(_jsonable(report))
        snapshot = tx.commit(_commit_message(plan, changes), {"report": json.dumps(_jsonable(report))})
    client.cancel(futures)
    report["committed"] = True
    report["snapshot"] = snapshot
    return BuildResult(snapshot, True, report)


def _gather_with_progress(client: Any, futures: list[Any], started: float) -> list[Any]:
    """Results in submission order, with a log line (and rates) about every 10 % of the work."""
    from distributed import as_completed

    done = recordings = events = 0
    step = max(1, len(futures) // 10)
    for future in as_completed(futures):
        meta = future.result()
        done += 1
        recordings += len(meta["rows"])
        events += int(meta["counts"].sum())
        if done % step == 0 or done == len(futures):
            seconds = max(time.perf_counter() - started, 1e-9)
            log.info(
                "processed %d/%d batches: %d recordings, %.2f M events (%.0f recordings/s, %.2f M events/s)",
                done,
                len(futures),
                recordings,
                events / 1e6,
                recordings / seconds,
                events / seconds / 1e6,
            )
    return client.gather(futures)


def _changes(plan: BuildPlan, rows: list[dict[str, Any]]) -> dict[str, list[str]]:
    added, changed = [], []
    for w, row in zip(plan.work, rows, strict=True):
        if w.previous is None:
            added.append(row["path"])
        elif w.previous.get("sha256") != row.get("sha256") or w.previous.get("split") != row["split"]:
            changed.append(row["path"])
    new_keys = [] if plan.previous_snapshot is None else _new_frame_keys(plan)
    # a recording that was quarantined before and is unchanged stays quarantined: no change
    return {
        "added": added,
        "changed": changed,
        "removed": plan.removed,
        "new_frames": new_keys,
        "statics": [] if plan.reuse_statics else ["reloaded"],
    }


def _new_frame_keys(plan: BuildPlan) -> list[str]:
    have = set(_previous_reader(plan.config.store, plan.previous_snapshot).frame_keys())
    return [s.key for s in plan.specs if s.key not in have]


def _gather_statics(plan: BuildPlan, client: Any) -> dict[str, Any]:
    started = time.perf_counter()
    if plan.reuse_statics:
        previous = _previous_reader(plan.config.store, plan.previous_snapshot)
        result = {
            "reused": previous,
            "rows": [r for r in previous.manifest if r.get("kind") == "static"],
        }
    else:
        files = sorted({s.path for s in plan.statics})
        chunks = [files[i : i + 64] for i in range(0, len(files), 64)]
        parts = client.gather([client.submit(load_statics, plan, c, pure=False) for c in chunks])
        result = {
            key: [v for part in parts for v in part[key]] for key in ("images", "labels", "splits", "rows")
        }
        result["rows"] += [
            {"path": p, "kind": "static", "status": "quarantined", "reason": r, "size": 0, "sha256": ""}
            for p, r in plan.bad_statics
        ]
    plan.timings["statics"] = time.perf_counter() - started
    return result


def _write_recordings(
    tx: Transaction,
    plan: BuildPlan,
    client: Any,
    futures: list[Any],
    metas: list[dict[str, Any]],
    rows: list[dict],
) -> np.ndarray:
    """Write every recording's arrays and frames; returns the ``[N, 2]`` sensor sizes.

    The big arrays are written where the batches are: one Dask task per shard takes the batch
    results that overlap it and writes the whole shard on its own fork of the session.
    """
    counts = np.concatenate([m["counts"] for m in metas])
    sensors = np.concatenate([m["sensors"] for m in metas])
    good = [r for r in rows if r["status"] == "ok"]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    tx.write_array("events/offsets", offsets)
    tx.write_array("events/label", np.array([r["label"] for r in good], dtype=np.int16))
    tx.write_array("events/split", np.array([SPLITS.index(r["split"]) for r in good], dtype=np.uint8))
    tx.write_array("events/width", sensors[:, 0].astype(np.uint16))
    tx.write_array("events/height", sensors[:, 1].astype(np.uint16))

    event_rows = [int(m["counts"].sum()) for m in metas]
    sample_rows = [len(m["counts"]) for m in metas]
    writes = []
    for name in EVENT_DTYPE.names:
        target = tx.create_array(f"events/{name}", (int(offsets[-1]),), EVENT_DTYPE[name], kind="events")
        writes += _shard_writes(client, target, f"events/{name}", futures, event_rows)
    for spec in plan.specs:
        group = tx.root.require_group(f"frames/{spec.key}")
        group.attrs.update(spec.to_attrs())
        name = f"frames/{spec.key}/events"
        target = tx.create_array(name, (len(counts), spec.time_bins, 2, *spec.size), np.uint16)
        writes += _shard_writes(client, target, name, futures, sample_rows)
    tx.add_writer_forks(client.gather(writes))
    return sensors


def _shard_writes(client: Any, target: Any, name: str, futures: list[Any], rows: list[int]) -> list[Any]:
    """One task per shard of ``target``; batch ``i`` holds the next ``rows[i]`` rows of ``name``."""
    starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    shard = target.shards[0]
    tasks = []
    for first in range(0, int(starts[-1]), shard):
        last = min(first + shard, int(starts[-1]))
        overlap = [i for i in range(len(rows)) if rows[i] and starts[i] < last and starts[i + 1] > first]
        parts = [futures[i] for i in overlap]
        at = int(starts[overlap[0]])
        tasks.append(client.submit(_write_shard, target, name, first, last, at, *parts, pure=False))
    return tasks


def _write_shard(target: Any, name: str, first: int, last: int, at: int, *parts: BatchResult) -> Any:
    """Write rows ``[first, last)`` of ``target`` from batch results whose rows start at ``at``;
    returns the fork of the session the write went to, for the commit to merge."""
    pieces = [part.part(name) for part in parts]
    data = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    target[first:last] = data[first - at : last - at]
    return target.store.session


def _write_statics(tx: Transaction, plan: BuildPlan, static: dict[str, Any]) -> None:
    previous: DatasetReader | None = static.get("reused")
    if previous is not None:
        images, labels, splits = previous.images(), previous.image_labels, previous.image_splits
        statics = {spec.key: previous.static_frames(spec.key) for spec in plan.specs}
    else:
        images = _stack_images(static["images"])
        labels = np.array(static["labels"], dtype=np.int16)
        splits = np.array([SPLITS.index(s) for s in static["splits"]], dtype=np.uint8)
        statics = {spec.key: _static_frames_of(static["images"], spec) for spec in plan.specs}
    tx.write_array("images/data", images)
    tx.write_array("images/label", labels.astype(np.int16))
    tx.write_array("images/split", splits.astype(np.uint8))
    for key, frames in statics.items():
        tx.write_array(f"frames/{key}/static", frames)


def _stack_images(images: list[np.ndarray]) -> np.ndarray:
    """``[M, H, W, C]``: native size when all agree, else resized to STATIC_STORE_SIZE."""
    if not images:
        return np.zeros((0, *STATIC_STORE_SIZE, 1), np.uint8)
    color = any(im.ndim == 3 for im in images)
    as_hwc = [
        (np.repeat(im[..., None], 3, axis=2) if color else im[..., None]) if im.ndim == 2 else im
        for im in images
    ]
    if len({im.shape for im in as_hwc}) == 1:
        return np.stack(as_hwc)
    from PIL import Image

    h, w = STATIC_STORE_SIZE
    return np.stack(
        [
            np.asarray(Image.fromarray(im.squeeze(-1) if im.shape[-1] == 1 else im).resize((w, h))).reshape(
                h, w, -1
            )
            for im in as_hwc
        ]
    )


def _static_frames_of(images: list[np.ndarray], spec: FrameSpec) -> np.ndarray:
    if not images:
        return np.zeros((0, *spec.size), np.uint8)
    return np.stack(
        [static_frames(im[None], spec.size, spec.static_mode, spec.static_fit)[0] for im in images]
    )


def _write_provenance(
    tx: Transaction, plan: BuildPlan, rows: list[dict], sensor_size: list[int] | None
) -> None:
    config = plan.config
    spec = config.frame_spec()
    good = [r for r in rows if r["status"] == "ok" and r["kind"] == "events"]
    tx.root.attrs.update(
        _jsonable(
            {
                "classes": plan.classes,
                "source": config.source,
                "raw_root": str(Path(config.raw).resolve()),
                "static_root": str(Path(config.static).resolve()) if config.static else None,
                "frames_key": spec.key,
                "sensor_size": sensor_size,
                "split_rule": config.source_adapter().split_rule,
                "splits": list(SPLITS),
                "build_params": {k: v for k, v in asdict(config).items()},
                "data_params": config.data_params(),
                "recording_sources": [r["path"] for r in good],
                "parent_snapshot": plan.previous_snapshot,
            }
        )
    )
    tx.root.require_group("manifest").attrs["rows"] = _jsonable(rows)
    tx.root.require_group("report")


def _common_sensor_size(sensors: np.ndarray) -> list[int] | None:
    """The sensor size ``[W, H]`` shared by every recording, or None (N-Caltech101 varies)."""
    unique = np.unique(sensors, axis=0)
    return [int(v) for v in unique[0]] if len(unique) == 1 else None


def _report(
    plan: BuildPlan,
    rows: list[dict],
    static_rows: list[dict],
    changes: dict[str, list[str]],
    bad_fraction: float,
) -> dict[str, Any]:
    good = [r for r in rows if r["status"] == "ok"]
    events = int(sum(r.get("events", 0) for r in good))
    process = plan.timings.get("process", 0.0)
    return {
        "source": plan.config.source,
        "recordings": len(good),
        "events": events,
        "images": int(sum(r.get("items", 0) for r in static_rows if r["status"] == "ok")),
        "classes": len(plan.classes),
        "decoded": sum(1 for r in rows if r.get("action") == "decoded"),
        "reused": sum(1 for r in rows if r.get("action") == "reused"),
        "quarantined": [
            {"path": r["path"], "kind": r["kind"], "reason": r["reason"]}
            for r in rows + static_rows
            if r["status"] != "ok"
        ],
        "bad_fraction": bad_fraction,
        "changes": {k: len(v) for k, v in changes.items()},
        "changed_paths": {k: v[:50] for k, v in changes.items() if k in ("added", "changed", "removed")},
        "parent_snapshot": plan.previous_snapshot,
        "frames_key": plan.config.frame_spec().key,
        "events_per_s_processing": events / process if process else None,
        "workers": plan.config.workers if not plan.config.dask_address else plan.config.dask_address,
        "timings": dict(plan.timings),
    }


def _commit_message(plan: BuildPlan, changes: dict[str, list[str]]) -> str:
    counts = ", ".join(f"{k} {len(v)}" for k, v in changes.items() if v)
    kind = "refresh" if plan.previous_snapshot else "build"
    return f"{kind} {plan.config.source}: {counts or 'no data change'}"


def _jsonable(value: Any) -> Any:
    """attrs are JSON: numpy scalars, tuples and paths become plain values."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")


def local_cluster(workers: int) -> Any:
    """A LocalCluster of ``workers`` single-threaded worker processes, without a dashboard.

    Dask's nanny starts workers with ``MALLOC_TRIM_THRESHOLD_=65536`` so that they hand freed memory
    back to the kernel at once. That also turns off glibc's adaptive mmap threshold: every batch's
    megabyte-sized buffers are then mapped, page-faulted in and unmapped again, which made decoding
    and writing twice as slow as in a plain process. Builds free what they allocate within seconds,
    so the workers keep glibc's defaults.
    """
    from distributed import LocalCluster

    with dask.config.set({"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}):
        return LocalCluster(
            n_workers=workers,
            threads_per_worker=1,
            processes=True,
            dashboard_address=None,
            # a failed task's error reaches the client, which reports it once (one line for a
            # user's mistake such as a full disk); the worker's own copy would repeat its traceback
            silence_logs=logging.CRITICAL,
        )


class _dask_client:
    """The client to use: the caller's, an existing scheduler by address, or a LocalCluster."""

    def __init__(self, config: BuildConfig, client: Any) -> None:
        self.config, self.given, self.owned = config, client, []

    def __enter__(self) -> Any:
        if self.given is not None:
            return self.given
        from distributed import Client

        # distributed sets its loggers to INFO on import; its chatter would drown the progress lines
        logging.getLogger("distributed").setLevel(logging.WARNING)

        if self.config.dask_address:
            client = Client(self.config.dask_address)
        else:
            cluster = local_cluster(self.config.workers)
            self.owned.append(cluster)
            client = Client(cluster)
        self.owned.insert(0, client)
        return client

    def __exit__(self, *exc: object) -> None:
        for thing in self.owned:
            thing.close()
