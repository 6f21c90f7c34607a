"""`tmkt bench scale`: every stage of the data system from 1k to 70k recordings, with tonic beside it.

    tmkt bench scale --out results/scale [--sizes 1000,10000,70000] [--cifar-sizes 1000]
        [--seed-raw ../shared/data/nmnist] [--static ../shared/data/mnist] [--train-steps N]

Per size, on trees it makes (N-MNIST geometry: 34x34 ATIS ``.bin`` files, 6 in 7 under ``Train``;
a CIFAR10-DVS-like set: 128x128 DVS128 AEDAT 2.0 files of ~230 k events from the DVS simulator),
or on a tree given with ``--raw``:

- a build with 1 and with 2 Dask workers: seconds (cluster start-up excluded, as a served flow keeps
  its workers), events/s, peak RSS of the coordinator and of each worker, store size against raw;
- a refresh after 1 % of the files were added and 1 % changed, and a refresh that changes nothing;
- ``store verify``;
- one training epoch (``tmkt train``, tmkt's mixing, the ``small`` backbone) with the split resident
  and streaming under a quarter of it, peak RSS and samples/s of each; then ``tmkt eval``;
- tonic beside it, in the same run: its per-file loop (read + ``ToFrame``, writing nothing) and the
  same loop through ``DiskCachedDataset``.

Trees are made of hard links to a few seed recordings (copies where links fail), so a 70k tree costs
no disk; every file is a real recording in the real format, and the page cache serves both tonic and
the build alike. Every stage runs in a fresh process, so each peak RSS is that stage's alone.
Writes ``scale.json`` (every number), ``scale.md`` (tables, with the growth exponent between sizes:
1 = linear) and ``scale.png`` (log-log, seconds and peak RSS against recordings).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("tmkt.bench")

NMNIST_SIZES = (1000, 10000, 70000)
CIFAR_SIZES = (1000,)
TIME_BINS = 8  # N-MNIST's training default (`configs/nmnist-small.toml`)
TRAIN_BATCH = 64


@dataclass(frozen=True)
class Geometry:
    """One kind of tree: its source adapter, file suffix, sensor and how its seeds are made."""

    name: str
    source: str
    suffix: str
    sensor: tuple[int, int]  # (W, H)
    time_bins: int

    def folder(self, label: str, i: int) -> str:
        """Where the ``i``-th file of class ``label`` goes, relative to the tree."""
        if self.source == "nmnist":  # the download's Train/Test folders, 60k : 10k
            return f"{'Test' if i % 7 == 6 else 'Train'}/{label}"
        return label


NMNIST = Geometry("nmnist", "nmnist", ".bin", (34, 34), TIME_BINS)
CIFAR_LIKE = Geometry("cifar10dvs-like", "cifar10dvs", ".aedat", (128, 128), TIME_BINS)


# -- trees ---------------------------------------------------------------------------------------
def nmnist_seeds(seed_raw: Path | None, scratch: Path) -> list[tuple[str, Path]]:
    """(label, file) of real N-MNIST recordings, or, without them, of the built-in simulator's."""
    if seed_raw is not None and seed_raw.is_dir():
        files = sorted(seed_raw.rglob("*.bin"))
        if files:
            return [(f.parent.name, f) for f in files]
    from pipelines.sources.builtin import BuiltinSource

    raw = scratch / "builtin-seeds"
    BuiltinSource().materialize(raw)
    return [(f.parent.name, f) for f in sorted((raw / "Train").rglob("*.bin"))]


