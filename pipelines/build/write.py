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
from pipelines.build.process import hash_batch, load_static_rows, probe_statics, stat_batch, static_root
from pipelines.build.report import build_report, commit_message, find_changes
from pipelines.build.stream import RecordingStream
from pipelines.images import static_frames
from pipelines.sources.base import StaticItems
from storage import layout
from storage.reader import DatasetReader
from storage.repo import StoreConflict, writer_lock
from storage.schema import SPLITS
from storage.writer import ShardTarget, Transaction, WriteToken

log = logging.getLogger("tmkt.build")

#: Plans a build makes at most when other writers keep committing to an object store first.
CONFLICT_ATTEMPTS = 3

#: Static images of uneven sizes (Caltech101) are stored resized to this size.
STATIC_STORE_SIZE = (128, 128)
#: Static files whose manifest rows and image sizes one task finds.
STATIC_FILES_PER_TASK = 64
#: Bytes of stored images and static frames one write task makes, in whole shards (at least one):
#: MNIST's 28x28 digits go 8,000 to a task, so a large set is tens of tasks and tokens, not thousands.
STATIC_TASK_BYTES = 16 << 20


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
                client = stack.enter_context(dask_client(config))
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
    # hash=False: Dask's token of a plan walks every item: 0.16 ms per recording (11 s at 70,000),
    # and 230 MB of RSS for 150,000 statics
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
    with Transaction(plan.config.store, expected_parent=plan.previous_snapshot) as tx:
        metas = RecordingStream(tx, plan, client, plan_future).run(batches, hashed, started)
        plan.timings["process"] = time.perf_counter() - started
        rows = [row for meta in metas for row in meta["rows"]]
        if plan.previous_snapshot is None:
            changes = find_changes(plan, rows)
        bad_fraction = _check_bad(plan, rows)
        statics = _probe_statics(plan, client, plan_future)
        started = time.perf_counter()
        sensors = _write_recording_columns(tx, plan, metas, rows)
        _write_statics(tx, plan, client, plan_future, statics)
        report = build_report(plan, rows, statics.rows, changes, bad_fraction)
        _write_provenance(tx, plan, rows + statics.rows, _common_sensor_size(sensors))
        plan.timings["write"] = time.perf_counter() - started
        report["timings"] = dict(plan.timings)
        tx.set_report(jsonable(report))
        snapshot = tx.commit(commit_message(plan, changes), {"report": json.dumps(jsonable(report))})
    report["committed"] = True
    report["snapshot"] = snapshot
    return BuildResult(snapshot, True, report)


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


@dataclass
class _Statics:
    """What the coordinator keeps of the static images: small values per image, never pixels.

    ``items``: the good images' indices in ``plan.statics``, in store order; None when the previous
    snapshot's arrays are copied (``reused``). ``shape``: the stored ``[H, W, C]`` of each image.
    """

    rows: list[dict[str, Any]]
    labels: np.ndarray
    splits: np.ndarray
    shape: tuple[int, ...]
    items: np.ndarray | None = None
    reused: DatasetReader | None = None


def _probe_statics(plan: BuildPlan, client: Any, plan_future: Any) -> _Statics:
    """Manifest rows, labels, splits and the stored image shape, from tasks that return no pixels."""
    started = time.perf_counter()
    statics = _reused_statics(plan) if plan.reuse_statics else None
    if statics is None:
        files = _static_files(plan)
        chunks = [files[i : i + STATIC_FILES_PER_TASK] for i in range(0, len(files), STATIC_FILES_PER_TASK)]
        parts = client.gather([client.submit(probe_statics, plan_future, c, pure=False) for c in chunks])
        rows = [row for part in parts for row in part["rows"]]
        good = {row["path"] for row in rows if row["status"] == "ok"}
        items = np.concatenate([np.zeros(0, np.int64)] + [i for path, i in files if path in good])
        root = static_root(plan)
        rows += [
            {"path": p, "kind": "static", "status": "quarantined", "reason": r, "size": 0}
            | {"sha256": static_sha256(root / p)}
            for p, r in plan.bad_statics
        ]
        statics = _Statics(
            rows=rows,
            labels=plan.statics.labels[items].astype(np.int16),
            splits=_split_codes(plan.statics)[items],
            shape=_stored_shape(set().union(*(p["sizes"] for p in parts)), any(p["color"] for p in parts)),
            items=items,
        )
    plan.timings["statics"] = time.perf_counter() - started
    return statics


