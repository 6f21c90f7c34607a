"""The Prefect flows, deployments, local server and refreshes, on real services over loopback.

Fast tests cover the pure parts (report, retry rule, parameters); the `slow` ones start a real Prefect
server, `tmkt serve`, a `dask scheduler` + `dask worker`, and build from the real N-MNIST recordings.
"""

from __future__ import annotations

import hashlib
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from flows.dataset import (
    build_dataset,
    flow_parameters,
    is_transient_io_error,
    refresh_config,
    refresh_dataset,
    report_markdown,
)
from flows.deployments import (
    DEFAULT_REFRESH_CRON,
    DeploymentError,
    ServeConfig,
    deployment_parameters,
    make_deployments,
)
from flows.serve import parse_param
from flows.server import ServerUnreachable, require_api
from pipelines.build import BuildConfig, BuildError
from pipelines.formats.nmnist import read_nmnist
from storage.reader import DatasetReader
from storage.verify import file_sha256, verify_store
from tests.conftest import ROOT, kill_group, tmkt_command

REFRESH_CRON = "17 3 * * *"  # never due while the tests run, so the served schedule starts no run


# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------
def recordings(real: Path, per_class: int, skip: int = 0) -> list[str]:
    """Relative paths of real N-MNIST recordings: ``per_class`` of each digit after ``skip``."""
    out = []
    for digit in range(10):
        files = sorted((real / "nmnist" / "Train" / str(digit)).glob("*.bin"))
        out += [f.relative_to(real / "nmnist").as_posix() for f in files[skip : skip + per_class]]
    return out


def copy_recordings(real: Path, raw: Path, paths: list[str]) -> None:
    for path in paths:
        (raw / path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(real / "nmnist" / path, raw / path)


def by_source(store: Path, snapshot: str | None = None) -> dict[str, dict]:
    """Everything stored per recording, keyed by its raw path: events, frames, label, split."""
    reader = DatasetReader(store, snapshot)
    frames = reader.event_frames()
    return {
        path: {
            "events": reader.events(i),
            "frames": frames[i],
            "label": int(reader.labels[i]),
            "split": int(reader.splits[i]),
        }
        for i, path in enumerate(reader.sources)
    }


def snapshot_digest(reader: DatasetReader) -> str:
    """Digest of every byte a training job reads from a snapshot (events, frames, labels, splits)."""
    digest = hashlib.sha256()
    for name in ("events/x", "events/y", "events/t", "events/p", "events/offsets", "events/label"):
        digest.update(reader.root[name][:].tobytes())
    digest.update(reader.root["events/split"][:].tobytes())
    digest.update(reader.root[f"frames/{reader.default_frame_key()}/events"][:].tobytes())
    return digest.hexdigest()


def prefect_client():
    from prefect import get_client

    return get_client(sync_client=True)


def run_logs_and_artifacts(flow_run_id: str) -> tuple[list[str], list[str]]:
    """The flow run's log messages and markdown artifacts, waiting for the last log batch to land."""
    from prefect.client.schemas.filters import ArtifactFilter, LogFilter

    with prefect_client() as client:
        for _ in range(40):
            logs = client.read_logs(log_filter=LogFilter(flow_run_id={"any_": [flow_run_id]}))
            messages = [log.message for log in logs]
            if any("Finished in state" in m for m in messages):
                break
            time.sleep(0.5)
        artifacts = client.read_artifacts(artifact_filter=ArtifactFilter(flow_run_id={"any_": [flow_run_id]}))
    return messages, [a.data for a in artifacts if a.type == "markdown"]


def deployment_run(name: str, params: dict[str, str], timeout: int = 240) -> tuple[str, float]:
    """`prefect deployment run NAME --param ... --watch`; returns the flow run id and the wall time."""
    command = [str(Path(sys.executable).parent / "prefect"), "deployment", "run", name, "--watch"]
    command += ["--watch-timeout", str(timeout), "--watch-interval", "1"]
    for key, value in params.items():
        command += ["--param", f"{key}={value}"]
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=timeout + 60)
    wall = time.perf_counter() - started
    assert done.returncode == 0, f"{name} failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    assert "Completed" in done.stdout, done.stdout[-3000:]
    match = re.search(r"UUID: ([0-9a-f-]{36})", done.stdout)
    assert match, done.stdout[-3000:]
    return match.group(1), wall


