"""Loader throughput: mixed samples per second delivered to a consumer, against two common baselines.

Measured in one run, with the same batch size, T, ratio and mixing for all:

- ``samples_per_s``: ``tmkt.loader.MixLoader`` (DALI; frames held in memory, mixed in the graph);
- ``augmented_samples_per_s``: the same loader with every augmentation on (``AUGMENT_ALL``), so its
  cost is a ratio against the row above;
- ``tonic_samples_per_s``: a torch DataLoader (2 workers) decoding each raw N-MNIST file per sample
  with ``tonic.io.read_mnist_file`` + ``tonic.transforms.ToFrame``, then the same mixing in torch;
- ``npz_samples_per_s``: a torch DataLoader (2 workers) over per-sample ``.npz`` frame caches written
  with spikingjelly's own ``np_savez`` (compressed, float64 frames as its integrators make them) and
  read with its ``load_npz_frames``, then the same mixing in torch.

Each loader runs one warm-up epoch (workers started, graph built), then whole epochs until
``seconds`` have passed. On a GPU the result also holds ``data_wait_share``: the share of a training
step of a small conv net spent waiting for the next batch.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterable
from pathlib import Path

import numpy as np
import torch

from tmkt.augment import AugmentConfig
from tmkt.data import MixData, StaticsByClass, static_lut
from tmkt.loader import LoaderConfig, MixLoader, endless
from tmkt.mixing import mag_targets, mrp_targets, sample_cut, solve_p
from tmkt.reference import apply_mix

#: tonic's own field layout for N-MNIST events
NMNIST_DTYPE = np.dtype([("x", int), ("y", int), ("t", int), ("p", int)])
NMNIST_SENSOR = (34, 34)
#: every augmentation of tmkt.augment on, with magnitudes in the range papers use on event data
AUGMENT_ALL = AugmentConfig(
    crop_padding=4, hflip=True, roll=3, rotate=15, shear=15, cutout=8, drop_pixel=0.1, drop_time=0.2
)


class TonicFrames(torch.utils.data.Dataset):
    """Decode one raw N-MNIST file per sample and bin it with tonic (the usual per-file pipeline)."""

    def __init__(self, files: list[Path], labels: list[int], size: tuple[int, int], T: int) -> None:
        import tonic

        self.files, self.labels = files, labels
        H, W = size
        self.resize = None
        if (H, W) != NMNIST_SENSOR:
            self.resize = tonic.transforms.Downsample(
                spatial_factor=(W / NMNIST_SENSOR[1], H / NMNIST_SENSOR[0])
            )
        self.to_frame = tonic.transforms.ToFrame(sensor_size=(W, H, 2), n_time_bins=T)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from tonic.io import read_mnist_file

        events = read_mnist_file(str(self.files[i]), dtype=NMNIST_DTYPE)
        if self.resize is not None:
            events = self.resize(events)
        return torch.from_numpy(self.to_frame(events).astype(np.float32)), self.labels[i]


class NpzFrames(torch.utils.data.Dataset):
    """Per-sample frame files, spikingjelly's cache format."""

    def __init__(self, files: list[Path], labels: np.ndarray) -> None:
        self.files, self.labels = files, labels

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        from spikingjelly.datasets.utils import load_npz_frames

        return torch.from_numpy(load_npz_frames(self.files[i])), int(self.labels[i])


def write_npz_cache(data: MixData, folder: Path) -> list[Path]:
    """One compressed ``.npz`` per recording, as spikingjelly writes its frame datasets."""
    from spikingjelly.datasets.utils import np_savez

    folder.mkdir(parents=True, exist_ok=True)
    files = []
    for i, frames in enumerate(data.event_frames):
        path = folder / f"{i:06d}.npz"
        np_savez(path, frames=frames.astype(np.float64))
        files.append(path)
    return files


def list_nmnist(raw_dir: Path, limit: int) -> tuple[list[Path], list[int]]:
    """Raw N-MNIST files ``<digit>/<n>.bin`` anywhere under ``raw_dir`` (sorted, at most ``limit``)."""
    files = sorted(Path(raw_dir).rglob("*.bin"))
    files = [f for f in files if f.parent.name.isdigit()][:limit]
    if not files:
        raise FileNotFoundError(f"{raw_dir}: no N-MNIST files <digit>/<n>.bin")
    return files, [int(f.parent.name) for f in files]


