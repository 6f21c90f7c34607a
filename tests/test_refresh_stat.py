"""A refresh takes size + mtime first: a file whose both match the manifest is not read, unless
``rehash``; real N-MNIST files, real builds."""

from __future__ import annotations

import os
import time
from pathlib import Path

import numpy as np

from flows.dataset import refresh_config
from pipelines.build import BuildConfig, run_build
from storage.reader import DatasetReader
from tests.test_build import copy_subset, needs_real

pytestmark = needs_real

#: mtime of every file before the first build: old enough to be trusted (see `RACY_NS`)
OLD_NS = time.time_ns() - 3600 * 10**9


def built(tmp_path: Path, client) -> tuple[BuildConfig, list[Path]]:
    files = copy_subset(tmp_path / "raw", 3)
    for f in files:
        os.utime(f, ns=(OLD_NS, OLD_NS))
    config = BuildConfig(source="nmnist", raw=str(tmp_path / "raw"), store=str(tmp_path / "s"), workers=2)
    assert run_build(config, client=client).committed
    return config, files


def flip_first_polarity(path: Path) -> None:
    """Same size, still valid N-MNIST, different content: the first event's polarity bit flips."""
    data = bytearray(path.read_bytes())
    data[2] ^= 0x80
    path.write_bytes(bytes(data))


def events_of(store: str, path: str) -> np.ndarray:
    reader = DatasetReader(store)
    return reader.events(reader.sources.index(path))


def test_manifest_rows_carry_size_and_mtime(tmp_path, client):
    config, files = built(tmp_path, client)
    rows = {r["path"]: r for r in DatasetReader(config.store).manifest}
    first = files[0].relative_to(tmp_path / "raw").as_posix()
    assert rows[first]["mtime_ns"] == OLD_NS
    assert rows[first]["size"] == files[0].stat().st_size


def test_touched_but_equal_file_is_hashed_and_unchanged(tmp_path, client):
    config, files = built(tmp_path, client)
    os.utime(files[4], ns=(OLD_NS, OLD_NS + 10**9))  # new mtime, same bytes: hashed, equal
    result = run_build(config, client=client)
    assert not result.committed
    assert result.report["changes"]["changed"] == 0


def test_same_size_same_mtime_change_is_caught_only_with_rehash(tmp_path, client):
    config, files = built(tmp_path, client)
    path = files[7].relative_to(tmp_path / "raw").as_posix()
    before = events_of(config.store, path)
    flip_first_polarity(files[7])
    os.utime(files[7], ns=(OLD_NS, OLD_NS))  # the attacker restores the mtime

    trusted = run_build(config, client=client)
    assert not trusted.committed  # size and mtime match: not read

    config.rehash = True
    rehashed = run_build(config, client=client)
    assert rehashed.committed
    assert rehashed.report["changes"]["changed"] == 1
    assert rehashed.report["decoded"] == 1 and rehashed.report["reused"] == len(files) - 1
    after = events_of(config.store, path)
    assert len(after) == len(before)
    assert after["p"][0] == 1 - before["p"][0] and np.array_equal(after[1:], before[1:])


def test_changed_file_with_new_mtime_is_caught(tmp_path, client):
    config, files = built(tmp_path, client)
    flip_first_polarity(files[2])
    os.utime(files[2], ns=(OLD_NS, OLD_NS + 5 * 10**9))
    result = run_build(config, client=client)
    assert result.committed
    assert result.report["changes"]["changed"] == 1
    assert result.report["decoded"] == 1 and result.report["reused"] == len(files) - 1
    row = next(r for r in DatasetReader(config.store).manifest if r["path"].endswith(files[2].name))
    assert row["mtime_ns"] == OLD_NS + 5 * 10**9


def test_a_fresh_mtime_is_not_trusted_by_the_next_refresh(tmp_path, client):
    """Written under `RACY_NS` before the build's stat, a file gets no mtime: a second write within
    the same clock tick would keep both size and mtime."""
    config, files = built(tmp_path, client)
    flip_first_polarity(files[1])  # mtime now, size equal
    assert run_build(config, client=client).committed
    row = next(r for r in DatasetReader(config.store).manifest if r["path"].endswith(files[1].name))
    assert row["mtime_ns"] is None


def test_rehash_reaches_refreshes_only_when_asked(tmp_path, client):
    config, _ = built(tmp_path, client)
    config.rehash = True
    run_build(config, client=client, force=True)
    assert DatasetReader(config.store).build_params["rehash"] is True
    assert refresh_config(config.store).rehash is False  # a build's --rehash is not sticky
    assert refresh_config(config.store, rehash=True).rehash is True
