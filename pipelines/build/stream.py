"""Stage 3a of a build: process the batches on Dask and write the recordings' shards as they fill.

Where a shard lies in the flat arrays depends on every earlier recording's event count, so a shard
can be written only once the batches before it are counted. Batches are sent in order, a few per
worker thread ahead of the results; each shard is written, by a task on the workers that hold its
batches, as soon as its rows are known, and a batch's results are let go once every shard they fill
is being written. A worker then holds the batches in flight and the shards being filled, not its
share of the dataset: before, one worker held all its results until every batch was counted (6.3 GB
at 70,000 N-MNIST files, 10.6 GB of RSS).
"""

from __future__ import annotations

import bisect
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from pipelines.build.plan import BuildPlan
from pipelines.build.process import BatchResult, process_batch
from storage import layout
from storage.schema import EVENT_DTYPE
from storage.writer import ShardTarget, Transaction, WriteToken

log = logging.getLogger("tmkt.build")

#: Batches in flight per worker thread: enough that a worker never waits for the coordinator to
#: send its next batch, few enough that results in flight stay a small multiple of one batch.
LOOKAHEAD = 4
#: Dask priority of shard writes over batches still queued: a shard written early frees its batches.
WRITE_PRIORITY = 1


@dataclass
class Fill:
    """Rows of one group of arrays arriving batch by batch, in batch order, and the shards of
    ``per_shard`` rows that they complete."""

    per_shard: int
    starts: list[int] = field(default_factory=lambda: [0])  # first row of each batch counted so far
    written: int = 0  # rows already given to writers

    def add(self, rows: int) -> None:
        """Count the next batch's rows."""
        self.starts.append(self.starts[-1] + rows)

    def complete(self, final: bool) -> Iterator[tuple[int, int, int, list[int]]]:
        """``(first, last, at, batches)`` of each shard whose rows are all counted, once each:
        ``batches`` hold rows ``[first, last)``, the first of them from row ``at``. ``final``: every
        batch is counted, so the last, shorter shard is complete too."""
        total = self.starts[-1]
        while self.written < total and (self.written + self.per_shard <= total or final):
            first, last = self.written, min(self.written + self.per_shard, total)
            lo = bisect.bisect_right(self.starts, first) - 1
            hi = bisect.bisect_left(self.starts, last)
            batches = [i for i in range(lo, hi) if self.starts[i + 1] > self.starts[i]]
            yield first, last, self.starts[batches[0]], batches
            self.written = last

    def needed(self) -> int:
        """The first batch with rows not yet given to writers (all counted ones: their number)."""
        return bisect.bisect_right(self.starts, self.written) - 1

    @property
    def rows(self) -> int:
        return self.starts[-1]


