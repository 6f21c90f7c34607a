"""What a build is asked to do: `BuildConfig`, its per-source defaults, and its JSON form."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from pipelines.sources import get_source
from pipelines.splits import DEFAULT_VAL_FRACTION
from storage.schema import FrameSpec

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


@dataclass
class BuildConfig:
    """Parameters of a build; they are recorded in the store and reused by refreshes."""

    source: str
    raw: str
    store: str
    static: str | None = None
    time_bins: int = 10
    size: tuple[int, int] | None = None
    mode: str = "time"
    denoise_us: int = 0
    static_mode: str = "gray"
    static_fit: str | None = None
    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float | None = None
    seed: int = 0
    workers: int = 2
    dask_address: str | None = None
    max_bad_fraction: float = 0.1
    batch_size: int = 32
    #: options of the source adapter (its dataclass fields), e.g. {"recordings_per_class": 10} for builtin
    source_options: dict[str, Any] = field(default_factory=dict)

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
        return FrameSpec(self.time_bins, tuple(size), self.mode, self.denoise_us, self.static_mode, fit)

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
