"""Stage 1 of a build: list the source, read the previous snapshot's manifest, assign splits and cut
the work into batches.

A refresh and a full build are the same plan: a recording whose content hash and readers' version are
unchanged since the previous snapshot is *reused* (its events and frames are read back from that
snapshot) instead of decoded, a changed or new one is decoded, a removed one is dropped.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.build.config import BuildConfig, BuildError, jsonable
from pipelines.sources.base import EventItem, Listing, StaticItems
from pipelines.splits import assign_splits, split_draws, store_order
from storage.reader import DatasetReader
from storage.repo import StoreNotFound
from storage.schema import FrameSpec
from storage.verify import file_sha256

#: Raw bytes of one build task at most (`BuildPlan.batches`): 9 CIFAR10-DVS files of 1.7 MB (128
#: N-MNIST files take 2.6 MB); the batch's events and frames take a few times that in its worker.
BATCH_BYTES = 16 << 20

#: Age (ns) below which a file's mtime is not trusted by the next refresh (see `content_digest`).
RACY_NS = 2_000_000_000


@dataclass
class Work:
    """One recording to produce, in store order (`pipelines.splits.store_order`)."""

    item: EventItem
    split: str
    previous: dict[str, Any] | None = None  # its manifest row in the previous snapshot
    previous_index: int | None = None  # its row in the previous snapshot's events

    def unchanged(self, row: dict[str, Any]) -> bool:
        """Same file content as in the previous snapshot (``row`` is its new manifest row), decoded
        by readers that give the same events: a reader fix (``READERS_VERSION``) decodes it again."""
        if self.previous is None or self.previous.get("readers") != row.get("readers"):
            return False
        return self.previous.get("sha256") == row.get("sha256")


@dataclass
class BuildPlan:
    config: BuildConfig
    classes: list[str]
    work: list[Work]
    statics: StaticItems
    bad_statics: list[tuple[str, str]]
    specs: list[FrameSpec]
    previous_snapshot: str | None
    reuse_statics: bool
    unchanged_params: bool
    removed: list[str] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)

    def batches(self) -> list[list[int]]:
        """Runs of recordings in store order, one Dask task each: at most ``batch_size`` of them,
        and at most `BATCH_BYTES` of raw files unless a single recording is larger.

        Why both: every task costs the coordinator and the scheduler about 4 ms, a third of all the
        CPU of a 10,000-file N-MNIST build at 32 recordings a task; 128 made it 1.25x faster on 1
        and on 2 workers. At 128 a CIFAR10-DVS batch would hold 350 MB of events, and the workers
        hold a few batches each: the byte cap keeps those to a few recordings.
        """
        limit, out, run, held = max(1, self.config.batch_size), [], [], 0
        for i, size in enumerate(self.raw_sizes()):
            if run and (len(run) == limit or held + size > BATCH_BYTES):
                out.append(run)
                run, held = [], 0
            run.append(i)
            held += size
        return out + [run] if run else out

    def raw_sizes(self) -> list[int]:
        """Bytes of each recording's raw file, shared out among the items of one file: the size
        recorded by the previous snapshot, else a stat (0 when it fails: the decode says why)."""
        raw, sizes = Path(self.config.raw), []
        for w in self.work:
            size = w.previous.get("size") if w.previous else None
            if size is None and not w.item.reason:
                try:
                    size = os.stat(raw / w.item.raw_file).st_size
                except OSError:
                    size = 0
            sizes.append(int(size or 0))
        shares = Counter(w.item.raw_file for w in self.work)
        return [size // shares[w.item.raw_file] for size, w in zip(sizes, self.work, strict=True)]


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
        unchanged_params = previous.attrs.get("data_params") == jsonable(config.data_params())

    labels = np.array([item.label for item in listing.events])
    keys = [item.path for item in listing.events]
    splits = assign_splits(
        labels,
        [item.split for item in listing.events],
        config.val_fraction,
        config.effective_test_fraction(),
        config.seed,
        keys=keys,
    )
    work = [
        Work(listing.events[i], str(splits[i]), prev_rows.get(keys[i]), prev_index.get(keys[i]))
        for i in store_order(splits, split_draws(labels, keys, config.seed))
    ]
    statics = listing.statics if isinstance(listing.statics, StaticItems) else StaticItems.of(listing.statics)
    listed = {w.item.path for w in work} | set(statics.paths)
    removed = sorted(p for p, row in prev_rows.items() if p not in listed and row.get("kind") == "events")
    plan = BuildPlan(
        config=config,
        classes=listing.classes,
        work=work,
        statics=statics,
        bad_statics=listing.bad_statics,
        specs=specs,
        previous_snapshot=previous.snapshot_id if previous else None,
        reuse_statics=previous is not None
        and _statics_unchanged(previous, statics, listing.bad_statics, raw, static, specs, config.rehash),
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
    previous: DatasetReader,
    statics: StaticItems,
    bad_statics: list[tuple[str, str]],
    raw: Path,
    static: Path | None,
    specs: list[FrameSpec],
    rehash: bool,
) -> bool:
    """True when the static files hash as before and every wanted representation exists.

    Paths are relative to the static folder, or to the raw folder when a source keeps its statics
    there (the built-in one), as `probe_statics` reads them. Files quarantined at listing count too:
    unchanged, they stay quarantined and change nothing.
    """
    old = {row["path"]: row for row in previous.manifest if row.get("kind") == "static"}
    files = sorted(set(statics.paths) | {path for path, _ in bad_statics})
    if sorted(old) != files or not set(s.key for s in specs) <= set(previous.frame_keys()):
        return False
    root = static if static is not None else raw
    return all(static_sha256(root / path, old[path], rehash) == old[path]["sha256"] for path in files)


def static_sha256(path: Path, previous: dict[str, Any] | None = None, rehash: bool = True) -> str:
    """The content hash recorded for a static file; "" for one that cannot be read."""
    try:
        return content_digest(path, previous, rehash)["sha256"]
    except OSError:
        return ""


def content_digest(
    path: Path, previous: dict[str, Any] | None, rehash: bool, read: bool = True
) -> dict[str, Any]:
    """``size``, ``mtime_ns`` and ``sha256`` of a file, stat first: when size and mtime equal the
    ``previous`` manifest row's, its hash is taken without reading the file (a no-op refresh costs a
    stat per file), unless ``rehash``. With ``read`` False a file that would need reading gets
    ``sha256`` None instead. Raises OSError.

    A file modified less than `RACY_NS` before this stat gets no ``mtime_ns``, so the next refresh
    hashes it: a second write within the same mtime tick (coarse clocks) would keep size and mtime.
    """
    stat = path.stat()
    mtime = stat.st_mtime_ns if time.time_ns() - stat.st_mtime_ns > RACY_NS else None
    trusted = (
        not rehash
        and previous is not None
        and bool(previous.get("sha256"))
        and mtime is not None
        and previous.get("mtime_ns") == mtime
        and previous.get("size") == stat.st_size
    )
    digest = previous["sha256"] if trusted else file_sha256(path) if read else None  # type: ignore[index]
    return {"size": stat.st_size, "mtime_ns": mtime, "sha256": digest}


@lru_cache(maxsize=4)
def previous_reader(store: str, snapshot: str) -> DatasetReader:
    return DatasetReader(store, snapshot)