@pytest.fixture(scope="module")
def served(prefect_server: str, tmp_path_factory: pytest.TempPathFactory):
    """`tmkt serve` as a subprocess against the session's server; yields its data folder."""
    home = tmp_path_factory.mktemp("tmkt-home")
    log_path = home / "serve.log"
    command = tmkt_command(
        "serve", "--data-home", str(home), "--refresh-cron", REFRESH_CRON, "--param", f"store={home / 'main'}"
    )
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 120
        while "being served" not in log_path.read_text(errors="replace"):
            assert process.poll() is None, f"tmkt serve exited:\n{log_path.read_text()}"
            assert time.monotonic() < deadline, f"tmkt serve did not start:\n{log_path.read_text()}"
            time.sleep(0.5)
        yield home
    finally:
        kill_group(process)


# --------------------------------------------------------------------------------------------
# fast: pure parts
# --------------------------------------------------------------------------------------------
def test_retry_only_transient_io_errors() -> None:
    assert is_transient_io_error(OSError(5, "Input/output error"))
    assert is_transient_io_error(TimeoutError("read timed out"))
    assert is_transient_io_error(ConnectionResetError())
    assert not is_transient_io_error(BuildError("too many bad recordings"))
    assert not is_transient_io_error(FileNotFoundError("gone"))
    assert not is_transient_io_error(PermissionError("denied"))
    assert not is_transient_io_error(ValueError("bad parameter"))


def test_report_markdown_names_snapshot_counts_and_quarantined_files() -> None:
    result = {
        "snapshot": "SNAP123",
        "committed": True,
        "report": {
            "source": "nmnist",
            "recordings": 58,
            "events": 123456,
            "images": 10,
            "classes": 10,
            "decoded": 5,
            "reused": 53,
            "quarantined": [{"path": "Train/3/bad.bin", "kind": "events", "reason": "truncated | 3 bytes"}],
            "changes": {"added": 2, "changed": 3, "removed": 1},
            "timings": {"plan": 0.5, "total": 4.25},
        },
    }
    text = report_markdown("refresh", "/data/store", result)
    assert text.startswith("# Dataset refresh: committed snapshot `SNAP123`")
    assert "| 58 | 123456 | 10 | 10 | 5 | 53 | 1 |" in text
    assert "| `Train/3/bad.bin` | events | truncated \\| 3 bytes |" in text
    assert "| 2 | 3 | 1 |" in text
    assert "| total | 4.25 |" in text
    unchanged = report_markdown("refresh", "/data/store", {**result, "committed": False})
    assert "nothing changed, nothing committed (still snapshot `SNAP123`)" in unchanged


def test_flow_parameters_mirror_the_build_config() -> None:
    config = BuildConfig(source="nmnist", raw="r", store="s", static="m", size=(48, 40), workers=3)
    params = flow_parameters(config)
    assert params["size"] == [48, 40] and params["workers"] == 3 and params["static"] == "m"
    assert set(params) <= set(build_dataset.parameters.properties)
    for name in ("source", "raw", "static", "store", "time_bins", "size", "workers", "dask_address"):
        assert name in build_dataset.parameters.properties
    assert "max_bad_fraction" in build_dataset.parameters.properties


