"""The main job end to end, small: `tmkt demo` in a fresh folder, through the real services."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch


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
            "--min-steps",
            "0",
            "--recordings-per-class",
            "6",
            "--per-class",
            "2",
            "--seeds",
            "0,1",
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
    assert summary["recordings"] == 60 and sum(summary["splits"].values()) == 60
    assert summary["design"]["seeds"] == [0, 1] and summary["design"]["event_recordings_per_class"] == 2
    # the deployment built the store at the demo's T, and every run trained exactly --epochs
    assert summary["design"]["time_bins"] == 6 and summary["design"]["epochs"] == 2
    assert summary["design"]["training"]["min_steps"] == 0
    index = (out / "index.md").read_text()
    for method, row in summary["methods"].items():
        assert row["seeds"] == 2 and row["train_n"] == 20 and row["held_out"]["n"] == 40
        values = []
        for seed_row in row["per_seed"]:
            run = data / "runs" / "k2" / f"{method}-s{seed_row['seed']}"
            result = json.loads((run / "result.json").read_text())
            assert seed_row["val_accuracy"] == result["val_accuracy"] and result["epochs"] == 2
            assert result["store_snapshot"] == summary["store_snapshot"]
            accuracy = held_out_accuracy_by_hand(data / "builtin" / "store", run, result)
            assert seed_row["held_out_accuracy"] == pytest.approx(accuracy)
            values.append(accuracy)
        assert row["held_out"]["mean"] == pytest.approx(np.mean(values))
        assert row["held_out"]["std"] == pytest.approx(np.std(values, ddof=1))
        assert f"| {method} | 2 | 20 | 40 | {100 * np.mean(values):.1f} ± " in index
    assert summary["store_snapshot"] in index
    # the report leads with a verdict in words that agrees with the comparison it records
    verdict = summary["verdict"]
    beats = summary["comparison"]["verdict"] == "win" and summary["comparison"]["diff"] > 0
    lead = "On this budget tmkt beats event" if beats else "On this budget tmkt does not beat event"
    assert verdict.startswith(lead)
    assert f"**{verdict}**" in index and done.stdout.strip().splitlines()[-1] == verdict

    # every service it started is gone: the server's pid file is removed and nothing answers
    from flows.server import server_status

    state, _ = server_status(data / "prefect")
    assert state == "stopped"
    left = subprocess.run(["pgrep", "-f", str(data)], capture_output=True, text=True).stdout.split()
    assert left == [], f"processes still running for the demo: {left}"


def held_out_accuracy_by_hand(store, run, result) -> float:
    """The run's accuracy on every recording outside its training subset, without the loader: the
    subset is redrawn from the store's train split by the run's seed, as the trainer draws it."""
    from storage import open_store
    from tmkt.data import keep_per_class
    from tmkt.evaluate import load_checkpoint

    reader = open_store(store, result["store_snapshot"])
    train = reader.split_indices("train")
    trained = keep_per_class(train, reader.labels[train], 2, result["seed"])
    assert len(trained) == 20
    held_out = np.setdiff1d(np.arange(reader.n_recordings), trained)
    model, _ = load_checkpoint(run / "checkpoint.pt")
    frames = torch.from_numpy(reader.event_frames(indices=held_out).astype(np.float32))
    with torch.no_grad():
        logits = model(frames.transpose(0, 1)).logits.float().mean(0)
    return float((logits.argmax(-1).numpy() == reader.labels[held_out]).mean())
