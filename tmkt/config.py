"""What a training run is asked to do: `TrainConfig`, read from defaults, a file, flags and key=value.

Order: the ``TrainConfig`` defaults, then ``--config FILE`` (JSON or TOML), then the named flags, then
``key=value`` overrides typed by the dataclass fields. Every field carries a one-line meaning (and its
choices where they are few), so ``tmkt train --help`` is made from the dataclass and cannot drift.
The defaults that other dataclasses own (the r_m schedule, the method's weights, the model, the
streaming budget) are read from them, so each default is declared once.
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import json
import math
import sys
import tomllib
import typing
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tmkt.data import UNUSED
from tmkt.mixing import SCHEDULE_KINDS, RatioSchedule
from tmkt.settings import (
    BACKBONE_NAMES,
    DEVICES,
    METHOD_NAMES,
    NEURONS,
    SURROGATES,
    AugmentConfig,
    MethodConfig,
    ModelConfig,
    StreamConfig,
)

AMP_MODES = ("auto", "bf16", "off")
OPTIMIZERS = ("adamw", "sgd")
EVAL_SPLITS = ("val", UNUSED)

_SCHEDULE = RatioSchedule()
_METHOD = MethodConfig()
_MODEL = ModelConfig()
_AUGMENT = AugmentConfig()
_STREAM = StreamConfig()


def knob(default: Any, help: str, choices: Sequence[str] | None = None) -> Any:
    """A `TrainConfig` field: its default, its one-line meaning and, where few, its choices."""
    return field(default=default, metadata={"help": help, "choices": tuple(choices) if choices else None})


@dataclass
class TrainConfig:
    # data
    store: str = knob("", "dataset store path (Icechunk repository)")
    snapshot: str = knob("", 'pinned snapshot id; "" = the latest at start (recorded in run.json)')
    frames_key: str = knob("", 'frame representation; "" = the store\'s default (T and size come from it)')
    max_recordings_per_class: int = knob(0, "training recordings kept per class; 0 = all")
    max_resident_bytes: int = knob(
        _STREAM.max_resident_bytes,
        "a split larger than this (bytes) streams from the store by shards; 0 = half the free memory",
    )
    # "unused" measures data-scarcity runs on ~10x more recordings than the val split (tmkt.data.UNUSED)
    eval_split: str = knob(
        "val",
        "validation data: the val split, or every train/val recording the run does not train on",
        EVAL_SPLITS,
    )
    # method
    method: str = knob(_METHOD.name, "training method", METHOD_NAMES)
    ratio_kind: str = knob(_SCHEDULE.kind, "RatioSchedule of r_m over training", SCHEDULE_KINDS)
    ratio_start: float = knob(_SCHEDULE.start, "r_m at the start of training")
    ratio_end: float = knob(_SCHEDULE.end, "r_m at the end of training")
    ratio_power: float = knob(_SCHEDULE.power, "exponent of the power schedule")
    l_mag: float = knob(_METHOD.l_mag, "weight of the MAG loss (which steps are events)")
    l_mrp: float = knob(_METHOD.l_mrp, "weight of the MRP loss (event fraction of a sequence)")
    # its own forward pass: a second forward and backward per step (results/README.md: the ablation)
    l_event: float = knob(
        _METHOD.l_event, "tmkt/tsm*: weight of a CE on each mixed batch's pure event sequence"
    )
    event_ramp: bool = knob(_METHOD.event_ramp, "tmkt/tsm*: scale l_event by r_m (with l_align: scarce data)")
    l_align: float = knob(_METHOD.l_align, "tmkt/tsm*: weight of a CKA loss, mixed vs pure event features")
    l_cka: float = knob(_METHOD.l_cka, "weight of the CKA loss of he2024")
    tet_mse_weight: float = knob(_METHOD.tet_mse_weight, "weight of TET's MSE term")
    finetune_static_fraction: float = knob(
        _METHOD.finetune_static_fraction, "share of epochs on statics before events (finetune)"
    )
    # model
    # cnn3 on a CPU: the backbone of results/README.md
    backbone: str = knob("auto", "network; auto = vgg_snn on a GPU, cnn3 on a CPU", ("auto", *BACKBONE_NAMES))
    neuron: str = knob(_MODEL.neuron, "spiking neuron (plif: learnable tau)", NEURONS)
    tau: float = knob(_MODEL.tau, "membrane time constant (initial value for plif)")
    surrogate: str = knob(_MODEL.surrogate, "surrogate gradient of the spike", SURROGATES)
    width: float = knob(_MODEL.width, "channel multiplier")
    # optimisation
    out: str = knob("runs/default", "run folder (metrics, checkpoints, result.json)")
    seed: int = knob(0, "seed of weights, shuffling and draws")
    # The budget (`budget_epochs`): 10 N-MNIST recordings per class at batch 32 make 4 steps per epoch,
    # so 120 epochs and 480 steps; 5 per class make 2 steps per epoch: 240 epochs; from 8 steps per
    # epoch on (250 recordings: 25 per class) the run trains exactly `epochs`.
    epochs: int = knob(60, "passes over the training recordings, raised on small sets to make min_steps")
    min_steps: int = knob(480, "least optimizer steps of a run (whole epochs); 0 = exactly epochs")
    batch_size: int = knob(32, "samples per step, per process")
    eval_batch_size: int = knob(0, "samples per evaluation batch; 0 = batch_size")
    lr: float = knob(5e-3, "peak learning rate")
    min_lr: float = knob(0.0, "learning rate at the end of the cosine decay")
    weight_decay: float = knob(1e-4, "weight decay of the conv and linear weights")
    optimizer: str = knob("adamw", "optimizer (sgd: momentum 0.9)", OPTIMIZERS)
    cosine_lr: bool = knob(True, "cosine decay of the learning rate (else constant)")
    warmup_steps: int = knob(0, "steps of linear warmup")
    grad_clip: float = knob(0.0, "clip the gradient norm to this; 0 = off")
    augment: bool = knob(True, "augment each sample: crop, flip if hflip, and each one below set > 0")
    crop_padding: int = knob(4, "random crop with this much zero padding (augment)")
    # a mirror changes the class of digits and of left/right gestures, so flips are opt-in
    hflip: bool = knob(False, "random horizontal flip (augment); for object datasets, not digits")
    # NDA and EventDrop augmentations (tmkt.augment), each off at 0
    roll: int = knob(_AUGMENT.roll, "max circular shift in pixels along each axis (NDA roll)")
    rotate: float = knob(_AUGMENT.rotate, "max rotation in degrees (NDA rotate)")
    shear: float = knob(_AUGMENT.shear, "max horizontal shear angle in degrees (NDA shear)")
    cutout: int = knob(_AUGMENT.cutout, "max side in pixels of a box set to zero (NDA cutout)")
    drop_pixel: float = knob(_AUGMENT.drop_pixel, "probability that a pixel is dropped (EventDrop)")
    drop_time: float = knob(_AUGMENT.drop_time, "max fraction of the steps dropped, one run (EventDrop)")
    # system
    # auto = bf16 on CUDA, off on CPU. Seen on an H200 (VGG-SNN, T=10, 48x48, batch 64): bf16 halves
    # the memory but eager steps ran ~20% slower than fp32 (the neurons' elementwise ops dominate);
    # compile=true with bf16 ran 1.9x faster than eager bf16 after ~100 s of compilation.
    amp: str = knob("auto", "mixed precision; auto = bf16 on CUDA, off on CPU", AMP_MODES)
    compile: bool = knob(False, "torch.compile the model")
    device: str = knob("auto", "where to train; auto = cuda when available", DEVICES)
    num_threads: int = knob(2, "loader threads")
    checkpoint_every: int = knob(500, "steps between resumable checkpoints; 0 = only at the end")
    resume: bool = knob(False, "continue from out/ckpt.pt exactly where it stopped")
    max_steps: int = knob(0, "stop after this many steps (schedules still span all epochs); 0 = off")
    log_every: int = knob(10, "steps between metrics rows")
    val_every: int = knob(
        1, "epochs between validations (and always after the last); 0 = only after the last"
    )
    progress_bar: bool = knob(True, "show a progress bar")
    record_indices: bool = knob(False, "write the sample indices each rank trained on (checks sharding)")
    tag: str = knob("", "free label; plots group runs by method/tag (e.g. ratio-schedule variants)")

    def __post_init__(self) -> None:
        for spec in dataclasses.fields(self):
            choices, value = spec.metadata["choices"], getattr(self, spec.name)
            if choices and value not in choices:
                raise ValueError(f"unknown {spec.name} {value!r}; expected one of {choices}")
        if self.epochs < 1 or self.batch_size < 1 or self.min_steps < 0 or self.val_every < 0:
            raise ValueError("epochs and batch_size must be >= 1, min_steps and val_every >= 0")
        AugmentConfig.from_fields(self)  # checks the augmentation keys' ranges now, not at the first batch

    def model_config(self, mag_head: bool, mrp_head: bool) -> ModelConfig:
        return ModelConfig(
            self.backbone, self.neuron, self.tau, self.surrogate, self.width, mag_head, mrp_head
        )

    def schedule(self) -> RatioSchedule:
        return RatioSchedule(self.ratio_kind, self.ratio_start, self.ratio_end, self.ratio_power)

    def stream_config(self) -> StreamConfig:
        return StreamConfig(max_resident_bytes=self.max_resident_bytes)

    def method_config(self) -> MethodConfig:
        """The method and its options, each read from the field of the same name here, so a new
        ``MethodConfig`` option cannot be left out (without its knob this raises AttributeError)."""
        options = [f.name for f in dataclasses.fields(MethodConfig) if f.name not in ("name", "schedule")]
        return MethodConfig(self.method, self.schedule(), **{name: getattr(self, name) for name in options})


def budget_epochs(cfg: TrainConfig, steps_per_epoch: int) -> int:
    """``epochs``, raised so that the run makes at least ``min_steps`` optimizer steps.

    Why: a budget in epochs starves small sets. 100 recordings at batch 64 make two steps per epoch,
    and at 10 epochs both methods stopped far from convergence, the harder mixed task the furthest.
    240 steps were still short: with 10 N-MNIST recordings per class, 480 raised event-only from
    85.6 to 89.4 % and tmkt from 89.6 to 91.4 % (three seeds, lr 2e-3, the 500 recordings not
    trained on). The floor costs nothing on large sets, whose epochs already make more steps.
    """
    return max(cfg.epochs, math.ceil(cfg.min_steps / max(1, steps_per_epoch)))


# ---------------------------------------------------------------------------------------------
# key=value overrides and config files


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


def unknown_key_message(unknown: list[str], known: Sequence[str]) -> str:
    """One line naming the unknown keys, with the closest known key of each."""
    hints = []
    for key in unknown:
        close = difflib.get_close_matches(key, known, n=1)
        hints.append(f"{key!r} (did you mean {close[0]!r}?)" if close else repr(key))
    return f"unknown config key(s) {', '.join(hints)}; `tmkt train --help` lists every key"


def config_with(base: TrainConfig, values: dict[str, Any]) -> TrainConfig:
    """``base`` with ``values`` applied; strings are converted to the field's type; unknown keys fail."""
    hints = typing.get_type_hints(TrainConfig)
    unknown = sorted(set(values) - set(hints))
    if unknown:
        raise ValueError(unknown_key_message(unknown, sorted(hints)))
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