class TorchMixer:
    """The same Time-step Mixup as the loader, in torch, applied in the consumer after a DataLoader."""

    def __init__(self, data: MixData, r_m: float, seed: int) -> None:
        self.data, self.T = data, data.time_steps
        self.p = solve_p(r_m, self.T)
        self.statics = StaticsByClass.build(data.static_labels, data.num_classes)
        self.lut = torch.from_numpy(static_lut(data.static_scale))
        self.rng = np.random.default_rng(seed)

    def __call__(self, events: torch.Tensor, labels: torch.Tensor) -> tuple[torch.Tensor, ...]:
        n = len(labels)
        static_index = self.statics.pick(labels.numpy(), self.rng.random(n))
        cut = sample_cut(self.p, self.T, n, self.rng)
        statics = self.lut[torch.from_numpy(self.data.static_frames[static_index]).long()]
        frames = apply_mix(statics[:, None, None], events, cut)  # broadcast, no expanded copy
        return (
            frames,
            labels,
            torch.from_numpy(mag_targets(cut, self.T)),
            torch.from_numpy(mrp_targets(cut, self.T)),
        )


def measure(
    epoch_batches: Callable[[int], Iterable], consume: Callable[[object], int], seconds: float
) -> float:
    """Samples per second over whole epochs after one warm-up epoch."""
    for batch in epoch_batches(0):
        consume(batch)
    samples, epoch, start = 0, 1, time.perf_counter()
    while True:
        for batch in epoch_batches(epoch):
            samples += consume(batch)
        epoch += 1
        if time.perf_counter() - start >= seconds:
            break
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return samples / (time.perf_counter() - start)


def _torch_loader(dataset, batch_size: int, workers: int, seed: int) -> torch.utils.data.DataLoader:
    """The baseline DataLoader. Its workers start from a fork server, not a fork of this process: a
    forked worker inherits this process's DALI pipelines and hangs when it finalizes one (their
    threads do not exist in the child). Persistent workers and the warm-up epoch keep the start-up
    out of the measured time."""
    return torch.utils.data.DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=True,
        num_workers=workers,
        persistent_workers=workers > 0,
        multiprocessing_context="forkserver" if workers > 0 else None,
        generator=torch.Generator().manual_seed(seed),
    )


def _epochs_of(loader: torch.utils.data.DataLoader) -> Callable[[int], Iterable]:
    return lambda epoch: loader


def data_wait_share(loader: MixLoader, steps: int = 50) -> float:
    """Share of a training step (small conv net, SGD) spent waiting for the loader's next batch."""
    T = loader.data.time_steps
    net = torch.nn.Sequential(
        torch.nn.Conv2d(2 * T, 64, 3, padding=1),
        torch.nn.ReLU(),
        torch.nn.Conv2d(64, 64, 3, stride=2, padding=1),
        torch.nn.ReLU(),
        torch.nn.AdaptiveAvgPool2d(1),
        torch.nn.Flatten(),
        torch.nn.Linear(64, loader.data.num_classes),
    ).cuda()
    optimizer = torch.optim.SGD(net.parameters(), lr=0.01)
    batches, waited = endless(loader), 0.0
    torch.cuda.synchronize()
    start = time.perf_counter()
    for _ in range(steps):
        t0 = time.perf_counter()
        batch = next(batches)
        torch.cuda.synchronize()
        waited += time.perf_counter() - t0
        loss = torch.nn.functional.cross_entropy(net(batch.frames.flatten(1, 2)), batch.labels)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        torch.cuda.synchronize()
    return waited / (time.perf_counter() - start)


def bench_one_size(
    data: MixData,
    raw_dir: Path | None,
    batch_size: int = 64,
    workers: int = 2,
    seconds: float = 5.0,
    r_m: float = 0.5,
    seed: int = 0,
) -> dict:
    size = data.frame_size

    def dali_loader(augment: AugmentConfig | None) -> MixLoader:
        cfg = LoaderConfig(batch_size=batch_size, mode="mix", seed=seed, num_threads=workers, augment=augment)
        loader = MixLoader(data, cfg)
        loader.set_ratio(r_m)
        return loader

    def dali_epochs(loader: MixLoader) -> Callable[[int], MixLoader]:
        def epoch_of(epoch: int) -> MixLoader:
            loader.set_epoch(epoch)
            return loader

        return epoch_of

    loader = dali_loader(None)
    dali = measure(dali_epochs(loader), lambda b: len(b.labels), seconds)
    augmented = measure(dali_epochs(dali_loader(AUGMENT_ALL)), lambda b: len(b.labels), seconds)

    mixer = TorchMixer(data, r_m, seed)

    def mix_and_count(batch) -> int:
        return len(mixer(*batch)[1])

    tonic = None
    if raw_dir is not None:  # the per-file decoding baseline needs the raw recordings and tonic
        files, labels = list_nmnist(raw_dir, limit=len(data.event_frames))
        tonic_loader = _torch_loader(
            TonicFrames(files, labels, size, data.time_steps), batch_size, workers, seed
        )
        tonic = measure(_epochs_of(tonic_loader), mix_and_count, seconds)
        del tonic_loader
    with tempfile.TemporaryDirectory(prefix="tmkt-npz-") as tmp:
        npz_files = write_npz_cache(data, Path(tmp))
        npz_loader = _torch_loader(NpzFrames(npz_files, data.event_labels), batch_size, workers, seed)
        npz = measure(_epochs_of(npz_loader), mix_and_count, seconds)
        del npz_loader
    result = {
        "samples_per_s": round(dali, 1),
        "augmented_samples_per_s": round(augmented, 1),
        "tonic_samples_per_s": None if tonic is None else round(tonic, 1),
        "npz_samples_per_s": round(npz, 1),
        "speedup_vs_tonic": None if tonic is None else round(dali / tonic, 2),
        "speedup_vs_npz": round(dali / npz, 2),
        "device": torch.cuda.get_device_name() if loader.device == "cuda" else "cpu",
        "batch_size": batch_size,
        "time_steps": data.time_steps,
        "recordings": len(data.event_frames),
        "num_workers": workers,
        "cpu_count": os.cpu_count(),
    }
    if loader.device == "cuda":
        result["data_wait_share"] = round(data_wait_share(loader), 4)
    return result


