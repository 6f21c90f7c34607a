"""Train a spiking network with TMKT or a baseline: one readable loop, in the spirit of nanoGPT.

    tmkt train --store PATH --method tmkt --out runs/tmkt-s0 [--config cfg.toml] [key=value ...]
    torchrun --nproc-per-node 2 -m tmkt.train --store PATH --method tmkt --out runs/ddp

Configuration: the ``TrainConfig`` defaults, then ``--config FILE`` (JSON or TOML), then the named
flags, then ``key=value`` overrides typed by the dataclass fields. Validation data is the store's
"val" split (the split is made once, when the store is built, so every method and seed sees the same
one), or with ``eval_split=unused`` every train/val recording the run does not train on; the "test"
split, when the store has one, is evaluated once at the end.

Outputs in ``out``: ``run.json`` (at start), ``metrics.jsonl`` (training rows every ``log_every``
steps, a ``val_accuracy`` row per epoch), ``tb/`` (TensorBoard), ``ckpt.pt`` (resumable state every
``checkpoint_every`` steps and at the end), ``checkpoint.pt`` (final weights + primitive metadata,
loadable with ``weights_only=True``) and ``result.json``.

Resume (``resume=true``) restores model, optimizer, step, RNG states and the loader position; the
loader is replayed from the start of the interrupted epoch (with the same per-step ratios) and the
batches already trained on are skipped, so a resumed run continues exactly as an uninterrupted one.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import os
import platform
import random
import socket
import sys
import time
import tomllib
import typing
from contextlib import nullcontext
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tmkt.evaluate import accuracy_on, checkpoint_metadata, eval_loader
from tmkt.methods import METHOD_NAMES, build_method
from tmkt.mixing import RatioSchedule
from tmkt.models import ModelConfig, build_model


@dataclass
class TrainConfig:
    # data
    store: str = ""  # dataset store path (Icechunk repository)
    snapshot: str = ""  # pinned snapshot id; "" = the latest at start (recorded in run.json)
    frames_key: str = ""  # frame representation; "" = the store's default (T and size come from it)
    max_recordings_per_class: int = 0  # 0 = all training recordings
    # validation data: "val" (the store's split) or "unused" (every train/val recording this run does
    # not train on; tmkt.data.UNUSED), which measures data-scarcity runs on ~10x more recordings
    eval_split: str = "val"
    # method
    method: str = "tmkt"
    # RatioSchedule of r_m over training: constant|linear|cosine|power. Linear 0.25 -> 1.0 (from mostly
    # static to all events, so BatchNorm ends on event statistics) beat constant 0.5 on N-MNIST validation.
    ratio_kind: str = "linear"
    ratio_start: float = 0.25
    ratio_end: float = 1.0
    ratio_power: float = 2.0
    l_mag: float = 0.1  # MAG at 1.0 let the net silence event features on N-MNIST (val at chance)
    l_mrp: float = 0.1
    # tmkt/tsm*: weight of a second CE on the pure event sequence of each mixed batch (its own forward
    # pass); 0 = off. Costs a second forward and backward per step (README "Results": the ablation).
    l_event: float = 1.0
    l_cka: float = 1.0
    tet_mse_weight: float = 0.0
    finetune_static_fraction: float = 0.5
    # model
    # vgg_snn | resnet18 | cnn3 | small; auto = vgg_snn on a GPU, cnn3 on a CPU (README "Results")
    backbone: str = "auto"
    neuron: str = "lif"
    tau: float = 2.0
    surrogate: str = "atan"
    width: float = 1.0
    # optimisation
    out: str = "runs/default"
    seed: int = 0
    # Budget: `epochs`, raised to ceil(min_steps / steps per epoch) when that makes at least `min_steps`
    # optimizer steps. 10 N-MNIST recordings per class at batch 32 make 4 steps per epoch: 60 epochs,
    # 240 steps; 5 per class make 2: 120 epochs. 0 = exactly `epochs`.
    epochs: int = 60
    min_steps: int = 240
    batch_size: int = 32  # per process
    eval_batch_size: int = 0  # 0 = batch_size
    lr: float = 2e-3
    min_lr: float = 0.0
    weight_decay: float = 1e-4
    optimizer: str = "adamw"  # adamw | sgd (momentum 0.9)
    cosine_lr: bool = True
    warmup_steps: int = 0
    grad_clip: float = 0.0  # 0 = off
    augment: bool = True
    crop_padding: int = 4  # random crop with this much zero padding (augment)
    # random horizontal flip (augment): on for object datasets (CIFAR10-DVS, N-Caltech101); off by default
    # because a mirror changes the class of digits and of left/right gestures
    hflip: bool = False
    # system
    # auto = bf16 on CUDA, off on CPU. Seen on an H200 (VGG-SNN, T=10, 48x48, batch 64): bf16 halves
    # the memory but eager steps ran ~20% slower than fp32 (the neurons' elementwise ops dominate);
    # compile=true with bf16 ran 1.9x faster than eager bf16 after ~100 s of compilation.
    amp: str = "auto"  # auto | bf16 | off
    compile: bool = False
    device: str = "auto"  # auto | cpu | cuda
    num_threads: int = 2  # loader threads
    checkpoint_every: int = 500  # steps; 0 = only at the end
    resume: bool = False
    max_steps: int = 0  # stop after this many steps (schedules still span all epochs); 0 = off
    log_every: int = 10
    val_every: int = 1  # epochs between validations (and always after the last); 0 = only after the last
    progress_bar: bool = True
    record_indices: bool = False  # write the sample indices each rank trained on (checks sharding)
    tag: str = ""  # free label; plots group runs by method/tag (e.g. ratio-schedule variants)

    def __post_init__(self) -> None:
        if self.method not in METHOD_NAMES:
            raise ValueError(f"unknown method {self.method!r}; expected one of {METHOD_NAMES}")
        if self.optimizer not in ("adamw", "sgd"):
            raise ValueError(f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}")
        if self.amp not in ("auto", "bf16", "off"):
            raise ValueError(f"amp must be 'auto', 'bf16' or 'off', got {self.amp!r}")
        if self.epochs < 1 or self.batch_size < 1 or self.min_steps < 0:
            raise ValueError("epochs and batch_size must be >= 1, min_steps >= 0")
        if self.eval_split not in ("val", "unused"):
            raise ValueError(f"eval_split must be 'val' or 'unused', got {self.eval_split!r}")

    def model_config(self, mag_head: bool, mrp_head: bool) -> ModelConfig:
        return ModelConfig(
            self.backbone, self.neuron, self.tau, self.surrogate, self.width, mag_head, mrp_head
        )

    def schedule(self) -> RatioSchedule:
        return RatioSchedule(self.ratio_kind, self.ratio_start, self.ratio_end, self.ratio_power)


# ---------------------------------------------------------------------------------------------
# configuration from files and key=value overrides


def _parse_value(text: str, kind: Any, key: str) -> Any:
    if kind is bool:
        lowered = text.strip().lower()
        if lowered in ("1", "true", "yes", "on"):
            return True
        if lowered in ("0", "false", "no", "off"):
            return False
        raise ValueError(f"config key {key!r} expects a boolean, got {text!r}")
    try:
        return kind(text)
    except ValueError:
        raise ValueError(f"config key {key!r} expects {kind.__name__}, got {text!r}") from None


def config_with(base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """``base`` with ``values`` applied; strings are converted to the field's type; unknown keys fail."""
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(f"unknown config key(s) {unknown}; known keys: {sorted(hints)}")
    typed = {}
    for key, value in values.items():
        kind = hints[key]
        if isinstance(value, str) and kind is not str:
            value = _parse_value(value, kind, key)
        elif kind is float and isinstance(value, int) and not isinstance(value, bool):
            value = float(value)
        elif not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
            raise ValueError(f"config key {key!r} expects {kind.__name__}, got {value!r}")
        typed[key] = value
    return dataclasses.replace(base, **typed)


