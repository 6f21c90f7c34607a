"""Stage 3 of a build: run the batches on Dask, lay the good recordings out flat, write whole shards
from the workers into one transaction, attach manifest and report, and commit once.

Nothing is visible before the commit, so a killed build leaves the previous snapshot untouched;
when nothing changed (same files, same parameters, same frame keys) no commit is made.
"""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.build.cluster import dask_client
from pipelines.build.config import BuildConfig, BuildError, jsonable
from pipelines.build.plan import BuildPlan, plan_build, previous_reader, static_sha256
from pipelines.build.process import BatchResult, hash_batch, load_statics, process_batch, stat_batch
from pipelines.build.report import build_report, commit_message, find_changes
from pipelines.images import static_frames
from storage import layout
from storage.reader import DatasetReader
from storage.repo import StoreConflict, writer_lock
from storage.schema import EVENT_DTYPE, SPLITS, FrameSpec
from storage.writer import ShardTarget, Transaction, WriteToken

log = logging.getLogger("tmkt.build")

#: Plans a build makes at most when other writers keep committing to an object store first.
CONFLICT_ATTEMPTS = 3

#: Static images of uneven sizes (Caltech101) are stored resized to this size.
STATIC_STORE_SIZE = (128, 128)


@dataclass
class BuildResult:
    snapshot: str
    committed: bool
    report: dict[str, Any]


def run_build(config: BuildConfig, client: Any = None, force: bool = False) -> BuildResult:
    """Plan, process on Dask, and commit; the one entry point of the CLI and the flows."""
    started = time.perf_counter()
    with contextlib.ExitStack() as stack:

        def execute(plan: BuildPlan) -> BuildResult:
            nonlocal client
            unchanged = noop_refresh(plan, force)
            if unchanged is not None:
                return unchanged
            if client is None:  # started after the first plan, so a bad config fails before it
                client = stack.enter_context(dask_client(config.workers, config.dask_address))
            return execute_plan(plan, client, force=force)

        result = run_as_writer(config, plan_build, execute)
    result.report["timings"]["total"] = time.perf_counter() - started
    return result


def run_as_writer(
    config: BuildConfig,
    plan: Callable[[BuildConfig], BuildPlan],
    execute: Callable[[BuildPlan], BuildResult],
) -> BuildResult:
    """Plan and execute as the store's one writer: a second build of the same store never plans on
    a snapshot that the first replaces.

    On a local store the writer lock, held from plan to commit, queues the second build behind the
    first, and it plans on the first one's snapshot. On an object store (no lock) the commit fails
    with `StoreConflict` when the branch moved since the plan; the build then plans again on the new
    snapshot, up to `CONFLICT_ATTEMPTS` times, and otherwise fails with one line, committing nothing.
    """
    with writer_lock(config.store):
        for attempt in range(1, CONFLICT_ATTEMPTS + 1):
            try:
                return execute(plan(config))
            except StoreConflict as err:
                if attempt == CONFLICT_ATTEMPTS:
                    raise BuildError(f"{err}; gave up after {attempt} plans, nothing was committed") from err
                log.warning("%s; planning again on the new snapshot", err)
    raise AssertionError("unreachable")


def execute_plan(plan: BuildPlan, client: Any, force: bool = False) -> BuildResult:
    batches = plan.batches()
    # hash=False: tokenizing the plan to name it cost 0.16 ms per recording (11 s at 70,000)
    plan_future = client.scatter(plan, broadcast=True, hash=False)
    hashed: list[Any] = [None] * len(batches)  # a first build hashes while it decodes
    if plan.previous_snapshot is not None:
        # a refresh hashes first: what is unchanged is reused, and nothing changed means no commit
        started = time.perf_counter()
        hashed = _hash_refresh(plan, plan_future, client, batches)
        plan.timings["hash"] = time.perf_counter() - started
        changes = find_changes(plan, [row for rows in hashed for row in rows])
        if not force and plan.unchanged_params and not any(changes.values()):
            return _unchanged(plan, changes)

    started = time.perf_counter()
    places = contiguous_places(client, len(batches))
    futures = [
        client.submit(process_batch, plan_future, b, h, pure=False, workers=w, allow_other_workers=True)
        for b, h, w in zip(batches, hashed, places, strict=True)
    ]
    metas = _gather_with_progress(client, [client.submit(BatchResult.meta, f) for f in futures], started)
    plan.timings["process"] = time.perf_counter() - started
    rows = [row for meta in metas for row in meta["rows"]]
    if plan.previous_snapshot is None:
        changes = find_changes(plan, rows)

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
    with Transaction(plan.config.store, expected_parent=plan.previous_snapshot) as tx:
        sensors = _write_recordings(tx, plan, client, futures, metas, rows)
        _write_statics(tx, plan, static)
        report = build_report(plan, rows, static["rows"], changes, bad_fraction)
        _write_provenance(tx, plan, rows + static["rows"], _common_sensor_size(sensors))
        plan.timings["write"] = time.perf_counter() - started
        report["timings"] = dict(plan.timings)
        tx.set_report(jsonable(report))
        snapshot = tx.commit(commit_message(plan, changes), {"report": json.dumps(jsonable(report))})
    client.cancel(futures)
    report["committed"] = True
    report["snapshot"] = snapshot
    return BuildResult(snapshot, True, report)


