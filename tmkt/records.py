"""What a run leaves in its folder: run.json, metrics.jsonl (+ TensorBoard), ckpt.pt, checkpoint.pt
and result.json. Written by rank 0; files are replaced atomically, so a killed run never leaves half
a checkpoint."""

from __future__ import annotations

import json
import os
import pickle
import platform
import socket
import time
import warnings
from dataclasses import asdict
from pathlib import Path
from typing import Any

import torch

from tmkt.config import TrainConfig
from tmkt.errors import BadCheckpoint, MissingCheckpoint
from tmkt.system import Dist

#: The resumable state (model, optimizer, position, RNG), rewritten every ``checkpoint_every`` steps.
RESUME_FILE = "ckpt.pt"
#: The final weights and primitive metadata, loadable with ``weights_only=True``.
WEIGHTS_FILE = "checkpoint.pt"


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


def save_resume_state(out: Path, payload: dict[str, Any]) -> None:
    """``out/ckpt.pt``: everything `train` needs to continue exactly (see `load_resume_state`)."""
    torch.save(payload, out / "ckpt.tmp")
    os.replace(out / "ckpt.tmp", out / RESUME_FILE)


def load_resume_state(out: Path, device: torch.device) -> dict[str, Any]:
    """The state saved by `save_resume_state`; `MissingCheckpoint` when the run has none.

    Resuming without a checkpoint would silently start over, overwriting the run's metrics.
    """
    path = out / RESUME_FILE
    if not path.is_file():
        raise MissingCheckpoint(
            f"--resume: no checkpoint {path.name} in {out}; drop --resume to start this run afresh"
        )
    state = read_checkpoint(path, device)
    if not is_resume_state(state):
        raise BadCheckpoint(f"{path}: not a tmkt resume checkpoint (keys {sorted(state)[:6]})")
    return state


def read_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The dict a checkpoint file holds, loaded with ``weights_only=True``: unpickling arbitrary
    objects would run code from the file. `BadCheckpoint` (one line) for a missing, truncated or
    foreign file, or one that holds Python objects other than tensors and plain values."""
    if not Path(path).is_file():
        raise BadCheckpoint(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=device, weights_only=True)
    except pickle.UnpicklingError as err:
        reason = (
            "it holds Python objects other than tensors, which are not loaded because that could run code"
            if "Weights only load failed" in str(err)
            else first_line(err)
        )
        raise BadCheckpoint(f"{path}: cannot read the checkpoint: {reason}") from err
    except Exception as err:  # truncated zip, foreign file: both mean "not ours"
        raise BadCheckpoint(f"{path}: cannot read the checkpoint: {first_line(err)}") from err
    if not isinstance(payload, dict):
        raise BadCheckpoint(f"{path}: not a tmkt checkpoint (holds a {type(payload).__name__})")
    return payload


def is_resume_state(payload: Any) -> bool:
    """Whether ``payload`` is a ``ckpt.pt`` (the resume state) rather than final weights."""
    return isinstance(payload, dict) and {"model", "optimizer", "step", "rng"} <= set(payload)


def first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def save_weights(out: Path, model: torch.nn.Module, meta: dict[str, Any]) -> None:
    """``out/checkpoint.pt``: CPU weights and primitive metadata, for `tmkt eval` and other stores."""
    weights = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    torch.save({"model": weights, "meta": meta}, out / WEIGHTS_FILE)