def read_config_file(path: str | Path) -> dict[str, Any]:
    """A flat mapping of TrainConfig keys from a JSON or TOML file (by extension)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"config file {path} does not exist")
    if path.suffix == ".toml":
        return tomllib.loads(path.read_text())
    if path.suffix == ".json":
        values = json.loads(path.read_text())
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a JSON object of config keys")
        return values
    raise ValueError(f"{path}: config files must end in .json or .toml")


def parse_args(argv: list[str] | None) -> TrainConfig:
    parser = argparse.ArgumentParser(prog="tmkt train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store")
    parser.add_argument("--method", choices=METHOD_NAMES)
    parser.add_argument("--out")
    parser.add_argument("--config", help="JSON or TOML file of TrainConfig keys")
    parser.add_argument("--seed", type=int)
    parser.add_argument(
        "--epochs",
        type=int,
        help=f"passes over the training set (default {TrainConfig.epochs}), raised on small sets until "
        f"the run makes at least min_steps optimizer steps (default {TrainConfig.min_steps}; "
        "min_steps=0 turns that off)",
    )
    parser.add_argument("--backbone")
    parser.add_argument("--max-recordings-per-class", dest="max_recordings_per_class", type=int)
    parser.add_argument("--resume", action="store_true", default=None)
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    args = parser.parse_args(argv)
    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    flags = ("store", "method", "out", "seed", "epochs", "backbone", "max_recordings_per_class", "resume")
    values.update({k: getattr(args, k) for k in flags if getattr(args, k) is not None})
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"expected key=value, got {item!r}")
        values[key.strip().replace("-", "_")] = value
    cfg = config_with(TrainConfig(), values)
    if not cfg.store:
        parser.error("--store is required")
    return cfg


# ---------------------------------------------------------------------------------------------
# system: distributed, device, precision, RNG


@dataclass
class Dist:
    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed(device_kind: str) -> Dist:
    """Join the torchrun process group when RANK/WORLD_SIZE are set (nccl on CUDA, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", os.environ["RANK"]))
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device_kind == "cuda" else "gloo")
    return Dist(rank, world, local)


