"""Opening the Icechunk repository behind a store, and serializing its commits.

A store path is a local directory or an object-store URL (``s3://bucket/prefix``, credentials from the
environment as boto would find them). Every build is one commit on branch ``main``; readers pin a
snapshot id, so a training job keeps reading the bytes it started on while a refresh commits.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import icechunk

BRANCH = "main"

# Icechunk warns on every open that the local filesystem is unsafe for concurrent commits; commits
# here are serialized by `writer_lock`, so that warning is noise; ICECHUNK_LOG still overrides this.
if "ICECHUNK_LOG" not in os.environ:
    icechunk.set_logs_filter("error")


class StoreNotFound(FileNotFoundError):
    pass


class CorruptStore(StoreNotFound):
    """The repository opens but a snapshot, manifest or chunk it names cannot be read."""


class NotAStore(StoreNotFound):
    """The path exists but cannot be a store (a file, say): Icechunk would panic on it."""


def check_store_path(path: str | Path) -> None:
    """Raise `NotAStore` when a local store path names something other than a folder.

    Icechunk's local storage raises a Rust panic (a BaseException, not an Exception) for a file,
    so this runs before any Icechunk call on the path: at open, at create, and before a build starts.
    """
    if not is_url(path) and Path(path).exists() and not Path(path).is_dir():
        raise NotAStore(f"{path} is a file, not a store folder")


def is_url(path: str | Path) -> bool:
    return "://" in str(path)


def _storage(path: str | Path) -> icechunk.Storage:
    text = str(path)
    if text.startswith("s3://"):
        bucket, _, prefix = text[len("s3://") :].partition("/")
        return icechunk.s3_storage(bucket=bucket, prefix=prefix, from_env=True)
    if is_url(text):
        raise ValueError(f"unsupported store URL {text!r}: use a local path or s3://bucket/prefix")
    return icechunk.local_filesystem_storage(str(Path(text).resolve()))


def open_repository(path: str | Path, create: bool = False) -> icechunk.Repository:
    """Open the repository at ``path``; with ``create`` make it when missing."""
    check_store_path(path)
    storage = _storage(path)
    if create:
        if not is_url(path):
            Path(path).mkdir(parents=True, exist_ok=True)
        return icechunk.Repository.open_or_create(storage)
    if not is_url(path) and not Path(path).exists():
        raise StoreNotFound(f"store not found: {path} (build one with `tmkt build-dataset`)")
    try:
        return icechunk.Repository.open(storage)
    except Exception as err:  # icechunk raises its own error types for a missing or foreign repo
        raise StoreNotFound(f"{path} is not a TMKT store: {err}") from err


class StoreConflict(RuntimeError):
    """Another writer committed to the store after this build planned on its previous snapshot."""


#: Per store held by this process: [the open lock file, how many holders].
_HELD: dict[str, list] = {}
_HELD_GUARD = threading.Lock()


@contextlib.contextmanager
def writer_lock(path: str | Path) -> Iterator[None]:
    """Hold the one-writer lock of a local store; re-entrant within this process.

    A build holds it from its plan to its commit: two builds that planned on the same snapshot would
    otherwise both commit, the later one silently dropping the earlier one's arrays (every build
    writes the whole dataset). The second build waits here and then plans on the first one's snapshot.
    Icechunk on a local filesystem does not make concurrent commits safe, so the lock is a file beside
    the store (``fcntl.flock``, released by the kernel when a killed process's file closes). It is
    re-entrant per process, not per thread, because an orchestrator may run the plan and the write
    (which takes the lock again) in threads of its own. Object stores take no lock: there
    `Transaction` checks the branch did not move since the plan, and Icechunk refuses a commit whose
    parent moved while it wrote.
    """
    if is_url(path):
        yield
        return
    key = str(Path(path).resolve())
    with _HELD_GUARD:
        entry = _HELD.get(key)
        if entry is not None:
            entry[1] += 1
    if entry is None:
        lock_path = Path(key + ".lock")
        lock_path.parent.mkdir(parents=True, exist_ok=True)
        handle = open(lock_path, "w")  # held across the yield, closed below
        fcntl.flock(handle, fcntl.LOCK_EX)  # waits for another process's build
        with _HELD_GUARD:
            entry = _HELD[key] = [handle, 1]
    try:
        yield
    finally:
        with _HELD_GUARD:
            entry[1] -= 1
            last = entry[1] == 0
            if last:
                del _HELD[key]
        if last:
            fcntl.flock(entry[0], fcntl.LOCK_UN)
            entry[0].close()


def read_error_line(err: BaseException) -> str:
    """One line for a read error: the Zarr key it happened at (when the error names one), the error,
    and its root cause. Icechunk's errors span dozens of lines of Rust context."""
    text = str(err).strip() or type(err).__name__
    lines = [line.strip(" |x`->\t") for line in text.splitlines()]
    lines = [line for line in lines if line and not line.startswith(("at ", "context:", "with "))]
    keys = re.findall(r'with key="([^"]+)"', text)
    line = f"{keys[-1]}: " if keys else ""
    line += lines[0] if lines else type(err).__name__
    if len(lines) > 1 and lines[-1] != lines[0]:
        line += f" ({lines[-1]})"
    return line


def unreadable_snapshot(repo: icechunk.Repository, snapshot_id: str) -> str | None:
    """Why the snapshot ``snapshot_id`` cannot be read, or None when it can.

    Zarr reports an unreadable snapshot as a missing root group; reading the snapshot's ancestry
    tells a damaged file apart from a repository that holds no dataset yet.
    """
    try:
        list(repo.ancestry(snapshot_id=snapshot_id))
    except Exception as err:
        return read_error_line(err)
    return None