def _reused_statics(plan: BuildPlan) -> _Statics | None:
    """The previous snapshot's statics, when its arrays are in shards that can be copied one by one
    (stores that kept ``images/data`` as one chunk load their statics again, once)."""
    previous = previous_reader(plan.config.store, plan.previous_snapshot)
    names = [layout.IMAGES] + [layout.static_frames(spec.key) for spec in plan.specs]
    if any(previous.root[name].shards is None for name in names):
        return None
    return _Statics(
        rows=[r for r in previous.manifest if r.get("kind") == "static"],
        labels=previous.image_labels.astype(np.int16),
        splits=previous.image_splits.astype(np.uint8),
        shape=tuple(previous.root[layout.IMAGES].shape[1:]),
        reused=previous,
    )


def _static_files(plan: BuildPlan) -> list[tuple[str, np.ndarray]]:
    """Each static file with the indices of its items in ``plan.statics``, in the store's order:
    files sorted by path in runs of `STATIC_FILES_PER_TASK`, the files of a run in listing order,
    the items of a file in listing order (the order builds have always stored)."""
    statics = plan.statics
    codes, first = np.unique(statics.path_codes, return_index=True)  # files with items only
    names = sorted(zip((statics.paths[c] for c in codes), first, codes, strict=True))
    step = STATIC_FILES_PER_TASK
    ordered = [f for i in range(0, len(names), step) for f in sorted(names[i : i + step], key=lambda f: f[1])]
    rank = np.zeros(len(statics.paths), np.int64)
    rank[[code for _, _, code in ordered]] = np.arange(len(ordered))
    order = np.argsort(rank[statics.path_codes], kind="stable")
    bounds = np.searchsorted(rank[statics.path_codes][order], np.arange(len(ordered) + 1))
    return [(path, order[bounds[r] : bounds[r + 1]]) for r, (path, _, _) in enumerate(ordered)]


def _split_codes(statics: StaticItems) -> np.ndarray:
    """uint8 `SPLITS` index of every item; an image without a published split is for training."""
    named = np.array([SPLITS.index(split or "train") for split in statics.splits], dtype=np.uint8)
    return named[statics.split_codes]


def _stored_shape(sizes: set[tuple[int, int]], color: bool) -> tuple[int, int, int]:
    """``[H, W, C]`` of the stored images: native when all agree in size, else STATIC_STORE_SIZE;
    3 channels when any image has colour (gray ones are repeated), else 1."""
    height, width = next(iter(sizes)) if len(sizes) == 1 else STATIC_STORE_SIZE
    return height, width, 3 if color else 1


def _check_bad(plan: BuildPlan, rows: list[dict]) -> float:
    """The share of bad recordings; past ``--max-bad-fraction``, or with none good, the build fails
    with one line naming the first bad files (the transaction is then never committed)."""
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
    return bad_fraction


def _write_recording_columns(
    tx: Transaction, plan: BuildPlan, metas: list[dict[str, Any]], rows: list[dict]
) -> np.ndarray:
    """The per-recording arrays beside the streamed events and frames (offsets, labels, splits,
    sensor sizes, the recording of each slice); returns the ``[N, 2]`` sensor sizes."""
    counts = np.concatenate([m["counts"] for m in metas])
    sensors = np.concatenate([m["sensors"] for m in metas])
    good = [r for r in rows if r["status"] == "ok"]
    tx.write_array(layout.OFFSETS, np.concatenate([[0], np.cumsum(counts)]).astype(np.int64))
    tx.write_array(layout.LABEL, np.array([r["label"] for r in good], dtype=np.int16))
    tx.write_array(layout.SPLIT, np.array([SPLITS.index(r["split"]) for r in good], dtype=np.uint8))
    tx.write_array(layout.WIDTH, sensors[:, 0].astype(np.uint16))
    tx.write_array(layout.HEIGHT, sensors[:, 1].astype(np.uint16))
    for spec in plan.specs:
        tx.set_frame_spec(spec)
        if spec.slices:
            per_recording = np.concatenate([m["samples"][spec.key] for m in metas])
            recording = np.repeat(np.arange(len(per_recording)), per_recording)
            tx.write_array(layout.frame_recordings(spec.key), recording.astype(np.int64))
    return sensors


