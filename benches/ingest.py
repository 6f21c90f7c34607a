"""`tmkt bench ingest`: events per second for decode + bin + write, against tonic in the same run.

Baseline: what tonic's tutorials do per file, `tonic.io.read_mnist_file` then `ToFrame(n_time_bins=T)`,
writing nothing. A second baseline keeps the frames the way tonic does, through its
`DiskCachedDataset` (one LZF-compressed HDF5 file per recording, written on first access).

Ours, end to end: a full build into a fresh store (hash, decode, bin, digest, shard-aligned writes,
one commit) with a 1-worker and a 2-worker Dask LocalCluster, cluster start-up excluded. Ours, like
for like: the same per-file loop with our decoder and binning (`decode_bin_events_per_s`), which
isolates the compute from the store's costs.
"""

from __future__ import annotations

import argparse
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

from storage.schema import FrameSpec

log = logging.getLogger("tmkt.bench")


def tonic_baseline(files: list[Path], time_bins: int) -> tuple[int, float]:
    """(events, seconds) for tonic's per-file read + ToFrame."""
    import tonic

    to_frame = tonic.transforms.ToFrame(sensor_size=(34, 34, 2), n_time_bins=time_bins)
    events = 0
    started = time.perf_counter()
    for file in files:
        ev = tonic.io.read_mnist_file(str(file), dtype=tonic.datasets.NMNIST.dtype)
        to_frame(ev)
        events += len(ev)
    return events, time.perf_counter() - started


def tonic_cached_baseline(files: list[Path], time_bins: int, cache: Path) -> tuple[int, float]:
    """(events, seconds) for tonic's way to keep what it binned: the same read + ToFrame through a
    ``DiskCachedDataset`` on first access, one LZF-compressed HDF5 file of frames per recording."""
    import tonic

    to_frame = tonic.transforms.ToFrame(sensor_size=(34, 34, 2), n_time_bins=time_bins)
    events = []

    class Frames:
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int):
            ev = tonic.io.read_mnist_file(str(files[i]), dtype=tonic.datasets.NMNIST.dtype)
            events.append(len(ev))
            return to_frame(ev), int(files[i].parent.name)

    cached = tonic.DiskCachedDataset(Frames(), cache_path=str(cache))
    started = time.perf_counter()
    for i in range(len(cached)):
        cached[i]
    return sum(events), time.perf_counter() - started


def decode_bin(files: list[Path], time_bins: int) -> tuple[int, float]:
    """(events, seconds) for our per-file decode + binning alone: the same work as the baseline."""
    from pipelines.binning import bin_events
    from pipelines.formats.nmnist import read_nmnist

    spec = FrameSpec(time_bins=time_bins, size=(34, 34))
    events = 0
    started = time.perf_counter()
    for file in files:
        ev = read_nmnist(file)
        bin_events(ev, (34, 34), spec)
        events += len(ev)
    return events, time.perf_counter() - started


def timed_build(raw: Path, workers: int, time_bins: int, scratch: Path) -> tuple[int, float, dict]:
    """(events, seconds, seconds per stage) for a full build with ``workers`` Dask workers; the
    cluster is started before the clock."""
    from distributed import Client

    from pipelines.build import BuildConfig, local_cluster, run_build

    logging.getLogger("distributed").setLevel(logging.WARNING)

    config = BuildConfig(
        source="nmnist",
        raw=str(raw),
        store=str(scratch / f"store-{workers}"),
        time_bins=time_bins,
        workers=workers,
    )
    with local_cluster(workers) as cluster, Client(cluster) as client:
        client.run(lambda: __import__("pipelines.build"))  # warm imports on workers, like a served flow
        started = time.perf_counter()
        result = run_build(config, client=client)
        seconds = time.perf_counter() - started
    return result.report["events"], seconds, result.report["timings"]


def run(raw: Path, time_bins: int = FrameSpec.time_bins, repeats: int = 1) -> dict[str, Any]:
    files = sorted(raw.rglob("*.bin"))
    if not files:
        raise FileNotFoundError(f"{raw}: no N-MNIST .bin files")
    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        tonic_events, tonic_s = min(
            (tonic_baseline(files, time_bins) for _ in range(repeats)), key=lambda r: r[1]
        )
        cached_events, cached_s = min(
            (tonic_cached_baseline(files, time_bins, scratch / f"tonic-cache-{i}") for i in range(repeats)),
            key=lambda r: r[1],
        )
        kernel_events, kernel_s = min(
            (decode_bin(files, time_bins) for _ in range(repeats)), key=lambda r: r[1]
        )
        one = min(
            (timed_build(raw, 1, time_bins, scratch / f"r{i}") for i in range(repeats)), key=lambda r: r[1]
        )
        two = min(
            (timed_build(raw, 2, time_bins, scratch / f"s{i}") for i in range(repeats)), key=lambda r: r[1]
        )
    if not one[0] == tonic_events == cached_events:
        raise RuntimeError(f"event counts differ: store {one[0]} vs tonic {tonic_events}")
    result = {
        "files": len(files),
        "events": one[0],
        "time_bins": time_bins,
        "seconds_1_worker": one[1],
        "seconds_2_workers": two[1],
        "stages_1_worker": one[2],
        "stages_2_workers": two[2],
        "seconds_tonic": tonic_s,
        "events_per_s": one[0] / one[1],
        "events_per_s_2_workers": two[0] / two[1],
        "tonic_events_per_s": tonic_events / tonic_s,
        "seconds_tonic_cached": cached_s,
        "tonic_cached_events_per_s": cached_events / cached_s,
        "decode_bin_events_per_s": kernel_events / kernel_s,
    }
    result["speedup_vs_tonic"] = result["events_per_s"] / result["tonic_events_per_s"]
    result["speedup_2_workers_vs_tonic"] = result["events_per_s_2_workers"] / result["tonic_events_per_s"]
    result["speedup_vs_tonic_cached"] = result["events_per_s"] / result["tonic_cached_events_per_s"]
    result["speedup_decode_bin_vs_tonic"] = result["decode_bin_events_per_s"] / result["tonic_events_per_s"]
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tmkt bench ingest", description=__doc__)
    parser.add_argument("--raw", required=True, type=Path, help="N-MNIST folder (Train/<digit>/*.bin)")
    parser.add_argument("--json", required=True, type=Path, help="write the results here")
    parser.add_argument("--time-bins", type=int, default=FrameSpec.time_bins)
    parser.add_argument("--repeats", type=int, default=1, help="best of N runs of each")
    args = parser.parse_args(argv)
    result = run(args.raw, args.time_bins, args.repeats)
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0
