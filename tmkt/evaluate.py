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
import pickle
import sys
import warnings
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import numpy as np
import torch

from storage.schema import SPLITS
from tmkt.errors import BadCheckpoint, EmptySplit, IncompatibleStore, MissingCheckpoint, UserInputError
from tmkt.models import ModelConfig, SpikingClassifier, build_model

__all__ = ["EVAL_SPLITS", "IncompatibleStore", "evaluate", "load_checkpoint", "load_training_state"]


#: what ``--split`` accepts: a split of the store, or every recording
EVAL_SPLITS = (*SPLITS, "all")


def checkpoint_metadata(
    model_cfg: ModelConfig,
    classes: list[str],
    frames_key: str,
    T: int,
    size: tuple[int, int],
    method: str,
    snapshot: str,
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
    }


def load_checkpoint(path: str | Path, device: str | torch.device = "cpu") -> tuple[SpikingClassifier, dict]:
    """The model (eval mode) and metadata of a final ``checkpoint.pt``.

    Raises `BadCheckpoint` for a missing, truncated or foreign file. ``weights_only=True`` makes
    a foreign pickle fail to load instead of running its code.
    """
    payload = _torch_load(path, device, weights_only=True)
    try:
        meta = payload["meta"]
        model = build_model(ModelConfig(**meta["model_config"]), meta["num_classes"], meta["T"])
        model.load_state_dict(payload["model"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        hint = " (ckpt.pt is the resume state; evaluate checkpoint.pt)" if _is_training_state(payload) else ""
        raise BadCheckpoint(f"{path}: not a tmkt model checkpoint{hint}: {_first_line(err)}") from err
    return model.to(device).eval(), meta


def load_training_state(path: str | Path, device: str | torch.device = "cpu") -> dict[str, Any]:
    """The resume state ``ckpt.pt`` of a run folder; `MissingCheckpoint` when there is none.

    Resuming without a checkpoint would silently start over, overwriting the run's metrics.
    The file is the run's own (written by `tmkt train` into ``--out``), so it is loaded with pickle
    (``weights_only=False``): it holds optimizer and RNG states, which are not plain tensors.
    """
    path = Path(path)
    if not path.is_file():
        raise MissingCheckpoint(
            f"--resume: no checkpoint {path.name} in {path.parent}; drop --resume to start this run afresh"
        )
    state = _torch_load(path, device, weights_only=False)
    if not _is_training_state(state):
        raise BadCheckpoint(f"{path}: not a tmkt resume checkpoint (keys {sorted(state)[:6]})")
    return state


def _torch_load(path: str | Path, device: str | torch.device, weights_only: bool) -> Any:
    if not Path(path).is_file():
        raise BadCheckpoint(f"checkpoint not found: {path}")
    try:
        with warnings.catch_warnings():  # torch warns about pickle protocols of foreign files
            warnings.simplefilter("ignore")
            payload = torch.load(path, map_location=device, weights_only=weights_only)
    except pickle.UnpicklingError as err:
        reason = (
            "it holds Python objects other than tensors, which are not loaded because that could run code"
            if weights_only and "Weights only load failed" in str(err)
            else _first_line(err)
        )
        raise BadCheckpoint(f"{path}: cannot read the checkpoint: {reason}") from err
    except Exception as err:  # truncated zip, foreign file: both mean "not ours"
        raise BadCheckpoint(f"{path}: cannot read the checkpoint: {_first_line(err)}") from err
    if not isinstance(payload, dict):
        raise BadCheckpoint(f"{path}: not a tmkt checkpoint (holds a {type(payload).__name__})")
    return payload


def _is_training_state(payload: Any) -> bool:
    return isinstance(payload, dict) and {"model", "optimizer", "step", "rng"} <= set(payload)


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[0][:200] if text else type(err).__name__


def eval_loader(data, batch_size: int, device: torch.device | str):
    """An event-only, unshuffled, unaugmented single-process loader over ``data`` (a MixData)."""
    from tmkt.loader import AugmentConfig, LoaderConfig, MixLoader

    device_type = torch.device(device).type
    cfg = LoaderConfig(
        batch_size=batch_size,
        mode="event",
        shuffle=False,
        augment=AugmentConfig(enabled=False),
        drop_last=False,
        device=device_type,
    )
    return MixLoader(data, cfg, rank=0, world_size=1)


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


def split_indices(reader, split: str) -> np.ndarray:
    """Recording indices of ``split`` (or of every recording for "all"); `EmptySplit` when none."""
    if split not in EVAL_SPLITS:
        raise UserInputError(f"unknown split {split!r}; expected one of {', '.join(EVAL_SPLITS)}")
    if split == "all":
        indices = np.arange(reader.n_recordings)
    else:
        indices = reader.split_indices(split)
    if not len(indices):
        counts = ", ".join(f"{name} {len(reader.split_indices(name))}" for name in SPLITS)
        raise EmptySplit(
            f"split {split!r} of {reader.path} holds no recording ({counts}); choose another --split, "
            f"or --split all to count every recording"
        )
    return indices


def evaluate(
    checkpoint: str | Path,
    store: str | Path,
    snapshot: str | None = None,
    split: str = "test",
    batch_size: int = 64,
    device: str = "auto",
    indices: np.ndarray | None = None,
) -> dict[str, Any]:
    """Accuracy of ``checkpoint`` on the event recordings of ``split`` of ``store``.

    ``indices`` (recording indices of the store) replaces the split for callers that hold out
    recordings themselves, such as every recording a data-scarce run did not train on; the result's
    ``split`` is then "indices".
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
        indices = split_indices(reader, split)
    else:
        indices, split = np.asarray(indices, dtype=np.int64), "indices"
    data = MixData(
        event_frames=reader.event_frames(key, indices=indices),
        event_labels=reader.labels[indices],
        static_frames=np.zeros((0, *spec.size), np.uint8),  # evaluation reads event frames only
        static_labels=np.zeros(0, np.int64),
        static_scale=1.0,
        num_classes=len(reader.classes),
        snapshot=reader.snapshot_id,
    )
    accuracy, n = accuracy_on(model, eval_loader(data, batch_size, dev), dev)
    same_snapshot = meta.get("store_snapshot") == reader.snapshot_id
    trained_on = int((reader.splits[indices] == SPLITS.index("train")).sum()) if same_snapshot else None
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
    return line


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tmkt eval", description="Accuracy of a checkpoint on a store.")
    parser.add_argument("--checkpoint", required=True)
    parser.add_argument("--store", required=True)
    parser.add_argument(
        "--split",
        default="test",
        metavar="{" + ",".join(EVAL_SPLITS) + "}",  # checked by evaluate(): one line for a wrong name
        help="recordings to count (default test); 'all' counts every recording, training ones included",
    )
    parser.add_argument("--snapshot", default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", action="store_true", help="print the result as JSON")
    args = parser.parse_args(argv)
    result = evaluate(args.checkpoint, args.store, args.snapshot, args.split, args.batch_size, args.device)
    print(json.dumps(result, indent=2) if args.json else describe(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
