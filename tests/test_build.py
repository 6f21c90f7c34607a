"""Builds through the real pipeline: Dask LocalCluster, real files, real store."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from pipelines.build import BuildConfig, BuildError, run_build
from pipelines.formats.idx import read_idx
from storage.reader import DatasetReader
from storage.verify import verify_store

REAL = Path(os.environ.get("TMKT_REAL_DATA", "")) if os.environ.get("TMKT_REAL_DATA") else None
needs_real = pytest.mark.skipif(
    REAL is None or not (REAL / "nmnist").is_dir(),
    reason="real data not found: set TMKT_REAL_DATA to the shared data folder",
)


def copy_subset(dst: Path, per_class: int) -> list[Path]:
    """The first ``per_class`` real N-MNIST recordings of each digit, in the download's layout."""
    copied = []
    for digit in range(10):
        files = sorted((REAL / "nmnist" / "Train" / str(digit)).glob("*.bin"))[:per_class]
        (dst / "Train" / str(digit)).mkdir(parents=True)
        for f in files:
            shutil.copy(f, dst / "Train" / str(digit) / f.name)
            copied.append(dst / "Train" / str(digit) / f.name)
    return copied


@needs_real
@pytest.mark.slow
def test_real_nmnist_build_matches_independent_decode(tmp_path, client):
    import tonic

    config = BuildConfig(
        source="nmnist", raw=str(REAL / "nmnist"), static=str(REAL / "mnist"), store=str(tmp_path / "s")
    )
    result = run_build(config, client=client)
    reader = DatasetReader(tmp_path / "s")
    assert result.committed and reader.snapshot_id == result.snapshot

    files = sorted((REAL / "nmnist" / "Train").rglob("*.bin"))
    decoded = {
        f.relative_to(REAL / "nmnist").as_posix(): tonic.io.read_mnist_file(
            str(f), dtype=tonic.datasets.NMNIST.dtype
        )
        for f in files
    }
    assert reader.n_recordings == len(files) == 600
    assert reader.n_events == sum(len(e) for e in decoded.values())
    assert reader.classes == [str(d) for d in range(10)]
    assert reader.attrs["sensor_size"] == [34, 34]
    assert reader.attrs["split_rule"].startswith("published Train/Test folders")
    assert reader.n_images == 10_000
    mnist_labels = read_idx(REAL / "mnist" / "t10k-labels-idx1-ubyte.gz")
    np.testing.assert_array_equal(np.bincount(reader.image_labels), np.bincount(mnist_labels))
    for i in range(0, 600, 37):  # lossless, field by field, against tonic's decoder
        expected = decoded[reader.sources[i]]
        got = reader.events(i)
        for name in ("x", "y", "t", "p"):
            np.testing.assert_array_equal(got[name], expected[name].astype(got[name].dtype))
        assert reader.labels[i] == int(reader.sources[i].split("/")[1])
    frames = reader.event_frames()
    assert frames.shape == (600, 10, 2, 34, 34)
    np.testing.assert_array_equal(frames.reshape(600, -1).sum(1), np.diff(reader.offsets))
    splits = np.bincount(reader.splits, minlength=3)
    assert splits[2] == 0 and 30 <= splits[1] <= 90  # val carved from Train, about 10 %
    assert verify_store(tmp_path / "s") == []

    again = run_build(config, client=client)
    assert not again.committed and again.snapshot == result.snapshot


def write_png(path: Path, image: np.ndarray) -> None:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(image).save(path)


