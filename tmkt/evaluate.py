"""Accuracy of a trained checkpoint on event data from any compatible store.

    tmkt eval --checkpoint runs/tmkt-s0/checkpoint.pt --store PATH [--split test] [--snapshot ID] --json

A store is compatible when it has the same class names (in the same order) and a frame
representation of the same shape ``[T, 2, H, W]``. Evaluation always uses event frames only,
through the same loader as training (mode "event", no augmentation), so inputs match exactly.

Evaluation never falls back silently to other recordings: a split that is empty in the store is an
error, and ``--split all`` (every recording of the store, training ones included when it is the
store the model trained on) must be asked for by name. The result says which split and how many
recordings were counted, and how many of them the checkpoint trained on when it knows.
"""

from __future__ import annotations

import argparse
import json
import sys
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any, NoReturn

import numpy as np
import torch

from storage.schema import SPLITS
from tmkt.data import UNUSED, recordings_read
from tmkt.energy import CostMeter, describe_energy
from tmkt.errors import BadCheckpoint, EmptySplit, IncompatibleStore, UserInputError
from tmkt.models import ModelConfig, SpikingClassifier, build_model
from tmkt.records import first_line, is_resume_state, read_checkpoint
from tmkt.settings import DEVICES

__all__ = ["EVAL_SPLITS", "IncompatibleStore", "evaluate", "load_checkpoint"]


#: what ``--split`` accepts: a split of the store, every train/val recording the checkpoint did not
#: train on (``UNUSED``), or every recording
EVAL_SPLITS = (*SPLITS, UNUSED, "all")


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
    """The model (eval mode) and metadata of a final ``checkpoint.pt``.

    Raises `BadCheckpoint` for a missing, truncated or foreign file (`tmkt.records.read_checkpoint`
    loads with ``weights_only=True``, so a crafted pickle fails to load instead of running code).
    """
    payload = read_checkpoint(path, device)
    try:
        meta = payload["meta"]
        model = build_model(ModelConfig(**meta["model_config"]), meta["num_classes"], meta["T"])
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        hint = " (ckpt.pt is the resume state; evaluate checkpoint.pt)" if is_resume_state(payload) else ""
        raise BadCheckpoint(f"{path}: not a tmkt model checkpoint{hint}: {first_line(err)}") from err
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


def split_rows(reader, split: str, frames_key: str, meta: dict[str, Any] | None = None) -> np.ndarray:
    """Rows of ``reader.event_frames(frames_key)`` of ``split`` (every row for "all"): one per
    recording, or per sample when the frames slice recordings. `EmptySplit` when there are none.

    ``UNUSED`` takes the complement of the training subset recorded in the checkpoint's ``meta``,
    which only means something on the snapshot the checkpoint trained on.
    """
    if split not in EVAL_SPLITS:
        raise UserInputError(f"unknown split {split!r}; expected one of {', '.join(EVAL_SPLITS)}")
    recording = reader.frame_recordings(frames_key)
    if split == "all":
        rows = np.arange(len(recording))
    elif split == UNUSED:
        meta = meta or {}
        if reader.snapshot_id != meta.get("store_snapshot"):
            raise IncompatibleStore(
                f"{reader.path}: split 'unused' needs the snapshot the checkpoint trained on "
                f"({meta.get('store_snapshot')}), got {reader.snapshot_id}"
            )
        subset = meta.get("max_recordings_per_class", 0) or None
        rows = recordings_read(reader, UNUSED, subset, meta.get("seed", 0), frames_key)
    else:
        rows = np.flatnonzero(np.asarray(reader.splits)[recording] == SPLITS.index(split))
    if not len(rows):
        counts = ", ".join(f"{name} {len(reader.split_indices(name))}" for name in SPLITS)
        raise EmptySplit(
            f"split {split!r} of {reader.path} holds no recording ({counts}); choose another --split, "
            f"or --split all to count every recording"
        )
    return rows


