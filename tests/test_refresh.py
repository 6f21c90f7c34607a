"""A refresh tells unchanged files by size and mtime without reading them, and hashes everything when
asked (``rehash``): through the real pipeline on a Dask cluster, with real N-MNIST files."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from pipelines.build import BuildConfig, run_build
from storage.reader import DatasetReader
from tests.test_build import copy_subset, needs_real


def rewrite_keeping_size_and_mtime(path: Path) -> None:
    """Change one event's bytes in place, then put the file's mtime back: what only a hash sees."""
    stat = path.stat()
    data = bytearray(path.read_bytes())
    data[0] ^= 0x01  # the x of the first event
    path.write_bytes(bytes(data))
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size and path.stat().st_mtime_ns == stat.st_mtime_ns


@needs_real
@pytest.mark.slow
def test_refresh_trusts_size_and_mtime_unless_asked_to_rehash(tmp_path, client):
    raw = tmp_path / "raw"
    files = copy_subset(raw, 3)
    config = BuildConfig(source="nmnist", raw=str(raw), store=str(tmp_path / "s"))
    first = run_build(config, client=client)
    rows = {row["path"]: row for row in DatasetReader(config.store).manifest}
    assert all(row["mtime_ns"] == (raw / path).stat().st_mtime_ns for path, row in rows.items())

    touched, disguised, edited = files[0], files[1], files[2]
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))  # same bytes
    rewrite_keeping_size_and_mtime(disguised)
    noop = run_build(config, client=client)
    # the touched file is hashed again and equal; the disguised one is trusted by its stat: no commit
    assert not noop.committed and noop.snapshot == first.snapshot

    edited.write_bytes(edited.read_bytes()[:-5])  # one event fewer: a new size and mtime
    changed = run_build(config, client=client)
    assert changed.committed
    assert changed.report["changed_paths"]["changed"] == [str(edited.relative_to(raw))]

    rehashed = run_build(BuildConfig(**{**config.__dict__, "rehash": True}), client=client)
    assert rehashed.committed
    assert rehashed.report["changed_paths"]["changed"] == [str(disguised.relative_to(raw))]
    reader = DatasetReader(config.store)
    index = reader.sources.index(str(disguised.relative_to(raw)))
    assert int(reader.events(index)["x"][0]) != int(
        DatasetReader(config.store, first.snapshot).events(index)["x"][0]
    )