# ---------------------------------------------------------------------------------------------
# the command line

DESCRIPTION = "Train a spiking network on a store with TMKT or a baseline (event, finetune, he2024)."
#: Keys that also have a named flag (``--max-recordings-per-class`` for max_recordings_per_class).
FLAGS = (
    "store",
    "method",
    "out",
    "seed",
    "epochs",
    "backbone",
    "device",
    "max_recordings_per_class",
    "resume",
)


def keys_help() -> str:
    """Every TrainConfig key with its type, default and meaning (and choices), one per line."""
    hints = typing.get_type_hints(TrainConfig)
    lines = ["config keys (key=value, or in --config FILE):"]
    for spec in dataclasses.fields(TrainConfig):
        choices = spec.metadata["choices"]
        kind = hints[spec.name].__name__
        options = f"; one of {', '.join(choices)}" if choices else ""
        lines.append(f"  {spec.name} ({kind}, default {spec.default!r}{options}): {spec.metadata['help']}")
    return "\n".join(lines)


def epochs_help() -> str:
    """The ``--epochs`` help: how the budget is chosen, with the defaults read from the fields."""
    return (
        f"passes over the training set (default {TrainConfig.epochs}), raised on small sets until the "
        f"run makes at least min_steps optimizer steps (default {TrainConfig.min_steps}; "
        "min_steps=0 turns that off)"
    )