def evaluate(
    checkpoint: str | Path,
    store: str | Path,
    snapshot: str | None = None,
    split: str = "test",
    batch_size: int = 64,
    device: str = "auto",
    indices: np.ndarray | None = None,
    energy: bool = False,
) -> dict[str, Any]:
    """Accuracy of ``checkpoint`` on the event recordings of ``split`` of ``store``.

    ``energy`` also counts what each inference cost (`tmkt.energy`: firing rates, SynOps, MACs and
    the energy estimate against the same architecture as an ANN), over the same recordings.

    ``indices`` (rows of the store's event frames: recordings, or samples of sliced frames) replaces
    the split for callers that hold out recordings themselves, such as every recording a data-scarce
    run did not train on; the result's ``split`` is then "indices".
    """
    from storage.reader import DatasetReader
    from tmkt.data import MixData

    if split not in EVAL_SPLITS:  # before loading anything
        raise UserInputError(f"unknown split {split!r}; expected one of {', '.join(EVAL_SPLITS)}")
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    dev = torch.device(device)
    model, meta = load_checkpoint(checkpoint, dev)
    reader = DatasetReader(store, snapshot)
    key = compatible_frames_key(reader, meta, store)
    spec = reader.frame_spec(key)
    if indices is None:
        rows = split_rows(reader, split, key, meta)
    else:
        rows, split = np.asarray(indices, dtype=np.int64), "indices"
    recording = reader.frame_recordings(key)[rows]  # each sample lends its recording's label and split
    data = MixData(
        event_frames=reader.event_frames(key, indices=rows),
        event_labels=np.asarray(reader.labels, dtype=np.int64)[recording],
        static_frames=np.zeros((0, *spec.size), np.uint8),  # evaluation reads event frames only
        static_labels=np.zeros(0, np.int64),
        static_scale=1.0,
        num_classes=len(reader.classes),
        snapshot=reader.snapshot_id,
    )
    with CostMeter(model) if energy else nullcontext() as meter:
        accuracy, n = accuracy_on(model, eval_loader(data, batch_size, dev), dev)
    same_snapshot = meta.get("store_snapshot") == reader.snapshot_id
    train_code = SPLITS.index("train")
    trained_on = int((np.asarray(reader.splits)[recording] == train_code).sum()) if same_snapshot else None
    return {
        "accuracy": accuracy,
        "n": n,
        "split": split,
        # recordings counted from the training split of the store the model trained on (None: another
        # store); a data-scarce run trained on a subset of them only
        "trained_on": trained_on,
        "store": str(store),
        "store_snapshot": reader.snapshot_id,
        "frames_key": key,
        "checkpoint": str(checkpoint),
        **({"energy": meter.report()} if energy else {}),
    }


def compatible_frames_key(reader, meta: dict[str, Any], store: str | Path) -> str:
    """The frames of ``reader`` the checkpoint can read; `IncompatibleStore` when there are none."""
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
    return key


def describe(result: dict[str, Any]) -> str:
    """The one line ``tmkt eval`` prints: accuracy, split, count, and a warning about training data."""
    line = (
        f"accuracy {result['accuracy']:.4f} on {result['n']} recordings of split {result['split']!r} "
        f"({result['store']} @ {result['store_snapshot']})"
    )
    if result.get("trained_on"):
        line += f"; {result['trained_on']} of them are training recordings of this model's store"
    if "energy" in result:
        line += "\n" + describe_energy(result["energy"])
    return line


class OneLineParser(argparse.ArgumentParser):
    """A mistyped option is a user's mistake: one line naming it and exit code 2, no usage block."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message}\n")


def main(argv: list[str] | None = None) -> int:
    parser = OneLineParser(prog="tmkt eval", description="Accuracy of a checkpoint on a store.")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument(
        "--split",
        default="test",
        choices=EVAL_SPLITS,
        help="recordings to count (default test); 'unused': every train/val recording the checkpoint "
        "did not train on (needs the snapshot it trained on); 'all': every recording, training ones too",
    )
    parser.add_argument("--snapshot", default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto", choices=DEVICES)
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    parser.add_argument(
        "--energy",
        action="store_true",
        help="also count per inference the firing rate of each spiking layer, SynOps, MACs and the "
        "energy estimate (45 nm: 0.9 pJ per accumulate, 4.6 pJ per multiply-accumulate) against the "
        "same architecture as an ANN",
    )
    args = parser.parse_args(argv)
    result = evaluate(
        args.checkpoint,
        args.store,
        args.snapshot,
        args.split,
        args.batch_size,
        args.device,
        energy=args.energy,
    )
    print(json.dumps(result, indent=2) if args.json else describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