def run_loader_bench(
    data_by_size: dict[str, MixData],
    raw_dir: str | Path | None,
    out_json: str | Path | None = None,
    batch_size: int = 64,
    workers: int = 2,
    seconds: float = 5.0,
    r_m: float = 0.5,
    seed: int = 0,
) -> dict:
    """Benchmark every size (e.g. ``{"34x34": ..., "48x48": ...}``); write the results to ``out_json``."""
    results = {
        name: bench_one_size(
            data, Path(raw_dir) if raw_dir else None, batch_size, workers, seconds, r_m, seed
        )
        for name, data in data_by_size.items()
    }
    if out_json is not None:
        Path(out_json).parent.mkdir(parents=True, exist_ok=True)
        Path(out_json).write_text(json.dumps(results, indent=2) + "\n")
    return results


def build_stores(raw: Path, static: Path, scratch: Path, sizes: Iterable[str]) -> dict[str, str]:
    """N-MNIST stores at each size ("34x34", ...) built by the real ingest pipeline into ``scratch``.

    Imported here, inside the command only: the loader library itself depends on ``storage`` alone.
    """
    from pipelines.build import BuildConfig, run_build

    stores = {}
    for name in sizes:
        height, width = (int(side) for side in name.split("x"))
        store = scratch / f"nmnist-{name}"
        config = BuildConfig(
            source="nmnist", raw=str(raw), static=str(static), store=str(store), size=(height, width)
        )
        run_build(config)
        stores[name] = str(store)
    return stores


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tmkt bench loader", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--raw", help="raw N-MNIST folder (<digit>/<n>.bin below it); without it no tonic baseline"
    )
    parser.add_argument("--static", help="MNIST folder; with it, stores are built for --sizes in a temp dir")
    parser.add_argument("--store", action="append", default=[], metavar="SIZE=PATH", help="an existing store")
    parser.add_argument("--sizes", default="34x34,48x48", help="sizes to build with --static")
    parser.add_argument("--json", default=None, help="where to write the results")
    parser.add_argument("--split", default="train")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument(
        "--stream",
        action="store_true",
        help="streaming against resident loading of each --store (benches.stream)",
    )
    parser.add_argument(
        "--max-resident-bytes",
        type=int,
        default=0,
        help="with --stream; 0 = the statics and a quarter of the split's frames",
    )
    args = parser.parse_args(argv)
    if not args.store and not args.static:
        parser.error("give --store SIZE=PATH (repeatable) or --static DIR to build the stores")
    if args.stream:
        return _stream_main(args, parser)
    with tempfile.TemporaryDirectory(prefix="tmkt-bench-stores-") as scratch:
        stores = {}
        for item in args.store:
            name, _, path = item.partition("=")
            if not path:
                parser.error(f"--store takes SIZE=PATH, got {item!r}")
            stores[name] = path
        if args.static and not stores:
            if not args.raw:
                parser.error("--static builds stores from --raw: give both")
            stores = build_stores(Path(args.raw), Path(args.static), Path(scratch), args.sizes.split(","))
        data_by_size = {name: MixData.from_store(path, split=args.split) for name, path in stores.items()}
        results = run_loader_bench(data_by_size, args.raw, args.json, args.batch_size, seconds=args.seconds)
    print(json.dumps(results, indent=2))
    return 0


def _stream_main(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    from benches.stream import compare

    if not args.store:
        parser.error("--stream measures existing stores: give --store NAME=PATH (local or s3://)")
    results = {}
    for item in args.store:
        name, _, path = item.partition("=")
        if not path:
            parser.error(f"--store takes NAME=PATH, got {item!r}")
        results[name] = compare(path, args.max_resident_bytes, args.batch_size, args.seconds)
    if args.json:
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        Path(args.json).write_text(json.dumps(results, indent=2) + "\n")
    print(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
