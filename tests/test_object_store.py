"""Stores on object storage: build, refresh, info, verify, pinned reads, concurrent writers and
streaming training, against an S3-compatible server on loopback (the ``s3_store`` fixture)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

from pipelines.build import BuildConfig, run_build
from storage.reader import DatasetReader
from storage.verify import verify_store
from tests.conftest import ROOT, tmkt_command

pytestmark = pytest.mark.slow


def builtin_config(raw: Path, store: str, per_class: int, time_bins: int = 4) -> BuildConfig:
    return BuildConfig(
        source="builtin",
        raw=str(raw),
        store=store,
        workers=1,
        time_bins=time_bins,
        size=(16, 16),
        source_options={"recordings_per_class": per_class},
    )


def cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(tmkt_command(*args), cwd=ROOT, capture_output=True, text=True, timeout=300)


def test_build_info_verify_refresh_and_pinned_reads(s3_store, tmp_path):
    first = run_build(builtin_config(tmp_path / "raw", s3_store, 4))
    info = cli("store", "info", s3_store, "--json")
    assert info.returncode == 0, info.stderr
    described = json.loads(info.stdout)
    assert described["snapshot"] == first.snapshot and described["recordings"] == 40
    assert sum(described["splits"].values()) == 40
    verified = cli("store", "verify", s3_store)
    assert verified.returncode == 0 and verified.stdout.strip().endswith("OK"), verified.stdout

    pinned = DatasetReader(s3_store)
    before = pinned.event_frames().copy()
    refresh = threading.Thread(target=run_build, args=(builtin_config(tmp_path / "raw", s3_store, 6),))
    refresh.start()
    reads = 0
    while refresh.is_alive() or reads == 0:  # the pinned snapshot reads the same bytes throughout
        np.testing.assert_array_equal(pinned.event_frames(), before)
        reads += 1
    refresh.join()
    latest = DatasetReader(s3_store)
    assert latest.snapshot_id != first.snapshot and latest.n_recordings == 60
    assert [s["id"] for s in latest.history()][1] == first.snapshot
    np.testing.assert_array_equal(DatasetReader(s3_store, first.snapshot).event_frames(), before)
    np.testing.assert_array_equal(pinned.event_frames(), before)
    assert verify_store(s3_store) == [] and verify_store(s3_store, first.snapshot) == []


#: A refresh of the store argv[2] from raw folder argv[1] adding frames of argv[3] time bins.
WRITER = """
import json, sys
from pathlib import Path
from pipelines.build import run_build
from tests.test_object_store import builtin_config
result = run_build(builtin_config(Path(sys.argv[1]), sys.argv[2], 3, int(sys.argv[3])))
print("RESULT", json.dumps({"snapshot": result.snapshot, "parent": result.report["parent_snapshot"]}))
"""


def test_two_concurrent_writers_both_commit_and_lose_nothing(s3_store, tmp_path):
    """Two refreshes started together, each adding its own frame representation: the one that
    commits second finds the branch moved, plans again on the first one's snapshot, and commits."""
    base = run_build(builtin_config(tmp_path / "raw", s3_store, 3)).snapshot
    from tests.test_writers import run_together

    results = run_together(
        [[sys.executable, "-c", WRITER, str(tmp_path / "raw"), s3_store, str(bins)] for bins in (3, 5)]
    )

    reader = DatasetReader(s3_store)
    assert sorted(spec.time_bins for spec in reader.frame_keys().values()) == [3, 4, 5]  # both kept
    first, second = sorted(results, key=lambda r: r["parent"] != base)
    assert first["parent"] == base and second["parent"] == first["snapshot"]  # the true parents
    assert reader.snapshot_id == second["snapshot"]
    assert [s["id"] for s in reader.history()][:3] == [second["snapshot"], first["snapshot"], base]
    assert reader.n_recordings == 30 and verify_store(s3_store) == []


