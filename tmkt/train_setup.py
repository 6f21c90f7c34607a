"""What a training run is set up with before its first step: the data of one pinned snapshot, the
loader of each split, the optimizer and the learning-rate schedule. `tmkt.train` is the loop that
uses them; keeping them here leaves that loop readable on its own.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch

from tmkt.config import TrainConfig
from tmkt.data import UNUSED
from tmkt.settings import AugmentConfig, StreamConfig
from tmkt.streaming import load_split, make_loader
from tmkt.system import Dist


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


@dataclass
class Datasets:
    train: Any  # tmkt.data.MixData
    val: Any | None
    test: Any | None
    snapshot: str
    classes: list[str]
    frames_key: str


def _split_or_none(
    path: str, snapshot: str, split: str, frames_key: str | None, stream: StreamConfig, **subset: Any
):
    data = load_split(path, snapshot=snapshot, split=split, frames_key=frames_key, stream=stream, **subset)
    return data if len(data.event_labels) else None


def load_datasets(cfg: TrainConfig) -> Datasets:
    """Train/val/test from one pinned snapshot, so a refresh during training changes nothing."""
    from storage.reader import DatasetReader

    reader = DatasetReader(cfg.store, cfg.snapshot or None)
    snapshot, key = reader.snapshot_id, cfg.frames_key or reader.default_frame_key()
    stream = cfg.stream_config()
    train = load_split(
        cfg.store,
        snapshot=snapshot,
        split="train",
        frames_key=key,
        max_recordings_per_class=cfg.max_recordings_per_class or None,
        seed=cfg.seed,
        stream=stream,
    )
    counts = {name: len(reader.split_indices(name)) for name in ("val", "test")}
    if cfg.eval_split == UNUSED:  # the complement of the training subset drawn above
        subset = {"max_recordings_per_class": cfg.max_recordings_per_class or None, "seed": cfg.seed}
        val = _split_or_none(cfg.store, snapshot, UNUSED, key, stream, **subset)
    else:
        val = _split_or_none(cfg.store, snapshot, "val", key, stream) if counts["val"] else None
    test = _split_or_none(cfg.store, snapshot, "test", key, stream) if counts["test"] else None
    return Datasets(train, val, test, snapshot, reader.classes, key)


def in_memory_datasets(data, val_data, test_data) -> Datasets:
    snapshot = getattr(data, "snapshot", "") or ""
    classes = list(getattr(data, "classes", None) or [str(k) for k in range(data.num_classes)])
    return Datasets(data, val_data, test_data, snapshot, classes, getattr(data, "frames_key", "") or "")


def train_loader(
    data, cfg: TrainConfig, mode: str, ddp: Dist, device: torch.device, with_events: bool = False
):
    from tmkt.loader import LoaderConfig

    augment = AugmentConfig.from_fields(cfg)
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
    return make_loader(data, lcfg, rank=ddp.rank, world_size=ddp.world_size)