@needs_real
@pytest.mark.slow
def test_bad_inputs_are_quarantined_and_the_rest_is_intact(tmp_path, client):
    from pipelines.formats.aedat2 import write_aedat2

    raw, static = tmp_path / "raw", tmp_path / "static"
    copy_subset(raw, 6)
    # recast the N-MNIST layout as a generic class-folder tree
    for digit in range(10):
        (raw / "Train" / str(digit)).rename(raw / f"d{digit}")
    shutil.rmtree(raw / "Train")
    images = read_idx(REAL / "mnist" / "t10k-images-idx3-ubyte.gz")[:20]
    for i, image in enumerate(images):
        write_png(static / f"d{i % 10}" / f"{i}.png", image)

    truncated = raw / "d1" / "truncated.bin"
    truncated.write_bytes((raw / "d1" / sorted(os.listdir(raw / "d1"))[0]).read_bytes()[:-3])
    (raw / "d2" / "empty.bin").write_bytes(b"")
    wrong_header = raw / "d3" / "wrong_header.aedat"
    write_aedat2(wrong_header, np.zeros(0, dtype=[("x", "<u2"), ("y", "<u2"), ("t", "<i8"), ("p", "u1")]))
    wrong_header.write_bytes(b"#!AER-DAT9.9\r\n" + wrong_header.read_bytes()[14:] + b"\x00" * 8)
    write_png(static / "cats" / "stray.png", images[0])  # a static class with no recordings
    (static / "d4" / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n not an image")

    config = BuildConfig(
        source="folder",
        raw=str(raw),
        static=str(static),
        store=str(tmp_path / "s"),
        size=(34, 34),
        max_bad_fraction=0.2,
    )
    result = run_build(config, client=client)
    reader = DatasetReader(tmp_path / "s")
    reasons = {q["path"]: q["reason"] for q in result.report["quarantined"]}
    assert set(reasons) == {
        "d1/truncated.bin",
        "d2/empty.bin",
        "d3/wrong_header.aedat",
        "cats/stray.png",
        "d4/broken.png",
    }
    assert "empty" in reasons["d2/empty.bin"]
    assert "unknown class folder" in reasons["cats/stray.png"]
    assert reader.n_recordings == 60 and reader.n_images == 20
    info = reader.info()
    assert {q["path"] for q in info["quarantined"]} == set(reasons)
    from pipelines.formats.nmnist import read_nmnist

    for i, source in enumerate(reader.sources):
        np.testing.assert_array_equal(reader.events(i)["t"], read_nmnist(raw / source)["t"])
    assert verify_store(tmp_path / "s") == []

    # past --max-bad-fraction the build fails, names files, and commits nothing
    strict = BuildConfig(**{**config.__dict__, "max_bad_fraction": 0.01})
    with pytest.raises(BuildError, match="truncated.bin"):
        run_build(strict, client=client, force=True)
    assert DatasetReader(tmp_path / "s").snapshot_id == result.snapshot


@needs_real
@pytest.mark.slow
def test_recording_in_unknown_class_folder_is_quarantined(tmp_path, client):
    raw = tmp_path / "raw"
    copy_subset(raw, 3)
    (raw / "Train" / "cats").mkdir()
    shutil.copy(next((raw / "Train" / "0").glob("*.bin")), raw / "Train" / "cats" / "stray.bin")
    result = run_build(BuildConfig(source="nmnist", raw=str(raw), store=str(tmp_path / "s")), client=client)
    assert result.report["quarantined"] == [
        {"path": "Train/cats/stray.bin", "kind": "events", "reason": "unknown class folder 'cats'"}
    ]
    assert DatasetReader(tmp_path / "s").n_recordings == 30


@needs_real
@pytest.mark.slow
def test_killed_build_leaves_previous_snapshot_and_rerun_completes(tmp_path, client):
    raw = tmp_path / "raw"
    copy_subset(raw, 4)
    store = tmp_path / "s"
    first = run_build(BuildConfig(source="nmnist", raw=str(raw), store=str(store)), client=client)
    before = DatasetReader(store).event_frames().copy()
    copy_subset(tmp_path / "more", 30)
    for f in (tmp_path / "more").rglob("*.bin"):
        target = raw / f.relative_to(tmp_path / "more")
        if not target.exists():
            shutil.copy(f, target)

    command = [
        sys.executable,
        "-m",
        "flows.cli",
        "build-dataset",
        "--source",
        "nmnist",
        "--raw",
        str(raw),
        "--store",
        str(store),
        "--workers",
        "1",
        "--batch-size",
        "30",
    ]
    # kill when the build reports its first processed batch of ten (decoding under way), then when
    # it reports the last one (the last shard writes and the commit are next)
    killed_before_commit = 0
    for trigger in ("processed 1/10 batches", "processed 10/10 batches"):
        proc = subprocess.Popen(
            command, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True
        )
        seen = []
        for line in proc.stderr:
            seen.append(line)
            if trigger in line:
                os.killpg(proc.pid, signal.SIGKILL)
                break
        proc.wait()
        assert any(trigger in line for line in seen), "".join(seen[-20:])
        reader = DatasetReader(store)
        if reader.snapshot_id != first.snapshot:  # the kill came after the commit: a complete snapshot
            assert reader.n_recordings == 300
            break
        np.testing.assert_array_equal(reader.event_frames(), before)
        assert [s["id"] for s in reader.history()][0] == first.snapshot
        assert verify_store(store) == []
        killed_before_commit += 1
    assert killed_before_commit >= 1
    done = subprocess.run(command, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    reader = DatasetReader(store)
    assert reader.n_recordings == 300
    assert verify_store(store) == []
    assert all(len(s["id"]) > 0 for s in reader.history())


@needs_real
@pytest.mark.slow
def test_ingest_bench_reports_every_number(tmp_path):
    import tonic

    from benches.ingest import run

    files = copy_subset(tmp_path / "raw", 2)
    result = run(tmp_path / "raw", time_bins=10)
    decoded = sum(len(tonic.io.read_mnist_file(str(f), dtype=tonic.datasets.NMNIST.dtype)) for f in files)
    assert result["files"] == 20 and result["events"] == decoded
    for baseline in ("tonic", "tonic_cached"):
        assert result[f"{baseline}_events_per_s"] == pytest.approx(decoded / result[f"seconds_{baseline}"])
    assert result["events_per_s"] == pytest.approx(decoded / result["seconds_1_worker"])
    assert result["events_per_s_2_workers"] == pytest.approx(decoded / result["seconds_2_workers"])
    assert result["speedup_vs_tonic"] == pytest.approx(result["events_per_s"] / result["tonic_events_per_s"])
    assert result["speedup_vs_tonic_cached"] == pytest.approx(
        result["events_per_s"] / result["tonic_cached_events_per_s"]
    )
    assert result["decode_bin_events_per_s"] > 0
    for workers in ("1_worker", "2_workers"):
        stages = result[f"stages_{workers}"]
        assert {"plan", "process", "write", "total"} <= set(stages)
        assert stages["plan"] + stages["process"] + stages["write"] <= stages["total"]


@needs_real
def test_store_interleaves_classes_and_a_refresh_keeps_the_order(tmp_path, client):
    """The download lists N-MNIST digit by digit; the store holds each split's recordings in one
    run, classes interleaved (`store_order`), so that any shard is a sample of its split. A refresh
    that adds files keeps the order of the recordings it reuses, and their events."""
    copy_subset(tmp_path / "raw", 12)
    config = BuildConfig(source="nmnist", raw=str(tmp_path / "raw"), store=str(tmp_path / "s"), workers=2)
    assert run_build(config, client=client).committed
    before = DatasetReader(tmp_path / "s")
    assert before.splits.tolist() == sorted(before.splits.tolist())
    train = before.labels[before.splits == 0]
    assert (
        len(train) > 90 and [len(set(train[i : i + 20].tolist())) > 5 for i in range(0, 80, 20)] == [True] * 4
    )
    events = {path: before.events(i) for i, path in enumerate(before.sources)}

    more = sorted((REAL / "nmnist" / "Train" / "3").glob("*.bin"))[12:18]
    for f in more:
        shutil.copy(f, tmp_path / "raw" / "Train" / "3" / f.name)
    assert run_build(config, client=client).committed
    after = DatasetReader(tmp_path / "s")
    assert after.n_recordings == 126
    assert [p for p in after.sources if p in events] == before.sources
    for i, path in enumerate(after.sources):
        if path in events:
            np.testing.assert_array_equal(after.events(i), events[path])
