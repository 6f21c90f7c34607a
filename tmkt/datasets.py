"""A map-style torch ``Dataset`` over one split's event frames, for researchers' own training code.

The frames are read from the store once, in bulk, and held in memory as uint16: reading one sample
at a time from Zarr costs milliseconds per item (one chunk decode each), which would make a plain
``DataLoader`` the bottleneck of a small spiking network. Items are converted to float32 on access.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import Dataset

from storage.schema import split_code


class EventFrames(Dataset):
    """Items are ``(frames, label)``: float32 ``[T, 2, H, W]`` event counts and an int class index.

    A ``DataLoader`` stacks them to ``[B, T, 2, H, W]``; spikingjelly's multi-step layers expect
    time first, ``frames.transpose(0, 1)``.
    """

    def __init__(
        self,
        frames: np.ndarray,
        labels: np.ndarray,
        classes: list[str],
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
        snapshot: str = "",
    ) -> None:
        if frames.ndim != 5 or frames.shape[2] != 2 or len(frames) != len(labels):
            raise ValueError(
                f"expected frames [N, T, 2, H, W] and N labels, got {frames.shape}, {labels.shape}"
            )
        self.frames = np.ascontiguousarray(frames)
        self.labels = np.asarray(labels, dtype=np.int64)
        self.classes = list(classes)
        self.transform = transform
        self.snapshot = snapshot

    @classmethod
    def from_store(
        cls,
        path: str | Path,
        split: str = "train",
        snapshot: str | None = None,
        frames_key: str | None = None,
        transform: Callable[[torch.Tensor], torch.Tensor] | None = None,
    ) -> EventFrames:
        """The recordings of ``split`` ("train", "val" or "test") of a store snapshot (latest if None)."""
        from storage.reader import open_store

        code = split_code(split)
        reader = open_store(path, snapshot)
        chosen = np.flatnonzero(np.asarray(reader.splits) == code)
        frames = reader.event_frames(frames_key, indices=chosen)
        return cls(frames, reader.labels[chosen], reader.classes, transform, reader.snapshot_id)

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        frames = torch.from_numpy(self.frames[index].astype(np.float32))
        if self.transform is not None:
            frames = self.transform(frames)
        return frames, int(self.labels[index])
