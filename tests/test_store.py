"""The store on its own: transactions, snapshots, readers and verification (no Dask, no sources)."""

from __future__ import annotations

import numpy as np
import pytest

from storage.reader import DatasetReader
from storage.repo import StoreNotFound
from storage.schema import EVENT_DTYPE, FrameSpec
from storage.verify import events_digest, verify_store
from storage.writer import Transaction


def random_recordings(rng: np.random.Generator, n: int, size: int = 34) -> list[np.ndarray]:
    out = []
    for _ in range(n):
        k = int(rng.integers(1, 300))
        ev = np.zeros(k, EVENT_DTYPE)
        ev["x"] = rng.integers(0, size, k)
        ev["y"] = rng.integers(0, size, k)
        ev["t"] = np.sort(rng.integers(0, 300_000, k))
        ev["p"] = rng.integers(0, 2, k)
        out.append(ev)
    return out


def write_store(path, recordings: list[np.ndarray], spec: FrameSpec, tag: str = "") -> str:
    """A complete dataset written by the coordinator alone; frames are plain per-pixel counts."""
    from pipelines.binning import bin_events

    flat = np.concatenate(recordings)
    offsets = np.concatenate([[0], np.cumsum([len(r) for r in recordings])])
    frames = np.stack([bin_events(r, (34, 34), spec) for r in recordings])
    with Transaction(path) as tx:
        for name in EVENT_DTYPE.names:
            tx.create_array(f"events/{name}", flat.shape, flat.dtype[name], kind="events")[:] = flat[name]
        tx.write_array("events/offsets", offsets)
        tx.write_array("events/label", np.arange(len(recordings), dtype=np.int16) % 2)
        tx.write_array("events/split", np.zeros(len(recordings), np.uint8))
        tx.write_array("events/width", np.full(len(recordings), 34, np.uint16))
        tx.write_array("events/height", np.full(len(recordings), 34, np.uint16))
        tx.write_array("images/data", np.zeros((3, 28, 28, 1), np.uint8))
        tx.write_array("images/label", np.array([0, 1, 1], np.int16))
        tx.write_array("images/split", np.zeros(3, np.uint8))
        group = tx.root.require_group(f"frames/{spec.key}")
        group.attrs.update(spec.to_attrs())
        tx.create_array(f"frames/{spec.key}/events", frames.shape, np.uint16)[:] = frames
        tx.write_array(f"frames/{spec.key}/static", np.zeros((3, *spec.size), np.uint8))
        paths = [f"{tag}rec{i}.bin" for i in range(len(recordings))]
        tx.root.attrs.update(
            {"classes": ["a", "b"], "frames_key": spec.key, "recording_sources": paths, "source": "test"}
        )
        tx.root.require_group("manifest").attrs["rows"] = [
            {"path": p, "kind": "events", "status": "ok", "sha256": "", "data_hash": events_digest(r)}
            for p, r in zip(paths, recordings, strict=True)
        ]
        tx.root.require_group("report").attrs["recordings"] = len(recordings)
        return tx.commit(f"test {tag}")


@pytest.fixture
def spec() -> FrameSpec:
    return FrameSpec(time_bins=5, size=(34, 34))


def test_round_trip_is_lossless(tmp_path, spec):
    recordings = random_recordings(np.random.default_rng(0), 40)
    snapshot = write_store(tmp_path / "s", recordings, spec)
    reader = DatasetReader(tmp_path / "s")
    assert reader.snapshot_id == snapshot
    assert reader.n_recordings == 40
    for i, expected in enumerate(recordings):
        got = reader.events(i)
        for name in EVENT_DTYPE.names:
            np.testing.assert_array_equal(got[name], expected[name])
    frames = reader.event_frames()
    assert frames.shape == (40, 5, 2, 34, 34)
    np.testing.assert_array_equal(frames.reshape(40, -1).sum(1), [len(r) for r in recordings])
    np.testing.assert_array_equal(reader.event_frames(indices=np.array([3, 7])), frames[[3, 7]])
    assert verify_store(tmp_path / "s") == []


