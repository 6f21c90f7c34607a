"""The DALI loader (CPU graph here): exact agreement with the reference, epochs, shards and ratios."""

from __future__ import annotations

import dataclasses
import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from scipy.stats import chisquare

from tests.test_reference import make_data
from tmkt.data import MixData, static_scale_of
from tmkt.loader import AugmentConfig, LoaderConfig, MixLoader
from tmkt.mixing import solve_p
from tmkt.reference import mix_batch_reference

FIELDS = ("frames", "labels", "mag", "mrp", "static", "events", "index")
#: The same tests check the GPU graph on a machine with one: TMKT_TEST_DEVICE=cuda, and
#: TMKT_TEST_RESIDENT=on|off for data held on the GPU or fed from the host.
DEVICE = os.environ.get("TMKT_TEST_DEVICE", "cpu")
RESIDENT = os.environ.get("TMKT_TEST_RESIDENT", "auto")


class OnHost:
    """The loader under test with every output copied to the host, so one set of comparisons checks
    the CPU graph here and the GPU graph on a machine with one; everything else is the loader's."""

    def __init__(self, loader: MixLoader) -> None:
        self.loader = loader

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def __len__(self) -> int:
        return len(self.loader)

    def __iter__(self):
        for batch in self.loader:
            moved = {f.name: getattr(batch, f.name) for f in dataclasses.fields(batch)}
            yield dataclasses.replace(batch, **{k: v.cpu() for k, v in moved.items() if v is not None})


def loader_for(data: MixData, **overrides) -> OnHost:
    cfg = {"batch_size": 16, "device": DEVICE, "resident": RESIDENT, "num_threads": 1, **overrides}
    return OnHost(MixLoader(data, LoaderConfig(**cfg)))


def assert_same_batches(data, loader, r_m, augment, mode, epoch=0, with_events=False):
    """Every batch of an epoch equals the reference fed the same draws (same generator state); with
    ``with_events`` each mixed batch's pure event sequence too."""
    loader.set_epoch(epoch)
    batches = list(loader)  # held together: outputs shared without a copy must stay intact
    rng = loader.epoch_rng(epoch)
    assert len(batches) == len(loader)
    for batch in batches:
        index = batch.index.numpy()
        expected = mix_batch_reference(data, index, r_m, rng, augment, mode=mode, with_events=with_events)
        for name in FIELDS:
            got, want = getattr(batch, name), getattr(expected, name)
            if want is None:
                assert got is None, name
                continue
            assert got.dtype == want.dtype and got.shape == want.shape, name
            assert torch.equal(got, want), f"{name} differs from the reference"
    return batches


@pytest.mark.parametrize("mode", ["mix", "event", "static", "pair"])
@pytest.mark.parametrize(
    "augment",
    [
        None,
        AugmentConfig(crop_padding=3, hflip=True),
        AugmentConfig(crop_padding=2, hflip=False),
        AugmentConfig(crop_padding=0, hflip=True),
    ],
    ids=["plain", "crop+flip", "crop", "flip"],
)
def test_dali_equals_the_reference_exactly(mode, augment):
    data = make_data(n=45)
    loader = loader_for(data, mode=mode, augment=augment, prefetch=2)
    loader.set_ratio(0.4)
    batches = assert_same_batches(data, loader, 0.4, augment, mode, epoch=2)
    assert [len(b.labels) for b in batches] == [16, 16, 13]
    if mode == "mix":
        mixed = torch.cat([b.mag for b in batches])
        assert 0 < mixed.mean() < 1, "a mixed epoch holds static and event frames"


def test_counts_over_the_whole_uint16_range_arrive_exactly():
    """Frames are gathered as int16 on the GPU: counts past 32767 must come back unsigned."""
    data = make_data(n=20)
    width = data.frame_size[1]
    data.event_frames[:, :, :, 0, :] = np.linspace(0, 65535, width).astype(np.uint16)
    got = torch.cat([b.frames for b in loader_for(data, mode="event", shuffle=False)])
    assert torch.equal(got, torch.from_numpy(data.event_frames.astype(np.float32)))
    assert got.max() == 65535


