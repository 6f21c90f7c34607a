"""Reclaiming space: expire old snapshots and delete what no snapshot references.

A build writes its chunks before it commits, so a build that is killed or fails leaves chunk files that
no snapshot will ever reference (about the size of the data it wrote). Icechunk's garbage collection
deletes objects unreachable from every branch and tag; expiring snapshots first makes the data only
old snapshots held unreachable too. Both are Icechunk's own operations; this module adds the guard
that matters here: collection runs under the store's writer lock (a local store's running build
holds it, so its not yet committed chunks are never taken), and only objects older than a grace
period are deleted (the guard for object stores, where builds take no lock).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from storage.repo import open_repository, writer_lock

#: Objects younger than this are never deleted: a build on an object store (no lock) may be writing them.
DEFAULT_GRACE = dt.timedelta(hours=1)


@dataclass
class GcReport:
    """What one collection did (or, with ``dry_run``, would do)."""

    snapshots_expired: int
    chunks_deleted: int
    manifests_deleted: int
    snapshots_deleted: int
    bytes_deleted: int
    dry_run: bool

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def collect_garbage(
    path: str | Path,
    expire_older_than: dt.timedelta | None = None,
    grace: dt.timedelta = DEFAULT_GRACE,
    dry_run: bool = False,
) -> GcReport:
    """Expire snapshots older than ``expire_older_than`` (None keeps all history), then delete every
    object that no branch or tag reaches and that is older than ``grace``.

    Snapshots pinned by a running training job must not be expired: keep ``expire_older_than``
    longer than the longest job, or leave it None.
    """
    now = dt.datetime.now(dt.UTC)
    with writer_lock(path):
        repo = open_repository(path)
        expired: set[str] = set()
        if expire_older_than is not None and not dry_run:
            expired = repo.expire_snapshots(now - expire_older_than)
        summary = repo.garbage_collect(now - grace, dry_run=dry_run)
    return GcReport(
        snapshots_expired=len(expired),
        chunks_deleted=summary.chunks_deleted,
        manifests_deleted=summary.manifests_deleted,
        snapshots_deleted=summary.snapshots_deleted,
        bytes_deleted=summary.bytes_deleted,
        dry_run=dry_run,
    )
