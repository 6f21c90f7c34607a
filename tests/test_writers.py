"""One writer per store from plan to commit: two builds at once lose nothing."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from pipelines.build import BuildConfig, run_build
from storage.reader import DatasetReader
from storage.repo import StoreConflict
from storage.schema import FrameSpec
from storage.writer import Transaction
from tests.conftest import ROOT

#: A refresh of the store at argv[1] with argv[2] time bins, printing its result as JSON.
REFRESH = """
import json, sys
from pipelines.build import BuildConfig, run_build
config = BuildConfig(source="builtin", raw=sys.argv[1] + "/raw", store=sys.argv[1] + "/s", workers=1,
                     time_bins=int(sys.argv[2]), source_options={"recordings_per_class": 6})
if __name__ == "__main__":
    result = run_build(config)
    print("RESULT", json.dumps({"snapshot": result.snapshot, "parent": result.report["parent_snapshot"]}))
"""


def builtin_config(root: Path, time_bins: int) -> BuildConfig:
    return BuildConfig(
        source="builtin",
        raw=str(root / "raw"),
        store=str(root / "s"),
        workers=1,
        time_bins=time_bins,
        source_options={"recordings_per_class": 6},
    )


def run_together(commands: list[list[str]]) -> list[dict]:
    """Start every command at once from the repository root; each must succeed and print one line
    ``RESULT {json}``: the parsed results, in the order of ``commands``."""
    processes = [
        subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        for command in commands
    ]
    results = []
    for process in processes:
        output, _ = process.communicate(timeout=600)
        assert process.returncode == 0, output[-3000:]
        results.append(json.loads(output.split("RESULT ", 1)[1].splitlines()[0]))
    return results


@pytest.mark.slow
def test_two_refreshes_at_once_keep_both_frame_sets(tmp_path: Path) -> None:
    base = run_build(builtin_config(tmp_path, 10)).snapshot
    script = tmp_path / "refresh.py"
    script.write_text(REFRESH)
    results = run_together([[sys.executable, str(script), str(tmp_path), str(bins)] for bins in (8, 12)])

    reader = DatasetReader(tmp_path / "s")
    bins = sorted(spec.time_bins for spec in reader.frame_keys().values())
    assert bins == [8, 10, 12]  # neither refresh's frames were dropped by the other
    first, second = sorted(results, key=lambda r: r["parent"] != base)
    assert first["parent"] == base and second["parent"] == first["snapshot"]  # the true parents
    assert reader.snapshot_id == second["snapshot"]
    assert [s["id"] for s in reader.history()][:3] == [second["snapshot"], first["snapshot"], base]


def test_a_transaction_planned_on_a_stale_snapshot_is_refused(tmp_path: Path) -> None:
    import numpy as np

    from tests.test_store import random_recordings, write_store

    spec = FrameSpec(time_bins=5, size=(34, 34))
    first = write_store(tmp_path / "s", random_recordings(np.random.default_rng(0), 4), spec)
    write_store(tmp_path / "s", random_recordings(np.random.default_rng(1), 4), spec)
    with pytest.raises(StoreConflict, match="after this one planned"):
        Transaction(tmp_path / "s", expected_parent=first)
    with pytest.raises(StoreConflict):
        Transaction(tmp_path / "s", expected_parent=None)  # planned as a first build
    assert DatasetReader(tmp_path / "s").n_recordings == 4