def test_in_distribution_the_cut_law_and_event_fraction_hold():
    data = make_data(n=200, m=12, T=8, size=(4, 4))
    r_m, T = 0.3, data.time_steps
    loader = loader_for(data, batch_size=50)
    loader.set_ratio(r_m)
    mags, mrps = [], []
    for epoch in range(10):
        loader.set_epoch(epoch)
        for batch in loader:
            mags.append(batch.mag)
            mrps.append(batch.mrp)
    mag, mrp = torch.cat(mags).numpy(), torch.cat(mrps).numpy().astype(np.float64)
    cut = T + 1 - mag.sum(axis=1).astype(int)  # number of event steps -> t*
    p = solve_p(r_m, T)
    probs = np.array([p * (1 - p) ** (t - 1) for t in range(1, T + 1)] + [(1 - p) ** T])
    assert chisquare(np.bincount(cut, minlength=T + 2)[1:], probs * len(cut)).pvalue > 1e-3
    assert abs(mrp.mean() - r_m) < 3 * mrp.std() / np.sqrt(len(mrp))


@pytest.mark.parametrize("drop_last", [False, True])
def test_each_recording_once_per_epoch_in_disjoint_shards(drop_last):
    data = make_data(n=50)
    world = 3
    shards = []
    for rank in range(world):
        loader = MixLoader(data, LoaderConfig(batch_size=8, device="cpu", drop_last=drop_last), rank, world)
        loader.set_epoch(4)
        batches = list(loader)
        sizes = [len(b.index) for b in batches]
        seen = torch.cat([b.index for b in batches]).numpy()
        assert len(batches) == len(loader)
        assert len(np.unique(seen)) == len(seen), "no recording twice in one epoch"
        np.testing.assert_array_equal(seen, loader.shard(4))
        if drop_last:
            assert sizes == [8, 8]  # 50 // 3 = 16 per rank, whole batches only
        else:
            assert sizes[:-1] == [8] * (len(sizes) - 1) and 0 < sizes[-1] <= 8
            assert sum(sizes) in (16, 17)
        shards.append(set(seen.tolist()))
    assert not (shards[0] & shards[1]) and not (shards[1] & shards[2]) and not (shards[0] & shards[2])
    union = set().union(*shards)
    if drop_last:
        assert len(union) == 48
    else:
        assert union == set(range(50))


def test_last_partial_batch_is_delivered_then_next_epoch_starts_clean():
    data = make_data(n=21)
    loader = loader_for(data, batch_size=8, prefetch=3)
    for epoch in range(3):
        loader.set_epoch(epoch)
        sizes = [len(b.labels) for b in loader]
        assert sizes == [8, 8, 5]
    dropped = loader_for(data, batch_size=8, drop_last=True)
    assert [len(b.labels) for b in dropped] == [8, 8] and len(dropped) == 2


def test_epochs_are_deterministic_and_differ_between_epochs():
    data = make_data(n=40)
    first, second = (loader_for(data, augment=AugmentConfig(), seed=11) for _ in range(2))
    for loader in (first, second):
        loader.set_epoch(1)
    for a, b in zip(first, second, strict=True):
        assert torch.equal(a.frames, b.frames) and torch.equal(a.index, b.index)
    order = []
    for epoch in (1, 2):
        first.set_epoch(epoch)
        order.append(torch.cat([b.index for b in first]))
    assert not torch.equal(order[0], order[1])
    assert sorted(order[0].tolist()) == sorted(order[1].tolist()) == list(range(40))


def test_leaving_an_epoch_early_does_not_leak_into_the_next():
    data = make_data(n=64)
    loader = loader_for(data, batch_size=8, prefetch=3)
    for _ in loader:
        break
    assert_same_batches(data, loader, 0.5, None, "mix", epoch=0)
    # an epoch kept open while another runs: each goes on with its own pipeline
    held = iter(loader)
    first = next(held)
    assert_same_batches(data, loader, 0.5, None, "mix", epoch=0)
    rest = list(held)
    assert torch.equal(torch.cat([first.index] + [b.index for b in rest]), torch.from_numpy(loader.shard(0)))


