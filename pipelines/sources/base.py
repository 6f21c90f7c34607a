"""What every source adapter provides: listing raw samples and decoding one of them."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import ClassVar, Protocol

import numpy as np

from pipelines.splits import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION, split_rule_text


@dataclass(frozen=True)
class EventItem:
    """One event recording in a raw folder."""

    path: str  # relative to the raw root, with forward slashes
    label: int  # index into the source's class list; -1 when the class folder is unknown
    split: str | None = None  # "train"/"test" when the download fixes it, else None
    reason: str = ""  # non-empty: known bad before decoding (for example an unknown class folder)


@dataclass(frozen=True)
class StaticItem:
    """One static image: a file, or one entry of a container file (IDX, CIFAR batch)."""

    path: str  # relative to the static root
    index: int  # entry inside the file; 0 for one-image files
    label: int
    split: str | None = None


@dataclass
class Listing:
    classes: list[str]
    events: list[EventItem]
    statics: list[StaticItem] = field(default_factory=list)
    #: static files that could not even be listed (unreadable container, unknown class folder)
    bad_statics: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class SplitParams:
    """The split parameters every source takes, and the rule they make, recorded in the store.

    A source whose download publishes its test split sets ``test_fraction`` to 0 (only items with no
    published split are carved into test) and says what it publishes in ``published_split``.
    """

    val_fraction: float = DEFAULT_VAL_FRACTION
    test_fraction: float = DEFAULT_TEST_FRACTION
    split_seed: int = 0
    published_split: ClassVar[str] = "no published split"
    #: False for event-only datasets (no static images exist for them)
    has_statics: ClassVar[bool] = True

    @property
    def split_rule(self) -> str:
        return f"{self.published_split}; " + split_rule_text(
            self.val_fraction, self.test_fraction, self.split_seed
        )


class Source(Protocol):
    """A dataset layout. Decoding raises ``pipelines.errors.BadInput`` naming the file."""

    name: str
    #: how recordings without a fixed split are divided, recorded in the store
    split_rule: str

    def list(self, raw: Path, static: Path | None) -> Listing: ...

    def decode(self, raw: Path, item: EventItem) -> tuple[np.ndarray, tuple[int, int]]:
        """Events as ``storage.EVENT_DTYPE`` and the sensor size ``(width, height)``."""
        ...

    def load_static(self, static: Path, item: StaticItem) -> np.ndarray:
        """uint8 ``[H, W]`` or ``[H, W, 3]``."""
        ...

    def default_static(self, raw: Path) -> Path | None:
        """Where statics are when no static folder is given (the built-in source keeps its own)."""
        ...
