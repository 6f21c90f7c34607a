"""Generic ``<root>/<class>/<file>`` source, and the class-folder listing every adapter shares.

Layout: ``raw/<class>/<file>`` of any event format ``pipelines.formats.read_events`` reads (nested
folders inside a class folder are fine), static images ``static/<class>/*.png|jpg``. The classes
are the sorted raw class folder names; a static folder of another name cannot be paired with any
recording, so its files are reported in ``bad_statics``. Hidden files (``.DS_Store``, ``._x``) are
skipped everywhere.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.formats import EVENT_SUFFIXES, IMAGE_SUFFIXES, read_events
from pipelines.formats.images import read_image
from pipelines.sources.base import EventItem, Listing, SplitParams, StaticItem


def _normalized(suffixes: Iterable[str]) -> tuple[str, ...]:
    return tuple(s.lower() if s.startswith(".") else f".{s.lower()}" for s in suffixes)


def files_with_suffix(folder: Path, suffixes: Iterable[str]) -> list[Path]:
    """Files under ``folder`` (recursive) whose name ends in one of ``suffixes``, sorted."""
    wanted = _normalized(suffixes)
    found = [
        path
        for path in folder.rglob("*")
        if path.is_file()
        and path.name.lower().endswith(wanted)
        and not any(part.startswith(".") for part in path.relative_to(folder).parts)
    ]
    return sorted(found)


def relative(path: Path, root: Path) -> str:
    """Path relative to ``root`` with forward slashes, as stored in listings."""
    return path.relative_to(root).as_posix()


def require_dir(root: Path, what: str = "raw folder") -> Path:
    """A missing root is a configuration error, not one bad input: fail the listing."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} {root} does not exist")
    return root


def class_dirs(base: Path) -> list[Path]:
    """Visible sub-folders of ``base``, sorted by name; none when ``base`` is missing."""
    if not base.is_dir():
        return []
    return sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith("."))


def class_folder_events(
    raw: Path,
    base: Path,
    classes: list[str],
    suffixes: Iterable[str],
    split: str | None = None,
    skip: Iterable[str] = (),
) -> list[EventItem]:
    """EventItems for ``base/<class>/<file>``; an unknown class folder gives label -1 and a reason."""
    index = {name: i for i, name in enumerate(classes)}
    skipped = set(skip)
    items = []
    for folder in class_dirs(base):
        if folder.name in skipped:
            continue
        label = index.get(folder.name, -1)
        reason = "" if label >= 0 else f"unknown class folder '{folder.name}'"
        for path in files_with_suffix(folder, suffixes):
            items.append(EventItem(path=relative(path, raw), label=label, split=split, reason=reason))
    return items


def class_folder_statics(
    static: Path,
    base: Path,
    classes: list[str],
    suffixes: Iterable[str] = IMAGE_SUFFIXES,
    split: str | None = None,
    skip: Iterable[str] = (),
) -> tuple[list[StaticItem], list[tuple[str, str]]]:
    """StaticItems for ``base/<class>/<image>``; files of unknown class folders go to bad_statics."""
    index = {name: i for i, name in enumerate(classes)}
    skipped = set(skip)
    items, bad = [], []
    for folder in class_dirs(base):
        if folder.name in skipped:
            continue
        label = index.get(folder.name, -1)
        for path in files_with_suffix(folder, suffixes):
            if label < 0:
                bad.append((relative(path, static), f"unknown class folder '{folder.name}'"))
            else:
                items.append(StaticItem(path=relative(path, static), index=0, label=label, split=split))
    return items, bad


@dataclass
class FolderSource(SplitParams):
    """Any event files sorted into class folders; no published split (val and test carved per class)."""

    name: str = "folder"

    def list(self, raw: Path, static: Path | None) -> Listing:
        raw = require_dir(raw)
        classes = [folder.name for folder in class_dirs(raw)]
        events = class_folder_events(raw, raw, classes, EVENT_SUFFIXES)
        wanted = _normalized(EVENT_SUFFIXES)
        # event files lying directly in raw/ belong to no class: report them instead of dropping them
        loose = sorted(p for p in raw.iterdir() if p.is_file() and p.name.lower().endswith(wanted))
        events += [EventItem(relative(p, raw), -1, None, "file outside any class folder") for p in loose]
        statics, bad = [], []
        if static is not None:
            static = require_dir(static, "static folder")
            statics, bad = class_folder_statics(static, static, classes)
        return Listing(
            classes=classes, events=sorted(events, key=lambda e: e.path), statics=statics, bad_statics=bad
        )

    def default_static(self, raw: Path) -> Path | None:
        """Static root to use when none is given: this layout keeps none inside ``raw``."""
        return None

    def decode(self, raw: Path, item: EventItem) -> tuple[np.ndarray, tuple[int, int]]:
        return read_events(Path(raw) / item.path)

    def load_static(self, static: Path, item: StaticItem) -> np.ndarray:
        return read_image(Path(static) / item.path)
