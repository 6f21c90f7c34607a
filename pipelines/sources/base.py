"""What every source adapter provides: listing raw samples and decoding one of them."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import numpy as np

from pipelines.splits import DEFAULT_TEST_FRACTION, DEFAULT_VAL_FRACTION, split_rule_text


@dataclass(frozen=True)
class EventItem:
    """One event recording in a raw folder."""

    path: str  # relative to the raw root, with forward slashes
    label: int  # index into the source's class list; -1 when the class folder is unknown
    split: str | None = None  # "train"/"test" when the download fixes it, else None
    reason: str = ""  # non-empty: known bad before decoding (for example an unknown class folder)
    #: the raw file holding it, when the item is one part of a file (a DVS Gesture trial's segment);
    #: empty when the item is the whole file at ``path``. A separate field, never parsed out of
    #: ``path``, because any character (``#`` included) may appear in a file name.
    file: str = ""

    @property
    def raw_file(self) -> str:
        return self.file or self.path


@dataclass(frozen=True, slots=True)
class StaticItem:
    """One static image: a file, or one entry of a container file (IDX, CIFAR batch). Slotted: a
    folder listing (ImageNet: 1.28 M files) holds one per image until the plan keeps them as
    `StaticItems`."""

    path: str  # relative to the static root
    index: int  # entry inside the file; 0 for one-image files
    label: int
    split: str | None = None


class StaticItems(Sequence[StaticItem]):
    """Static items column by column: each distinct path and split once, then numpy columns.

    As objects, the 150,000 items of an IDX file cost the coordinator 100 bytes each and pickle to
    the workers one by one (a 20 MB pickle memo for one plan); as columns they cost 19 bytes each
    and pickle as four buffers. Reads as a sequence of `StaticItem`, and equals any such sequence.
    """

    def __init__(
        self,
        paths: list[str],
        splits: list[str | None],
        path_codes: np.ndarray,
        indices: np.ndarray,
        labels: np.ndarray,
        split_codes: np.ndarray,
    ) -> None:
        self.paths, self.splits = paths, splits
        self.path_codes = np.asarray(path_codes, dtype=np.int32)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.split_codes = np.asarray(split_codes, dtype=np.int8)

    @classmethod
    def of(cls, items: Iterable[StaticItem]) -> StaticItems:
        items = list(items)
        paths = list(dict.fromkeys(item.path for item in items))
        splits = list(dict.fromkeys(item.split for item in items))
        path_code = {path: i for i, path in enumerate(paths)}
        split_code = {split: i for i, split in enumerate(splits)}
        return cls(
            paths,
            splits,
            [path_code[item.path] for item in items],
            [item.index for item in items],
            [item.label for item in items],
            [split_code[item.split] for item in items],
        )

    @classmethod
    def of_file(cls, path: str, labels: np.ndarray, split: str | None) -> StaticItems:
        """Every entry of one container file: entry ``i`` has label ``labels[i]`` (an empty file
        lists no path, as a list of its items would hold none)."""
        count = len(labels)
        named = [path] if count else []
        return cls(
            named, [split] if count else [], np.zeros(count), np.arange(count), labels, np.zeros(count)
        )

    @classmethod
    def concat(cls, parts: Iterable[StaticItems]) -> StaticItems:
        parts = list(parts)
        paths = list(dict.fromkeys(p for part in parts for p in part.paths))
        splits = list(dict.fromkeys(s for part in parts for s in part.splits))
        columns = [
            [_recode(part.path_codes, part.paths, paths) for part in parts],
            [part.indices for part in parts],
            [part.labels for part in parts],
            [_recode(part.split_codes, part.splits, splits) for part in parts],
        ]
        return cls(paths, splits, *(np.concatenate([np.zeros(0, np.int64), *column]) for column in columns))

    def __len__(self) -> int:
        return len(self.indices)

    def __getitem__(self, key: Any) -> Any:
        if isinstance(key, slice):
            return StaticItems(
                self.paths,
                self.splits,
                self.path_codes[key],
                self.indices[key],
                self.labels[key],
                self.split_codes[key],
            )
        return StaticItem(
            self.paths[self.path_codes[key]],
            int(self.indices[key]),
            int(self.labels[key]),
            self.splits[self.split_codes[key]],
        )

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Sequence) and len(self) == len(other) and list(self) == list(other)

    __hash__ = None  # type: ignore[assignment]

    def __repr__(self) -> str:
        return f"StaticItems({len(self)} items in {len(self.paths)} files)"


def _recode(codes: np.ndarray, names: list, table: list) -> np.ndarray:
    """``codes`` into ``names`` as codes into ``table``, which holds every one of ``names``."""
    return np.array([table.index(name) for name in names] + [0], dtype=np.int64)[codes]


@dataclass
class Listing:
    classes: list[str]
    events: list[EventItem]
    #: a list, or `StaticItems` where a container lists many images
    statics: Sequence[StaticItem] = field(default_factory=list)
    #: static files that could not even be listed (unreadable container, unknown class folder)
    bad_statics: list[tuple[str, str]] = field(default_factory=list)


@dataclass(frozen=True)
class PublishedCounts:
    """How many recordings the published download holds, to tell a complete download from a broken one.

    ``per_split``: recordings per published split (a store's "val" is carved from "train", so both
    count as "train"); ``per_class``: recordings per class in one published split, or in all of
    them under ``"all"``; a class without any count given must still have recordings. ``source``
    says where the numbers come from.
    """

    source: str
    per_split: Mapping[str, int] = field(default_factory=dict)
    per_class: Mapping[str, Mapping[str, int]] = field(default_factory=dict)

    def warnings(self, classes: list[str], rows: Iterable[Mapping[str, Any]], limit: int = 12) -> list[str]:
        """One line per count that differs, for the manifest ``rows`` of a store's recordings."""
        rows = [r for r in rows if r.get("kind", "events") == "events"]
        published_split = [("train" if r["split"] == "val" else r["split"]) for r in rows]
        lines = []
        have = Counter(published_split)
        for split, expected in self.per_split.items():
            if have[split] != expected:
                lines.append(
                    f"split {split}: {have[split]} recordings, the published download has {expected}"
                )
        for split, expected_per_class in self.per_class.items():
            in_split = [r for r, s in zip(rows, published_split, strict=True) if split in ("all", s)]
            per_class = Counter(classes[r["label"]] for r in in_split if 0 <= r["label"] < len(classes))
            where = "" if split == "all" else f" in {split}"
            lines += [
                f"class {name!r}{where}: {per_class[name]} recordings, the published download has {n}"
                for name, n in expected_per_class.items()
                if per_class[name] != n
            ]
        counted = {name for per_class in self.per_class.values() for name in per_class}
        present = Counter(r["label"] for r in rows)
        lines += [
            f"class {name!r}: no recordings"
            for i, name in enumerate(classes)
            if name not in counted and not present[i]
        ]
        if len(lines) > limit:
            lines = lines[:limit] + [f"... and {len(lines) - limit} more counts that differ"]
        return lines


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
    #: how event coordinates relate to what the camera saw, recorded in the store; a dataset whose
    #: published readers show its recordings turned says so and applies that transform in ``decode``
    orientation: ClassVar[str] = "as the camera saw them: x = column, y = row, row 0 on top"
    #: what the published download holds; None for layouts that are no published dataset
    published: ClassVar[PublishedCounts | None] = None
    #: False for event-only datasets (no static images exist for them)
    has_statics: ClassVar[bool] = True

    @property
    def split_rule(self) -> str:
        return f"{self.published_split}; " + split_rule_text(
            self.val_fraction, self.test_fraction, self.split_seed
        )

    def load_statics(self, static: Path, items: Sequence[StaticItem]) -> list[np.ndarray]:
        """``load_static`` of each of ``items``, entries of one file: a container source overrides
        it to read only the part of the file the items are in."""
        return [self.load_static(static, item) for item in items]  # type: ignore[attr-defined]

    def static_shapes(self, static: Path, items: Sequence[StaticItem]) -> list[tuple[int, ...]]:
        """The shapes ``load_statics`` gives, failing where it fails, without keeping the pixels
        (one image at a time here; a container source reads its header only)."""
        return [self.load_static(static, item).shape for item in items]  # type: ignore[attr-defined]


