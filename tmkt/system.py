"""Where a run executes: the torchrun process group, the device, mixed precision and the RNG states."""

from __future__ import annotations

import dataclasses
import os
import random
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel


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


def device_kind(name: str) -> str:
    """ "cuda" or "cpu" for a configured device name ("auto": cuda when available)."""
    return "cuda" if name == "cuda" or (name == "auto" and torch.cuda.is_available()) else "cpu"


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


def amp_context(amp: str, device: torch.device) -> AbstractContextManager:
    """bf16 autocast for amp "bf16", or "auto" on CUDA; no autocast otherwise."""
    use = amp == "bf16" or (amp == "auto" and device.type == "cuda")
    return torch.autocast(device.type, dtype=torch.bfloat16) if use else nullcontext()


def seed_all(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)


def rng_state() -> dict[str, Any]:
    """Every generator's state as tensors and plain values, so a checkpoint loads with
    ``torch.load(weights_only=True)``: unpickling arbitrary objects would run code from the file."""
    kind, keys, position, has_gauss, cached = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), position, has_gauss, cached],
        "python": random.getstate(),
    }
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    kind, keys, position, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), position, has_gauss, cached))
    random.setstate(state["python"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


def gather_rng(ddp: Dist) -> list[dict[str, Any]]:
    """Every rank's RNG state (rank order), so that a resumed DDP run replays each rank's draws."""
    if ddp.world_size == 1:
        return [rng_state()]
    states: list[Any] = [None] * ddp.world_size
    dist.all_gather_object(states, rng_state())
    return states


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
