"""Streaming against resident loading on the same store, in the same run: samples/s and peak RSS.

``tmkt bench loader --stream --store NAME=PATH`` (PATH local or ``s3://``). Each mode runs in its own
process, so that each peak RSS is that mode's alone: "resident" loads the training split into memory
(``MixLoader``), "stream" reads it by shards under ``max_resident_bytes`` (``StreamingLoader``; by
default the statics and a quarter of the split's frames, so that it must stream). Both deliver mixed
batches of the same size from the same DALI graph and are timed over whole epochs after a warm-up
epoch, the stream reading the store again every epoch.
"""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
from pathlib import Path

MODES = ("resident", "stream")


def _rss_now() -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def measure_mode(
    store: str, mode: str, budget: int, batch_size: int, seconds: float, threads: int, split: str = "train"
) -> dict:
    """One mode in this process: samples/s, peak RSS, and the RSS after the imports (the baseline)."""
    import torch  # noqa: F401  (imported before the baseline is read, as the loader needs it)

    from benches.loader import measure
    from tmkt.loader import LoaderConfig
    from tmkt.streaming import StreamConfig, StreamingLoader, load_split, make_loader

    baseline = _rss_now()
    data = load_split(
        store, split=split, stream=StreamConfig(max_resident_bytes=budget if mode == "stream" else 0)
    )
    loader = make_loader(data, LoaderConfig(batch_size=batch_size, mode="mix", num_threads=threads))
    if (mode == "stream") != isinstance(loader, StreamingLoader):
        raise ValueError(f"{store}: mode {mode} but the split loaded as {type(loader).__name__}")
    loader.set_ratio(0.5)

    def epoch_of(epoch: int):
        loader.set_epoch(epoch)
        return loader

    rate = measure(epoch_of, lambda batch: len(batch.labels), seconds)
    return {
        "samples_per_s": round(rate, 1),
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
        "import_rss_mb": round(baseline / 2**20, 1),
        "recordings": len(data.event_labels),
        "frames_mb": round(len(data.event_labels) * _row_bytes(data) / 2**20, 1),
    }


def _row_bytes(data) -> int:
    T, (H, W) = data.time_steps, data.frame_size
    return T * 2 * H * W * 2


def default_budget(store: str, split: str = "train") -> int:
    """The statics (resident in both modes) and a quarter of the split's event frames."""
    from storage.reader import DatasetReader
    from storage.schema import SPLITS

    reader = DatasetReader(store)
    spec = reader.frame_spec()
    n = int((reader.splits == SPLITS.index(split)).sum())
    pixels = spec.size[0] * spec.size[1]
    return reader.n_images * pixels + n * spec.time_bins * 2 * pixels * 2 // 4


def compare(
    store: str, budget: int = 0, batch_size: int = 64, seconds: float = 10.0, threads: int = 2
) -> dict:
    """Both modes on ``store``, each in a fresh process; ``budget`` 0 = ``default_budget``."""
    budget = budget or default_budget(store)
    results: dict = {"store": store, "max_resident_bytes": budget, "cpu_count": os.cpu_count()}
    for mode in MODES:
        call = f"measure_mode({store!r}, {mode!r}, {budget}, {batch_size}, {seconds}, {threads})"
        code = f"import json; from benches.stream import measure_mode; print(json.dumps({call}))"
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"bench of mode {mode} on {store} failed:\n{done.stderr[-3000:]}")
        results[mode] = json.loads(done.stdout.strip().splitlines()[-1])
    results["stream_over_resident"] = round(
        results["stream"]["samples_per_s"] / results["resident"]["samples_per_s"], 3
    )
    return results