def cifar_like_seeds(scratch: Path, per_class: int = 2) -> list[tuple[str, Path]]:
    """DVS128 AEDAT 2.0 recordings of smooth random textures in three saccades over 1.2 s (~230 k
    events each, as CIFAR10-DVS's recordings of its 32x32 images shown on a screen)."""
    from scipy.ndimage import gaussian_filter

    from pipelines.formats import write_aedat2
    from pipelines.simulator import DvsSimulatorConfig, simulate
    from pipelines.sources.cifar10dvs import CIFAR10DVS_CLASSES

    config = DvsSimulatorConfig(
        sensor_size=(128, 128),
        contrast_on=0.1,
        contrast_off=0.1,
        noise_rate_hz=2.0,
        saccade_us=400_000,
        saccade_vertices=((0.0, 0.0), (3.0, 6.0), (6.0, 0.0), (0.0, 0.0)),
    )
    rng = np.random.default_rng(0)
    seeds = []
    for label in CIFAR10DVS_CLASSES:
        for j in range(per_class):
            texture = gaussian_filter(rng.random((96, 96)), 2.0)
            image = ((texture - texture.min()) / np.ptp(texture) * 255).astype(np.uint8)
            path = scratch / "cifar-seeds" / label / f"{j}.aedat"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_aedat2(path, simulate(image, config, rng), (128, 128))
            seeds.append((label, path))
    return seeds


def _place(seed: Path, target: Path) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(seed, target)
    except OSError:  # another file system
        shutil.copy2(seed, target)


def make_tree(
    geometry: Geometry, seeds: list[tuple[str, Path]], n: int, root: Path, start: int = 0
) -> list[Path]:
    """Files ``start .. start + n`` of a tree: seeds in turn, each named after its seed and index."""
    made = []
    for i in range(start, start + n):
        label, seed = seeds[i % len(seeds)]
        target = root / geometry.folder(label, i) / f"{seed.stem}_{i:06d}{geometry.suffix}"
        _place(seed, target)
        made.append(target)
    return made


def change_files(files: list[Path], seeds: list[tuple[str, Path]], fraction: float) -> int:
    """Give ``fraction`` of ``files`` another recording of their class (a new file renamed over the
    old, so that linked seeds stay as they are), dated a minute back so the change is not racy."""
    by_label: dict[str, list[Path]] = {}
    for label, seed in seeds:
        by_label.setdefault(label, []).append(seed)
    step = max(1, round(1 / fraction))
    changed = 0
    for file in files[::step]:
        label = file.parent.name
        others = [s for s in by_label[label] if s.stat().st_size != file.stat().st_size]
        if not others:
            continue
        tmp = file.with_suffix(file.suffix + ".tmp")
        shutil.copyfile(others[changed % len(others)], tmp)
        os.replace(tmp, file)
        past = time.time() - 60
        os.utime(file, (past, past))
        changed += 1
    return changed


def tree_bytes(root: Path) -> int:
    return sum(f.stat().st_size for f in root.rglob("*") if f.is_file())


def disk_bytes(root: Path) -> int:
    """Bytes the folder takes on disk (allocated blocks)."""
    return sum(f.stat().st_blocks * 512 for f in root.rglob("*") if f.is_file())


# -- stages, each in a fresh process ---------------------------------------------------------------
def _peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def child_build(config: dict[str, Any], workers: int, cluster: bool) -> dict[str, Any]:
    """One build or refresh in this process. ``cluster``: start the workers before the clock (as a
    served flow keeps them); else the build starts them only if it has work for them."""
    from distributed import Client

    from pipelines.build import BuildConfig, local_cluster, run_build

    logging.getLogger("distributed").setLevel(logging.WARNING)
    build = BuildConfig(**config, workers=workers)
    worker_rss: list[float] = []
    if cluster:
        with local_cluster(workers, build.worker_memory) as made, Client(made) as client:
            client.run(lambda: __import__("pipelines.build"))
            started = time.perf_counter()
            result = run_build(build, client=client)
            seconds = time.perf_counter() - started
            worker_rss = sorted(client.run(_peak_rss_mb).values())
    else:
        started = time.perf_counter()
        result = run_build(build)
        seconds = time.perf_counter() - started
    report = result.report
    return {
        "seconds": seconds,
        "committed": result.committed,
        "events": report.get("events"),
        "recordings": report.get("recordings"),
        "changes": report.get("changes"),
        "timings": report.get("timings"),
        "coordinator_rss_mb": _peak_rss_mb(),
        "worker_rss_mb": worker_rss,
    }


