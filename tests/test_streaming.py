"""The streaming loader: exact against the reference, shard order, ranks, budget, bounded memory."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from tests.test_loader import DEVICE, OnHost, assert_same_batches
from tests.test_reference import make_data
from tmkt.data import MixData
from tmkt.errors import BudgetTooSmall
from tmkt.loader import AugmentConfig, LoaderConfig
from tmkt.streaming import StreamConfig, StreamedData, StreamingLoader, load_split, make_loader

ROOT = Path(__file__).resolve().parents[1]


def write_store(path, data: MixData, splits: np.ndarray, shard_rows: int, classes=None) -> str:
    """A store of frames whose event array has ``shard_rows`` recordings a shard (chunks of 4)."""
    from storage.schema import FrameSpec
    from storage.writer import BULK_CODEC, Transaction

    events = data.event_frames
    spec = FrameSpec(time_bins=events.shape[1], size=events.shape[3:])
    classes = classes or [str(k) for k in range(data.num_classes)]
    with Transaction(path) as tx:
        tx.write_array("events/label", data.event_labels.astype(np.int16))
        tx.write_array("events/split", np.asarray(splits, np.uint8))
        tx.write_array("events/offsets", np.zeros(len(events) + 1, np.int64))
        tx.write_array("images/label", data.static_labels.astype(np.int16))
        tx.write_array("images/split", np.zeros(len(data.static_labels), np.uint8))
        tx.root.require_group(f"frames/{spec.key}").attrs.update(spec.to_attrs())
        array = tx.root.create_array(
            f"frames/{spec.key}/events",
            shape=events.shape,
            dtype=np.uint16,
            chunks=(min(4, shard_rows), *events.shape[1:]),
            shards=(shard_rows, *events.shape[1:]),
            compressors=BULK_CODEC,
        )
        array[:] = events
        statics = tx.root.create_array(
            f"frames/{spec.key}/static",
            shape=data.static_frames.shape,
            dtype=np.uint8,
            chunks=(4, *data.static_frames.shape[1:]),
            shards=(8, *data.static_frames.shape[1:]),
            compressors=BULK_CODEC,
        )
        statics[:] = data.static_frames
        tx.root.attrs.update({"classes": classes, "frames_key": spec.key, "source": "test"})
        return tx.commit("frames in small shards")


@pytest.fixture
def stored(tmp_path):
    """60 recordings (every third one outside the train split) in shards of 8, and the train split."""
    data = make_data(n=60, m=30)
    splits = np.where(np.arange(60) % 3 == 2, 1, 0)
    write_store(tmp_path / "store", data, splits, shard_rows=8)
    resident = MixData.from_store(tmp_path / "store", split="train")
    return tmp_path / "store", resident


def streamed(path, buffer_shards: int = 2) -> StreamedData:
    data = load_split(
        path, split="train", stream=StreamConfig(max_resident_bytes=10_000, buffer_shards=buffer_shards)
    )
    assert isinstance(data, StreamedData)
    return data


def loader(data, **overrides) -> OnHost:
    """The loader of ``data`` on TMKT_TEST_DEVICE (the GPU graph fed from the stream on a machine
    with one), its outputs copied to the host for the comparisons."""
    cfg = {"batch_size": 16, "device": DEVICE, "num_threads": 1, **overrides}
    return OnHost(make_loader(data, LoaderConfig(**cfg)))


#: the crop and flip of the graph, and every augmentation (the gather through a source map)
AUGMENTS = {
    "crop+flip": AugmentConfig(crop_padding=2, hflip=True),
    "all": AugmentConfig(crop_padding=2, hflip=True, roll=2, rotate=15, shear=10, cutout=3, drop_time=0.4),
}


@pytest.mark.parametrize("augment", list(AUGMENTS))
@pytest.mark.parametrize("mode", ["mix", "event", "static", "pair"])
def test_streamed_batches_equal_the_reference_on_the_same_data(stored, mode, augment):
    path, resident = stored
    data = streamed(path)
    assert data.static_scale == resident.static_scale  # the streamed sum gives the resident mean
    np.testing.assert_array_equal(data.event_labels, resident.event_labels)
    augment = AUGMENTS[augment]
    stream_loader = loader(data, mode=mode, augment=augment)
    stream_loader.set_ratio(0.4)
    # the reference reads the resident copy at the indices the stream delivered, with the same draws
    for epoch in (0, 1):
        batches = assert_same_batches(resident, stream_loader, 0.4, augment, mode, epoch=epoch)
        seen = np.concatenate([b.index.numpy() for b in batches])
        assert sorted(seen.tolist()) == list(range(len(resident.event_labels)))


def test_streamed_mixed_batches_carry_their_pure_event_sequence(stored):
    """``with_events`` on a stream: the event sequence under the mixed one's draws, as resident."""
    path, resident = stored
    augment = AUGMENTS["all"]
    stream_loader = loader(streamed(path), augment=augment, with_events=True)
    stream_loader.set_ratio(0.4)
    batches = assert_same_batches(resident, stream_loader, 0.4, augment, "mix", with_events=True)
    for batch in batches:
        assert torch.equal(batch.events[batch.mag.bool()], batch.frames[batch.mag.bool()])
        assert not torch.equal(batch.events, batch.frames)  # statics mixed in somewhere
    assert sorted(np.concatenate([b.index.numpy() for b in batches]).tolist()) == list(range(40))