def test_set_ratio_changes_the_next_batches():
    data = make_data(n=400, m=12, T=10, size=(4, 4))
    loader = loader_for(data, batch_size=100, prefetch=1, shuffle=False)
    batches = iter(loader)
    loader.set_ratio(0.1)
    low = next(batches).mrp.mean().item()
    loader.set_ratio(0.9)
    high = next(batches).mrp.mean().item()
    loader.set_ratio(0.0)
    none = next(batches)
    loader.set_ratio(1.0)
    full = next(batches)
    assert low < 0.25 and high > 0.75
    assert torch.all(none.mag == 0) and torch.all(full.mag == 1)
    # all static: the same image at every step and polarity; all events: the recordings themselves
    assert torch.equal(none.frames, none.frames[:, :1, :1].expand_as(none.frames))
    assert torch.equal(
        full.frames, torch.from_numpy(data.event_frames[full.index.numpy()].astype(np.float32))
    )


def test_modes_fix_the_targets_and_event_mode_needs_no_statics():
    data = make_data(n=20)
    no_statics = MixData(
        data.event_frames, data.event_labels, np.zeros((0, 12, 10), np.uint8), np.zeros(0, np.int64), 1.0, 3
    )
    batches = list(loader_for(no_statics, mode="event"))
    assert all(torch.all(b.mag == 1) and torch.all(b.mrp == 1) for b in batches)
    with pytest.raises(ValueError, match="static"):
        loader_for(no_statics, mode="mix")
    one_class_missing = MixData(
        data.event_frames, data.event_labels, data.static_frames[:2], np.array([0, 1]), 1.0, 3
    )
    with pytest.raises(ValueError, match=r"\[2\]"):
        loader_for(one_class_missing, mode="static")
    with pytest.raises(ValueError, match="mode"):
        LoaderConfig(mode="swap")


def test_mixed_batches_can_carry_their_pure_event_sequence():
    data = make_data(n=20)
    crop = AugmentConfig(crop_padding=3, hflip=True)
    plain = list(loader_for(data, mode="mix", augment=crop))
    both = list(loader_for(data, mode="mix", augment=crop, with_events=True))
    assert len(plain) == len(both) and all(b.events is None for b in plain)
    for a, b in zip(plain, both, strict=True):
        # the same draws: asking for the event sequence changes nothing else
        assert torch.equal(a.frames, b.frames) and torch.equal(a.mag, b.mag)
        event_steps = b.mag.bool()
        assert torch.equal(b.events[event_steps], b.frames[event_steps])  # same crop and flip
        assert (~event_steps).any()  # statics were mixed in, so the two sequences differ somewhere
    unaugmented = next(iter(loader_for(data, mode="mix", with_events=True)))
    want = data.event_frames[unaugmented.index.numpy()].astype(np.float32)
    assert torch.equal(unaugmented.events, torch.from_numpy(want))
    with pytest.raises(ValueError, match="with_events"):
        LoaderConfig(mode="pair", with_events=True)


# ---- from_store ----------------------------------------------------------------------------------


def write_frames_store(
    path: Path, events: np.ndarray, labels, splits, statics, static_labels, recording=None
) -> str:
    """A store of these frames; ``recording`` (one per frame row) makes them slices of recordings."""
    from storage import layout
    from storage.schema import FrameSpec
    from storage.writer import Transaction

    spec = FrameSpec(time_bins=events.shape[1], size=events.shape[3:])
    with Transaction(path) as tx:
        tx.write_array("events/label", np.asarray(labels, np.int16))
        tx.write_array("events/split", np.asarray(splits, np.uint8))
        tx.write_array("events/offsets", np.zeros(len(labels) + 1, np.int64))
        tx.write_array("images/label", np.asarray(static_labels, np.int16))
        tx.write_array("images/split", np.zeros(len(static_labels), np.uint8))
        tx.root.require_group(f"frames/{spec.key}").attrs.update(spec.to_attrs())
        tx.create_array(f"frames/{spec.key}/events", events.shape, np.uint16)[:] = events
        tx.write_array(f"frames/{spec.key}/static", statics)
        if recording is not None:
            tx.write_array(layout.frame_recordings(spec.key), np.asarray(recording, np.int64))
        tx.root.attrs.update({"classes": ["a", "b", "c"], "frames_key": spec.key})
        return tx.commit("frames for the loader")


