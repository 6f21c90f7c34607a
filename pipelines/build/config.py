"""What a build is asked to do: `BuildConfig`, its per-source defaults, and its JSON form."""

from __future__ import annotations

import argparse
import json
from dataclasses import MISSING, dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.sources import SOURCES, get_source
from pipelines.splits import DEFAULT_VAL_FRACTION
from storage.schema import BIN_MODES, STATIC_FITS, STATIC_MODES, FrameSpec

#: Network input size per source when ``--size`` is not given (the sizes used in the literature).
DEFAULT_SIZES = {
    "nmnist": (34, 34),
    "builtin": (34, 34),
    "cifar10dvs": (48, 48),
    "ncaltech101": (48, 48),
    "dvsgesture": (64, 64),
    "folder": (48, 48),
}
#: How statics meet the frame size when ``--static-fit`` is not given: N-MNIST showed each 28x28
#: digit at its own scale on a 34x34 sensor, so its statics are centred, not stretched.
DEFAULT_STATIC_FITS = {"nmnist": "pad", "builtin": "pad"}


class BuildError(RuntimeError):
    """A build that cannot produce a useful snapshot; nothing was committed."""


def param(default: Any = MISSING, help: str = "", **cli: Any) -> Any:
    """A `BuildConfig` field with its command-line option: ``help`` and argparse keywords (``choices``,
    ``type``, ``nargs``, ``metavar``, ``action``, ``flag``). `add_build_arguments` makes
    `tmkt build-dataset`'s options from these, so a parameter is declared once."""
    metadata = {"help": help, **cli}
    if isinstance(default, dict):
        return field(default_factory=dict, metadata=metadata)
    return field(default=default, metadata=metadata)


@dataclass
class BuildConfig:
    """Parameters of a build; they are recorded in the store and reused by refreshes."""

    source: str = param(choices=sorted(SOURCES), help="the source adapter (format and folder layout)")
    raw: str = param(help="folder of raw recordings (as downloaded)")
    store: str = param(help="store path (local folder or s3://bucket/prefix)")
    static: str | None = param(None, "folder of static images (MNIST IDX, CIFAR batches, JPEG/PNG)")
    time_bins: int = param(FrameSpec.time_bins, f"T, frames per recording (default {FrameSpec.time_bins})")
    window_us: int = param(
        FrameSpec.window_us, "bin by windows of this many us (0: T bins over the whole recording)"
    )
    slices: bool = param(
        FrameSpec.slices,
        "cut each recording into samples of T windows (needs --window-us)",
        action="store_true",
    )
    size: tuple[int, int] | None = param(
        None, "frame size (default per source)", type=int, nargs=2, metavar=("H", "W")
    )
    mode: str = param(FrameSpec.mode, "binning by time or count", choices=BIN_MODES)
    denoise_us: int = param(FrameSpec.denoise_us, "drop isolated events (0 = off)")
    static_mode: str = param(FrameSpec.static_mode, "gray or HSV V channel", choices=STATIC_MODES)
    static_fit: str | None = param(
        None, "statics to frame size: resize, or centre (pad)", choices=STATIC_FITS
    )
    val_fraction: float = param(DEFAULT_VAL_FRACTION, "share of recordings held out for validation")
    test_fraction: float | None = param(
        None,
        "share held out for test where the download publishes no test split (default per source)",
        type=float,
    )
    seed: int = param(0, "seed of the split assignment")
    workers: int = param(2, "Dask workers of the local cluster")
    dask_address: str | None = param(None, "use an existing Dask scheduler (tcp://host:port)")
    # Dask's memory_limit of each local worker. A worker holds a few batches and the shards being
    # filled (350 MB of peak RSS for 70,000 N-MNIST files on one worker); past 60 % of this, Dask
    # would move the oldest results to the worker's local folder.
    worker_memory: str = param(
        "8GiB",
        "memory of each local Dask worker (at most the machine's share); past 60 % of it, results spill",
    )
    max_bad_fraction: float = param(0.1, "fail past this share of bad recordings")
    batch_size: int = param(128, "most recordings per Dask task (fewer past 16 MiB of raw files)")
    rehash: bool = param(
        False,
        "hash every raw file, even one whose size and mtime match the previous snapshot (a refresh"
        " otherwise trusts them, so a file rewritten with its size and mtime restored is only seen"
        " with this)",
        action="store_true",
    )
    #: options of the source adapter (its dataclass fields), e.g. {"recordings_per_class": 10} for builtin
    source_options: dict[str, Any] = param(
        {},
        "an option of the source adapter, e.g. recordings_per_class=10 for builtin (repeatable)",
        flag="--source-option",
        metavar="KEY=VALUE",
        action="append",
    )

    def source_adapter(self) -> Any:
        """The source, with this build's split parameters: the adapter knows whether its download
        publishes a test split (then its default test fraction is 0) and describes the rule."""
        split = {"val_fraction": self.val_fraction, "split_seed": self.seed}
        if self.test_fraction is not None:
            split["test_fraction"] = self.test_fraction
        return get_source(self.source, **{**split, **self.source_options})

    def frame_spec(self) -> FrameSpec:
        size = self.size or DEFAULT_SIZES.get(self.source, (48, 48))
        fit = self.static_fit or DEFAULT_STATIC_FITS.get(self.source, "resize")
        return FrameSpec(
            time_bins=self.time_bins,
            size=tuple(size),
            mode=self.mode,
            denoise_us=self.denoise_us,
            static_mode=self.static_mode,
            static_fit=fit,
            window_us=self.window_us,
            slices=self.slices,
        )

    def effective_test_fraction(self) -> float:
        return float(self.source_adapter().test_fraction)

    def data_params(self) -> dict[str, Any]:
        """What shapes the data (not where it is or how many workers made it)."""
        return {
            "source": self.source,
            "spec": self.frame_spec().to_attrs(),
            "val_fraction": self.val_fraction,
            "test_fraction": self.effective_test_fraction(),
            "seed": self.seed,
            "source_options": self.source_options,
        }