def test_order_is_shuffled_by_shard_and_within_buffers_and_reproducible(stored):
    path, resident = stored
    data = streamed(path, buffer_shards=2)
    stream = data.event_frames
    assert [len(s) for s in stream.shards] == [6, 5, 5, 6, 5, 5, 6, 2]  # 40 train rows, store shards of 8
    first = loader(data)
    buffers = first.buffers(0)
    assert len(buffers) == 4
    for buffer in buffers:  # a buffer holds exactly the recordings of two whole store shards
        shards = {int(stream.rows[i]) // 8 for i in buffer}
        assert len(shards) <= 2 and sum(len(stream.shards[s]) for s in shards) == len(buffer)
    order0 = first.shard(0)
    assert not np.array_equal(order0, np.sort(order0))  # shuffled within buffers
    np.testing.assert_array_equal(order0, loader(streamed(path)).shard(0))  # same seed, same order
    assert not np.array_equal(order0, first.shard(1))
    assert not np.array_equal(order0, loader(data, seed=1).shard(0))
    np.testing.assert_array_equal(loader(data, shuffle=False).shard(0), np.arange(40))


@pytest.mark.parametrize("drop_last", [False, True])
def test_ranks_read_disjoint_whole_shards(stored, drop_last):
    path, _ = stored
    data = streamed(path, buffer_shards=1)
    ranks = [
        StreamingLoader(data, LoaderConfig(batch_size=4, device="cpu", drop_last=drop_last), rank, 3)
        for rank in range(3)
    ]
    shards = [set(int(data.event_frames.rows[i]) // 8 for i in r.shard(0)) for r in ranks]
    assert all(a.isdisjoint(b) for k, a in enumerate(shards) for b in shards[k + 1 :])
    seen = [r.shard(0) for r in ranks]
    if drop_last:  # the same whole number of batches on every rank
        assert len({len(s) for s in seen}) == 1 and len(seen[0]) % 4 == 0 and len(seen[0]) > 0
    else:
        assert sorted(np.concatenate(seen).tolist()) == list(range(40))
    for r, expected in zip(ranks, seen, strict=True):  # the delivered batches follow the plan
        got = np.concatenate([b.index.numpy() for b in r])
        np.testing.assert_array_equal(got, expected)


def test_the_mean_of_a_large_split_is_read_from_shards_spread_over_it(stored):
    path, resident = stored
    stream = streamed(path).event_frames
    assert stream.event_mean() == resident.event_frames.mean()  # 8 shards: all read, exact
    picked = [0, 2, 4, 7]  # np.linspace(0, 7, 4) truncated
    expected = np.concatenate([resident.event_frames[stream.shards[k]] for k in picked]).mean()
    assert stream.event_mean(most_shards=4) == expected


def test_small_splits_stay_resident_and_budget_is_checked(stored):
    path, resident = stored
    data = load_split(path, split="train", stream=StreamConfig(max_resident_bytes=1 << 30))
    assert type(data) is MixData
    np.testing.assert_array_equal(data.event_frames, resident.event_frames)
    assert type(make_loader(data, LoaderConfig(device="cpu"))).__name__ == "MixLoader"
    with pytest.raises(BudgetTooSmall, match="static pool holds 0 images, fewer than the 3 classes"):
        load_split(path, split="train", stream=StreamConfig(max_resident_bytes=100))


def test_statics_over_half_the_budget_are_paired_from_a_pool_drawn_each_epoch(tmp_path):
    """90 statics (10,800 bytes) under a 10,000-byte budget: a pool of a quarter of it (20 images)
    per epoch, 6 of each of the 3 classes (their share), reproducible, read by shards; the batches
    are the reference's on the resident frames paired from that epoch's pool."""
    data = make_data(n=60, m=90)
    write_store(tmp_path / "store", data, np.zeros(60), shard_rows=8)
    budget = StreamConfig(max_resident_bytes=10_000)
    streamed_data = load_split(tmp_path / "store", split="train", stream=budget)
    pool = streamed_data.static_pool
    assert pool is not None and pool.capacity == 20
    rows = {epoch: pool.rows(0, epoch) for epoch in (0, 1)}
    for picked in rows.values():
        assert np.bincount(data.static_labels[picked]).tolist() == [6, 6, 6]
    assert not np.array_equal(rows[0], rows[1])
    np.testing.assert_array_equal(pool.rows(0, 1), rows[1])
    resident = MixData.from_store(tmp_path / "store", split="train")
    stream_loader = loader(streamed_data, augment=AUGMENTS["all"])
    stream_loader.set_ratio(0.4)
    for epoch, picked in rows.items():
        frames, labels = pool.draw(0, epoch)
        np.testing.assert_array_equal(frames, data.static_frames[picked])
        reference = dataclasses.replace(
            resident, static_frames=frames, static_labels=labels, static_scale=streamed_data.static_scale
        )
        assert_same_batches(reference, stream_loader, 0.4, AUGMENTS["all"], "mix", epoch=epoch)


def test_leaving_an_epoch_early_then_a_full_epoch(stored):
    path, _ = stored
    stream_loader = loader(streamed(path), batch_size=4)
    batches = iter(stream_loader)
    next(batches)
    del batches
    stream_loader.set_epoch(0)
    seen = np.concatenate([b.index.numpy() for b in stream_loader])
    np.testing.assert_array_equal(seen, stream_loader.shard(0))


def test_a_finished_epoch_reads_the_next_epochs_first_buffer_ahead(stored):
    """The read ahead is used when the next epoch is the one planned, and dropped otherwise (the
    rows it delivers are checked against the resident copy in the exactness test's epoch 1)."""
    path, _ = stored
    data = streamed(path, buffer_shards=2)
    stream, stream_loader = data.event_frames, loader(data, batch_size=4)
    reads, read = [], stream.read
    stream.read = lambda indices, out=None, then=None: (
        reads.append(np.asarray(indices).copy()) or read(indices, out, then)
    )

    def epoch(k: int) -> list[np.ndarray]:
        stream_loader.set_epoch(k)
        batches = list(stream_loader)
        stream_loader._cursor._thread.join()  # the read ahead has finished
        got = np.concatenate([b.index.numpy() for b in batches])
        np.testing.assert_array_equal(got, stream_loader.shard(k))
        return list(reads)

    def same(got, expected):
        assert len(got) == len(expected) and all(map(np.array_equal, got, expected))

    same(epoch(0), [*stream_loader.buffers(0), stream_loader.buffers(1)[0]])
    reads.clear()
    same(epoch(1), [*stream_loader.buffers(1)[1:], stream_loader.buffers(2)[0]])
    reads.clear()
    same(epoch(5), [*stream_loader.buffers(5), stream_loader.buffers(6)[0]])  # not epoch 2: all read


# ---- bounded memory ------------------------------------------------------------------------------

RSS_T, RSS_SIZE, RSS_N, RSS_CLASSES = 8, 32, 8192, 8
RSS_BUDGET = 48 << 20
#: Allowed above the budget and the baseline (the same trainer on in-memory data): the store's
#: libraries, Icechunk and Zarr, imported and running (35 MB measured), and the malloc arenas that
#: the shard-reading threads keep (tens of MB). Measured: the run peaked 127 MB above the baseline
#: (buffers included; 148 MB when Zarr decoded 64-row reads, 186 MB with whole-shard Zarr reads, the
#: same with 4096 recordings as with 8192); a resident load would exceed the bound by its frames
#: alone (256 MB).
RSS_OVERHEAD = 192 << 20


def write_big_store(path: Path, n: int = RSS_N) -> int:
    """``n`` recordings (``RSS_N``: 256 MB of frames) written shard by shard; returns the frames' bytes."""
    from storage.schema import FrameSpec
    from storage.writer import SAMPLE_SHARD, Transaction

    rng = np.random.default_rng(0)
    spec = FrameSpec(time_bins=RSS_T, size=(RSS_SIZE, RSS_SIZE))
    shape = (n, RSS_T, 2, RSS_SIZE, RSS_SIZE)
    labels = np.arange(n) % RSS_CLASSES
    with Transaction(path) as tx:
        tx.write_array("events/label", labels.astype(np.int16))
        tx.write_array("events/split", np.zeros(n, np.uint8))
        tx.write_array("events/offsets", np.zeros(n + 1, np.int64))
        tx.write_array("images/label", np.arange(4 * RSS_CLASSES, dtype=np.int16) % RSS_CLASSES)
        tx.write_array("images/split", np.zeros(4 * RSS_CLASSES, np.uint8))
        tx.root.require_group(f"frames/{spec.key}").attrs.update(spec.to_attrs())
        array = tx.create_array(f"frames/{spec.key}/events", shape, np.uint16)
        for start in range(0, n, SAMPLE_SHARD):
            stop = min(n, start + SAMPLE_SHARD)
            array[start:stop] = rng.poisson(0.5, (stop - start, *shape[1:])).astype(np.uint16)
        statics = rng.integers(0, 256, (4 * RSS_CLASSES, RSS_SIZE, RSS_SIZE)).astype(np.uint8)
        tx.write_array(f"frames/{spec.key}/static", statics)
        tx.root.attrs.update({"classes": [str(k) for k in range(RSS_CLASSES)], "frames_key": spec.key})
        tx.commit("a store larger than the memory budget")
    return int(np.prod(shape)) * 2


def rss_run(store: str, out: str) -> None:
    """Train one epoch (``store``: streaming under ``RSS_BUDGET``; "": the baseline, the same trainer on
    64 in-memory recordings of the same shape); print the peak RSS in bytes as JSON."""
    import resource

    from tmkt.config import TrainConfig
    from tmkt.train import train

    cfg = TrainConfig(
        store=store,
        method="tmkt",
        out=out,
        backbone="small",
        width=0.25,
        epochs=1,
        min_steps=0,
        batch_size=32,
        device="cpu",
        num_threads=1,
        checkpoint_every=0,
        log_every=50,
        progress_bar=False,
        augment=False,
        record_indices=True,
        max_resident_bytes=RSS_BUDGET,
    )
    torch.set_num_threads(1)
    if store:
        result = train(cfg)
    else:
        rng = np.random.default_rng(0)
        data = MixData(
            event_frames=rng.poisson(0.5, (64, RSS_T, 2, RSS_SIZE, RSS_SIZE)).astype(np.uint16),
            event_labels=np.arange(64) % RSS_CLASSES,
            static_frames=rng.integers(0, 256, (32, RSS_SIZE, RSS_SIZE)).astype(np.uint8),
            static_labels=np.arange(32) % RSS_CLASSES,
            static_scale=1.0,
            num_classes=RSS_CLASSES,
        )
        result = train(cfg, data)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # kB on Linux
    print(json.dumps({"peak_rss": peak, "steps": result["steps"]}))


def _peak(store: str, out: Path) -> dict:
    code = f"from tests.test_streaming import rss_run; rss_run({store!r}, {str(out)!r})"
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=600, check=False
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_training_from_a_store_larger_than_the_budget_keeps_memory_bounded(tmp_path):
    frame_bytes = write_big_store(tmp_path / "big")
    assert frame_bytes > RSS_BUDGET + RSS_OVERHEAD  # resident, the split alone would break the bound
    baseline = _peak("", tmp_path / "baseline")
    run = _peak(str(tmp_path / "big"), tmp_path / "run")
    assert run["steps"] == RSS_N // 32
    extra = run["peak_rss"] - baseline["peak_rss"]
    assert extra < RSS_BUDGET + RSS_OVERHEAD, f"{extra / 2**20:.0f} MiB above the baseline"
    rows = [json.loads(x) for x in (tmp_path / "run" / "indices_rank0.jsonl").read_text().splitlines()]
    seen = [i for row in rows for i in row["index"]]
    assert sorted(seen) == list(range(RSS_N))  # every recording once in the epoch
    result = json.loads((tmp_path / "run" / "result.json").read_text())
    assert result["completed"] and result["store_snapshot"]


@pytest.mark.slow
def test_stream_bench_reports_both_modes(stored, tmp_path):
    from benches.loader import main

    path, _ = stored
    out = tmp_path / "bench.json"
    argv = ["--stream", "--store", f"small={path}", "--seconds", "0.5", "--batch-size", "8"]
    assert main([*argv, "--max-resident-bytes", "10000", "--json", str(out)]) == 0
    result = json.loads(out.read_text())["small"]
    assert result["max_resident_bytes"] == 10000 and result["store"] == str(path)
    for mode in ("resident", "stream"):
        numbers = result[mode]
        assert numbers["samples_per_s"] > 0 and numbers["recordings"] == 40
        assert numbers["peak_rss_mb"] >= numbers["import_rss_mb"] > 0
    ratio = result["stream"]["samples_per_s"] / result["resident"]["samples_per_s"]
    assert result["stream_over_resident"] == pytest.approx(ratio, abs=1e-3)


def test_reader_picks_any_indices_by_shard_ranges(tmp_path):
    from storage.reader import DatasetReader

    data = make_data(n=60, m=30)
    write_store(tmp_path / "store", data, np.zeros(60), shard_rows=8)
    reader = DatasetReader(tmp_path / "store")
    indices = np.random.default_rng(1).permutation(60)[:25]  # unsorted, across many shards
    np.testing.assert_array_equal(reader.event_frames(indices=indices), data.event_frames[indices])
    out = np.empty((14, *data.event_frames.shape[1:]), np.uint16)
    reader.event_frames_into(np.arange(9, 23), out)
    np.testing.assert_array_equal(out, data.event_frames[9:23])
    assert reader.frames_shard_rows() == 8


def test_two_loaders_of_one_split_never_share_a_buffer(stored):
    path, resident = stored
    data = streamed(path, buffer_shards=1)
    first, second = loader(data, batch_size=4), loader(data, batch_size=4, mode="event", seed=5)
    left_open = iter(first)
    next(left_open)  # an epoch left mid-way: its pass is closed when the other loader opens one
    batches = list(second)
    seen = np.concatenate([b.index.numpy() for b in batches])
    np.testing.assert_array_equal(seen, second.shard(0))
    for batch in batches:  # every row is the recording it claims to be
        expected = torch.from_numpy(resident.event_frames[batch.index.numpy()].astype(np.float32))
        assert torch.equal(batch.frames, expected)