class DeviceUnavailable(RuntimeError):
    """The configured device is not on this machine (printed as one line by the CLI)."""


def resolve_device(name: str, local_rank: int) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise DeviceUnavailable(
            "device=cuda asked for, but this machine has no usable CUDA GPU (use device=cpu)"
        )
    if name == "cuda":
        torch.cuda.set_device(local_rank)
        return torch.device("cuda", local_rank)
    return torch.device(name)


def amp_context(cfg: TrainConfig, device: torch.device):
    use = cfg.amp == "bf16" or (cfg.amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use else nullcontext()


def rng_state() -> dict[str, Any]:
    state = {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def budget_epochs(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """``epochs``, raised so that the run makes at least ``min_steps`` optimizer steps.

    Why: a budget in epochs starves small sets. 100 recordings at batch 64 make two steps per epoch,
    and at 10 epochs both methods stopped far from convergence, the harder mixed task the furthest.
    """
    return max(cfg.epochs, math.ceil(cfg.min_steps / max(1, steps_per_epoch)))


def lr_at(step: int, total: int, cfg: TrainConfig) -> float:
    """Linear warmup, then cosine decay from ``lr`` to ``min_lr`` over the whole run (or constant)."""
    if step < cfg.warmup_steps:
        return cfg.lr * (step + 1) / cfg.warmup_steps
    if not cfg.cosine_lr:
        return cfg.lr
    ratio = (step - cfg.warmup_steps) / max(1, total - cfg.warmup_steps)
    return cfg.min_lr + 0.5 * (cfg.lr - cfg.min_lr) * (1.0 + math.cos(math.pi * min(1.0, ratio)))


def make_optimizer(model: torch.nn.Module, cfg: TrainConfig) -> torch.optim.Optimizer:
    # No weight decay on BN/bias/PLIF scalars (1-D parameters), as usual for conv nets.
    decay = [p for p in model.parameters() if p.dim() > 1]
    no_decay = [p for p in model.parameters() if p.dim() <= 1]
    groups = [{"params": decay, "weight_decay": cfg.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    if cfg.optimizer == "sgd":
        return torch.optim.SGD(groups, lr=cfg.lr, momentum=0.9)
    return torch.optim.AdamW(groups, lr=cfg.lr)


# ---------------------------------------------------------------------------------------------
# data


@dataclass
class Datasets:
    train: Any  # tmkt.data.MixData
    val: Any | None
    test: Any | None
    snapshot: str
    classes: list[str]
    frames_key: str


def _split_or_none(path: str, snapshot: str, split: str, frames_key: str | None):
    from tmkt.data import MixData

    data = MixData.from_store(path, snapshot=snapshot, split=split, frames_key=frames_key)
    return data if len(data.event_labels) else None


def load_datasets(cfg: TrainConfig) -> Datasets:
    """Train/val/test from one pinned snapshot, so a refresh during training changes nothing."""
    from storage.reader import DatasetReader
    from tmkt.data import MixData

    reader = DatasetReader(cfg.store, cfg.snapshot or None)
    snapshot, key = reader.snapshot_id, cfg.frames_key or reader.default_frame_key()
    train = MixData.from_store(
        cfg.store,
        snapshot=snapshot,
        split="train",
        frames_key=key,
        max_recordings_per_class=cfg.max_recordings_per_class or None,
        seed=cfg.seed,
    )
    counts = {name: len(reader.split_indices(name)) for name in ("val", "test")}
    val = _split_or_none(cfg.store, snapshot, "val", key) if counts["val"] else None
    if cfg.eval_split == "unused":
        val = MixData.from_store(
            cfg.store, snapshot, "unused", key, cfg.max_recordings_per_class or None, cfg.seed
        )
    test = _split_or_none(cfg.store, snapshot, "test", key) if counts["test"] else None
    return Datasets(train, val, test, snapshot, reader.classes, key)


def in_memory_datasets(data, val_data, test_data) -> Datasets:
    snapshot = getattr(data, "snapshot", "") or ""
    classes = list(getattr(data, "classes", None) or [str(k) for k in range(data.num_classes)])
    return Datasets(data, val_data, test_data, snapshot, classes, getattr(data, "frames_key", "") or "")


def train_loader(
    data, cfg: TrainConfig, mode: str, ddp: Dist, device: torch.device, with_events: bool = False
):
    from tmkt.loader import AugmentConfig, LoaderConfig, MixLoader

    augment = AugmentConfig(crop_padding=cfg.crop_padding, hflip=cfg.hflip, enabled=cfg.augment)
    lcfg = LoaderConfig(
        batch_size=cfg.batch_size,
        mode=mode,
        shuffle=True,
        seed=cfg.seed,
        augment=augment,
        # DDP: every rank must run the same number of steps, or the gradient all-reduce hangs
        drop_last=ddp.world_size > 1,
        device=device.type,
        num_threads=cfg.num_threads,
        with_events=with_events and mode == "mix",
    )
    return MixLoader(data, lcfg, rank=ddp.rank, world_size=ddp.world_size)


# ---------------------------------------------------------------------------------------------
# records


def host_record(cfg: TrainConfig, snapshot: str, ddp: Dist, device: torch.device) -> dict[str, Any]:
    import spikingjelly

    versions = {"python": platform.python_version(), "torch": torch.__version__}
    versions["spikingjelly"] = getattr(spikingjelly, "__version__", "unknown")
    try:
        import nvidia.dali as dali

        versions["dali"] = dali.__version__
    except ImportError:
        versions["dali"] = None
    return {
        "config": asdict(cfg),
        "store": cfg.store,
        "store_snapshot": snapshot,
        "host": socket.gethostname(),
        "platform": platform.platform(),
        "device": str(device),
        "cuda": torch.cuda.get_device_name(device) if device.type == "cuda" else None,
        "world_size": ddp.world_size,
        "versions": versions,
        "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class MetricsLog:
    """JSON lines + TensorBoard, written by rank 0 only. Counts lines so resume can cut stale ones."""

    def __init__(self, out: Path, enabled: bool, keep_lines: int | None) -> None:
        self.enabled = enabled
        self.path = out / "metrics.jsonl"
        self.lines = 0
        self.tb = None
        if not enabled:
            return
        if keep_lines is not None and self.path.exists():
            # Rows written after the checkpoint we resume from will be written again.
            kept = self.path.read_text().splitlines()[:keep_lines]
            self.path.write_text("".join(line + "\n" for line in kept))
            self.lines = len(kept)
        elif self.path.exists():
            self.path.unlink()
        from torch.utils.tensorboard import SummaryWriter

        self.tb = SummaryWriter(str(out / "tb"))

    def write(self, row: dict[str, Any]) -> None:
        if not self.enabled:
            return
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        self.lines += 1
        for key, value in row.items():
            if key not in ("step", "epoch") and isinstance(value, int | float) and value is not None:
                self.tb.add_scalar(key, value, row["step"])

    def close(self) -> None:
        if self.tb is not None:
            self.tb.close()


def write_json(path: Path, payload: dict[str, Any]) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def gather_rng(ddp: Dist) -> list[dict[str, Any]]:
    """Every rank's RNG state (rank order), so that a resumed DDP run replays each rank's draws."""
    if ddp.world_size == 1:
        return [rng_state()]
    states: list[Any] = [None] * ddp.world_size
    dist.all_gather_object(states, rng_state())
    return states


# ---------------------------------------------------------------------------------------------
# the loop


def train(cfg: TrainConfig, data=None, val_data=None, test_data=None) -> dict[str, Any]:
    """Train as configured and return the result (also written to ``out/result.json``).

    ``data`` (a ``tmkt.data.MixData``) bypasses the store, for tests and notebooks; ``val_data`` and
    ``test_data`` are then optional.
    """
    device_kind = (
        "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    )
    ddp = setup_distributed(device_kind)
    device = resolve_device(cfg.device, ddp.local_rank)
    if cfg.backbone == "auto":  # recorded resolved, so result.json and checkpoints name the real model
        cfg = dataclasses.replace(cfg, backbone="vgg_snn" if device.type == "cuda" else "cnn3")
    torch.manual_seed(cfg.seed + ddp.rank)
    np.random.seed(cfg.seed + ddp.rank)
    random.seed(cfg.seed + ddp.rank)
    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)

    ds = in_memory_datasets(data, val_data, test_data) if data is not None else load_datasets(cfg)
    T, H, W = ds.train.event_frames.shape[1], ds.train.event_frames.shape[3], ds.train.event_frames.shape[4]
    method = build_method(
        cfg.method,
        cfg.schedule(),
        cfg.l_mag,
        cfg.l_mrp,
        cfg.l_cka,
        cfg.finetune_static_fraction,
        cfg.tet_mse_weight,
        cfg.l_event,
    )
    model_cfg = cfg.model_config(method.mag_head, method.mrp_head)
    raw_model = build_model(model_cfg, ds.train.num_classes, T).to(device)
    optimizer = make_optimizer(raw_model, cfg)

    loaders: dict[str, Any] = {}
    first = method.mode_for_epoch(0, cfg.epochs)
    loaders[first] = train_loader(ds.train, cfg, first, ddp, device, method.wants_events)
    # resolved like the backbone, so run.json and result.json record the epochs actually run
    cfg = dataclasses.replace(cfg, epochs=budget_epochs(cfg, len(loaders[first])))
    modes = [method.mode_for_epoch(e, cfg.epochs) for e in range(cfg.epochs)]
    for mode in dict.fromkeys(modes):
        if mode not in loaders:
            loaders[mode] = train_loader(ds.train, cfg, mode, ddp, device, method.wants_events)
    epoch_steps = [len(loaders[m]) for m in modes]
    total_steps = sum(epoch_steps)

    step, epoch, position, resumed_lines = 0, 0, 0, None
    ckpt_path = out / "ckpt.pt"
    if cfg.resume and ckpt_path.exists():
        ckpt = torch.load(ckpt_path, map_location=device, weights_only=False)
        raw_model.load_state_dict(ckpt["model"])
        optimizer.load_state_dict(ckpt["optimizer"])
        step, epoch, position = ckpt["step"], ckpt["epoch"], ckpt["position"]
        resumed_lines = ckpt["metrics_lines"]
        states = ckpt["rng"]
        set_rng_state(states[ddp.rank] if ddp.rank < len(states) else states[0])

    model: torch.nn.Module = torch.compile(raw_model) if cfg.compile else raw_model
    if ddp.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)

    log = MetricsLog(out, ddp.is_main, resumed_lines)
    if ddp.is_main and resumed_lines is None:
        write_json(out / "run.json", host_record(cfg, ds.snapshot, ddp, device))
    seen = None
    if cfg.record_indices:
        seen = (out / f"indices_rank{ddp.rank}.jsonl").open("a" if resumed_lines is not None else "w")
    val = eval_loader(ds.val, cfg.eval_batch_size or cfg.batch_size, device) if ds.val is not None else None

    def save_ckpt(epoch_: int, position_: int) -> None:
        states = gather_rng(ddp)  # collective: every rank calls it
        if ddp.is_main:
            payload = {
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "step": step,
                "epoch": epoch_,
                "position": position_,
                "rng": states,
                "metrics_lines": log.lines,
                "config": asdict(cfg),
            }
            torch.save(payload, out / "ckpt.tmp")
            os.replace(out / "ckpt.tmp", ckpt_path)

    from tqdm import tqdm

    bar = tqdm(total=total_steps, initial=step, disable=not (cfg.progress_bar and ddp.is_main), unit="step")
    train_time, train_samples, val_accuracy, stopped = 0.0, 0, None, False
    model.train()
    while epoch < cfg.epochs and not stopped:
        loader = loaders[modes[epoch]]
        loader.set_epoch(epoch)
        first_step = sum(epoch_steps[:epoch])
        if position < epoch_steps[epoch]:
            batches = iter(loader)
            for i in range(epoch_steps[epoch]):
                progress = (first_step + i) / total_steps
                r_m = method.on_step(loader, progress)
                t0 = time.perf_counter()
                batch = next(batches)
                if i < position:
                    continue  # replaying the interrupted epoch up to where the checkpoint was taken
                t1 = time.perf_counter()
                batch = to_device(batch, device)
                lr = lr_at(step, total_steps, cfg)
                losses = optimize(model, method, optimizer, batch, progress, lr, cfg, device)
                step, position = step + 1, i + 1
                if seen is not None and batch.index is not None:
                    seen.write(json.dumps({"step": step, "index": batch.index.tolist()}) + "\n")
                logging = step % cfg.log_every == 0 or step == total_steps
                # float() waits for the device, so timings of logged steps are complete
                row = {k: float(v.detach()) for k, v in losses.items()} if logging else {}
                dt = time.perf_counter() - t0
                n = batch.labels.shape[0] * ddp.world_size
                train_time, train_samples = train_time + dt, train_samples + n
                bar.update(1)
                if logging:
                    row.update(step=step, epoch=epoch, lr=lr, samples_per_s=n / dt)
                    row.update(data_wait_fraction=(t1 - t0) / dt, r_m=r_m)
                    log.write(row)
                    bar.set_postfix(loss=f"{row['loss']:.3f}", samples_s=f"{n / dt:.0f}")
                if cfg.checkpoint_every and step % cfg.checkpoint_every == 0:
                    save_ckpt(epoch, position)
                if cfg.max_steps and step >= cfg.max_steps:
                    stopped = position < epoch_steps[epoch]
                    break
        if stopped:
            break
        last = epoch == cfg.epochs - 1
        if val is not None and ddp.is_main and (last or (cfg.val_every and (epoch + 1) % cfg.val_every == 0)):
            val_accuracy, n_val = accuracy_on(model_for_eval(model), val, device, amp_context(cfg, device))
            log.write({"step": step, "epoch": epoch, "val_accuracy": val_accuracy, "val_n": n_val})
            model.train()
        epoch, position = epoch + 1, 0
        if cfg.max_steps and step >= cfg.max_steps:
            stopped = epoch < cfg.epochs
    bar.close()
    if seen is not None:
        seen.close()
    save_ckpt(epoch, position)

    result: dict[str, Any] = {}
    if ddp.is_main:
        test_accuracy = None
        if ds.test is not None and not stopped:
            test = eval_loader(ds.test, cfg.eval_batch_size or cfg.batch_size, device)
            test_accuracy, _ = accuracy_on(raw_model, test, device, amp_context(cfg, device))
        meta = checkpoint_metadata(
            model_cfg,
            ds.classes,
            ds.frames_key,
            T,
            (H, W),
            cfg.method,
            ds.snapshot,
            cfg.max_recordings_per_class,
            cfg.seed,
        )
        torch.save(
            {"model": {k: v.detach().cpu() for k, v in raw_model.state_dict().items()}, "meta": meta},
            out / "checkpoint.pt",
        )
        result = {
            "method": cfg.method,
            "seed": cfg.seed,
            "val_accuracy": val_accuracy,
            "test_accuracy": test_accuracy,
            "epochs": epoch,
            "steps": step,
            "completed": not stopped,
            "samples_per_s": train_samples / train_time if train_time else None,
            "store": cfg.store,
            "store_snapshot": ds.snapshot,
            "backbone": cfg.backbone,
            "world_size": ddp.world_size,
            "device": str(device),
            "config": asdict(cfg),
        }
        write_json(out / "result.json", result)
    log.close()
    if ddp.world_size > 1:
        dist.barrier()
    return result


def optimize(model, method, optimizer, batch, progress: float, lr: float, cfg: TrainConfig, device):
    """One optimizer step on ``batch``; returns the method's losses (``"loss"`` still attached)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with amp_context(cfg, device):
        losses = method.loss(model, batch, progress)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return losses


def model_for_eval(model: torch.nn.Module) -> torch.nn.Module:
    """The module under DDP, so evaluation on rank 0 alone triggers no collective."""
    return model.module if isinstance(model, DistributedDataParallel) else model


def to_device(batch, device: torch.device):
    """The batch with every tensor on ``device`` (a no-op for tensors the loader already put there)."""
    moved = {}
    for f in dataclasses.fields(batch):
        value = getattr(batch, f.name)
        moved[f.name] = value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
    return dataclasses.replace(batch, **moved)


def main(argv: list[str] | None = None) -> int:
    try:
        cfg = parse_args(argv)
    except (ValueError, FileNotFoundError) as err:  # bad config: one line, no traceback
        print(f"tmkt train: error: {err}", file=sys.stderr)
        return 2
    result = train(cfg)
    if result:
        print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