def test_serve_parameters_and_schedule(tmp_path: Path) -> None:
    assert parse_param("store=/x/y") == ("refresh-dataset/default", "store", "/x/y")
    assert parse_param("train/default:epochs=3") == ("train/default", "epochs", 3)
    assert parse_param("build-dataset/builtin:size=[48,48]") == ("build-dataset/builtin", "size", [48, 48])
    config = ServeConfig(home=tmp_path, overrides={"refresh-dataset/default": {"store": "/s", "workers": 1}})
    params = deployment_parameters(config)
    assert params["refresh-dataset/default"] == {"store": "/s", "workers": 1}
    assert params["build-dataset/builtin"]["raw"] == str(tmp_path / "builtin" / "raw")
    with pytest.raises(DeploymentError, match="unknown parameter"):
        deployment_parameters(ServeConfig(home=tmp_path, overrides={"train/default": {"nope": 1}}))
    with pytest.raises(DeploymentError, match="unknown deployment"):
        deployment_parameters(ServeConfig(home=tmp_path, overrides={"x/y": {}}))
    with pytest.raises(DeploymentError, match="invalid cron"):
        make_deployments(ServeConfig(home=tmp_path, refresh_cron="every hour"))
    deployments = {d.name: d for d in make_deployments(ServeConfig(home=tmp_path))}
    assert set(deployments) == {"default", "builtin"}  # names repeat across flows; schedules do not
    scheduled = [d for d in make_deployments(ServeConfig(home=tmp_path)) if d.schedules]
    assert len(scheduled) == 1 and scheduled[0].schedules[0].schedule.cron == DEFAULT_REFRESH_CRON


def test_unreachable_api_is_one_clear_line(monkeypatch: pytest.MonkeyPatch) -> None:
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server import free_port

    url = f"http://127.0.0.1:{free_port()}/api"
    with temporary_settings(updates={PREFECT_API_URL: url}):
        with pytest.raises(ServerUnreachable) as err:
            require_api()
    assert str(err.value) == f"Prefect server not reachable at {url}: run `tmkt server start`"
    with pytest.raises(ServerUnreachable, match="PREFECT_API_URL is not set"):
        require_api(shared=True)  # the session's PREFECT_API_URL is unset outside the server fixture


