"""A user's mistakes on the command line: one line naming the problem, exit code 2, no traceback,
nothing written or committed, no service started for what can be checked first, no process left.

Every command runs as a real `tmkt` process in its own session, with its own PREFECT_HOME: a
Prefect database there means a Prefect server was started.
"""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from pipelines.build import BuildConfig, run_build
from storage.reader import DatasetReader
from tests.conftest import ROOT, _group_alive, kill_group, tmkt_command


class Ran:
    def __init__(self, returncode: int, stdout: str, stderr: str, prefect_home: Path) -> None:
        self.returncode, self.stdout, self.stderr, self.prefect_home = (
            returncode,
            stdout,
            stderr,
            prefect_home,
        )

    @property
    def lines(self) -> list[str]:
        return [line for line in self.stderr.splitlines() if line.strip()]

    def started_prefect(self) -> bool:
        return any(self.prefect_home.glob("prefect.db*"))


def tmkt(tmp_path: Path, *args: str, timeout: float = 300) -> Ran:
    """Run `tmkt ARGS`; fail if anything of its process group outlives it."""
    home = tmp_path / f"prefect-home-{time.monotonic_ns()}"
    home.mkdir()
    env = {**os.environ, "PREFECT_HOME": str(home)}
    process = subprocess.Popen(
        tmkt_command(*args),
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = process.communicate(timeout=timeout)
    finally:
        deadline = time.monotonic() + 10  # children that are already exiting get a moment
        while _group_alive(process.pid) and time.monotonic() < deadline:
            time.sleep(0.2)
        leftover = (
            _group_alive(process.pid)
            and subprocess.run(
                ["ps", "-o", "pid,args", "-g", str(process.pid)], capture_output=True, text=True
            ).stdout
        )
        if leftover:
            kill_group(process)
    assert not leftover, f"`tmkt {' '.join(args)}` left processes running:\n{leftover}"
    return Ran(process.returncode, stdout, stderr, home)


def assert_one_line_error(ran: Ran, *needles: str) -> str:
    """Exit 2, exactly one line on stderr that names the problem, and no traceback anywhere."""
    assert "Traceback" not in ran.stderr + ran.stdout, ran.stderr
    assert ran.returncode == 2, ran.stderr
    assert len(ran.lines) == 1, ran.stderr
    for needle in needles:
        assert needle in ran.lines[0], ran.lines[0]
    assert not ran.started_prefect(), "a Prefect server was started for a mistake found before any work"
    return ran.lines[0]


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small built-in store at ``built/store``; its raw folder ``built/raw`` is N-MNIST-shaped."""
    root = tmp_path_factory.mktemp("built")
    run_build(
        BuildConfig(
            source="builtin",
            raw=str(root / "raw"),
            store=str(root / "store"),
            workers=1,
            source_options={"recordings_per_class": 4},
        )
    )
    return root


# -- store paths -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "command",
    [
        ["store", "info", "{file}"],
        ["store", "info", "{file}", "--json"],
        ["store", "verify", "{file}"],
        ["store", "history", "{file}"],
        ["train", "--store", "{file}", "--method", "event", "--out", "{out}"],
        ["build-dataset", "--source", "builtin", "--raw", "{raw}", "--store", "{file}"],
        ["eval", "--checkpoint", "{file}", "--store", "{file}"],
    ],
    ids=["info", "info-json", "verify", "history", "train", "build", "eval"],
)
def test_a_store_path_that_is_a_file(tmp_path, command):
    file = tmp_path / "notes.txt"
    file.write_text("not a store")
    args = [a.format(file=file, out=tmp_path / "run", raw=tmp_path / "raw") for a in command]
    line = assert_one_line_error(tmkt(tmp_path, *args))
    assert str(file) in line and ("is a file" in line or "checkpoint" in line)
    assert file.read_text() == "not a store"
    assert not (tmp_path / "run").exists() and not (tmp_path / "raw").exists()


# -- build inputs, checked before Prefect or Dask start ----------------------------------------


@pytest.mark.parametrize("missing", ["raw", "static"])
def test_build_with_a_folder_that_does_not_exist(tmp_path, built, missing):
    raw = tmp_path / "nowhere" if missing == "raw" else built / "raw"
    args = ["build-dataset", "--source", "nmnist", "--raw", str(raw), "--store", str(tmp_path / "s")]
    if missing == "static":
        args += ["--static", str(tmp_path / "no-mnist")]
    assert_one_line_error(tmkt(tmp_path, *args, timeout=60), f"{missing} folder not found")
    assert not (tmp_path / "s").exists()


def test_build_with_an_option_the_source_does_not_take(tmp_path, built):
    args = [
        "build-dataset",
        "--source",
        "nmnist",
        "--raw",
        str(built / "raw"),
        "--store",
        str(tmp_path / "s"),
    ]
    ran = tmkt(tmp_path, *args, "--source-option", "recordings_per_class=3")
    assert_one_line_error(ran, "source 'nmnist'", "recordings_per_class")
    assert not (tmp_path / "s").exists()


@pytest.mark.slow
def test_event_only_build_says_so_and_mixing_methods_refuse_it(tmp_path, built):
    """N-MNIST files without --static: the build works and says the store is event-only; no Prefect
    telemetry traceback on the way. Training a mixing method on it is then a one-line mistake."""
    store = tmp_path / "events-only"
    ran = tmkt(
        tmp_path, "build-dataset", "--source", "nmnist", "--raw", str(built / "raw"), "--store", str(store),
        "--workers", "1",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    assert "Traceback" not in ran.stderr and "database is locked" not in ran.stderr
    notes = [line for line in ran.lines if line.startswith("tmkt: note:")]
    assert len(notes) == 1 and "event-only" in notes[0] and "--static" in notes[0]
    assert "committed snapshot" in ran.stdout

    out = tmp_path / "run"
    for method in ("tmkt", "finetune", "he2024"):
        ran = tmkt(tmp_path, "train", "--store", str(store), "--method", method, "--out", str(out))
        assert_one_line_error(ran, f"method {method!r}", "has none", "--static")
    assert not out.exists()


# -- training configuration ---------------------------------------------------------------------


def test_unknown_backbone(tmp_path, built):
    out = tmp_path / "run"
    ran = tmkt(tmp_path, "train", "--store", str(built / "store"), "--out", str(out), "backbone=vgg")
    assert_one_line_error(ran, "unknown backbone 'vgg'", "vgg_snn")
    assert not out.exists()


def test_resume_without_a_checkpoint(tmp_path, built):
    out = tmp_path / "run"
    args = ["train", "--store", str(built / "store"), "--method", "event", "--out", str(out), "--resume"]
    assert_one_line_error(tmkt(tmp_path, *args), "--resume", "no checkpoint ckpt.pt", str(out))
    assert not out.exists()


def test_resume_from_a_truncated_checkpoint(tmp_path, built):
    out = tmp_path / "run"
    out.mkdir()
    torch.save({"model": {"w": torch.zeros(4096)}, "optimizer": {}, "step": 3, "rng": []}, out / "ckpt.pt")
    whole = (out / "ckpt.pt").read_bytes()
    (out / "ckpt.pt").write_bytes(whole[: len(whole) // 2])
    args = ["train", "--store", str(built / "store"), "--method", "event", "--out", str(out), "--resume"]
    assert_one_line_error(tmkt(tmp_path, *args), str(out / "ckpt.pt"), "cannot read the checkpoint")
    assert sorted(p.name for p in out.iterdir()) == ["ckpt.pt"]  # nothing else written


# -- evaluation ---------------------------------------------------------------------------------


class _Payload:
    """A pickle that would create a file if it were ever unpickled with pickle's full powers."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


@pytest.mark.parametrize("kind", ["truncated", "foreign", "resume-state", "code"])
def test_eval_of_a_file_that_is_not_a_model_checkpoint(tmp_path, built, kind):
    path = tmp_path / "model.pt"
    marker = tmp_path / "code-ran"
    if kind == "truncated":
        torch.save({"model": {"w": torch.zeros(4096)}, "meta": {}}, path)
        path.write_bytes(path.read_bytes()[:1000])
    elif kind == "foreign":
        torch.save({"state_dict": {"w": torch.zeros(3)}}, path)
    elif kind == "resume-state":
        torch.save({"model": {}, "optimizer": {}, "step": 1, "rng": []}, path)
    else:
        path.write_bytes(pickle.dumps({"meta": _Payload(marker)}))
    ran = tmkt(tmp_path, "eval", "--checkpoint", str(path), "--store", str(built / "store"))
    line = assert_one_line_error(ran, str(path))
    assert ("cannot read" in line) or ("not a tmkt model checkpoint" in line)
    if kind == "resume-state":
        assert "evaluate checkpoint.pt" in line
    assert not marker.exists(), "loading a checkpoint ran code from it"


@pytest.fixture(scope="module")
def model(built: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A checkpoint trained for one step on the built-in store (its accuracy does not matter here)."""
    from tmkt.train import TrainConfig, train

    out = tmp_path_factory.mktemp("model")
    config = TrainConfig(
        store=str(built / "store"), method="event", out=str(out), epochs=1, max_steps=1, backbone="small",
        batch_size=8, device="cpu", progress_bar=False, checkpoint_every=0,
    )  # fmt: skip
    train(config)
    return out / "checkpoint.pt"


def test_eval_of_an_unknown_split(tmp_path, built, model):
    ran = tmkt(
        tmp_path, "eval", "--checkpoint", str(model), "--store", str(built / "store"), "--split", "valid"
    )
    assert_one_line_error(ran, "--split", "invalid choice: 'valid'", "val", "all")


def test_eval_never_falls_back_from_an_empty_split(tmp_path, built, model):
    """A store whose recordings are all training ones: `--split test` is an error, `--split all` a
    choice whose line says how many of the counted recordings the model trained on."""
    from storage import open_store
    from storage.writer import Transaction

    source = open_store(built / "store")
    key = source.default_frame_key()
    store = tmp_path / "train-only"
    with Transaction(store) as tx:
        tx.write_array("events/offsets", np.zeros(source.n_recordings + 1, np.int64))
        tx.write_array("events/label", source.labels.astype(np.int16))
        tx.write_array("events/split", np.zeros(source.n_recordings, np.uint8))
        tx.write_array("images/label", np.zeros(0, np.int16))
        group = tx.root.require_group(f"frames/{key}")
        group.attrs.update(source.frame_spec(key).to_attrs())
        tx.write_array(f"frames/{key}/events", source.event_frames(key))
        tx.root.attrs.update({"classes": source.classes, "frames_key": key, "source": "test"})
        tx.commit("train split only")
    base = ["eval", "--checkpoint", str(model), "--store", str(store)]
    line = assert_one_line_error(tmkt(tmp_path, *base), "split 'test'", "holds no recording", "--split all")
    assert f"train {source.n_recordings}" in line

    ran = tmkt(tmp_path, *base, "--split", "all")
    assert ran.returncode == 0, ran.stderr
    assert (
        ran.stdout.startswith("accuracy ")
        and f"on {source.n_recordings} recordings of split 'all'" in ran.stdout
    )

    # on the store it trained on, `all` counts the training recordings and says so
    ran = tmkt(
        tmp_path,
        "eval",
        "--checkpoint",
        str(model),
        "--store",
        str(built / "store"),
        "--split",
        "all",
        "--json",
    )
    result = json.loads(ran.stdout)
    assert result["n"] == source.n_recordings and result["trained_on"] == len(source.split_indices("train"))
    ran = tmkt(tmp_path, "eval", "--checkpoint", str(model), "--store", str(built / "store"))
    n_test = len(source.split_indices("test"))
    assert f"on {n_test} recordings of split 'test'" in ran.stdout and "training recordings" not in ran.stdout


# -- verify on a damaged store ------------------------------------------------------------------


@pytest.mark.parametrize("damage", ["chunk", "manifest", "snapshot"])
def test_verify_reports_a_damaged_store_as_faults(tmp_path, built, damage):
    import shutil

    store = tmp_path / "store"
    shutil.copytree(built / "store", store)
    folder = {"chunk": "chunks", "manifest": "manifests", "snapshot": "snapshots"}[damage]
    files = sorted((store / folder).iterdir(), key=lambda p: p.stat().st_size)
    targets = files if damage == "snapshot" else files[-1:]
    for target in targets:
        target.write_bytes(b"\x00garbage" * 4)
    ran = tmkt(tmp_path, "store", "verify", str(store))
    assert "Traceback" not in ran.stderr + ran.stdout
    assert ran.returncode == 1, ran.stderr
    faults = [line for line in ran.stdout.splitlines() if line.startswith("FAULT")]
    assert len(faults) == 1 and "cannot be read" in faults[0], ran.stdout
    assert ran.stdout.splitlines()[-1] == f"{store}: 1 fault(s)"


def test_info_of_a_snapshot_without_its_manifest_is_one_line(tmp_path, built):
    import shutil

    import zarr

    from storage.repo import BRANCH, open_repository

    store = tmp_path / "store"
    shutil.copytree(built / "store", store)
    session = open_repository(store).writable_session(BRANCH)
    del zarr.open_group(session.store, mode="r+")["manifest"]
    session.commit("a snapshot without its manifest")
    assert_one_line_error(tmkt(tmp_path, "store", "info", str(store)), str(store), "no 'manifest' record")


def damaged_frames_store(tmp_path, built) -> tuple[Path, str, int]:
    """A copy of the built store whose event-frame shards lost their index; its frames key and the
    bytes of its statics (what stays in memory when the frames stream)."""
    import shutil

    from storage.reader import DatasetReader
    from tests.test_verify import chunk_files

    store = tmp_path / "store"
    shutil.copytree(built / "store", store)
    reader = DatasetReader(store)
    key = reader.default_frame_key()
    for path in chunk_files(store, f"frames/{key}/events"):
        path.write_bytes(path.read_bytes()[:-300])
    return store, key, reader.static_frames(key).nbytes


@pytest.mark.parametrize("streamed", [False, True])
def test_training_on_a_damaged_frames_shard_is_one_line_naming_the_store(tmp_path, built, streamed):
    """Resident or streamed (a budget below the split), a damaged shard of the event frames is one
    line naming the store and the shard."""
    store, key, static_bytes = damaged_frames_store(tmp_path, built)
    args = ["train", "--store", str(store), "--method", "tmkt", "--out", str(tmp_path / "run")]
    args += ["--epochs", "1", "min_steps=0", "backbone=small", "device=cpu", "batch_size=4"]
    args += [f"max_resident_bytes={static_bytes + 40_000}"] if streamed else []
    assert_one_line_error(tmkt(tmp_path, *args), str(store), f"frames/{key}/events: shard 0")


def test_a_budget_too_small_for_a_static_of_each_class_is_one_line(tmp_path, built):
    store, key, _ = damaged_frames_store(tmp_path, built)
    pixels = int(np.prod(DatasetReader(store).frame_spec(key).size))
    args = ["train", "--store", str(store), "--method", "tmkt", "--out", str(tmp_path / "run")]
    args += [f"max_resident_bytes={4 * 3 * pixels}"]  # a pool of 3 statics for 10 classes
    ran = tmkt(tmp_path, *args)
    assert_one_line_error(ran, str(store), "static pool holds 3 images", "larger max_resident_bytes")


# -- a full disk during a build -----------------------------------------------------------------


@pytest.fixture
def tiny_filesystem(tmp_path: Path):
    """A 256 KiB tmpfs (needs the right to mount: root in a container); skipped where it cannot be."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    done = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], capture_output=True
    )
    if done.returncode != 0:
        pytest.skip(f"cannot mount a size-limited tmpfs here: {done.stderr.decode().strip()}")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


@pytest.mark.slow
def test_disk_full_during_a_build_is_one_line_and_commits_nothing(tmp_path, built, tiny_filesystem):
    from storage import open_store
    from storage.repo import StoreNotFound

    store = tiny_filesystem / "store"
    ran = tmkt(
        tmp_path, "build-dataset", "--source", "builtin", "--raw", str(built / "raw"), "--store", str(store),
        "--workers", "1", "--source-option", "recordings_per_class=4",
    )  # fmt: skip
    assert "Traceback" not in ran.stderr + ran.stdout, ran.stderr
    assert ran.returncode == 2, ran.stderr
    errors = [line for line in ran.lines if line.startswith("tmkt: error")]
    assert errors == [
        "tmkt: error: no space left on device: free space (or choose another --store) and run again"
    ]
    quoted = [line for line in ran.lines if "\\n  |" in line]
    assert not quoted, f"Prefect quoted the Rust error's context: {quoted}"
    with pytest.raises(StoreNotFound, match="holds no dataset"):
        open_store(store)