def train_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tmkt train",
        description=description,
        epilog=keys_help(),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    specs = {spec.name: spec for spec in dataclasses.fields(TrainConfig)}
    hints = typing.get_type_hints(TrainConfig)
    for name in FLAGS:
        spec, flag = specs[name], "--" + name.replace("_", "-")
        if hints[name] is bool:
            parser.add_argument(flag, action="store_true", default=None, help=spec.metadata["help"])
            continue
        choices = spec.metadata["choices"]
        text = epochs_help() if name == "epochs" else spec.metadata["help"]
        parser.add_argument(flag, dest=name, type=hints[name], choices=choices, help=text)
    parser.add_argument("--config", help="JSON or TOML file of TrainConfig keys")
    parser.add_argument("overrides", nargs="*", metavar="key=value")
    return parser


def parse_args(argv: list[str] | None) -> TrainConfig:
    parser = train_parser(DESCRIPTION)
    args = parser.parse_args(argv)
    values: dict[str, Any] = read_config_file(args.config) if args.config else {}
    values.update({k: getattr(args, k) for k in FLAGS if getattr(args, k) is not None})
    for item in args.overrides:
        key, sep, value = item.partition("=")
        if not sep:
            parser.error(f"expected key=value, got {item!r}")
        values[key.strip().replace("-", "_")] = value
    cfg = config_with(TrainConfig(), values)
    if not cfg.store:
        parser.error("--store is required")
    return cfg


def main(argv: list[str] | None = None) -> int:
    """`tmkt train`: the command line is read here, before the trainer (and torch) is imported, so
    that ``--help`` and a mistyped key answer at once."""
    try:
        cfg = parse_args(argv)
    except (ValueError, FileNotFoundError) as err:  # bad config: one line, no traceback
        print(f"tmkt train: error: {err}", file=sys.stderr)
        return 2
    from tmkt.train import run

    return run(cfg)