def child_verify(store: str) -> dict[str, Any]:
    from storage.verify import verify_store

    started = time.perf_counter()
    problems = verify_store(store)
    return {"seconds": time.perf_counter() - started, "problems": problems, "rss_mb": _peak_rss_mb()}


def child_tonic(geometry: dict[str, Any], raw: str, cache: str) -> dict[str, Any]:
    """tonic's per-file loop over the tree ``raw``, then the same loop through ``DiskCachedDataset``
    (written on first use)."""
    import tonic

    g = Geometry(**geometry)
    files = [str(f) for f in sorted(Path(raw).rglob(f"*{g.suffix}"))]
    to_frame = tonic.transforms.ToFrame(sensor_size=(*g.sensor, 2), n_time_bins=g.time_bins)
    read = _tonic_reader(g)

    class Frames:
        def __len__(self) -> int:
            return len(files)

        def __getitem__(self, i: int):
            return to_frame(read(files[i])), 0

    started = time.perf_counter()
    events = 0
    for f in files:
        ev = read(f)
        to_frame(ev)
        events += len(ev)
    loop = time.perf_counter() - started
    cached = tonic.DiskCachedDataset(Frames(), cache_path=cache)
    started = time.perf_counter()
    for i in range(len(cached)):
        cached[i]
    return {"events": events, "loop_seconds": loop, "cached_seconds": time.perf_counter() - started}


def _tonic_reader(g: Geometry):
    import tonic

    if g.source == "nmnist":
        return lambda f: tonic.io.read_mnist_file(f, dtype=tonic.datasets.NMNIST.dtype)
    dtype = np.dtype([("x", np.int16), ("y", np.int16), ("p", bool), ("t", np.int64)])

    def read_dvs128(f: str) -> np.ndarray:
        # tonic's AEDAT 2.0 reader gives raw addresses; DVS128's layout (as tonic's DVS datasets
        # decode it): x in bits 1-7, y in bits 8-14, polarity in bit 0
        version, start, _ = tonic.io.read_aedat_header_from_file(f)
        raw = tonic.io.get_aer_events_from_file(f, version, start)
        address = raw["address"]
        events = np.empty(len(address), dtype)
        events["x"] = (address >> 1) & 0x7F
        events["y"] = (address >> 8) & 0x7F
        events["p"] = address & 1
        events["t"] = raw["timeStamp"]
        return events

    return read_dvs128


def child_train(store: str, out: str, budget: int, steps: int, device: str = "cpu") -> dict[str, Any]:
    """One epoch of ``tmkt train`` (tmkt's mixing, ``small``, one forward per step), then its result."""
    from tmkt.config import main

    args = [
        f"store={store}",
        f"out={out}",
        "method=tmkt",
        "backbone=small",
        "l_event=0",
        "epochs=1",
        "min_steps=0",
        f"max_steps={steps}",
        f"batch_size={TRAIN_BATCH}",
        f"max_resident_bytes={budget}",
        "val_every=0",
        "checkpoint_every=0",
        f"device={device}",
    ]
    started = time.perf_counter()
    main(args)
    seconds = time.perf_counter() - started
    result = json.loads((Path(out) / "result.json").read_text())
    rows = [json.loads(line) for line in (Path(out) / "metrics.jsonl").read_text().splitlines()]
    waits = [r["data_wait_fraction"] for r in rows if "data_wait_fraction" in r]
    return {
        "seconds": seconds,
        "samples_per_s": result.get("samples_per_s"),
        "steps": result.get("steps"),
        "train_n": result.get("train_n"),
        "test_accuracy": result.get("test_accuracy"),
        "data_wait_fraction": float(np.mean(waits)) if waits else None,
        "rss_mb": _peak_rss_mb(),
    }


