"""Generic ``<root>/<class>/<file>`` source, and the class-folder listing every adapter shares.

Layout: ``raw/<class>/<file>`` of any event format ``pipelines.formats.read_events`` reads (nested
folders inside a class folder are fine), static images ``static/<class>/*.png|jpg``. The classes
are the sorted raw class folder names; a static folder of another name cannot be paired with any
recording, so its files are reported in ``bad_statics``. Hidden files (``.DS_Store``, ``._x``) are
skipped everywhere. Folders are walked by ``pipelines.sources.walk``: unreadable folders, FIFOs,
symlink loops, links leaving the root (not followed) and names that are not UTF-8 are listed with
their reason and quarantined, never dropped.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.formats import EVENT_SUFFIXES, IMAGE_SUFFIXES, read_events
from pipelines.formats.images import read_image
from pipelines.sources.base import EventItem, Listing, SplitParams, StaticItem
from pipelines.sources.walk import Entry, Walker, display


def relative(path: Path, root: Path) -> str:
    """Path relative to ``root`` with forward slashes, as stored in listings."""
    return display(path, root)


def require_dir(root: Path, what: str = "raw folder") -> Path:
    """A missing root is a configuration error, not one bad input: fail the listing."""
    root = Path(root)
    if not root.is_dir():
        raise FileNotFoundError(f"{what} {root} does not exist")
    return root


def class_dirs(root: Path, base: Path) -> tuple[list[Path], list[Entry]]:
    """Visible sub-folders of ``base`` (sorted) and the entries that look like folders but cannot be used."""
    if not base.is_dir():
        return [], []
    return Walker(root, ()).folders(base)


def class_folder_events(
    raw: Path,
    base: Path,
    classes: list[str],
    suffixes: Iterable[str],
    split: str | None = None,
    skip: Iterable[str] = (),
) -> list[EventItem]:
    """EventItems for ``base/<class>/<file>``; an unknown class folder gives label -1 and a reason,
    and so does every entry that cannot be used (see ``pipelines.sources.walk``)."""
    index = {name: i for i, name in enumerate(classes)}
    skipped = set(skip)
    walker = Walker(raw, suffixes)
    folders, problems = class_dirs(raw, base)
    items = [EventItem(relative(p.path, raw), -1, split, p.reason) for p in problems]
    for folder in folders:
        if folder.name in skipped:
            continue
        label = index.get(folder.name, -1)
        unknown = "" if label >= 0 else f"unknown class folder '{folder.name}'"
        for entry in walker.files(folder):
            items.append(EventItem(relative(entry.path, raw), label, split, entry.reason or unknown))
    return items


def class_folder_statics(
    static: Path,
    base: Path,
    classes: list[str],
    suffixes: Iterable[str] = IMAGE_SUFFIXES,
    split: str | None = None,
    skip: Iterable[str] = (),
) -> tuple[list[StaticItem], list[tuple[str, str]]]:
    """StaticItems for ``base/<class>/<image>``; files of unknown class folders go to bad_statics,
    and so does every entry that cannot be used."""
    index = {name: i for i, name in enumerate(classes)}
    skipped = set(skip)
    walker = Walker(static, suffixes)
    folders, problems = class_dirs(static, base)
    items, bad = [], [(relative(p.path, static), p.reason) for p in problems]
    for folder in folders:
        if folder.name in skipped:
            continue
        label = index.get(folder.name, -1)
        for entry in walker.files(folder):
            if entry.reason or label < 0:
                bad.append(
                    (relative(entry.path, static), entry.reason or f"unknown class folder '{folder.name}'")
                )
            else:
                items.append(StaticItem(path=relative(entry.path, static), index=0, label=label, split=split))
    return items, bad


@dataclass
class FolderSource(SplitParams):
    """Any event files sorted into class folders; no published split (val and test carved per class)."""

    name: str = "folder"

    def list(self, raw: Path, static: Path | None) -> Listing:
        raw = require_dir(raw)
        classes = [folder.name for folder in class_dirs(raw, raw)[0]]
        events = class_folder_events(raw, raw, classes, EVENT_SUFFIXES)
        # event files lying directly in raw/ belong to no class: report them instead of dropping them
        events += [
            EventItem(relative(e.path, raw), -1, None, e.reason or "file outside any class folder")
            for e in Walker(raw, EVENT_SUFFIXES).loose_files(raw)
        ]
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