#: 16x16 frames at T=4 take 4 kB a recording: the training split (about 1 MB) and the statics (230 kB)
#: do not fit, and the buffers hold one shard each
BUDGET = 600_000


def test_training_streams_from_s3(s3_store, tmp_path):
    from tmkt.config import TrainConfig
    from tmkt.streaming import StreamConfig, StreamedData, load_split
    from tmkt.train import train

    run_build(builtin_config(tmp_path / "raw", s3_store, 40))  # 400 recordings: 2 shards of train
    streamed = load_split(s3_store, stream=StreamConfig(max_resident_bytes=BUDGET))
    assert isinstance(streamed, StreamedData) and len(streamed.event_frames.shards) == 2
    n_train = len(streamed.event_labels)
    cfg = TrainConfig(
        store=s3_store,
        method="tmkt",
        out=str(tmp_path / "run"),
        backbone="small",
        epochs=2,
        min_steps=0,  # exactly two epochs: the per-epoch coverage is under test
        batch_size=8,
        device="cpu",
        num_threads=1,
        progress_bar=False,
        record_indices=True,
        max_resident_bytes=BUDGET,
    )
    result = train(cfg)
    assert result["completed"] and result["store_snapshot"] == streamed.snapshot
    assert result["val_accuracy"] is not None
    rows = [json.loads(x) for x in (tmp_path / "run" / "indices_rank0.jsonl").read_text().splitlines()]
    per_epoch = -(-n_train // 8)
    assert len(rows) == 2 * per_epoch
    for epoch in range(2):  # every training recording once per epoch
        seen = [i for row in rows[epoch * per_epoch : (epoch + 1) * per_epoch] for i in row["index"]]
        assert sorted(seen) == list(range(n_train))


def torchrun(store: str, out: Path, *overrides: str) -> subprocess.CompletedProcess:
    """``torchrun --standalone --nproc-per-node 2 -m flows.cli train`` on the CPU (gloo)."""
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "flows.cli",
        "train",
        "--store",
        store,
        "--method",
        "tmkt",
        "--out",
        str(out),
        "--epochs",
        "2",
        "min_steps=0",
        "backbone=small",
        "batch_size=4",
        "lr=0.005",
        "augment=false",
        "device=cpu",
        "num_threads=1",
        "log_every=1",
        "progress_bar=false",
        "record_indices=true",
        "max_resident_bytes=100000",  # 262 kB of frames, 16 kB of statics: one shard of 8 a buffer
        *overrides,
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600, env=env)
    assert done.returncode == 0, done.stderr[-4000:]
    return done


def test_torchrun_ranks_stream_their_own_shards_from_s3_and_resume_exactly(s3_store, tmp_path):
    from tests.test_streaming import write_store
    from tests.test_train import assert_resumed_exactly, tiny_data

    data = tiny_data(n_per_class=32)  # 64 recordings, all training, in 8 shards of 8
    write_store(s3_store, data, np.zeros(64), shard_rows=8)
    torchrun(s3_store, tmp_path / "straight")
    for epoch in range(2):  # 8 steps of 4 per rank and epoch
        shards, seen = [], []
        for rank in range(2):
            rows = [json.loads(x) for x in (tmp_path / "straight" / f"indices_rank{rank}.jsonl").open()]
            indices = [i for row in rows[epoch * 8 : (epoch + 1) * 8] for i in row["index"]]
            shards.append({i // 8 for i in indices})
            seen += indices
        assert shards[0].isdisjoint(shards[1]) and len(shards[0]) == len(shards[1]) == 4
        assert sorted(seen) == list(range(64))  # together the ranks cover the split once

    # stopped after 12 of 16 steps (mid epoch 1; checkpoints at steps 5, 10 and 12), resumed from rank 0's
    torchrun(s3_store, tmp_path / "split", "checkpoint_every=5", "max_steps=12")
    torchrun(s3_store, tmp_path / "split", "resume=true")
    assert_resumed_exactly(tmp_path / "straight", tmp_path / "split", steps=16)