def contiguous_places(client: Any, batches: int) -> list[list[str]]:
    """A worker for each batch, in contiguous runs: worker k takes the k-th block of batches.

    A shard is written where most of its batches are; when batches were spread round-robin, every
    shard task fetched half its batch results from the other workers (the whole result, every field
    and frame, for each of its fields), and 2 workers wrote only 1.15x faster than one. A worker that
    falls behind still has its batches taken by the others (the placement is a preference).
    """
    workers = sorted(client.scheduler_info()["workers"])
    if len(workers) < 2:
        return [[]] * batches
    return [[workers[i * len(workers) // batches]] for i in range(batches)]


def noop_refresh(plan: BuildPlan, force: bool = False) -> BuildResult | None:
    """The result of a refresh that stat alone shows to change nothing, else None: no file is read
    and no Dask cluster is started (12,000 unchanged files: 0.15 s of stat calls)."""
    if plan.previous_snapshot is None or force or plan.config.rehash or not plan.unchanged_params:
        return None
    started = time.perf_counter()
    hashed = [stat_batch(plan, b) for b in plan.batches()]
    plan.timings["hash"] = time.perf_counter() - started
    if any(rows is None for rows in hashed):
        return None
    changes = find_changes(plan, [row for rows in hashed for row in rows if rows is not None])
    return None if any(changes.values()) else _unchanged(plan, changes)


def _unchanged(plan: BuildPlan, changes: dict[str, list[str]]) -> BuildResult:
    log.info("nothing changed since snapshot %s; no commit", plan.previous_snapshot)
    report = previous_reader(plan.config.store, plan.previous_snapshot).report
    report.update(committed=False, snapshot=plan.previous_snapshot, changes={k: 0 for k in changes})
    report["timings"] = dict(plan.timings)
    return BuildResult(plan.previous_snapshot, False, report)


def _hash_refresh(plan: BuildPlan, plan_future: Any, client: Any, batches: list[list[int]]) -> list[Any]:
    """Manifest rows of a refresh, stat first in the coordinator: only batches with a file whose size
    or mtime moved (or all, with ``rehash``) are hashed on the workers."""
    hashed: list[Any] = [None if plan.config.rehash else stat_batch(plan, b) for b in batches]
    stale = [i for i, rows in enumerate(hashed) if rows is None]
    rows = client.gather([client.submit(hash_batch, plan_future, batches[i], pure=False) for i in stale])
    for i, batch_rows in zip(stale, rows, strict=True):
        hashed[i] = batch_rows
    log.info(
        "refresh: hashed %d of %d batches; the rest are unchanged by size and mtime", len(stale), len(batches)
    )
    return hashed


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


def _gather_statics(plan: BuildPlan, client: Any) -> dict[str, Any]:
    started = time.perf_counter()
    if plan.reuse_statics:
        previous = previous_reader(plan.config.store, plan.previous_snapshot)
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
        root = Path(plan.config.static) if plan.config.static else Path(plan.config.raw)
        result["rows"] += [
            {"path": p, "kind": "static", "status": "quarantined", "reason": r, "size": 0}
            | {"sha256": static_sha256(root / p)}
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
    results that overlap it, writes the whole shard and returns the store's token for the commit.
    """
    counts = np.concatenate([m["counts"] for m in metas])
    sensors = np.concatenate([m["sensors"] for m in metas])
    good = [r for r in rows if r["status"] == "ok"]
    offsets = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
    tx.write_array(layout.OFFSETS, offsets)
    tx.write_array(layout.LABEL, np.array([r["label"] for r in good], dtype=np.int16))
    tx.write_array(layout.SPLIT, np.array([SPLITS.index(r["split"]) for r in good], dtype=np.uint8))
    tx.write_array(layout.WIDTH, sensors[:, 0].astype(np.uint16))
    tx.write_array(layout.HEIGHT, sensors[:, 1].astype(np.uint16))

    event_rows = [int(m["counts"].sum()) for m in metas]
    writes = []
    for name in EVENT_DTYPE.names:
        shape = (int(offsets[-1]),)
        target = tx.shard_target(layout.EVENT_FIELDS[name], shape, EVENT_DTYPE[name], kind="events")
        writes += _shard_writes(client, target, ("events", name), futures, event_rows)
    for spec in plan.specs:
        tx.set_frame_spec(spec)
        samples = [m["samples"][spec.key] for m in metas]  # per batch: samples of each recording
        sample_rows = [int(s.sum()) for s in samples]
        shape = (sum(sample_rows), spec.time_bins, 2, *spec.size)
        target = tx.shard_target(layout.event_frames(spec.key), shape, np.uint16)
        writes += _shard_writes(client, target, ("frames", spec.key), futures, sample_rows)
        if spec.slices:
            per_recording = np.concatenate(samples)
            recording = np.repeat(np.arange(len(per_recording)), per_recording)
            tx.write_array(layout.frame_recordings(spec.key), recording.astype(np.int64))
    tx.merge(client.gather(writes))
    return sensors


def _shard_writes(
    client: Any, target: ShardTarget, part: tuple[str, str], futures: list[Any], rows: list[int]
) -> list[Any]:
    """One task per shard of ``target``; batch ``i`` holds the next ``rows[i]`` rows of ``part``."""
    starts = np.concatenate([[0], np.cumsum(rows)]).astype(np.int64)
    shard = target.rows_per_shard
    tasks = []
    for first in range(0, int(starts[-1]), shard):
        last = min(first + shard, int(starts[-1]))
        overlap = [i for i in range(len(rows)) if rows[i] and starts[i] < last and starts[i + 1] > first]
        parts = [futures[i] for i in overlap]
        at = int(starts[overlap[0]])
        tasks.append(client.submit(_write_shard, target, part, first, last, at, *parts, pure=False))
    return tasks


def _write_shard(
    target: ShardTarget, part: tuple[str, str], first: int, last: int, at: int, *parts: BatchResult
) -> WriteToken:
    """Write rows ``[first, last)`` of ``target`` from batch results whose rows start at ``at``;
    returns the store's token of the write, for the commit to merge."""
    pieces = [batch.part(*part) for batch in parts]
    data = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return target.write(first, last, data[first - at : last - at])


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
    tx.write_array(layout.IMAGES, images)
    tx.write_array(layout.IMAGE_LABEL, labels.astype(np.int16))
    tx.write_array(layout.IMAGE_SPLIT, splits.astype(np.uint8))
    for key, frames in statics.items():
        # in shards like the event frames, so that a training split can read some of them in bulk
        # (`tmkt.streaming.StaticPool`) instead of the whole array as one chunk
        tx.create_array(layout.static_frames(key), frames.shape, np.uint8)[...] = frames


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
    tx.set_root_attrs(
        jsonable(
            {
                layout.CLASSES: plan.classes,
                layout.SOURCE: config.source,
                layout.RAW_ROOT: str(Path(config.raw).resolve()),
                layout.STATIC_ROOT: str(Path(config.static).resolve()) if config.static else None,
                layout.FRAMES_KEY: spec.key,
                layout.SENSOR_SIZE: sensor_size,
                layout.SPLIT_RULE: config.source_adapter().split_rule,
                layout.ORIENTATION: config.source_adapter().orientation,
                layout.SPLIT_NAMES: list(SPLITS),
                layout.BUILD_PARAMS: asdict(config),
                layout.DATA_PARAMS: config.data_params(),
                layout.RECORDING_SOURCES: [r["path"] for r in good],
                layout.PARENT_SNAPSHOT: plan.previous_snapshot,
            }
        )
    )
    tx.set_manifest(jsonable(rows))
    tx.set_report({})


def _common_sensor_size(sensors: np.ndarray) -> list[int] | None:
    """The sensor size ``[W, H]`` shared by every recording, or None (N-Caltech101 varies)."""
    unique = np.unique(sensors, axis=0)
    return [int(v) for v in unique[0]] if len(unique) == 1 else None