# --------------------------------------------------------------------------------------------
# slow: real services
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_server_status_and_start_twice(prefect_server: str) -> None:
    port = prefect_server.split(":")[-1].split("/")[0]
    status = subprocess.run(tmkt_command("server", "status"), cwd=ROOT, capture_output=True, text=True)
    assert status.returncode == 0 and f"running at {prefect_server}" in status.stdout
    again = subprocess.run(
        tmkt_command("server", "start", "--port", port), cwd=ROOT, capture_output=True, text=True
    )
    assert again.returncode == 0 and "already running" in again.stdout
    assert f"export PREFECT_API_URL={prefect_server}" in again.stdout
    other = subprocess.run(
        tmkt_command("server", "start", "--port", str(int(port) + 1)),
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert other.returncode == 2 and "already running" in other.stderr and "stop" in other.stderr


@pytest.mark.slow
def test_serve_registers_the_deployments(served: Path) -> None:
    with prefect_client() as client:
        refresh = client.read_deployment_by_name("refresh-dataset/default")
        builtin = client.read_deployment_by_name("build-dataset/builtin")
        client.read_deployment_by_name("build-dataset/default")
        train = client.read_deployment_by_name("train/default")
    assert [s.schedule.cron for s in refresh.schedules] == [REFRESH_CRON]
    assert refresh.schedules[0].active and not refresh.paused
    assert refresh.parameters == {"store": str(served / "main")}  # --param overrides the default
    assert builtin.parameters == {
        "source": "builtin",
        "raw": str(served / "builtin" / "raw"),
        "store": str(served / "builtin" / "store"),
    }
    assert train.parameters["store"] == str(served / "builtin" / "store")


@pytest.mark.slow
def test_deployment_run_builds_real_nmnist(served: Path, real_data_dir: Path, tmp_path: Path) -> None:
    store = tmp_path / "nmnist-store"
    raw = real_data_dir / "nmnist"
    run_id, wall = deployment_run(
        "build-dataset/default",
        {"source": "nmnist", "raw": str(raw), "static": str(real_data_dir / "mnist"), "store": str(store)},
    )
    print(f"\ndeployment run build-dataset/default on the shared N-MNIST set: {wall:.1f} s wall")

    reader = DatasetReader(store)
    assert reader.n_recordings == 600 and reader.n_images == 10000
    assert len(reader.classes) == 10 and set(reader.labels.tolist()) == set(range(10))
    decoded = {f.relative_to(raw).as_posix(): len(read_nmnist(f)) for f in sorted(raw.rglob("*.bin"))}
    stored = dict(zip(reader.sources, np.diff(reader.offsets).tolist(), strict=True))
    assert stored == decoded
    assert reader.n_events == sum(decoded.values())

    messages, artifacts = run_logs_and_artifacts(run_id)
    assert any(re.match(r"processed \d+/\d+ batches", m) for m in messages), messages  # library progress
    assert any(f"committed snapshot {reader.snapshot_id}" in m for m in messages), messages
    assert len(artifacts) == 1 and f"committed snapshot `{reader.snapshot_id}`" in artifacts[0]
    assert "| 600 | " in artifacts[0] and "No file was quarantined." in artifacts[0]

    # the scheduled deployment, run by hand with nothing to do: no commit, "nothing changed" reported
    run_id, wall = deployment_run("refresh-dataset/default", {"store": str(store)})
    print(f"deployment run refresh-dataset/default with nothing changed: {wall:.1f} s wall")
    assert DatasetReader(store).snapshot_id == reader.snapshot_id
    assert len(DatasetReader(store).history()) == len(reader.history())
    messages, artifacts = run_logs_and_artifacts(run_id)
    assert any(m.startswith("nothing changed") for m in messages), messages
    assert len(artifacts) == 1 and "nothing changed, nothing committed" in artifacts[0]


@pytest.mark.slow
def test_refresh_commits_exactly_the_changes(
    prefect_server: str, dask_scheduler: str, real_data_dir: Path, tmp_path: Path
) -> None:
    raw, store, fresh = tmp_path / "raw", tmp_path / "store", tmp_path / "fresh"
    initial = recordings(real_data_dir, per_class=6)
    copy_recordings(real_data_dir, raw, initial)
    first = build_dataset(source="nmnist", raw=str(raw), store=str(store), dask_address=dask_scheduler)
    assert first["committed"] and first["report"]["recordings"] == 60

    added = recordings(real_data_dir, per_class=1, skip=20)[:6]
    copy_recordings(real_data_dir, raw, added)
    removed = [initial[i] for i in (0, 13, 27, 41)]
    for path in removed:
        (raw / path).unlink()
    changed = [initial[i] for i in (7, 30, 55)]
    donors = recordings(real_data_dir, per_class=1, skip=30)  # one more recording per digit
    for path in changed:  # rewritten with another real recording of the same digit
        shutil.copyfile(real_data_dir / "nmnist" / donors[int(path.split("/")[1])], raw / path)

    refreshed = refresh_dataset(store=str(store), dask_address=dask_scheduler)
    report = refreshed["report"]
    assert refreshed["committed"] and report["parent_snapshot"] == first["snapshot"]
    assert {k: report["changes"][k] for k in ("added", "changed", "removed")} == {
        "added": 6,
        "changed": 3,
        "removed": 4,
    }
    assert report["decoded"] == 9 and report["reused"] == 60 - 4 - 3
    on_disk = sorted(p.relative_to(raw).as_posix() for p in raw.rglob("*.bin"))
    reader = DatasetReader(store)
    rows = {r["path"]: r for r in reader.manifest if r["kind"] == "events"}
    assert sorted(rows) == on_disk and sorted(reader.sources) == on_disk
    for path in changed:
        assert rows[path]["sha256"] == file_sha256(raw / path)
        assert np.array_equal(reader.events(reader.sources.index(path)), read_nmnist(raw / path))

    # the refreshed snapshot equals a full build of the same files from scratch
    build_dataset(source="nmnist", raw=str(raw), store=str(fresh), dask_address=dask_scheduler)
    got, want = by_source(store), by_source(fresh)
    assert sorted(got) == sorted(want)
    for path in want:
        assert np.array_equal(got[path]["events"], want[path]["events"]), path
        assert np.array_equal(got[path]["frames"], want[path]["frames"]), path
        assert (got[path]["label"], got[path]["split"]) == (want[path]["label"], want[path]["split"]), path

    history = DatasetReader(store).history()
    started = time.perf_counter()
    again = refresh_dataset(store=str(store), dask_address=dask_scheduler)
    seconds = time.perf_counter() - started
    print(f"\nno-op refresh (flow call, 62 recordings, existing scheduler): {seconds:.1f} s")
    assert not again["committed"] and again["snapshot"] == refreshed["snapshot"]
    assert DatasetReader(store).history() == history
    assert refresh_config(str(store)).raw == str(raw)


@pytest.mark.slow
def test_pinned_reader_sees_identical_bytes_while_a_refresh_commits(
    prefect_server: str, dask_scheduler: str, real_data_dir: Path, tmp_path: Path
) -> None:
    raw, store = tmp_path / "raw", tmp_path / "store"
    copy_recordings(real_data_dir, raw, recordings(real_data_dir, per_class=2))
    old = build_dataset(source="nmnist", raw=str(raw), store=str(store), dask_address=dask_scheduler)[
        "snapshot"
    ]
    pinned = DatasetReader(store, old)
    baseline = snapshot_digest(pinned)
    seen: list[str] = []
    stop = threading.Event()

    def read_pinned_until_stopped() -> None:
        while not stop.is_set():
            seen.append(snapshot_digest(pinned))

    reader_thread = threading.Thread(target=read_pinned_until_stopped)
    copy_recordings(real_data_dir, raw, recordings(real_data_dir, per_class=1, skip=2))
    reader_thread.start()
    try:
        new = refresh_dataset(store=str(store), dask_address=dask_scheduler)
    finally:
        stop.set()
        reader_thread.join()
    assert new["committed"] and new["snapshot"] != old
    assert len(seen) >= 2 and set(seen) == {baseline}
    assert snapshot_digest(DatasetReader(store, old)) == baseline  # and after the commit, from scratch
    assert DatasetReader(store).n_recordings == 30 and pinned.n_recordings == 20


KILLED_BUILD = """
import sys
from flows.dataset import build_dataset
build_dataset(source="nmnist", raw=sys.argv[1], static=sys.argv[2], store=sys.argv[3], workers=2)
"""


@pytest.mark.slow
def test_killed_build_leaves_no_partial_snapshot(
    prefect_server: str, dask_scheduler: str, real_data_dir: Path, tmp_path: Path
) -> None:
    raw, store, mnist = tmp_path / "raw", tmp_path / "store", real_data_dir / "mnist"
    copy_recordings(real_data_dir, raw, recordings(real_data_dir, per_class=2))
    base = build_dataset(source="nmnist", raw=str(raw), store=str(store), dask_address=dask_scheduler)
    history = DatasetReader(store).history()
    copy_recordings(real_data_dir, raw, recordings(real_data_dir, per_class=1, skip=2))

    # the next build (with the 10,000 MNIST images to write) is killed once it has processed recordings
    log_path = tmp_path / "killed.log"
    chunks_before = len(list((store / "chunks").iterdir()))
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-c", KILLED_BUILD, str(raw), str(mnist), str(store)],
            cwd=ROOT,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # the flow, its Dask cluster and workers: one group to kill
        )
    try:
        deadline = time.monotonic() + 120
        while not re.search(r"processed \d+/\d+ batches", log_path.read_text(errors="replace")):
            assert process.poll() is None, (
                f"the build ended before it could be killed:\n{log_path.read_text()}"
            )
            assert time.monotonic() < deadline, log_path.read_text()
            time.sleep(0.05)
        # let it start writing the new version's chunks, then kill it without warning
        write_deadline = time.monotonic() + 5
        while len(list((store / "chunks").iterdir())) == chunks_before and time.monotonic() < write_deadline:
            time.sleep(0.05)
        assert process.poll() is None, f"the build finished before the kill:\n{log_path.read_text()}"
        os.killpg(process.pid, signal.SIGKILL)
        written = len(list((store / "chunks").iterdir())) - chunks_before
        print(f"\nkilled the build after it wrote {written} chunk files of its new version")
        process.wait(timeout=30)
    finally:
        kill_group(process)

    after_kill = DatasetReader(store)
    assert after_kill.snapshot_id == base["snapshot"] and after_kill.history() == history
    assert after_kill.n_recordings == 20 and verify_store(store) == []

    rerun = build_dataset(
        source="nmnist", raw=str(raw), static=str(mnist), store=str(store), dask_address=dask_scheduler
    )
    assert rerun["committed"] and rerun["report"]["parent_snapshot"] == base["snapshot"]
    final = DatasetReader(store)
    assert len(final.history()) == len(history) + 1
    assert final.n_recordings == 30 and final.n_images == 10000
    verify = subprocess.run(
        tmkt_command("store", "verify", str(store)), cwd=ROOT, capture_output=True, text=True
    )
    assert verify.returncode == 0 and verify.stdout.strip().endswith("OK"), verify.stdout + verify.stderr


