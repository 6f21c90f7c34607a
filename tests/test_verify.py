"""`store verify` against corruption of every array: bytes on disk, lost chunks, tampered commits.

Each case starts from a copy of one real build (builtin source through the Dask pipeline), damages
one thing, and expects a FAULT line naming the array, never a traceback and never "OK".
"""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import zarr

from pipelines.build import BuildConfig, run_build
from storage.reader import DatasetReader
from storage.repo import BRANCH, open_repository
from storage.verify import verify_store
from tests.conftest import ROOT, tmkt_command


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("verify")
    config = BuildConfig(
        source="builtin",
        raw=str(root / "raw"),
        store=str(root / "store"),
        workers=1,
        source_options={"recordings_per_class": 4},
    )
    assert run_build(config).committed
    assert verify_store(config.store) == []
    return Path(config.store)


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
    import os

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
