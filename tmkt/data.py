"""The in-memory data the mixing loader draws from, and how it is read from a dataset store.

Small DVS classification sets at 34x34 or 48x48 with T=10 take a few hundred MB as uint16 at most,
so the whole training split is held in host memory (or on the GPU, see ``tmkt.loader``): reading
single samples from Zarr in the hot loop costs milliseconds each (1-5 ms a call).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from storage.schema import SPLITS

#: Pseudo-split for validation in data-scarcity runs: every recording of the train and val splits that
#: the run with the same ``max_recordings_per_class`` and ``seed`` does not train on. With 10 of ~55
#: N-MNIST recordings per class that is ~500 recordings (one is worth 0.2 points) instead of the 54
#: of the val split (1.85 points each), so differences between methods are measured, not guessed.
#: The test split is never part of it: it stays held out.
UNUSED = "unused"


def static_scale_of(event_frames: np.ndarray, static_frames: np.ndarray) -> float:
    """How many events a static pixel of 255 stands for: the scale at which the mean static frame
    equals the mean event frame (per pixel, polarity channel and time-step).

    Why: a mixed batch goes through the same BatchNorm layers whatever its domain, and the network is
    evaluated on events alone. Matching the means keeps the normalisation statistics learnt on mixed
    batches valid for event-only input. Matching the range instead (255 -> the 99th percentile of
    non-zero counts) made static frames about three times heavier than event frames on N-MNIST, and a
    network trained on such mixes classified mixed sequences well but event-only ones near chance.
    Returns 1.0 when either side is empty or all zero.
    """
    return scale_of_means(mean_value(event_frames), mean_value(static_frames) / 255.0)


def scale_of_means(event_mean: float, static_mean: float) -> float:
    """`static_scale_of` from the two means (the statics' as pixel / 255), for data that is not held
    whole in memory (``tmkt.streaming``); 1.0 when either is zero."""
    if event_mean <= 0.0 or static_mean <= 0.0:
        return 1.0
    return event_mean / static_mean


def mean_value(values: np.ndarray) -> float:
    """The mean of unsigned integer ``values`` from an integer sum: exactly what a float64 mean
    gives (every partial sum is an integer below 2**53), without a float64 copy of the array; 0.0
    when empty."""
    values = np.asarray(values)
    return int(values.sum(dtype=np.uint64)) / values.size if values.size else 0.0


def static_lut(static_scale: float) -> np.ndarray:
    """float32 ``[256]``: the value of each static pixel, ``v / 255 * static_scale`` rounded once.

    The loader's graph and the reference both map pixels through this table, so they agree to the
    last bit whatever order of float operations each backend would use for the formula.
    """
    return (np.arange(256, dtype=np.float64) / 255.0 * float(static_scale)).astype(np.float32)


@dataclass
class StaticsByClass:
    """The static images of each class, for uniform pairing by label without Python loops."""

    order: np.ndarray  # int64 [M]: static indices sorted by label
    start: np.ndarray  # int64 [C]: where each class begins in ``order``
    count: np.ndarray  # int64 [C]: how many statics each class has

    @classmethod
    def build(cls, static_labels: np.ndarray, num_classes: int) -> StaticsByClass:
        labels = np.asarray(static_labels, dtype=np.int64)
        order = np.argsort(labels, kind="stable").astype(np.int64)
        count = np.bincount(labels, minlength=num_classes).astype(np.int64)
        start = np.concatenate([[0], np.cumsum(count)[:-1]]).astype(np.int64)
        return cls(order=order, start=start, count=count)

    def pick(self, labels: np.ndarray, u: np.ndarray) -> np.ndarray:
        """One static index per label, uniform among that class's statics, from uniforms ``u`` in [0, 1)."""
        labels = np.asarray(labels, dtype=np.int64)
        count = self.count[labels]
        if np.any(count == 0):
            missing = sorted(set(labels[count == 0].tolist()))
            raise ValueError(f"classes {missing} have no static image to pair with")
        offset = np.minimum(np.floor(u * count).astype(np.int64), count - 1)
        return self.order[self.start[labels] + offset]


@dataclass
class MixData:
    """Everything the loader needs, held in host memory (small DVS sets fit easily)."""

    event_frames: np.ndarray  # uint16 [N, T, 2, H, W] binned event counts
    event_labels: np.ndarray  # int64 [N]
    static_frames: np.ndarray  # uint8 [M, H, W] static images at the frames' size (gray or V)
    static_labels: np.ndarray  # int64 [M]
    static_scale: float  # static pixel 255 maps to this many events (see static_scale_of)
    num_classes: int
    snapshot: str = ""  # store snapshot id the data came from

    def __post_init__(self) -> None:
        self.event_frames = np.ascontiguousarray(self.event_frames)
        self.static_frames = np.ascontiguousarray(self.static_frames)
        self.event_labels = np.asarray(self.event_labels, dtype=np.int64)
        self.static_labels = np.asarray(self.static_labels, dtype=np.int64)
        ev, st = self.event_frames, self.static_frames
        if ev.dtype != np.uint16 or ev.ndim != 5 or ev.shape[2] != 2:
            raise ValueError(f"event_frames must be uint16 [N,T,2,H,W], got {ev.dtype} {ev.shape}")
        if st.dtype != np.uint8 or st.ndim != 3:
            raise ValueError(f"static_frames must be uint8 [M,H,W], got {st.dtype} {st.shape}")
        if len(st) and st.shape[1:] != ev.shape[3:]:
            raise ValueError(f"static size {st.shape[1:]} differs from event frame size {ev.shape[3:]}")
        if self.event_labels.shape != (len(ev),) or self.static_labels.shape != (len(st),):
            raise ValueError("one label per event recording and per static image is required")
        for name, labels in (("event_labels", self.event_labels), ("static_labels", self.static_labels)):
            if labels.size and (labels.min() < 0 or labels.max() >= self.num_classes):
                raise ValueError(
                    f"{name} must lie in [0, {self.num_classes}), got {labels.min()}..{labels.max()}"
                )
        if not self.static_scale > 0:
            raise ValueError(f"static_scale must be > 0, got {self.static_scale}")

    @property
    def time_steps(self) -> int:
        return int(self.event_frames.shape[1])

    @property
    def frame_size(self) -> tuple[int, int]:
        return int(self.event_frames.shape[3]), int(self.event_frames.shape[4])

    def statics_by_class(self) -> StaticsByClass:
        return StaticsByClass.build(self.static_labels, self.num_classes)

    @classmethod
    def from_store(
        cls,
        path: str | Path,
        snapshot: str | None = None,
        split: str = "train",
        frames_key: str | None = None,
        max_recordings_per_class: int | None = None,
        seed: int = 0,
    ) -> MixData:
        """Load the event frames of one split and the statics of every split from a store snapshot.

        Statics of all splits are usable: they are the source domain, never evaluated on.
        ``max_recordings_per_class`` keeps the first k recordings of each class after a shuffle
        seeded by ``seed`` (data-scarcity curves: the same seed gives nested subsets as k grows);
        with sliced frames it counts samples; with ``split="unused"`` it names the training subset whose
        complement is returned.
        """
        from storage.reader import DatasetReader  # imported here: only this constructor needs it

        reader = DatasetReader(path, snapshot=snapshot)
        key = frames_key or reader.default_frame_key()
        # one row per sample: a recording sliced into several samples lends each its label and split
        labels = np.asarray(reader.labels, dtype=np.int64)[reader.frame_recordings(key)]
        chosen = recordings_read(reader, split, max_recordings_per_class, seed, key)
        event_frames = np.asarray(reader.event_frames(key, indices=chosen))
        static_frames = np.asarray(reader.static_frames(key))
        return cls(
            event_frames=event_frames,
            event_labels=labels[chosen],
            static_frames=static_frames,
            static_labels=np.asarray(reader.image_labels, dtype=np.int64),
            static_scale=static_scale_of(event_frames, static_frames),
            num_classes=len(reader.classes),
            snapshot=str(reader.snapshot_id),
        )


def recordings_read(
    reader,
    split: str = "train",
    max_recordings_per_class: int | None = None,
    seed: int = 0,
    frames_key: str | None = None,
) -> np.ndarray:
    """Rows of ``reader.event_frames(frames_key)`` of ``split`` that `MixData.from_store` reads with
    these arguments (a reader of `storage.reader`): what a data-scarce run trained on, so that reports
    can evaluate on every other recording (``UNUSED``). One row per recording, or per sample when the
    frames slice recordings (each sample has its recording's label and split)."""
    recording = reader.frame_recordings(frames_key)
    labels = np.asarray(reader.labels, dtype=np.int64)[recording]
    splits = np.asarray(reader.splits)[recording]
    return split_indices(splits, labels, split, max_recordings_per_class, seed, recording)


def split_indices(
    splits: np.ndarray,
    labels: np.ndarray,
    split: str,
    max_recordings_per_class: int | None,
    seed: int,
    recording: np.ndarray | None = None,
) -> np.ndarray:
    """Sample indices of ``split`` (a store split or ``UNUSED``), sorted.

    ``splits`` and ``labels`` hold one entry per sample; ``recording`` names each sample's recording
    (sliced frames; default: one sample per recording). For a store split, ``max_recordings_per_class``
    keeps k per class (``keep_per_class``); for ``UNUSED`` it selects the training subset, and what is
    returned is every train/val sample of a recording that subset has no sample of: a slice of a
    recording trained on would measure memory, not generalisation.
    """
    if split != UNUSED and split not in SPLITS:
        raise ValueError(f"unknown split {split!r}; expected one of {(*SPLITS, UNUSED)}")
    name = "train" if split == UNUSED else split
    chosen = np.flatnonzero(splits == SPLITS.index(name))
    if max_recordings_per_class is not None:
        chosen = keep_per_class(chosen, labels[chosen], max_recordings_per_class, seed)
    if split != UNUSED:
        return chosen
    recording = np.arange(len(splits)) if recording is None else np.asarray(recording)
    pool = np.isin(splits, [SPLITS.index("train"), SPLITS.index("val")])
    return np.flatnonzero(pool & ~np.isin(recording, recording[chosen]))


def keep_per_class(indices: np.ndarray, labels: np.ndarray, k: int, seed: int) -> np.ndarray:
    """The first ``k`` of ``indices`` of each class after a seeded shuffle, returned sorted."""
    if k < 1:
        raise ValueError(f"max_recordings_per_class must be >= 1, got {k}")
    perm = np.random.default_rng(seed).permutation(len(indices))
    shuffled_labels = np.asarray(labels)[perm]
    # rank of each shuffled item within its class: position minus the position of its class's first item
    by_class = np.argsort(shuffled_labels, kind="stable")
    sorted_labels = shuffled_labels[by_class]
    first = np.searchsorted(sorted_labels, sorted_labels, side="left")
    rank = np.empty(len(perm), dtype=np.int64)
    rank[by_class] = np.arange(len(perm)) - first
    return np.sort(np.asarray(indices)[perm[rank < k]])
