"""What the command line prints when things go right: JSON from every `store` command on stdout,
and validation accuracy per epoch while `tmkt train` runs."""

from __future__ import annotations

import json

from storage import open_store
from tests.test_cli_errors import built, tmkt  # noqa: F401  (built is a fixture)


def test_every_store_command_prints_json_to_stdout(tmp_path, built):  # noqa: F811
    store = str(built / "store")
    reader = open_store(store)

    ran = tmkt(tmp_path, "store", "info", store, "--json")
    info = json.loads(ran.stdout)
    assert ran.returncode == 0 and info["snapshot"] == reader.snapshot_id
    assert info["recordings"] == reader.n_recordings and info["splits"]["train"] == len(
        reader.split_indices("train")
    )

    ran = tmkt(tmp_path, "store", "verify", store, "--json")
    assert ran.returncode == 0 and json.loads(ran.stdout) == {"path": store, "ok": True, "faults": []}

    ran = tmkt(tmp_path, "store", "history", store, "--json")
    history = json.loads(ran.stdout)
    assert ran.returncode == 0 and history[0]["id"] == reader.snapshot_id
    assert [s["id"] for s in history] == [s["id"] for s in reader.history()]


def test_train_prints_validation_accuracy_each_epoch(tmp_path, built):  # noqa: F811
    out = tmp_path / "run"
    ran = tmkt(
        tmp_path, "train", "--store", str(built / "store"), "--method", "event", "--out", str(out),
        "--epochs", "2", "min_steps=0", "backbone=small", "batch_size=8", "device=cpu", "checkpoint_every=0",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    val = [row for row in rows if "val_accuracy" in row]
    assert len(val) == 2
    for epoch, row in enumerate(val, 1):
        line = f"epoch {epoch}/2: val accuracy {row['val_accuracy']:.4f} ({row['val_n']} recordings)"
        assert line in ran.stderr.splitlines()
    result = json.loads(ran.stdout)  # stdout holds the result only
    assert result["val_accuracy"] == val[-1]["val_accuracy"]