@pytest.mark.slow
def test_build_runs_on_an_existing_dask_scheduler(
    prefect_server: str, dask_scheduler: str, real_data_dir: Path, tmp_path: Path
) -> None:
    from distributed import Client

    raw, store = tmp_path / "raw", tmp_path / "store"
    paths = recordings(real_data_dir, per_class=1, skip=40)
    copy_recordings(real_data_dir, raw, paths)
    out = build_dataset(source="nmnist", raw=str(raw), store=str(store), dask_address=dask_scheduler)
    assert out["committed"] and out["report"]["workers"] == dask_scheduler
    with Client(dask_scheduler) as client:
        prefixes = client.run_on_scheduler(lambda dask_scheduler: sorted(dask_scheduler.task_prefixes))
    assert "process_batch" in prefixes and "hash_batch" in prefixes  # the work ran on that scheduler
    reader = DatasetReader(store)
    assert sorted(reader.sources) == sorted(paths)
    assert reader.n_events == sum(len(read_nmnist(real_data_dir / "nmnist" / p)) for p in paths)


@pytest.mark.slow
def test_train_deployment_trains_on_the_pinned_snapshot(
    served: Path, dask_scheduler: str, real_data_dir: Path, tmp_path: Path
) -> None:
    import json

    raw, store, out = tmp_path / "raw", tmp_path / "store", tmp_path / "run"
    copy_recordings(real_data_dir, raw, recordings(real_data_dir, per_class=2))
    old = build_dataset(source="nmnist", raw=str(raw), store=str(store), dask_address=dask_scheduler)[
        "snapshot"
    ]
    copy_recordings(real_data_dir, raw, recordings(real_data_dir, per_class=1, skip=2))
    new = refresh_dataset(store=str(store), dask_address=dask_scheduler)["snapshot"]
    assert new != old
    overrides = {"max_steps": 2, "batch_size": 8, "backbone": "small", "num_threads": 1}
    run_id, _ = deployment_run(
        "train/default",
        {
            "store": str(store),
            "method": "event",
            "out": str(out),
            "snapshot": old,
            "epochs": "1",
            "overrides": json.dumps(overrides),
        },
    )
    result = json.loads((out / "result.json").read_text())
    assert result["store_snapshot"] == old and result["steps"] == 2 and result["method"] == "event"
    assert json.loads((out / "run.json").read_text())["store_snapshot"] == old
    assert (out / "checkpoint.pt").is_file()
    messages, artifacts = run_logs_and_artifacts(run_id)
    assert any(f"at snapshot {old}" in m for m in messages), messages
    assert len(artifacts) == 1 and f"on snapshot `{old}`" in artifacts[0]


CLI_BUILD = """
import sys
from flows.dataset import run_build_flow
from pipelines.build import BuildConfig
result = run_build_flow(BuildConfig(source="nmnist", raw=sys.argv[1], store=sys.argv[2], workers=1))
print("RESULT", result.snapshot, result.committed, result.report["recordings"])
"""


@pytest.mark.slow
def test_cli_path_needs_no_server(real_data_dir: Path, tmp_path: Path) -> None:
    """`tmkt build-dataset` runs the same flow in-process on Prefect's ephemeral API: no server to start."""
    raw, store = tmp_path / "raw", tmp_path / "store"
    copy_recordings(real_data_dir, raw, recordings(real_data_dir, per_class=1))
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    process = subprocess.Popen(
        [sys.executable, "-c", CLI_BUILD, str(raw), str(store)],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        output, _ = process.communicate(timeout=180)
    finally:
        kill_group(process)
    assert process.returncode == 0, output[-3000:]
    snapshot = DatasetReader(store).snapshot_id
    assert f"RESULT {snapshot} True 10" in output