def test_pinned_snapshot_is_isolated_from_later_commits(tmp_path, spec):
    rng = np.random.default_rng(1)
    first = write_store(tmp_path / "s", random_recordings(rng, 10), spec, "a")
    pinned = DatasetReader(tmp_path / "s", first)
    before = pinned.event_frames().copy(), pinned.events(4).copy()
    second = write_store(tmp_path / "s", random_recordings(rng, 12), spec, "b")
    assert second != first
    assert DatasetReader(tmp_path / "s").n_recordings == 12
    again = DatasetReader(tmp_path / "s", first)
    np.testing.assert_array_equal(again.event_frames(), before[0])
    np.testing.assert_array_equal(pinned.event_frames(), before[0])
    np.testing.assert_array_equal(again.events(4), before[1])
    assert [s["id"] for s in again.history()][:2] == [second, first]


def test_a_failed_transaction_changes_nothing(tmp_path, spec):
    rng = np.random.default_rng(2)
    first = write_store(tmp_path / "s", random_recordings(rng, 5), spec)
    with pytest.raises(RuntimeError, match="boom"), Transaction(tmp_path / "s") as tx:
        tx.write_array("events/offsets", np.array([0, 1]))
        raise RuntimeError("boom")
    reader = DatasetReader(tmp_path / "s")
    assert reader.snapshot_id == first and reader.n_recordings == 5
    # the lock was released: another transaction can commit
    write_store(tmp_path / "s", random_recordings(rng, 6), spec)
    assert DatasetReader(tmp_path / "s").n_recordings == 6


def test_verify_finds_tampered_data(tmp_path, spec):
    recordings = random_recordings(np.random.default_rng(3), 8)
    write_store(tmp_path / "s", recordings, spec)
    recordings[2] = recordings[2].copy()
    recordings[2]["x"][0] = (recordings[2]["x"][0] + 1) % 34
    # a store whose manifest hashes do not match its events
    with Transaction(tmp_path / "bad") as tx:
        pass  # an uncommitted transaction leaves no snapshot with data
    with pytest.raises(StoreNotFound, match="no dataset"):
        DatasetReader(tmp_path / "bad")
    good = DatasetReader(tmp_path / "s")
    rows = good.manifest
    rows[2]["data_hash"] = events_digest(recordings[2])
    with Transaction(tmp_path / "s") as tx:
        source = good.root
        for name in ("x", "y", "t", "p", "offsets", "label", "split", "width", "height"):
            tx.write_array(f"events/{name}", source[f"events/{name}"][:])
        for name in ("data", "label", "split"):
            tx.write_array(f"images/{name}", source[f"images/{name}"][:])
        tx.root.attrs.update(good.attrs)
        tx.root.require_group("manifest").attrs["rows"] = rows
        tx.root.require_group("report")
        tx.commit("tampered manifest")
    faults = verify_store(tmp_path / "s")
    assert faults == ["rec2.bin: stored events do not match their recorded hash"]


@pytest.mark.parametrize("block", [1, 250, 1 << 30])  # one recording a block, some, all at once
def test_digests_read_in_blocks_are_each_recordings_own(tmp_path, spec, monkeypatch, block):
    import storage.verify

    recordings = random_recordings(np.random.default_rng(4), 9)
    recordings[4] = recordings[4][:0]  # an empty recording inside a block
    write_store(tmp_path / "s", recordings, spec)
    monkeypatch.setattr(storage.verify, "DIGEST_BLOCK_EVENTS", block)
    digests = list(storage.verify.recording_digests(DatasetReader(tmp_path / "s")))
    assert digests == [events_digest(r) for r in recordings]


def test_missing_store_is_a_clear_error(tmp_path):
    with pytest.raises(StoreNotFound, match="store not found"):
        DatasetReader(tmp_path / "nowhere")
