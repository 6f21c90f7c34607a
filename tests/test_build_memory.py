"""The build's coordinator never holds the static images: workers load and write them shard by shard.

A store whose statics are a 150,000-image MNIST-format IDX file (118 MB) and a few dozen N-MNIST
recordings is built in a fresh process, so that its peak RSS (``ru_maxrss``) is this build's alone.
Gathering every image into the coordinator, stacking them and their static frames grew it by 1.6 GB
(14 times the images); past a small warm-up build it may now grow by no more than a third of them.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np

from pipelines.formats.idx import write_idx
from pipelines.formats.nmnist import write_nmnist
from storage.reader import DatasetReader
from storage.schema import EVENT_DTYPE
from tests.conftest import fresh_process_json

IMAGES = 150_000
RECORDINGS_PER_DIGIT = 3

#: run in a fresh interpreter: a small build first (Icechunk, Zarr and Dask allocate their own
#: first-use megabytes), then the large one on the same two-worker cluster; every process's peak
#: RSS (KiB on Linux) after each
BUILD_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from distributed import Client
    from pipelines.build import BuildConfig, local_cluster, run_build

    def peak_kib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    raw, small, static, store = sys.argv[1:5]
    rss = {"imported": peak_kib()}
    with local_cluster(2) as cluster, Client(cluster) as client:
        for name, folder in (("warm", small), ("peak", static)):
            config = BuildConfig(source="nmnist", raw=raw, static=folder, store=f"{store}-{name}")
            assert run_build(config, client=client).committed
            rss[name] = peak_kib()
        rss["workers"] = list(client.run(peak_kib).values())
    print(json.dumps(rss))
    """
)


def write_recordings(raw: Path, rng: np.random.Generator) -> None:
    """A few small N-MNIST recordings per digit, in the download's ``Train/<digit>/`` layout."""
    for digit in range(10):
        folder = raw / "Train" / str(digit)
        folder.mkdir(parents=True)
        for i in range(RECORDINGS_PER_DIGIT):
            events = np.zeros(500, dtype=EVENT_DTYPE)
            events["x"] = rng.integers(0, 34, len(events))
            events["y"] = rng.integers(0, 34, len(events))
            events["t"] = np.sort(rng.integers(0, 300_000, len(events)))
            events["p"] = rng.integers(0, 2, len(events))
            write_nmnist(folder / f"{i:05d}.bin", events)


def write_mnist(folder: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """A plain (not gzipped) MNIST training pair: the workers read it shard by shard."""
    folder.mkdir()
    write_idx(folder / "train-images-idx3-ubyte", images)
    write_idx(folder / "train-labels-idx1-ubyte", labels)


def test_coordinator_peak_rss_stays_far_below_the_statics(tmp_path):
    rng = np.random.default_rng(0)
    raw, small, static, store = (tmp_path / name for name in ("raw", "small", "static", "store"))
    write_recordings(raw, rng)
    images = rng.integers(0, 256, (IMAGES, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, IMAGES).astype(np.uint8)
    write_mnist(static, images, labels)
    write_mnist(small, images[:1000], labels[:1000])

    rss = fresh_process_json(BUILD_SCRIPT, str(raw), str(small), str(static), str(store))
    print(f"peak RSS KiB: {rss}; statics {images.nbytes >> 10} KiB")
    grown = rss["peak"] - rss["warm"]
    assert grown < images.nbytes / 3 / 1024, f"coordinator grew by {grown} KiB for {images.nbytes >> 10} KiB"

    reader = DatasetReader(f"{store}-peak")
    assert reader.n_recordings == 10 * RECORDINGS_PER_DIGIT
    np.testing.assert_array_equal(reader.images(), images[..., None])
    np.testing.assert_array_equal(reader.image_labels, labels)
    assert (reader.image_splits == 0).all()  # only the train file: every image is "train"


#: one build per tree, each on a fresh one-worker cluster: the worker's peak RSS (KiB) and the bytes
#: it wrote to its disk (Dask's own metrics)
WORKER_SCRIPT = textwrap.dedent(
    """
    import json, resource, sys
    from distributed import Client
    from pipelines.build import BuildConfig, local_cluster, run_build

    def peak_kib():
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss

    def spilled(dask_worker):
        metrics = dask_worker.digests_total.items()
        return sum(v for k, v in metrics if k[-2:] == ("disk-write", "bytes"))

    store = sys.argv[1]
    peaks = {}
    for raw in sys.argv[2:]:
        config = BuildConfig(source="nmnist", raw=raw, store=f"{store}-{len(peaks)}", time_bins=32, workers=1)
        with local_cluster(1) as cluster, Client(cluster) as client:
            assert run_build(config, client=client).committed
            peaks[raw] = [*client.run(peak_kib).values(), *client.run(spilled).values()]
    print(json.dumps(peaks))
    """
)

EVENTS = 1000


def write_tree(raw: Path, per_digit: int, rng: np.random.Generator) -> None:
    """``per_digit`` N-MNIST recordings of ``EVENTS`` random events for each digit."""
    events = np.zeros(EVENTS, dtype=EVENT_DTYPE)
    for digit in range(10):
        folder = raw / "Train" / str(digit)
        folder.mkdir(parents=True)
        for i in range(per_digit):
            events["x"], events["y"] = rng.integers(0, 34, (2, len(events)))
            events["t"] = np.sort(rng.integers(0, 300_000, len(events)))
            events["p"] = rng.integers(0, 2, len(events))
            write_nmnist(folder / f"{i:05d}.bin", events)


def test_worker_peak_rss_does_not_grow_with_the_recordings(tmp_path):
    """Each recording shard is written as soon as its batches are counted, and the batch results go:
    a worker holds a few batches and one shard, not the dataset. Five times the recordings (a
    difference of 380 MB of events and frames, which used to wait in the worker until every shard
    was written, and grew it by 420 MB) may grow its peak RSS by no more than a quarter of that: the
    larger tree's 3 M events fill most of one event shard (39 MB) that the smaller one's never do.
    Nothing is spilled."""
    rng = np.random.default_rng(1)
    small, large = tmp_path / "small", tmp_path / "large"
    write_tree(small, 60, rng)
    write_tree(large, 300, rng)
    per_recording = EVENTS * EVENT_DTYPE.itemsize + 32 * 2 * 34 * 34 * 2
    difference_kib = (3000 - 600) * per_recording >> 10

    peaks = fresh_process_json(WORKER_SCRIPT, str(tmp_path / "store"), str(small), str(large))
    print(f"worker [peak RSS KiB, bytes spilled]: {peaks}; results differ by {difference_kib} KiB")
    (small_rss, small_spilled), (large_rss, large_spilled) = peaks[str(small)], peaks[str(large)]
    assert small_spilled == large_spilled == 0, peaks
    assert large_rss - small_rss < difference_kib / 4, peaks
    reader = DatasetReader(f"{tmp_path / 'store'}-1")
    assert reader.n_recordings == 3000
    assert int(reader.offsets[-1]) == 3000 * EVENTS
    assert reader.event_frames(indices=np.arange(1)).sum() == EVENTS  # every event binned once