class Source(Protocol):
    """A dataset layout. Decoding raises ``pipelines.errors.BadInput`` naming the file."""

    name: str
    #: how recordings without a fixed split are divided, recorded in the store
    split_rule: str
    #: how event coordinates relate to the camera's image, recorded in the store
    orientation: str
    #: what the published download holds (``tmkt store info`` warns when a store differs)
    published: PublishedCounts | None

    def list(self, raw: Path, static: Path | None) -> Listing: ...

    def decode(self, raw: Path, item: EventItem) -> tuple[np.ndarray, tuple[int, int]]:
        """Events as ``storage.EVENT_DTYPE`` and the sensor size ``(width, height)``."""
        ...

    def load_static(self, static: Path, item: StaticItem) -> np.ndarray:
        """uint8 ``[H, W]`` or ``[H, W, 3]``."""
        ...

    def load_statics(self, static: Path, items: Sequence[StaticItem]) -> list[np.ndarray]:
        """``load_static`` of several entries of one file (`SplitParams` gives every adapter one)."""
        ...

    def static_shapes(self, static: Path, items: Sequence[StaticItem]) -> list[tuple[int, ...]]:
        """The shapes of ``load_statics(static, items)``, with its failures, holding no pixels."""
        ...

    def default_static(self, raw: Path) -> Path | None:
        """Where statics are when no static folder is given (the built-in source keeps its own)."""
        ...
