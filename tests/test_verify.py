"""`store verify` against corruption of every array: bytes on disk, lost chunks, tampered commits.

Each case starts from a copy of one real build (builtin source through the Dask pipeline), damages
one thing, and expects a FAULT line naming the array, never a traceback and never "OK".
"""

from __future__ import annotations

import os
import shutil
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import zarr

from pipelines.build import BuildConfig, run_build
from storage.reader import DatasetReader
from storage.repo import BRANCH, open_repository
from storage.schema import EVENT_DTYPE, FrameSpec
from storage.verify import events_digest, verify_store
from storage.writer import Transaction
from tests.conftest import ROOT, fresh_process_json, tmkt_command


def build_builtin(root: Path, **options: Any) -> Path:
    """A healthy store of the built-in source, 4 recordings per class, built on one worker."""
    config = BuildConfig(
        source="builtin",
        raw=str(root / "raw"),
        store=str(root / "store"),
        workers=1,
        source_options={"recordings_per_class": 4},
        **options,
    )
    assert run_build(config).committed
    assert verify_store(config.store) == []
    return Path(config.store)


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_builtin(tmp_path_factory.mktemp("verify"))


@pytest.fixture
def store(built: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(built, copy)
    assert verify_store(copy) == []
    return copy


def rewrite(store: Path, name: str, change: Callable[[np.ndarray], np.ndarray]) -> None:
    """Commit new values for one array and nothing else (its build-time digests stay as they were)."""
    session = open_repository(store).writable_session(BRANCH)
    array = zarr.open_group(session.store, mode="r+")[name]
    array[...] = change(array[...])
    session.commit(f"tamper {name}")


def chunk_files(store: Path, name: str) -> list[Path]:
    """The chunk files of one array: those a same-values rewrite of it creates."""
    before = set((store / "chunks").iterdir())
    rewrite(store, name, lambda values: values)
    files = sorted(set((store / "chunks").iterdir()) - before)
    assert files, f"{name} has no chunk file of its own (inlined in the manifest?)"
    return files


def frames_key(store: Path) -> str:
    return DatasetReader(store).default_frame_key()


def flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


def faults_naming(store: Path, name: str) -> list[str]:
    faults = verify_store(store)
    assert faults, "verify passed a corrupted store"
    named = [f for f in faults if name in f]
    assert named, f"no fault names {name}: {faults}"
    return named


def test_flipped_static_image_bytes_fail_verify(store: Path) -> None:
    for path in chunk_files(store, "images/data"):
        flip_byte(path)
    faults_naming(store, "images/data")


def test_flipped_static_frame_bytes_fail_verify(store: Path) -> None:
    name = f"frames/{frames_key(store)}/static"
    for path in chunk_files(store, name):
        flip_byte(path)
    faults_naming(store, name)


def test_deleted_image_chunk_fails_verify(store: Path) -> None:
    for path in chunk_files(store, "images/data"):
        path.unlink()
    faults_naming(store, "images/data")


def test_swapped_image_labels_fail_verify(store: Path) -> None:
    def swap(labels: np.ndarray) -> np.ndarray:
        out = labels.copy()
        out[labels == 3], out[labels == 5] = 5, 3
        return out

    assert {3, 5} <= set(DatasetReader(store).image_labels.tolist())
    rewrite(store, "images/label", swap)
    faults_naming(store, "images/label")


def test_changed_event_labels_fail_verify(store: Path) -> None:
    rewrite(store, "events/label", lambda labels: (labels + 1) % 10)
    faults_naming(store, "events/label")


def test_truncated_frame_shard_is_a_fault_not_a_traceback(store: Path) -> None:
    name = f"frames/{frames_key(store)}/events"
    for path in chunk_files(store, name):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    faults_naming(store, name)


def test_corrupt_manifest_is_a_fault_not_a_traceback(store: Path) -> None:
    session = open_repository(store).writable_session(BRANCH)
    zarr.open_group(session.store, mode="r+")["manifest"].attrs["rows"] = [{"nonsense": 1}, 7]
    session.commit("tamper manifest")
    faults_naming(store, "manifest")


def test_cli_verify_prints_fault_lines_and_exits_1(store: Path) -> None:
    rewrite(store, "images/label", lambda labels: labels[::-1].copy())
    result = subprocess.run(
        tmkt_command("store", "verify", str(store)), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr
    lines = result.stdout.splitlines()
    assert any(line.startswith("FAULT images/label:") for line in lines), lines
    assert lines[-1].endswith("fault(s)")


def test_a_hash_sign_in_a_file_name_is_part_of_the_name(tmp_path: Path, real_data_dir: Path) -> None:
    """``Train/7/a#b.bin`` is hashed, refreshed and verified as itself, not as ``Train/7/a``."""
    from storage.verify import file_sha256

    raw = tmp_path / "raw"
    files = sorted((real_data_dir / "nmnist" / "Train" / "7").glob("*.bin"))[:3]
    (raw / "Train" / "7").mkdir(parents=True)
    (raw / "Train" / "1").mkdir(parents=True)
    shutil.copy(files[0], raw / "Train" / "7" / "a#b.bin")
    shutil.copy(files[1], raw / "Train" / "7" / "a")  # what the name would be cut to
    for f in sorted((real_data_dir / "nmnist" / "Train" / "1").glob("*.bin"))[:2]:
        shutil.copy(f, raw / "Train" / "1" / f.name)
    config = BuildConfig(source="nmnist", raw=str(raw), store=str(tmp_path / "s"), workers=1)
    run_build(config)
    row = next(r for r in DatasetReader(config.store).manifest if r["path"] == "Train/7/a#b.bin")
    assert row["status"] == "ok" and row["sha256"] == file_sha256(raw / "Train" / "7" / "a#b.bin")

    shutil.copy(files[2], raw / "Train" / "7" / "a#b.bin")  # an edit of that recording
    result = run_build(config)
    assert result.committed and result.report["changes"]["changed"] == 1
    reader = DatasetReader(config.store)
    index = reader.sources.index("Train/7/a#b.bin")
    assert reader.events(index)["t"].size == (files[2].stat().st_size // 5)
    assert verify_store(config.store, raw=raw) == []


def test_a_quarantined_static_does_not_make_every_refresh_commit(tmp_path: Path) -> None:
    """An hourly refresh of an unchanged folder commits nothing, bad static files included."""
    config = BuildConfig(
        source="builtin",
        raw=str(tmp_path / "raw"),
        store=str(tmp_path / "s"),
        workers=1,
        source_options={"recordings_per_class": 2},
    )
    run_build(config)
    static = tmp_path / "raw" / "static"
    (static / "no-such-class").mkdir()
    (static / "no-such-class" / "x.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")
    first = run_build(config)
    assert first.committed
    assert any(q["path"].endswith("no-such-class/x.png") for q in first.report["quarantined"])
    again = run_build(config)
    assert not again.committed and again.snapshot == first.snapshot
    (static / "no-such-class" / "x.png").write_bytes(b"changed")  # a change of the bad file is one
    assert run_build(config).committed


@pytest.mark.timeout(120)  # before the fix, hashing the FIFO waited for a writer forever
def test_verify_reads_only_regular_raw_inputs_that_the_build_hashed(
    tmp_path: Path, real_data_dir: Path
) -> None:
    """A FIFO or a link loop quarantined at listing is not re-read; an input turned FIFO is a fault."""

    raw = tmp_path / "raw"
    for digit in ("1", "7"):
        (raw / "Train" / digit).mkdir(parents=True)
        for f in sorted((real_data_dir / "nmnist" / "Train" / digit).glob("*.bin"))[:2]:
            shutil.copy(f, raw / "Train" / digit / f.name)
    os.mkfifo(raw / "Train" / "7" / "pipe.bin")
    (raw / "Train" / "1" / "loop.bin").symlink_to(raw / "Train" / "1")  # a link loop to its folder
    config = BuildConfig(
        source="nmnist", raw=str(raw), store=str(tmp_path / "s"), workers=1, max_bad_fraction=0.5
    )
    result = run_build(config)
    assert result.committed
    reasons = {q["path"]: q["reason"] for q in result.report["quarantined"]}
    assert set(reasons) == {"Train/7/pipe.bin", "Train/1/loop.bin"}, reasons
    assert verify_store(config.store, raw=raw) == []

    good = sorted((raw / "Train" / "7").glob("0*.bin"))
    good[0].unlink()
    os.mkfifo(good[0])  # an input the build read is now a FIFO: reported, never opened to block
    flip_byte(good[1])
    assert sorted(verify_store(config.store, raw=raw)) == sorted(
        [
            f"{good[0]}: raw input cannot be read (not a regular file)",
            f"{good[1]}: raw input changed since the build (sha256 differs)",
        ]
    )


# -- blocks ----------------------------------------------------------------------------------------

#: (events a block, bytes a piece) verify reads at once: one recording and one chunk, a few, all
BLOCKS = [(1, 1), (20_000, 200_000), (1 << 40, 1 << 40)]


@pytest.fixture(scope="module")
def built_windows(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A build whose frames count only the events inside fixed windows (`_events_in_windows`)."""
    return build_builtin(tmp_path_factory.mktemp("verify-windows"), window_us=20_000)


def verify_in_blocks(store: Path, monkeypatch: pytest.MonkeyPatch, events: int, piece: int) -> list[str]:
    import storage.digests
    import storage.verify

    monkeypatch.setattr(storage.verify, "DIGEST_BLOCK_EVENTS", events)
    monkeypatch.setattr(storage.digests, "PIECE_BYTES", piece)
    return verify_store(store)


@pytest.mark.parametrize("windows", [False, True])
@pytest.mark.parametrize(("events", "piece"), BLOCKS)
def test_fault_lines_do_not_depend_on_the_block(
    built: Path,
    built_windows: Path,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    windows: bool,
    events: int,
    piece: int,
) -> None:
    """Events outside the sensor and frames that miscount, in more recordings than verify names
    (20), give the same lines in the same order whatever block verify reads at once."""
    store = tmp_path / "store"
    shutil.copytree(built_windows if windows else built, store)
    reader = DatasetReader(store)
    key, n = reader.default_frame_key(), reader.n_recordings
    assert n > 20
    sums = reader.event_frames().reshape(n, -1).sum(axis=1)

    def outside(x: np.ndarray) -> np.ndarray:
        x = x.copy()
        x[reader.offsets[1:-1] - 1] = 60_000  # the last event of every recording but the last
        return x

    def one_more(frames: np.ndarray) -> np.ndarray:
        frames = frames.copy()
        frames[:, 0, 0, 0, 0] += 1
        return frames

    rewrite(store, "events/x", outside)
    rewrite(store, f"frames/{key}/events", one_more)
    faults = verify_in_blocks(store, monkeypatch, events, piece)
    assert [f for f in faults if "outside the sensor" in f] == [
        f"{source}: events outside the sensor or polarity not 0/1" for source in reader.sources[:20]
    ]
    assert [f for f in faults if "counts for" in f] == [
        f"frames/{key}: {reader.sources[i]} has {sums[i] + 1} counts for {sums[i]} events" for i in range(20)
    ]
    assert faults == verify_in_blocks(store, monkeypatch, *BLOCKS[-1])
    assert sum("stored events do not match" in f for f in faults) == n - 1


@pytest.mark.parametrize(("events", "piece"), BLOCKS)
def test_a_truncated_event_shard_is_one_fault_in_any_block(
    store: Path, monkeypatch: pytest.MonkeyPatch, events: int, piece: int
) -> None:
    for path in chunk_files(store, "events/t"):
        path.write_bytes(path.read_bytes()[: path.stat().st_size // 3])
    faults = verify_in_blocks(store, monkeypatch, events, piece)
    assert len(faults) == 1 and faults[0].startswith("events/t: rows 0.."), faults
    assert "cannot be read" in faults[0]


def test_decreasing_offsets_are_named_not_a_numpy_error(store: Path) -> None:
    def decreasing(offsets: np.ndarray) -> np.ndarray:
        offsets = offsets.copy()
        offsets[5] = offsets[7]
        return offsets

    rewrite(store, "events/offsets", decreasing)
    faults = verify_store(store)
    last = len(DatasetReader(store).offsets) - 1
    assert faults[:2] == [
        f"events/offsets: rows 0..{last} differ from the bytes written at build time",
        "events/offsets: not a non-decreasing sequence from 0",
    ]
    assert not any("cannot be read" in f for f in faults), faults


# -- memory ----------------------------------------------------------------------------------------

#: recordings x events of the store verify walks in `test_verify_memory_is_bounded_by_a_block`
MEMORY_RECORDINGS, MEMORY_EVENTS = 3_000, 10_000
#: what verify may grow past an opened reader (MiB)
MEMORY_BOUND_MIB = 300

#: run in a fresh interpreter: peak RSS (KiB on Linux) once the store is open, then after verify
VERIFY_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from storage.reader import DatasetReader
    from storage.verify import verify_store

    def peak_kib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    reader = DatasetReader(sys.argv[1])
    reader.offsets, reader.sensor_sizes, reader.manifest
    rss = {"opened": peak_kib()}
    faults = verify_store(sys.argv[1])
    rss["verified"] = peak_kib()
    print(json.dumps({"faults": faults, **rss}))
    """
)


def write_large_store(path: Path, spec: FrameSpec) -> None:
    """30 M events of 3,000 N-MNIST-sized recordings, written straight through a transaction, with
    frames in fixed windows whose counts are those verify expects (all in one cell of each row)."""
    n, k = MEMORY_RECORDINGS, MEMORY_EVENTS
    rng = np.random.default_rng(7)
    events = np.zeros(n * k, EVENT_DTYPE)
    events["x"], events["y"] = rng.integers(0, 34, (2, n * k), dtype=np.uint16)
    events["t"] = np.tile(np.arange(k, dtype=np.int64) * 40, n)  # 400 ms each, 10 ms windows below
    events["p"] = rng.integers(0, 2, n * k, dtype=np.uint8)
    offsets = np.arange(n + 1, dtype=np.int64) * k
    frames = np.zeros((n, spec.time_bins, 2, *spec.size), np.uint16)
    frames[:, 0, 0, 0, 0] = np.count_nonzero(np.arange(k) * 40 < spec.time_bins * spec.window_us)
    paths = [f"rec{i}.bin" for i in range(n)]
    with Transaction(path) as tx:
        for name in EVENT_DTYPE.names:
            tx.create_array(f"events/{name}", events.shape, EVENT_DTYPE[name], kind="events")[:] = events[
                name
            ]
        tx.write_array("events/offsets", offsets)
        tx.write_array("events/label", np.arange(n, dtype=np.int16) % 2)
        tx.write_array("events/split", np.zeros(n, np.uint8))
        tx.write_array("events/width", np.full(n, 34, np.uint16))
        tx.write_array("events/height", np.full(n, 34, np.uint16))
        tx.write_array("images/data", np.zeros((1, 28, 28, 1), np.uint8))
        tx.write_array("images/label", np.zeros(1, np.int16))
        tx.write_array("images/split", np.zeros(1, np.uint8))
        tx.set_frame_spec(spec)
        tx.create_array(f"frames/{spec.key}/events", frames.shape, np.uint16)[:] = frames
        tx.write_array(f"frames/{spec.key}/static", np.zeros((1, *spec.size), np.uint8))
        tx.set_root_attrs({"classes": ["a", "b"], "source": "test", "recording_sources": paths})
        tx.set_manifest(
            [
                {
                    "path": p,
                    "kind": "events",
                    "status": "ok",
                    "data_hash": events_digest(events[i * k : (i + 1) * k]),
                }
                for i, p in enumerate(paths)
            ]
        )
        tx.set_report({"recordings": n})
        tx.commit("a large store")


@pytest.mark.timeout(120)
def test_verify_memory_is_bounded_by_a_block(tmp_path: Path) -> None:
    """Verify walks events and frames a block of recordings (a few chunks of rows) at a time.

    Reading every event's x, y, p and t at once, with an owner array of 8 bytes an event, grew a
    fresh process by 911 MiB past an opened reader on this store of 30 M events (390 MB of event
    fields); in blocks of `DIGEST_BLOCK_EVENTS` it grew by 164 MiB.
    """
    spec = FrameSpec(time_bins=2, size=(4, 4), window_us=10_000)
    write_large_store(tmp_path / "s", spec)
    result = fresh_process_json(VERIFY_SCRIPT, str(tmp_path / "s"), timeout=100)
    grown = (result["verified"] - result["opened"]) >> 10
    print(f"verify peak RSS grew by {grown} MiB: {result}")
    assert result["faults"] == []
    assert grown < MEMORY_BOUND_MIB, f"verify grew by {grown} MiB past the opened reader"
