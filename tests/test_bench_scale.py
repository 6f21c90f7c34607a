"""`tmkt bench scale`'s trees and tables: linked trees that never touch their seeds, and growth rates.

The benchmark itself (1k to 70k recordings, tens of minutes) is not a test; its numbers are in
`results/scale/`. What it measures stands on these parts.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from benches.scale import NMNIST, change_files, growth, make_tree, table
from pipelines.formats.nmnist import read_nmnist, write_nmnist
from storage.schema import EVENT_DTYPE


def seeds_in(folder: Path, per_label: int = 2) -> list[tuple[str, Path]]:
    """Small real-format N-MNIST files, ``per_label`` per digit, of different lengths."""
    rng = np.random.default_rng(0)
    seeds = []
    for digit in range(10):
        for j in range(per_label):
            events = np.zeros(50 + 10 * j + digit, dtype=EVENT_DTYPE)
            events["x"], events["y"] = rng.integers(0, 34, (2, len(events)))
            events["t"] = np.sort(rng.integers(0, 100_000, len(events)))
            path = folder / str(digit) / f"{j}.bin"
            path.parent.mkdir(parents=True, exist_ok=True)
            write_nmnist(path, events)
            seeds.append((str(digit), path))
    return seeds


def test_tree_is_the_download_layout_with_one_file_in_seven_under_test(tmp_path: Path) -> None:
    seeds = seeds_in(tmp_path / "seeds")
    files = make_tree(NMNIST, seeds, 70, tmp_path / "raw")
    assert len(files) == len(set(files)) == 70
    assert sum(f.parts[-3] == "Test" for f in files) == 10
    for i, file in enumerate(files):
        label, seed = seeds[i % len(seeds)]
        assert file.parent.name == label and file.read_bytes() == seed.read_bytes()
    more = make_tree(NMNIST, seeds, 5, tmp_path / "raw", start=70)
    assert not set(more) & set(files)


def test_changing_linked_files_leaves_their_seeds_as_they_were(tmp_path: Path) -> None:
    seeds = seeds_in(tmp_path / "seeds")
    before = {seed: seed.read_bytes() for _, seed in seeds}
    files = make_tree(NMNIST, seeds, 200, tmp_path / "raw")
    old = {file: file.read_bytes() for file in files}

    changed = change_files(files, seeds, 0.05)

    assert changed == 10
    assert {seed: seed.read_bytes() for _, seed in seeds} == before
    moved = [file for file in files if file.read_bytes() != old[file]]
    assert len(moved) == changed
    for file in moved:
        assert file.stat().st_size != len(old[file])  # so size alone shows the change
        assert file.stat().st_mtime < file.stat().st_ctime - 30  # dated back: not a racy stat
        assert len(read_nmnist(file)) > 0


def test_growth_is_the_exponent_between_the_two_largest_sizes() -> None:
    assert growth([1.0, 10.0, 100.0], [1000, 10000, 100000]) == "1.00"
    assert growth([2.0, 2.0], [1000, 70000]) == "0.00"
    assert growth([1.0, None, 4.0], [10, 20, 40]) == f"{math.log(4) / math.log(4):.2f}"
    assert growth([5.0], [1000]) == ""


def test_table_leaves_unmeasured_rows_out() -> None:
    results = [{"recordings": 1000, "a": 1.0}, {"recordings": 10000, "a": 12.0}]
    text = table(results, {"stage a": lambda r: r["a"], "stage b": lambda r: r["b"]}, "seconds")
    assert text.splitlines()[0] == "| seconds | 1,000 | 10,000 | growth |"
    assert "| stage a | 1.0 | 12.0 | 1.08 |" in text
    assert "stage b" not in text