def default(name: str) -> Any:
    """The default of `BuildConfig` field ``name`` (a fresh one for mutable defaults)."""
    spec = BuildConfig.__dataclass_fields__[name]
    return spec.default_factory() if spec.default is MISSING else spec.default


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    """One option per `BuildConfig` field, from its metadata; fields without a default are required."""
    for spec in fields(BuildConfig):
        cli = dict(spec.metadata)
        flag = cli.pop("flag", "--" + spec.name.replace("_", "-"))
        if spec.default is MISSING and spec.default_factory is MISSING:
            cli["required"] = True
        elif cli.get("action") == "append":
            cli["default"] = []
        else:
            cli["default"] = spec.default
            if spec.default is not None and "type" not in cli and "action" not in cli:
                cli["type"] = type(spec.default)
        parser.add_argument(flag, dest=spec.name, **cli)


def build_config_from_args(args: argparse.Namespace) -> BuildConfig:
    """The `BuildConfig` of parsed `add_build_arguments` options."""
    values = {spec.name: getattr(args, spec.name) for spec in fields(BuildConfig)}
    values["size"] = tuple(values["size"]) if values["size"] else None
    values["source_options"] = dict(parse_option(item) for item in values["source_options"])
    return BuildConfig(**values)


def parse_option(text: str) -> tuple[str, Any]:
    """KEY=VALUE with VALUE read as JSON when it parses (numbers, booleans), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise BuildError(f"--source-option takes KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def jsonable(value: Any) -> Any:
    """attrs are JSON: numpy scalars, tuples and paths become plain values."""
    return json.loads(json.dumps(value, default=_json_default))


def _json_default(value: Any) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"not JSON: {type(value).__name__}")
