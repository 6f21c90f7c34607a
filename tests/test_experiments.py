"""`tmkt experiment`: a small grid on a built-in store, and a report that agrees with its runs."""

from __future__ import annotations

import json

import numpy as np
import pytest

from pipelines.build import BuildConfig, run_build
from tmkt.experiments import main


@pytest.mark.slow
def test_grid_report_agrees_with_the_runs(tmp_path):
    store = tmp_path / "store"
    run_build(
        BuildConfig(
            source="builtin",
            raw=str(tmp_path / "raw"),
            store=str(store),
            workers=1,
            source_options={"recordings_per_class": 6},
        )
    )
    out = tmp_path / "grid"
    argv = [
        "--store",
        str(store),
        "--out",
        str(out),
        "--methods",
        "tmkt,event",
        "--seeds",
        "0,1",
        "--per-class",
        "0,2",
        "epochs=1",
        "min_steps=0",  # exactly one epoch: the report is under test, not the budget
        "backbone=small",
        "batch_size=16",
        "checkpoint_every=0",
    ]
    assert main(argv) == 0
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary) == {"kall", "k2"}
    for budget in ("kall", "k2"):
        for method in ("tmkt", "event"):
            values = [
                json.loads((out / budget / f"{method}-s{seed}" / "result.json").read_text())["val_accuracy"]
                for seed in (0, 1)
            ]
            assert summary[budget][method]["n"] == 2
            assert summary[budget][method]["mean"] == pytest.approx(np.mean(values))
    config = json.loads((out / "k2" / "tmkt-s0" / "result.json").read_text())["config"]
    assert config["max_recordings_per_class"] == 2 and config["epochs"] == 1
    for name in ("results.md", "curves.png", "scarcity.png"):
        assert (out / name).stat().st_size > 0
    report = (out / "results.md").read_text()
    assert "2 event recordings per class" in report and "| tmkt | 2 |" in report

    # finished runs are kept: a second call trains nothing and reports the same
    before = (out / "kall" / "tmkt-s0" / "result.json").stat().st_mtime_ns
    assert main(argv) == 0
    assert (out / "kall" / "tmkt-s0" / "result.json").stat().st_mtime_ns == before
