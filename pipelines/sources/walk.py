"""Walking a raw or static folder: every candidate is listed or reported with a reason, never dropped.

A candidate is an entry whose name ends in one of the wanted suffixes, or a folder. What cannot be
used is returned with the reason, and the build quarantines it under that reason:

- a folder that cannot be read (permissions): otherwise a whole class would vanish without a word;
- a FIFO, socket or device with a wanted suffix: opening a FIFO to hash it would block forever;
- a symlink loop, a broken symlink, a link back to a folder already walked, and a link to an
  enclosing folder (followed, it would list its sibling class folders again under this one's label);
- a symlink whose target lies outside the walked root: **not followed**. The store's manifest
  describes the raw folder (paths, sizes, content hashes) and refreshes and ``verify`` compare it
  with that folder; content outside it can change or vanish while the folder does not, may be
  anyone's (a link to ``/etc`` or another user's files), and is lost when the folder is copied or
  archived. Links that stay inside the root are followed: a tree arranged with links works;
- a name that is not valid UTF-8: it cannot be stored as the item's path, so it is reported under
  its name with each such byte shown as ``\\xNN``.

Hidden names (``.DS_Store``, ``._x``, ``.git``) are not candidates and are skipped everywhere.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path


@dataclass(frozen=True)
class Entry:
    """A file found under the root, or a candidate that cannot be used (``reason`` non-empty)."""

    path: Path  # as found under the root: links are not resolved
    reason: str = ""


def normalized(suffixes: Iterable[str]) -> tuple[str, ...]:
    return tuple(s.lower() if s.startswith(".") else f".{s.lower()}" for s in suffixes)


def display(path: Path, root: Path) -> str:
    """``path`` relative to ``root`` with forward slashes; bytes that are not UTF-8 become ``\\xNN``."""
    return os.fsencode(path.relative_to(root).as_posix()).decode("utf-8", "backslashreplace")


def _is_utf8(name: str) -> bool:
    try:
        os.fsencode(name).decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


@dataclass
class Walker:
    """Walks folders under ``root``, following only the links that stay inside it."""

    root: Path
    suffixes: Iterable[str]
    wanted: tuple[str, ...] = field(init=False)
    real_root: Path = field(init=False)

    def __post_init__(self) -> None:
        self.root = Path(self.root)
        self.wanted = normalized(self.suffixes)
        self.real_root = Path(os.path.realpath(self.root))

    def folders(self, base: Path) -> tuple[list[Path], list[Entry]]:
        """Visible sub-folders of ``base`` (sorted by name), and the ones that cannot be used."""
        folders, problems = [], []
        for path, kind, reason in self._entries(base, problems):
            if kind == "dir":
                folders.append(path)
            elif kind == "problem" and self._maybe_folder(path):
                problems.append(Entry(path, reason))
        return sorted(folders), problems

    def files(self, folder: Path) -> list[Entry]:
        """Wanted files under ``folder`` (recursive, sorted by path), problems included in place."""
        found: list[Entry] = []
        self._walk(folder, {os.path.realpath(folder)}, found)
        return sorted(found, key=lambda e: e.path)

    def loose_files(self, folder: Path) -> list[Entry]:
        """Wanted files directly in ``folder`` (not in its sub-folders), problems included."""
        found: list[Entry] = []
        for path, kind, reason in self._entries(folder, found):
            if kind == "file" and self._wanted(path):
                found.append(Entry(path))
            elif kind == "problem" and self._wanted(path):
                found.append(Entry(path, reason))
        return sorted(found, key=lambda e: e.path)

    def _walk(self, folder: Path, seen: set[str], found: list[Entry]) -> None:
        for path, kind, reason in self._entries(folder, found):
            if kind == "dir":
                real = os.path.realpath(path)
                if real in seen:
                    found.append(Entry(path, "symlink loop: leads back to a folder already listed"))
                    continue
                self._walk(path, seen | {real}, found)
            elif kind == "file" and self._wanted(path):
                found.append(Entry(path))
            elif kind == "problem" and (self._wanted(path) or self._maybe_folder(path)):
                found.append(Entry(path, reason))

    def _entries(self, folder: Path, problems: list[Entry]) -> list[tuple[Path, str, str]]:
        """``(path, kind, reason)`` of each visible entry, kind "dir", "file", "problem" or "other"."""
        try:
            with os.scandir(folder) as it:
                names = sorted(entry.name for entry in it)
        except OSError as err:
            problems.append(Entry(Path(folder), f"folder cannot be read: {err.strerror or err}"))
            return []
        return [
            (Path(folder) / name, *self._classify(Path(folder) / name)) for name in names if name[0] != "."
        ]

    def _classify(self, path: Path) -> tuple[str, str]:
        if not _is_utf8(path.name):
            return "problem", "name is not valid UTF-8"
        try:
            mode = os.lstat(path).st_mode
            if stat.S_ISLNK(mode):
                target = Path(os.path.realpath(path, strict=True))
                if not target.is_relative_to(self.real_root):
                    return "problem", f"symlink leaves the folder (to {target}): not followed"
                mode = os.stat(path).st_mode
                if stat.S_ISDIR(mode) and Path(os.path.realpath(path.parent)).is_relative_to(target):
                    # followed, it would list the sibling folders again, under this folder's label
                    return "problem", "symlink loop: leads to an enclosing folder, not followed"
        except OSError as err:
            if err.errno == errno.ELOOP:
                return "problem", "symlink loop"
            if err.errno == errno.ENOENT:
                return "problem", "broken symlink"
            return "problem", f"cannot be read: {err.strerror or err}"
        if stat.S_ISDIR(mode):
            return "dir", ""
        if stat.S_ISREG(mode):
            return "file", ""
        kinds = {
            stat.S_ISFIFO: "FIFO",
            stat.S_ISSOCK: "socket",
            stat.S_ISCHR: "device",
            stat.S_ISBLK: "device",
        }
        kind = next((name for test, name in kinds.items() if test(mode)), "special file")
        return "problem", f"not a regular file ({kind})"

    def _wanted(self, path: Path) -> bool:
        return path.name.lower().endswith(self.wanted)

    def _maybe_folder(self, path: Path) -> bool:
        """A problem entry that may be a folder: one that is (links followed), or a name without a suffix."""
        return os.path.isdir(path) or "." not in path.name