def child_eval(checkpoint: str, store: str) -> dict[str, Any]:
    from tmkt.evaluate import evaluate

    started = time.perf_counter()
    result = evaluate(checkpoint, store, None, "test", 256, "cpu")
    return {
        "seconds": time.perf_counter() - started,
        "accuracy": result.get("accuracy"),
        "n": result.get("n"),
        "rss_mb": _peak_rss_mb(),
    }


def in_child(call: str) -> dict[str, Any]:
    """Run ``benches.scale.<call>`` in a fresh interpreter; its JSON result."""
    code = f"import json; from benches.scale import *; print('\\n' + json.dumps({call}))"
    env = dict(os.environ, OMP_NUM_THREADS=os.environ.get("OMP_NUM_THREADS", "2"))
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False, env=env)
    if done.returncode != 0:
        raise RuntimeError(f"{call[:80]} failed:\n{done.stderr[-3000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- one size -------------------------------------------------------------------------------------
def measure_size(
    geometry: Geometry,
    seeds: list[tuple[str, Path]],
    n: int,
    scratch: Path,
    static: Path | None,
    train_steps: int,
) -> dict[str, Any]:
    """Every stage at ``n`` recordings, in order; the tree and stores are removed afterwards."""
    work = scratch / f"{geometry.name}-{n}"
    raw = work / "raw"
    files = make_tree(geometry, seeds, n, raw)
    config = {
        "source": geometry.source,
        "raw": str(raw),
        "static": str(static) if static else None,
        "time_bins": geometry.time_bins,
    }
    result: dict[str, Any] = {"geometry": geometry.name, "recordings": n, "raw_bytes": tree_bytes(raw)}
    progress = Progress(f"{geometry.name} {n}")

    tonic = in_child(f"child_tonic({asdict(geometry)!r}, {str(raw)!r}, {str(work / 'tonic')!r})")
    shutil.rmtree(work / "tonic", ignore_errors=True)
    result["tonic"] = tonic
    progress.done("tonic", tonic["loop_seconds"] + tonic["cached_seconds"])

    for workers in (2, 1):  # the 1-worker store is kept for the stages below
        store = work / f"store-{workers}"
        build = in_child(f"child_build({dict(config, store=str(store))!r}, {workers}, True)")
        build["events_per_s"] = build["events"] / build["seconds"]
        result[f"build_{workers}"] = build
        progress.done(f"build, {workers} worker(s)", build["seconds"])
    shutil.rmtree(work / "store-2")
    store = str(work / "store-1")
    result["store_bytes"] = disk_bytes(work / "store-1")
    events = result["build_1"]["events"]
    if events != tonic["events"]:
        raise RuntimeError(f"{geometry.name} {n}: store holds {events} events, tonic read {tonic['events']}")

    result["verify"] = in_child(f"child_verify({store!r})")
    progress.done("verify", result["verify"]["seconds"])
    result["noop_refresh"] = in_child(f"child_build({dict(config, store=store)!r}, 1, False)")
    progress.done("no-op refresh", result["noop_refresh"]["seconds"])

    if static is not None:
        result["train"] = measure_training(store, work, train_steps, progress)

    added = make_tree(geometry, seeds, max(1, n // 100), raw, start=n)
    changed = change_files(files, seeds, 0.01)
    refresh = in_child(f"child_build({dict(config, store=store)!r}, 1, True)")
    refresh.update(added=len(added), changed=changed)
    result["refresh"] = refresh
    progress.done(f"refresh (+{len(added)}, {changed} changed)", refresh["seconds"])
    shutil.rmtree(work)
    return result


def measure_training(store: str, work: Path, steps: int, progress: Progress) -> dict[str, Any]:
    """An epoch resident and one streaming under a quarter of the split, then ``tmkt eval``."""
    from benches.stream import default_budget

    quarter = default_budget(store)
    resident = 1 << 40  # larger than any split here: loaded whole
    out: dict[str, Any] = {"stream_budget_bytes": quarter}
    for mode, budget in (("resident", resident), ("stream", quarter)):
        run = work / f"train-{mode}"
        out[mode] = in_child(f"child_train({store!r}, {str(run)!r}, {budget}, {steps})")
        progress.done(f"training epoch, {mode}", out[mode]["seconds"])
    out["eval"] = in_child(f"child_eval({str(work / 'train-resident' / 'checkpoint.pt')!r}, {store!r})")
    progress.done("tmkt eval (test split)", out["eval"]["seconds"])
    return out


def streaming_epoch(n: int, out: Path, device: str, seed_raw: Path | None = None) -> dict[str, Any]:
    """One training epoch of an ``n``-recording N-MNIST tree streaming under a quarter of its split
    on ``device`` (`scripts/gpu_checks.sh`): samples/s and the data-wait share of a step. The
    statics are the built-in source's digits as an MNIST IDX pair (no download on a GPU machine)."""
    from benches.stream import default_budget
    from pipelines.formats.idx import write_idx
    from pipelines.sources.builtin import digit_images

    with tempfile.TemporaryDirectory() as tmp:
        scratch = Path(tmp)
        make_tree(NMNIST, nmnist_seeds(seed_raw, scratch), n, scratch / "raw")
        images, labels = digit_images()
        (scratch / "static").mkdir()
        write_idx(scratch / "static" / "train-images-idx3-ubyte", images)
        write_idx(scratch / "static" / "train-labels-idx1-ubyte", labels.astype(np.uint8))
        config = {"source": "nmnist", "raw": str(scratch / "raw"), "time_bins": TIME_BINS}
        config["static"] = str(scratch / "static")
        store = str(scratch / "store")
        build = in_child(f"child_build({dict(config, store=store)!r}, 2, False)")
        budget = default_budget(store)
        train = in_child(f"child_train({store!r}, {str(out / 'run')!r}, {budget}, 0, {device!r})")
    return {"recordings": n, "build_seconds": build["seconds"], "stream_budget_bytes": budget, **train}


class Progress:
    """One log line per finished stage, with the time since the size started."""

    def __init__(self, what: str) -> None:
        self.what = what
        self.started = time.perf_counter()

    def done(self, stage: str, seconds: float) -> None:
        log.info(
            "%s: %s in %.1f s (%.0f s into this size)",
            self.what,
            stage,
            seconds,
            time.perf_counter() - self.started,
        )


# -- report ---------------------------------------------------------------------------------------
STAGES = {  # row name -> seconds of a size's result
    "build, 1 worker": lambda r: r["build_1"]["seconds"],
    "build, 2 workers": lambda r: r["build_2"]["seconds"],
    "tonic loop (no write)": lambda r: r["tonic"]["loop_seconds"],
    "tonic DiskCachedDataset": lambda r: r["tonic"]["cached_seconds"],
    "refresh +1 % / 1 % changed": lambda r: r["refresh"]["seconds"],
    "no-op refresh": lambda r: r["noop_refresh"]["seconds"],
    "store verify": lambda r: r["verify"]["seconds"],
    "epoch, resident": lambda r: r["train"]["resident"]["seconds"],
    "epoch, streaming (1/4)": lambda r: r["train"]["stream"]["seconds"],
    "tmkt eval (test)": lambda r: r["train"]["eval"]["seconds"],
}
MEMORY = {  # row name -> peak RSS (MB) of a size's result
    "build coordinator, 1 worker": lambda r: r["build_1"]["coordinator_rss_mb"],
    "build worker, 1 worker": lambda r: max(r["build_1"]["worker_rss_mb"]),
    "build coordinator, 2 workers": lambda r: r["build_2"]["coordinator_rss_mb"],
    "build worker (max), 2 workers": lambda r: max(r["build_2"]["worker_rss_mb"]),
    "refresh coordinator": lambda r: r["refresh"]["coordinator_rss_mb"],
    "no-op refresh": lambda r: r["noop_refresh"]["coordinator_rss_mb"],
    "verify": lambda r: r["verify"]["rss_mb"],
    "train, resident": lambda r: r["train"]["resident"]["rss_mb"],
    "train, streaming (1/4)": lambda r: r["train"]["stream"]["rss_mb"],
}


def _value(getter, result: dict[str, Any]) -> float | None:
    try:
        return float(getter(result))
    except (KeyError, TypeError, ValueError):
        return None


def growth(values: list[float | None], sizes: list[int]) -> str:
    """The exponent k of value ~ size^k between the two largest sizes measured (1 = linear)."""
    pairs = [(s, v) for s, v in zip(sizes, values, strict=True) if v]
    if len(pairs) < 2:
        return ""
    (s0, v0), (s1, v1) = pairs[-2], pairs[-1]
    return f"{math.log(v1 / v0) / math.log(s1 / s0):.2f}"


def table(results: list[dict[str, Any]], rows: dict[str, Any], unit: str) -> str:
    sizes = [r["recordings"] for r in results]
    head = f"| {unit} | " + " | ".join(f"{n:,}" for n in sizes) + " | growth |"
    lines = [head, "|---" * (len(sizes) + 2) + "|"]
    for name, getter in rows.items():
        values = [_value(getter, r) for r in results]
        if not any(values):
            continue
        cells = " | ".join("" if v is None else f"{v:,.1f}" for v in values)
        lines.append(f"| {name} | {cells} | {growth(values, sizes)} |")
    return "\n".join(lines)


def ratios(results: list[dict[str, Any]]) -> str:
    """Per size: events/s, the build against tonic's loop, 2 workers against 1, store against raw,
    and the epoch streamed against the resident one (samples/s, and test accuracy after it)."""
    lines = [
        "| recordings | events | build events/s, 1 / 2 workers | 1 worker / tonic loop | "
        "2 workers / 1 | 1 worker / tonic DiskCached | store / raw size | stream / resident samples/s | "
        "test accuracy after the epoch, resident / stream |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in results:
        one, two, tonic = r["build_1"], r["build_2"], r["tonic"]
        stream = r.get("train", {})
        stream_ratio = accuracy = ""
        if stream:
            stream_ratio = f"{stream['stream']['samples_per_s'] / stream['resident']['samples_per_s']:.2f}"
            accuracy = " / ".join(f"{stream[k]['test_accuracy']:.1%}" for k in ("resident", "stream"))
        lines.append(
            f"| {r['recordings']:,} | {one['events'] / 1e6:,.1f} M | {one['events_per_s'] / 1e6:.1f} M / "
            f"{two['events_per_s'] / 1e6:.1f} M | {tonic['loop_seconds'] / one['seconds']:.2f}x | "
            f"{one['seconds'] / two['seconds']:.2f}x | {tonic['cached_seconds'] / one['seconds']:.2f}x | "
            f"{r['store_bytes'] / r['raw_bytes']:.2f} | {stream_ratio} | {accuracy} |"
        )
    return "\n".join(lines)


def write_report(results: dict[str, list[dict[str, Any]]], out: Path, meta: dict[str, Any]) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "scale.json").write_text(json.dumps({"meta": meta, "results": results}, indent=2))
    parts = [f"# `tmkt bench scale`\n\n{meta['command']}\n\nMachine: {meta['machine']}\n"]
    for name, rs in results.items():
        parts += [
            f"## {name}\n",
            ratios(rs) + "\n",
            "Seconds per stage (growth: k of seconds ~ recordings^k between the two largest sizes)\n",
            table(rs, STAGES, "seconds") + "\n",
            "Peak RSS, MB\n",
            table(rs, MEMORY, "MB") + "\n",
        ]
    (out / "scale.md").write_text("\n".join(parts))
    plot(results, out / "scale.png")


def plot(results: dict[str, list[dict[str, Any]]], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(13, 5))
    for geometry, rs in results.items():
        sizes = [r["recordings"] for r in rs]
        style = "-o" if geometry == NMNIST.name else "--s"
        for ax, rows in ((axes[0], STAGES), (axes[1], MEMORY)):
            for name, getter in rows.items():
                values = [_value(getter, r) for r in rs]
                points = [(s, v) for s, v in zip(sizes, values, strict=True) if v]
                if points:
                    xs, ys = zip(*points, strict=True)
                    ax.plot(xs, ys, style, label=f"{name} ({geometry})", markersize=4)
    sizes = sorted({r["recordings"] for rs in results.values() for r in rs})
    if len(sizes) > 1:  # what linear growth looks like, through the smallest build
        first = (
            _value(STAGES["build, 1 worker"], results[NMNIST.name][0]) if results.get(NMNIST.name) else None
        )
        if first:
            axes[0].plot(sizes, [first * s / sizes[0] for s in sizes], "k:", label="linear (slope 1)")
    for ax, title, unit in ((axes[0], "time per stage", "seconds"), (axes[1], "peak RSS per process", "MB")):
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("recordings")
        ax.set_ylabel(unit)
        ax.set_title(title)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=6)
    fig.tight_layout()
    fig.savefig(path, dpi=130)


# -- command --------------------------------------------------------------------------------------
def _memory_gib() -> float:
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30


def _sizes(text: str) -> list[int]:
    return [int(s) for s in text.split(",") if s.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tmkt bench scale", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, type=Path, help="folder for scale.json, scale.md, scale.png")
    parser.add_argument("--sizes", type=_sizes, default=list(NMNIST_SIZES), help="N-MNIST tree sizes")
    parser.add_argument(
        "--cifar-sizes", type=_sizes, default=list(CIFAR_SIZES), help="CIFAR10-DVS-like sizes ('' = none)"
    )
    real = Path(os.environ.get("TMKT_REAL_DATA", "../shared/data"))
    parser.add_argument("--seed-raw", type=Path, default=real / "nmnist", help="N-MNIST files to link from")
    parser.add_argument("--static", type=Path, default=real / "mnist", help="MNIST IDX folder (statics)")
    parser.add_argument(
        "--train-steps", type=int, default=0, help="cap each training epoch at this many steps; 0 = whole"
    )
    parser.add_argument("--scratch", type=Path, default=None, help="where trees and stores go (default: tmp)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", datefmt="%H:%M:%S")
    static = args.static if args.static.is_dir() else None
    meta = {
        "command": "`tmkt bench scale " + " ".join(argv if argv is not None else sys.argv[3:]) + "`",
        "machine": f"{os.cpu_count()} cores, {_memory_gib():.0f} GiB",
        "load_average_at_start": os.getloadavg(),
        "train_steps": args.train_steps,
    }
    if args.scratch is not None:
        args.scratch.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.scratch) as tmp:
        scratch = Path(tmp)
        seeds = {NMNIST.name: nmnist_seeds(args.seed_raw, scratch)}
        if args.cifar_sizes:
            seeds[CIFAR_LIKE.name] = cifar_like_seeds(scratch)
        results: dict[str, list[dict[str, Any]]] = {name: [] for name in seeds}
        # smallest first, so that a long run reports what it has measured after each size
        jobs = [(n, NMNIST, static) for n in args.sizes] + [(n, CIFAR_LIKE, None) for n in args.cifar_sizes]
        jobs.sort(key=lambda job: job[0])
        for n, geometry, statics in jobs:
            results[geometry.name].append(
                measure_size(geometry, seeds[geometry.name], n, scratch, statics, args.train_steps)
            )
            write_report(results, args.out, meta)
    meta["load_average_at_end"] = os.getloadavg()
    write_report(results, args.out, meta)
    print((args.out / "scale.md").read_text())
    return 0