def test_from_store_reads_one_split_and_every_static(tmp_path):
    pytest.importorskip("storage.reader")
    data = make_data(n=30, m=9)
    splits = np.arange(30) % 3  # train, val, test in turn
    snapshot = write_frames_store(
        tmp_path / "store",
        data.event_frames,
        data.event_labels,
        splits,
        data.static_frames,
        data.static_labels,
    )
    loaded = MixData.from_store(tmp_path / "store", snapshot=snapshot, split="val")
    np.testing.assert_array_equal(loaded.event_frames, data.event_frames[splits == 1])
    np.testing.assert_array_equal(loaded.event_labels, data.event_labels[splits == 1])
    np.testing.assert_array_equal(loaded.static_frames, data.static_frames)
    assert loaded.static_scale == static_scale_of(data.event_frames[splits == 1], data.static_frames)
    assert loaded.snapshot == snapshot and loaded.num_classes == 3
    scarce = MixData.from_store(tmp_path / "store", split="train", max_recordings_per_class=1, seed=3)
    train_classes = np.unique(data.event_labels[splits == 0])
    assert sorted(scarce.event_labels.tolist()) == train_classes.tolist()


def test_unused_split_is_every_train_and_val_recording_the_run_does_not_train_on(tmp_path):
    from tmkt.data import split_indices

    data = make_data(n=30, m=9)
    splits = np.arange(30) % 3  # train, val, test in turn
    write_frames_store(
        tmp_path / "store",
        data.event_frames,
        data.event_labels,
        splits,
        data.static_frames,
        data.static_labels,
    )
    for k, seed in ((1, 3), (2, 0)):
        trained = split_indices(splits, data.event_labels, "train", k, seed)
        unused = MixData.from_store(tmp_path / "store", split="unused", max_recordings_per_class=k, seed=seed)
        expected = np.setdiff1d(np.flatnonzero(splits < 2), trained)  # the test split stays held out
        assert len(expected) == 20 - len(trained)
        np.testing.assert_array_equal(unused.event_frames, data.event_frames[expected])
        np.testing.assert_array_equal(unused.event_labels, data.event_labels[expected])
    # with every training recording used, what is left is the val split
    all_used = split_indices(splits, data.event_labels, "unused", None, 0)
    np.testing.assert_array_equal(all_used, np.flatnonzero(splits == 1))
    with pytest.raises(ValueError, match="unknown split"):
        split_indices(splits, data.event_labels, "holdout", None, 0)


def test_unused_split_of_sliced_frames_leaves_out_every_slice_of_a_recording_trained_on(tmp_path):
    """With sliced frames ``max_recordings_per_class`` counts samples; a recording one of whose
    slices was trained on must not be measured on through its other slices."""
    from storage.reader import DatasetReader
    from tmkt.data import recordings_read, split_indices

    n_recordings, per = 12, 3
    recording = np.repeat(np.arange(n_recordings), per)  # 36 samples, 3 slices a recording
    rec_splits, rec_labels = np.arange(n_recordings) % 3, np.arange(n_recordings) % 2
    data = make_data(n=n_recordings * per, m=9)
    labels = rec_labels[recording]
    write_frames_store(
        tmp_path / "store",
        data.event_frames,
        rec_labels,
        rec_splits,
        data.static_frames,
        data.static_labels,
        recording=recording,
    )
    splits = rec_splits[recording]
    for k, seed in ((1, 0), (2, 5)):
        trained = split_indices(splits, labels, "train", k, seed, recording)
        assert len(trained) == 2 * k  # k samples per class
        used = np.unique(recording[trained])
        expected = np.flatnonzero((splits < 2) & ~np.isin(recording, used))
        unused = MixData.from_store(tmp_path / "store", split="unused", max_recordings_per_class=k, seed=seed)
        np.testing.assert_array_equal(unused.event_frames, data.event_frames[expected])
        np.testing.assert_array_equal(unused.event_labels, labels[expected])
        # the other slices of the recordings trained on are train samples too, and stay out
        siblings = np.setdiff1d(np.flatnonzero(np.isin(recording, used)), trained)
        assert len(siblings) and not np.isin(siblings, expected).any()
        rows = recordings_read(DatasetReader(tmp_path / "store"), "unused", k, seed)
        np.testing.assert_array_equal(rows, expected)  # the rule the streaming loader follows too


