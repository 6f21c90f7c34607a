"""Accuracy of a trained checkpoint on event data from any compatible store.

    tmkt eval --checkpoint runs/tmkt-s0/checkpoint.pt --store PATH [--split test] [--snapshot ID] --json

A store is compatible when it has the same class names (in the same order) and a frame
representation of the same shape ``[T, 2, H, W]``. Evaluation always uses event frames only,
through the same loader as training (mode "event", no augmentation), so inputs match exactly.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from storage.schema import SPLITS
from tmkt.data import UNUSED
from tmkt.models import ModelConfig, SpikingClassifier, build_model
from tmkt.system import DEVICES


class IncompatibleStore(ValueError):
    """The store's classes or frame shape differ from the ones the checkpoint was trained on."""


def checkpoint_metadata(
    model_cfg: ModelConfig,
    classes: list[str],
    frames_key: str,
    T: int,
    size: tuple[int, int],
    method: str,
    snapshot: str,
    max_recordings_per_class: int = 0,
    seed: int = 0,
) -> dict[str, Any]:
    """Primitive-only metadata saved beside the weights, so ``torch.load(weights_only=True)`` reads it."""
    return {
        "model_config": model_cfg.to_dict(),
        "num_classes": len(classes),
        "classes": list(classes),
        "frames_key": frames_key,
        "T": int(T),
        "size": [int(size[0]), int(size[1])],
        "method": method,
        "store_snapshot": snapshot,
        # the training subset, so that `tmkt eval --split unused` can take its complement
        "max_recordings_per_class": int(max_recordings_per_class),
        "seed": int(seed),
    }


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[SpikingClassifier, dict]:
    """The model (eval mode) and metadata of a final ``checkpoint.pt``."""
    payload = torch.load(path, map_location=device, weights_only=True)
    meta = payload["meta"]
    model = build_model(ModelConfig(**meta["model_config"]), meta["num_classes"], meta["T"])
    model.load_state_dict(payload["model"])
    return model.to(device).eval(), meta


def eval_loader(data, batch_size: int, device: torch.device | str):
    """An event-only, unshuffled, unaugmented single-process loader over ``data`` (a MixData)."""
    from tmkt.loader import AugmentConfig, LoaderConfig
    from tmkt.streaming import make_loader

    device_type = torch.device(device).type
    cfg = LoaderConfig(
        batch_size=batch_size,
        mode="event",
        shuffle=False,
        augment=AugmentConfig(enabled=False),
        drop_last=False,
        device=device_type,
    )
    return make_loader(data, cfg, rank=0, world_size=1)


@torch.no_grad()
def accuracy_on(
    model: torch.nn.Module,
    loader,
    device: torch.device | str,
    autocast: AbstractContextManager | None = None,
) -> tuple[float, int]:
    """(accuracy, n) of the time-averaged logits over one pass of ``loader``; restores the train flag."""
    was_training = model.training
    model.eval()
    correct, n = 0, 0
    for batch in loader:
        frames = batch.frames.to(device, non_blocking=True).transpose(0, 1)
        labels = batch.labels.to(device, non_blocking=True)
        with autocast or nullcontext():
            logits = model(frames).logits
        correct += int((logits.float().mean(0).argmax(-1) == labels).sum())
        n += int(labels.shape[0])
    model.train(was_training)
    return (correct / n if n else float("nan")), n


def _load_split(reader, store: str | Path, split: str, frames_key: str, meta: dict):
    """MixData of ``split``; all recordings (and a note) when that split is empty."""
    from tmkt.data import MixData

    if split == UNUSED:
        if reader.snapshot_id != meta["store_snapshot"]:
            raise IncompatibleStore(
                f"{store}: split 'unused' needs the snapshot the checkpoint trained on "
                f"({meta['store_snapshot']}), got {reader.snapshot_id}"
            )
        subset = meta.get("max_recordings_per_class", 0) or None
        data = MixData.from_store(store, reader.snapshot_id, UNUSED, frames_key, subset, meta.get("seed", 0))
        return data, None
    if len(reader.split_indices(split)):
        return MixData.from_store(
            store, snapshot=reader.snapshot_id, split=split, frames_key=frames_key
        ), None
    labels = np.asarray(reader.labels)[reader.frame_recordings(frames_key)]
    frames = reader.event_frames(frames_key)
    static = reader.static_frames(frames_key)
    data = MixData(
        event_frames=frames,
        event_labels=labels,
        static_frames=static,
        static_labels=reader.image_labels
        if len(reader.image_labels) == len(static)
        else np.zeros(0, np.int64),
        static_scale=1.0,  # unused: evaluation reads event frames only
        num_classes=len(reader.classes),
        snapshot=reader.snapshot_id,
    )
    return data, f"split {split!r} is empty in this store; evaluated all {len(labels)} recordings"


def evaluate(
    checkpoint: str | Path,
    store: str | Path,
    snapshot: str | None = None,
    split: str = "test",
    batch_size: int = 64,
    device: str = "auto",
) -> dict[str, Any]:
    """Accuracy of ``checkpoint`` on the event recordings of ``split`` of ``store``."""
    from storage.reader import DatasetReader

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    model, meta = load_checkpoint(checkpoint, dev)
    reader = DatasetReader(store, snapshot)
    if list(reader.classes) != list(meta["classes"]):
        raise IncompatibleStore(
            f"{store}: classes {reader.classes} differ from the checkpoint's {meta['classes']}"
        )
    keys = reader.frame_keys()
    key = meta["frames_key"] if meta["frames_key"] in keys else reader.default_frame_key()
    spec = keys[key]
    if spec.time_bins != meta["T"] or list(spec.size) != list(meta["size"]):
        raise IncompatibleStore(
            f"{store}: frames {key} are T={spec.time_bins}, size={list(spec.size)}; "
            f"the checkpoint needs T={meta['T']}, size={meta['size']}"
        )
    data, note = _load_split(reader, store, split, key, meta)
    accuracy, n = accuracy_on(model, eval_loader(data, batch_size, dev), dev)
    return {
        "accuracy": accuracy,
        "n": n,
        "split": split if note is None else "all",
        "note": note,
        "store": str(store),
        "store_snapshot": reader.snapshot_id,
        "frames_key": key,
        "checkpoint": str(checkpoint),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tmkt eval", description="Accuracy of a checkpoint on a store.")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument(
        "--split",
        default="test",
        choices=(*SPLITS, UNUSED),
        help="which recordings; unused: every train/val recording the checkpoint did not train on "
        "(needs the snapshot it trained on)",
    )
    parser.add_argument("--snapshot", default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    try:
        result = evaluate(
            args.checkpoint, args.store, args.snapshot, args.split, args.batch_size, args.device
        )
    except IncompatibleStore as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        print(f"accuracy {result['accuracy']:.4f} on {result['n']} recordings ({result['split']})")
        if result["note"]:
            print(result["note"])
    return 0


if __name__ == "__main__":
    sys.exit(main())