class RecordingStream:
    """Process a plan's batches and write every recording's events and frames into ``tx``."""

    def __init__(self, tx: Transaction, plan: BuildPlan, client: Any, plan_future: Any) -> None:
        self.tx, self.plan, self.client, self.plan_future = tx, plan, client, plan_future
        self.events = {
            name: tx.growing_target(layout.EVENT_FIELDS[name], (), EVENT_DTYPE[name], kind="events")
            for name in EVENT_DTYPE.names
        }
        self.frames = {
            spec.key: tx.growing_target(
                layout.event_frames(spec.key), (spec.time_bins, 2, *spec.size), np.uint16
            )
            for spec in plan.specs
        }
        self.event_fill = Fill(next(iter(self.events.values())).rows_per_shard)
        self.frame_fills = {key: Fill(target.rows_per_shard) for key, target in self.frames.items()}

    def run(self, batches: list[list[int]], hashed: list[Any], started: float) -> list[dict[str, Any]]:
        """Every batch's `BatchResult.meta`, in batch order, once all shards are written and merged."""
        from distributed import as_completed

        client, n = self.client, len(batches)
        threads = sum(w["nthreads"] for w in client.scheduler_info()["workers"].values())
        lookahead = LOOKAHEAD * max(1, threads)
        metas: list[Any] = [None] * n
        outputs: dict[str, list[Any]] = {"events": [None] * n, "frames": [None] * n}
        batch_of: dict[str, int] = {}  # key of a batch's meta future -> the batch
        queue = as_completed()
        sent = counted = 0
        progress = _Progress(n, started)
        while True:
            while sent < n and len(batch_of) < lookahead:
                result = client.submit(
                    process_batch, self.plan_future, batches[sent], hashed[sent], pure=False
                )
                meta = client.submit(BatchResult.meta, result)
                for kind in outputs:
                    outputs[kind][sent] = client.submit(BatchResult.output, result, kind)
                batch_of[meta.key] = sent
                queue.add(meta)
                sent += 1
            future = next(queue, None)
            if future is None:
                break
            if future.key not in batch_of:  # a shard write
                self.tx.merge(future.result())
                continue
            batch = batch_of.pop(future.key)
            metas[batch] = future.result()
            progress.done(metas[batch])
            while counted < n and metas[counted] is not None:
                self._count(metas[counted])
                counted += 1
            for write in self._writes(outputs, final=counted == n):
                queue.add(write)
            self._release(outputs)
        self._set_lengths()
        return metas

    def _count(self, meta: dict[str, Any]) -> None:
        self.event_fill.add(int(meta["counts"].sum()))
        for key, fill in self.frame_fills.items():
            fill.add(int(meta["samples"][key].sum()))

    def _writes(self, outputs: dict[str, list[Any]], final: bool) -> list[Any]:
        """A task for every shard that the counted batches complete."""
        submit = self.client.submit
        writes = [
            submit(
                _write_event_shard,
                self.events,
                first,
                last,
                at,
                *[outputs["events"][i] for i in batches],
                pure=False,
                priority=WRITE_PRIORITY,
            )
            for first, last, at, batches in self.event_fill.complete(final)
        ]
        for key, fill in self.frame_fills.items():
            writes += [
                submit(
                    _write_frame_shard,
                    self.frames[key],
                    key,
                    first,
                    last,
                    at,
                    *[outputs["frames"][i] for i in batches],
                    pure=False,
                    priority=WRITE_PRIORITY,
                )
                for first, last, at, batches in fill.complete(final)
            ]
        return writes

    def _release(self, outputs: dict[str, list[Any]]) -> None:
        """Let go of the batch outputs that every shard they fill has taken (the write tasks keep
        what they still need)."""
        needed = {"events": self.event_fill.needed()}
        needed["frames"] = min((f.needed() for f in self.frame_fills.values()), default=needed["events"])
        for kind, futures in outputs.items():
            for i in range(needed[kind]):
                futures[i] = None

    def _set_lengths(self) -> None:
        for name in EVENT_DTYPE.names:
            self.tx.set_rows(layout.EVENT_FIELDS[name], self.event_fill.rows)
        for key, fill in self.frame_fills.items():
            self.tx.set_rows(layout.event_frames(key), fill.rows)


class _Progress:
    """A log line, with rates, about every 10 % of the batches."""

    def __init__(self, batches: int, started: float) -> None:
        self.batches, self.started = batches, started
        self.step = max(1, batches // 10)
        self.count = self.recordings = self.events = 0

    def done(self, meta: dict[str, Any]) -> None:
        self.count += 1
        self.recordings += len(meta["rows"])
        self.events += int(meta["counts"].sum())
        if self.count % self.step and self.count != self.batches:
            return
        seconds = max(time.perf_counter() - self.started, 1e-9)
        log.info(
            "processed %d/%d batches: %d recordings, %.2f M events (%.0f recordings/s, %.2f M events/s)",
            self.count,
            self.batches,
            self.recordings,
            self.events / 1e6,
            self.recordings / seconds,
            self.events / seconds / 1e6,
        )


def _write_event_shard(
    targets: dict[str, ShardTarget], first: int, last: int, at: int, *parts: dict[str, np.ndarray]
) -> list[WriteToken]:
    """Rows ``[first, last)`` of every event field, from batch outputs starting at row ``at``: one
    task for all fields, so that each batch's events move between workers once."""
    return [_rows(target, name, first, last, at, parts) for name, target in targets.items()]


def _write_frame_shard(
    target: ShardTarget, key: str, first: int, last: int, at: int, *parts: dict[str, np.ndarray]
) -> list[WriteToken]:
    """Rows ``[first, last)`` of frame key ``key``, from batch outputs starting at row ``at``."""
    return [_rows(target, key, first, last, at, parts)]


def _rows(
    target: ShardTarget, name: str, first: int, last: int, at: int, parts: tuple[dict[str, np.ndarray], ...]
) -> WriteToken:
    pieces = [output[name] for output in parts]
    data = pieces[0] if len(pieces) == 1 else np.concatenate(pieces)
    return target.write(first, last, data[first - at : last - at])