# ---- real recordings -----------------------------------------------------------------------------


def real_data_dir() -> Path:
    root = os.environ.get("TMKT_REAL_DATA")
    if not root or not (Path(root) / "nmnist").is_dir():
        pytest.skip("set TMKT_REAL_DATA to the shared real-data folder (with nmnist/ and mnist/) to run this")
    return Path(root)


def read_idx(path: Path) -> np.ndarray:
    raw = gzip.open(path).read()
    ndim = raw[3]
    shape = np.frombuffer(raw[4 : 4 + 4 * ndim], ">u4").astype(int)
    return np.frombuffer(raw[4 + 4 * ndim :], np.uint8).reshape(shape)


@pytest.mark.realdata
def test_real_nmnist_and_mnist_mix_exactly_as_the_reference():
    import tonic
    from tonic.io import read_mnist_file

    root = real_data_dir()
    files = sorted((root / "nmnist" / "Train").glob("*/*.bin"))[::20][:30]
    to_frame = tonic.transforms.ToFrame(sensor_size=(34, 34, 2), n_time_bins=10)
    dtype = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])
    events = np.stack([to_frame(read_mnist_file(str(f), dtype=dtype)) for f in files]).astype(np.uint16)
    images = read_idx(next((root / "mnist").glob("t10k-images*")))[:300]
    image_labels = read_idx(next((root / "mnist").glob("t10k-labels*")))[:300].astype(np.int64)
    statics = np.pad(images, ((0, 0), (3, 3), (3, 3)))  # 28x28 digits centred on the 34x34 sensor
    data = MixData(
        events,
        [int(f.parent.name) for f in files],
        statics,
        image_labels,
        static_scale_of(events, statics),
        10,
    )
    assert 0.5 <= data.static_scale < 100
    augment = AugmentConfig()
    loader = loader_for(data, batch_size=8, augment=augment)
    loader.set_ratio(0.5)
    assert_same_batches(data, loader, 0.5, augment, "mix")


# ---- benchmark baselines -------------------------------------------------------------------------


def test_torch_baseline_mixes_exactly_like_the_reference():
    from benches.loader import TorchMixer

    data = make_data(n=24)
    indices = np.arange(3, 19)
    events = torch.from_numpy(data.event_frames[indices].astype(np.float32))
    frames, labels, mag, mrp = TorchMixer(data, 0.4, seed=5)(
        events, torch.from_numpy(data.event_labels[indices])
    )
    expected = mix_batch_reference(data, indices, 0.4, np.random.default_rng(5), None)
    for got, want in zip(
        (frames, labels, mag, mrp),
        (expected.frames, expected.labels, expected.mag, expected.mrp),
        strict=True,
    ):
        assert torch.equal(got, want)


@pytest.mark.slow
@pytest.mark.realdata
def test_loader_bench_reports_every_number(tmp_path):
    import json

    from benches.loader import run_loader_bench

    root = real_data_dir()
    data = make_data(n=64, m=30, T=10, size=(34, 34), classes=10)
    results = run_loader_bench(
        {"34x34": data}, root / "nmnist", tmp_path / "bench.json", batch_size=16, seconds=0.2
    )
    assert json.loads((tmp_path / "bench.json").read_text()) == results
    row = results["34x34"]
    for key in ("samples_per_s", "augmented_samples_per_s", "tonic_samples_per_s", "npz_samples_per_s"):
        assert row[key] > 0
    assert row["speedup_vs_tonic"] == pytest.approx(
        row["samples_per_s"] / row["tonic_samples_per_s"], rel=0.01
    )
    assert row["speedup_vs_npz"] == pytest.approx(row["samples_per_s"] / row["npz_samples_per_s"], rel=0.01)
    assert row["device"] == "cpu" and row["time_steps"] == 10
