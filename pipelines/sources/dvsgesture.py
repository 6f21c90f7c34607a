"""DVS128 Gesture: one recording per labelled segment of a trial (event-only, no statics).

Layout of the download: ``raw/user<NN>_<lighting>.aedat`` (AEDAT 3.1, 128x128) beside
``user<NN>_<lighting>_labels.csv`` (``class,startTime_usec,endTime_usec``, classes 1..11), and
``trials_to_train.txt`` / ``trials_to_test.txt`` (also accepted one folder down, as in
``DvsGesture/``). Each csv row becomes one EventItem ``user01_fluorescent.aedat#3`` (the 0-based row
index after ``#``); decoding cuts the trial's events to ``[start, end)`` and shifts ``t`` so that
the segment starts at 0.

Split: from the trials lists when present (a trial in neither list gets no fixed split). Without
them, the published rule the lists encode: users 1-23 train, 24-29 test.
"""

from __future__ import annotations

import functools
import re
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from pipelines.errors import BadInput
from pipelines.formats.aedat3 import read_aedat31, read_gesture_labels
from pipelines.sources.base import EventItem, Listing, PublishedCounts, SplitParams, StaticItem
from pipelines.sources.folder import relative, require_dir
from pipelines.sources.walk import Walker

DVSGESTURE_CLASSES = [
    "hand_clapping",
    "right_hand_wave",
    "left_hand_wave",
    "right_arm_clockwise",
    "right_arm_counter_clockwise",
    "left_arm_clockwise",
    "left_arm_counter_clockwise",
    "arm_roll",
    "air_drums",
    "air_guitar",
    "other_gestures",
]
TRIAL_PATTERN = re.compile(r"^user(\d+)_.+\.aedat$", re.IGNORECASE)
LAST_TRAIN_USER = 23


def labels_path(trial: Path) -> Path:
    return trial.with_name(f"{trial.stem}_labels.csv")


def _read_trials_lists(folders: list[Path]) -> dict[str, str] | None:
    """Trial file name -> split from the first folder holding a trials list; None when none does."""
    for folder in folders:
        lists = {split: folder / f"trials_to_{split}.txt" for split in ("train", "test")}
        if not any(path.is_file() for path in lists.values()):
            continue
        split_of = {}
        for split, path in lists.items():
            if path.is_file():
                for line in path.read_text(encoding="utf-8").splitlines():
                    if line.strip():
                        split_of[Path(line.strip()).name] = split
        return split_of
    return None


def _split_by_user(name: str) -> str | None:
    match = TRIAL_PATTERN.match(name)
    if not match:
        return None
    return "train" if int(match.group(1)) <= LAST_TRAIN_USER else "test"


@functools.lru_cache(maxsize=2)
def _cached_trial(key: tuple[str, int, int]) -> tuple[np.ndarray, tuple[int, int]]:
    # one trial holds ~11 segments decoded one after another: read it once
    return read_aedat31(key[0])


def _read_trial(path: Path) -> tuple[np.ndarray, tuple[int, int]]:
    try:
        stat = path.stat()
    except OSError as err:
        raise BadInput(path, f"cannot read: {err}") from err
    return _cached_trial((str(path), stat.st_mtime_ns, stat.st_size))


def split_item_path(item_path: str) -> tuple[str, int]:
    """``"user01_led.aedat#3"`` -> ``("user01_led.aedat", 3)``."""
    trial, sep, segment = item_path.rpartition("#")
    if not sep or not segment.isdigit():
        raise BadInput(item_path, "expected '<trial>.aedat#<segment index>'")
    return trial, int(segment)


@dataclass
class DVSGestureSource(SplitParams):
    test_fraction: float = 0.0  # the download fixes the test split
    name: str = "dvsgesture"
    published_split = "published trials_to_train/test lists (users 1-23 / 24-29)"
    published = PublishedCounts(
        "DVS128 Gesture: 122 trials of 29 users; one sample per labels-csv row, 1,176 train and 288 "
        "test, as spikingjelly's DVS128Gesture counts them",
        per_split={"train": 1176, "test": 288},
    )
    has_statics = False

    def list(self, raw: Path, static: Path | None) -> Listing:
        raw = require_dir(raw)
        found = Walker(raw, (".aedat",)).files(raw)
        trials = [e.path for e in found if not e.reason and TRIAL_PATTERN.match(e.path.name)]
        folders = [raw] + sorted({p.parent for p in trials} - {raw})
        split_of = _read_trials_lists(folders)
        # what cannot be walked (unreadable folder, FIFO, link out of raw...) is reported, not dropped
        events = [EventItem(relative(e.path, raw), -1, None, e.reason) for e in found if e.reason]
        for trial in trials:
            rel = relative(trial, raw)
            split = _split_by_user(trial.name) if split_of is None else split_of.get(trial.name)
            csv = labels_path(trial)
            if not csv.is_file():
                events.append(EventItem(rel, -1, split, f"missing labels file '{csv.name}'"))
                continue
            try:
                segments = read_gesture_labels(csv)
            except BadInput as err:
                events.append(EventItem(rel, -1, split, f"{csv.name}: {err.reason}"))
                continue
            events += [
                EventItem(f"{rel}#{i}", label - 1, split, file=rel)
                for i, (label, _, _) in enumerate(segments)
            ]
        # event-only dataset: a static folder, if given, is not used
        return Listing(classes=list(DVSGESTURE_CLASSES), events=events)

    def default_static(self, raw: Path) -> Path | None:
        """Static root to use when none is given: this layout keeps none inside ``raw``."""
        return None

    def decode(self, raw: Path, item: EventItem) -> tuple[np.ndarray, tuple[int, int]]:
        trial_rel, segment = split_item_path(item.path)
        trial = Path(raw) / trial_rel
        segments = read_gesture_labels(labels_path(trial))
        if segment >= len(segments):
            raise BadInput(trial, f"segment {segment} not in its labels file ({len(segments)} segments)")
        _, start, end = segments[segment]
        events, sensor_size = _read_trial(trial)
        lo, hi = np.searchsorted(events["t"], [start, end], side="left")
        cut = events[lo:hi].copy()
        cut["t"] -= start
        return cut, sensor_size

    def load_static(self, static: Path, item: StaticItem) -> np.ndarray:
        raise BadInput(Path(static) / item.path, "DVS128 Gesture is event-only: it has no static images")