def _write_statics(
    tx: Transaction, plan: BuildPlan, client: Any, plan_future: Any, statics: _Statics
) -> None:
    """Labels and splits from the coordinator; images and their static frames shard by shard from
    the workers, each task loading (or copying from the previous snapshot) only its own rows."""
    tx.write_array(layout.IMAGE_LABEL, statics.labels)
    tx.write_array(layout.IMAGE_SPLIT, statics.splits)
    count = len(statics.labels)
    # in shards like the event frames, so that a training split can read some of them in bulk
    # (`tmkt.streaming.StaticPool`) instead of the whole array as one chunk
    targets = {layout.IMAGES: tx.shard_target(layout.IMAGES, (count, *statics.shape), np.uint8)}
    for spec in plan.specs:
        name = layout.static_frames(spec.key)
        targets[name] = tx.shard_target(name, (count, *spec.size), np.uint8)
    shard = targets[layout.IMAGES].rows_per_shard
    row_bytes = int(np.prod(statics.shape)) + sum(int(np.prod(spec.size)) for spec in plan.specs)
    step = shard * max(1, STATIC_TASK_BYTES // (shard * row_bytes))
    tasks = []
    for first in range(0, count, step):
        last = min(first + step, count)
        if statics.reused is not None:
            store, snapshot = plan.config.store, statics.reused.snapshot_id
            tasks.append(client.submit(_copy_static_shard, store, snapshot, targets, first, last, pure=False))
        else:
            rows = statics.items[first:last]
            tasks.append(
                client.submit(_write_static_shard, plan_future, targets, first, last, rows, pure=False)
            )
    _merge_as_completed(tx, tasks)


def _merge_as_completed(tx: Transaction, tasks: list[Any]) -> None:
    """Merge each write task's token(s) as it finishes and let its result go: a token carries a
    writer's fork (tens of KB), and a store of 150,000 images is a thousand of them."""
    from distributed import as_completed

    for future in as_completed(tasks):
        result = future.result()
        tx.merge(result if isinstance(result, list) else [result])
        future.release()


def _write_static_shard(
    plan: BuildPlan, targets: dict[str, ShardTarget], first: int, last: int, items: np.ndarray
) -> list[WriteToken]:
    """Load the statics of rows ``[first, last)`` (``plan.statics[items]``), store them at the
    target's image shape and as every representation's static frames; returns the write tokens."""
    images = load_static_rows(plan, items)
    shape = targets[layout.IMAGES].array.shape[1:]
    tokens = [
        targets[layout.IMAGES].write(first, last, np.stack([_stored_image(im, shape) for im in images]))
    ]
    for spec in plan.specs:
        frames = [static_frames(im[None], spec.size, spec.static_mode, spec.static_fit)[0] for im in images]
        tokens.append(targets[layout.static_frames(spec.key)].write(first, last, np.stack(frames)))
    return tokens


def _copy_static_shard(
    store: str, snapshot: str, targets: dict[str, ShardTarget], first: int, last: int
) -> list[WriteToken]:
    """Rows ``[first, last)`` of every static array, copied from snapshot ``snapshot``."""
    previous = previous_reader(store, snapshot)
    return [target.write(first, last, previous.root[name][first:last]) for name, target in targets.items()]


def _stored_image(image: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """One loaded image as stored, ``shape = [H, W, C]``: gray repeated to 3 channels when the
    store has colour, resized (PIL's default filter) when its size is not the stored one."""
    height, width, channels = shape
    if image.ndim == 2:
        image = np.repeat(image[..., None], 3, axis=2) if channels == 3 else image[..., None]
    if image.shape == tuple(shape):
        return image
    from PIL import Image

    flat = image.squeeze(-1) if image.shape[-1] == 1 else image
    return np.asarray(Image.fromarray(flat).resize((width, height))).reshape(height, width, -1)


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
