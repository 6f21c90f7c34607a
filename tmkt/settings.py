"""The trainer's components' settings as plain data, importable without torch, numba or DALI.

Each dataclass here belongs to one component, which imports it from here, builds from it and
documents it: `ModelConfig` (`tmkt.models`), `MethodConfig` (`tmkt.methods`), `AugmentConfig`
(`tmkt.augment`), `StreamConfig` (`tmkt.streaming`). They live apart from their components for one
reason: `TrainConfig` reads its defaults from them, so `tmkt train --help` and config parsing would
otherwise import torch, numba and spikingjelly (2 to 3 s before the first line of help); from here
they take a fraction of a second.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path

from tmkt.mixing import RatioSchedule

#: Where a run may execute; "auto" is cuda when available.
DEVICES = ("auto", "cpu", "cuda")
#: The backbones of `tmkt.models.BACKBONES`, by name (a test checks that the two agree).
BACKBONE_NAMES = ("small", "cnn3", "vgg_snn", "resnet18")
NEURONS = ("lif", "plif", "if")
SURROGATES = ("atan", "sigmoid")
METHOD_NAMES = ("tmkt", "tsm", "tsm+mag", "tsm+mrp", "event", "finetune", "he2024")


@dataclass(frozen=True)
class ModelConfig:
    """Everything that shapes a model; saved with the weights so a checkpoint rebuilds itself."""

    backbone: str = "small"
    neuron: str = "lif"  # "lif" | "plif" (learnable tau) | "if"
    tau: float = 2.0  # membrane time constant (initial value for "plif")
    surrogate: str = "atan"  # surrogate gradient of the spike: "atan" | "sigmoid"
    width: float = 1.0  # channel multiplier
    mag_head: bool = True
    mrp_head: bool = True

    def __post_init__(self) -> None:
        if self.backbone not in BACKBONE_NAMES:
            raise ValueError(f"unknown backbone {self.backbone!r}; expected one of {sorted(BACKBONE_NAMES)}")
        if self.neuron not in NEURONS:
            raise ValueError(f"unknown neuron {self.neuron!r}; expected one of {NEURONS}")
        if self.surrogate not in SURROGATES:
            raise ValueError(f"unknown surrogate {self.surrogate!r}; expected one of {SURROGATES}")
        if self.width <= 0:
            raise ValueError(f"width must be positive, got {self.width}")

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class MethodConfig:
    """A method by name and its options; the defaults are the trainer's."""

    name: str = "tmkt"
    schedule: RatioSchedule = field(default_factory=RatioSchedule)
    l_mag: float = 0.1  # MAG at 1.0 let the net silence event features on N-MNIST (val at chance)
    l_mrp: float = 0.1
    l_cka: float = 1.0  # he2024: CKA between static and event features
    finetune_static_fraction: float = 0.5
    tet_mse_weight: float = 0.0
    l_event: float = 1.0  # tmkt/tsm*: CE on each mixed batch's pure event sequence; 0 = off
    event_ramp: bool = False  # tmkt/tsm*: l_event scaled by r_m (TimeStepMixup says when it helps)
    l_align: float = 0.0  # tmkt/tsm*: CKA between mixed and pure event features

    def __post_init__(self) -> None:
        if self.name not in METHOD_NAMES:
            raise ValueError(f"unknown method {self.name!r}; expected one of {METHOD_NAMES}")


@dataclass
class AugmentConfig:
    """Per-sample augmentations, the same for all steps (and the paired static) of a sample.

    ``crop_padding``/``hflip``: random crop with zero padding and horizontal flip. The others are
    described in the module docstring; each is off at 0.
    """

    crop_padding: int = 4
    hflip: bool = True
    enabled: bool = True
    roll: int = 0  # max circular shift in pixels, per axis
    rotate: float = 0.0  # max rotation in degrees
    shear: float = 0.0  # max horizontal shear angle in degrees
    cutout: int = 0  # max side of the zeroed box in pixels
    drop_pixel: float = 0.0  # probability that a pixel is dropped
    drop_time: float = 0.0  # max fraction of the time steps dropped (one run of consecutive steps)

    def __post_init__(self) -> None:
        checks = {
            "crop_padding": self.crop_padding >= 0,
            "roll": self.roll >= 0,
            "rotate": 0 <= self.rotate <= 180,
            "shear": 0 <= self.shear < 90,
            "cutout": self.cutout >= 0,
            "drop_pixel": 0 <= self.drop_pixel <= 1,
            "drop_time": 0 <= self.drop_time <= 1,
        }
        bad = [name for name, ok in checks.items() if not ok]
        if bad:
            raise ValueError(f"augmentation {bad[0]} out of range: {getattr(self, bad[0])}")

    @classmethod
    def from_fields(cls, config) -> AugmentConfig:
        """From a flat config (``TrainConfig``) holding each field under its own name, with
        ``augment`` for ``enabled``."""
        names = [f.name for f in fields(cls) if f.name != "enabled"]
        return cls(enabled=config.augment, **{name: getattr(config, name) for name in names})

    @property
    def warps(self) -> bool:
        """Whether the source map is drawn (any augmentation besides crop, flip and time drop)."""
        return self.enabled and bool(self.roll or self.rotate or self.shear or self.cutout or self.drop_pixel)

    @property
    def active(self) -> bool:
        basic = self.crop_padding > 0 or self.hflip
        return self.enabled and (basic or self.warps or self.drop_time > 0)


def available_memory() -> int:
    """Bytes of memory available to a new allocation now (``MemAvailable``; physical pages elsewhere)."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")


@dataclass
class StreamConfig:
    """When a split streams, and how.

    ``max_resident_bytes``: a split whose event frames and statics fit in it is loaded resident,
    a larger one streams with two buffers of at most half of it each; 0 = auto, half of the memory
    available when the split is opened (the rest is for the model, DALI and the other splits).
    """

    max_resident_bytes: int = 0
    buffer_shards: int = 0  # shards per buffer; 0 = as many as half the budget holds
    read_threads: int = 2

    def __post_init__(self) -> None:
        if self.max_resident_bytes < 0 or self.buffer_shards < 0 or self.read_threads < 1:
            raise ValueError("max_resident_bytes and buffer_shards must be >= 0, read_threads >= 1")

    def budget(self) -> int:
        return self.max_resident_bytes or available_memory() // 2
