"""The main job end to end, small: `tmkt demo` in a fresh folder, through the real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest


@pytest.mark.slow
def test_demo_writes_a_consistent_report_and_stops_its_services(tmp_path):
    env = {**os.environ, "PREFECT_SERVER_ANALYTICS_ENABLED": "false", "DO_NOT_TRACK": "1"}
    env.pop("PREFECT_API_URL", None)
    out, data = tmp_path / "report", tmp_path / "data"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "flows.cli",
            "demo",
            "--out",
            str(out),
            "--data",
            str(data),
            "--epochs",
            "2",
            "--recordings-per-class",
            "6",
        ],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
    )
    assert done.returncode == 0, done.stderr[-3000:]

    for name in ("index.md", "summary.json", "curves.png", "ratio_schedule.png", "frames.png"):
        assert (out / name).is_file() and (out / name).stat().st_size > 0, name
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["methods"]) == {"tmkt", "event"}
    assert summary["recordings"] == 60
    index = (out / "index.md").read_text()
    for method, row in summary["methods"].items():
        result = json.loads((data / "runs" / f"{method}-seed0" / "result.json").read_text())
        assert row["val_accuracy"] == result["val_accuracy"]
        assert row["store_snapshot"] == result["store_snapshot"] == summary["store_snapshot"]
        assert row["epochs"] == 2
        assert f"| {method} | {100 * result['val_accuracy']:.1f} %" in index
    assert summary["store_snapshot"] in index

    # every service it started is gone: the server's pid file is removed and nothing answers
    from flows.server import server_status

    state, _ = server_status(data / "prefect")
    assert state == "stopped"
    left = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes still running for the demo: {left}"
