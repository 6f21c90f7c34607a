"""Garbage collection: what killed or failed writes left behind is reclaimed; data stays intact."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

from storage.maintenance import collect_garbage
from storage.reader import DatasetReader
from storage.schema import FrameSpec
from storage.verify import verify_store
from tests.conftest import ROOT
from tests.test_store import random_recordings, write_store

#: Writes a big array into a transaction of the store, then dies by SIGKILL before the commit.
KILLED_WRITE = """
import os, signal, sys
import numpy as np
from storage.writer import Transaction
tx = Transaction(sys.argv[1])
array = tx.create_array("frames/orphan/events", (4096, 10, 2, 34, 34), np.uint16)
array[:] = np.random.default_rng(0).integers(0, 60000, array.shape, dtype=np.uint16)
os.kill(os.getpid(), signal.SIGKILL)
"""


def store_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def test_gc_reclaims_a_killed_write_and_the_store_still_verifies(tmp_path: Path) -> None:
    store = tmp_path / "s"
    recordings = random_recordings(np.random.default_rng(0), 30)
    snapshot = write_store(store, recordings, FrameSpec(time_bins=5, size=(34, 34)))
    frames = DatasetReader(store).event_frames().copy()
    clean = store_bytes(store)

    killed = subprocess.run([sys.executable, "-c", KILLED_WRITE, str(store)], cwd=ROOT, timeout=120)
    assert killed.returncode == -9
    littered = store_bytes(store)
    assert littered > clean + 10_000_000  # the killed write left about 50 MB of chunks behind
    assert DatasetReader(store).snapshot_id == snapshot  # and no visible change

    dry = collect_garbage(store, grace=dt.timedelta(0), dry_run=True)
    assert dry.chunks_deleted > 0 and store_bytes(store) == littered
    report = collect_garbage(store, grace=dt.timedelta(0))
    assert report.chunks_deleted == dry.chunks_deleted and report.bytes_deleted > 10_000_000
    assert store_bytes(store) < clean + 100_000
    assert verify_store(store) == []
    np.testing.assert_array_equal(DatasetReader(store).event_frames(), frames)


def test_gc_within_the_grace_period_deletes_nothing(tmp_path: Path) -> None:
    store = tmp_path / "s"
    write_store(store, random_recordings(np.random.default_rng(1), 5), FrameSpec(time_bins=5, size=(34, 34)))
    subprocess.run([sys.executable, "-c", KILLED_WRITE, str(store)], cwd=ROOT, timeout=120)
    before = store_bytes(store)
    assert collect_garbage(store).chunks_deleted == 0  # default grace: an hour
    assert store_bytes(store) == before


def test_expiring_history_keeps_the_latest_snapshot(tmp_path: Path) -> None:
    store = tmp_path / "s"
    spec = FrameSpec(time_bins=5, size=(34, 34))
    rng = np.random.default_rng(2)
    first = write_store(store, random_recordings(rng, 20), spec, "a")
    latest = write_store(store, random_recordings(rng, 8), spec, "b")
    report = collect_garbage(store, expire_older_than=dt.timedelta(0), grace=dt.timedelta(0))
    assert report.snapshots_expired >= 1 and report.chunks_deleted > 0
    reader = DatasetReader(store)
    assert reader.snapshot_id == latest and reader.n_recordings == 8
    assert first not in [s["id"] for s in reader.history()]
    assert verify_store(store) == []


def test_cli_gc_reports_and_reclaims(tmp_path: Path) -> None:
    from tests.conftest import tmkt_command

    store = tmp_path / "s"
    write_store(store, random_recordings(np.random.default_rng(3), 5), FrameSpec(time_bins=5, size=(34, 34)))
    subprocess.run([sys.executable, "-c", KILLED_WRITE, str(store)], cwd=ROOT, timeout=120)
    littered = store_bytes(store)
    command = tmkt_command("store", "gc", str(store), "--grace-minutes", "0", "--json")
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["chunks_deleted"] > 0 and report["dry_run"] is False
    assert littered - store_bytes(store) >= report["bytes_deleted"] * 0.9
    assert verify_store(store) == []
