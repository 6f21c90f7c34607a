"""Shared fixtures: Prefect isolated per test session, a real local Prefect server, real data paths.

Every process a fixture starts runs in its own process group and is ended, group and all, in the
fixture's finalizer, so a failing test leaves nothing running.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
_SESSION_HOME: list[str] = []


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fuzz",
        type=int,
        default=50,
        metavar="N",
        help="mutants per format in tests/test_fuzz.py (default 50)",
    )


def pytest_configure(config: pytest.Config) -> None:
    # Prefect keeps its database, profiles and settings under PREFECT_HOME: point it at a throwaway
    # folder so tests never touch the user's ~/.prefect, never reach the user's server, and send
    # no analytics. Set before any test module imports Prefect (it reads them at import).
    home = tempfile.mkdtemp(prefix="tmkt-prefect-")
    _SESSION_HOME.append(home)
    os.environ["PREFECT_HOME"] = home
    os.environ["PREFECT_SERVER_ANALYTICS_ENABLED"] = "false"
    os.environ["DO_NOT_TRACK"] = "1"
    os.environ.pop("PREFECT_API_URL", None)


def pytest_unconfigure(config: pytest.Config) -> None:
    for home in _SESSION_HOME:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def real_data_dir() -> Path:
    """The shared real recordings (``TMKT_REAL_DATA``), with nmnist/ and mnist/."""
    root = os.environ.get("TMKT_REAL_DATA")
    if not root or not (Path(root) / "nmnist").is_dir() or not (Path(root) / "mnist").is_dir():
        pytest.skip("real data not found: set TMKT_REAL_DATA to the shared data folder (nmnist/, mnist/)")
    return Path(root).resolve()


def kill_group(process: subprocess.Popen, grace: float = 10.0) -> None:
    """End a process started with ``start_new_session=True`` and every process of its group."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(process.pid, sig)
        except ProcessLookupError:
            break
        try:
            process.wait(timeout=grace)
        except subprocess.TimeoutExpired:
            continue
        # the leader is gone; its children may linger a moment longer
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline and _group_alive(process.pid):
            time.sleep(0.1)
        if not _group_alive(process.pid):
            break
    if process.poll() is None:
        process.wait(timeout=grace)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


def fresh_process_json(script: str, *args: str, timeout: float = 300) -> Any:
    """The JSON that ``python -c script args`` prints last, run in a fresh interpreter of this
    checkout, for a peak RSS (``ru_maxrss``) of its own: it is started through a shell that forks
    it, because an exec'd child inherits its parent's peak RSS as its own (the kernel keeps it across
    exec), and a test's process may hold hundreds of MB."""
    import json

    launch = ["/bin/sh", "-c", '"$@"; exit $?', "sh", sys.executable, "-c", script]
    done = subprocess.run(
        [*launch, *args],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def tmkt_command(*args: str) -> list[str]:
    """`tmkt ARGS` through this interpreter (the same venv, no PATH lookup)."""
    return [sys.executable, "-m", "flows.cli", *args]


@pytest.fixture(scope="module")
def client() -> Iterator[Any]:
    """A Dask client on the builds' own two-worker `local_cluster`, shared by a module's builds."""
    from distributed import Client

    from pipelines.build import local_cluster

    with local_cluster(2) as cluster, Client(cluster) as c:
        yield c


@pytest.fixture(scope="session")
def prefect_server() -> Iterator[str]:
    """A real Prefect server on 127.0.0.1 (free port), started and stopped by `tmkt server`.

    Yields its API URL, exported to this process (settings) and to subprocesses (environment).
    """
    from prefect.settings import PREFECT_API_URL, temporary_settings

    from flows.server import api_healthy, free_port, process_alive, read_record

    home = Path(os.environ["PREFECT_HOME"])
    port = free_port()
    url = f"http://127.0.0.1:{port}/api"
    try:
        started = subprocess.run(
            tmkt_command("server", "start", "--port", str(port), "--timeout", "150"),
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert started.returncode == 0, f"tmkt server start failed:\n{started.stdout}\n{started.stderr}"
        assert f"export PREFECT_API_URL={url}" in started.stdout
        assert api_healthy(url)
        os.environ["PREFECT_API_URL"] = url
        with temporary_settings(updates={PREFECT_API_URL: url}):
            yield url
    finally:
        os.environ.pop("PREFECT_API_URL", None)
        record = read_record(home)
        stopped = subprocess.run(tmkt_command("server", "stop"), cwd=ROOT, capture_output=True, timeout=60)
        if record is not None and process_alive(record.pid):  # stop failed: do not leave it running
            os.kill(record.pid, signal.SIGKILL)
            raise AssertionError(f"`tmkt server stop` left the server running: {stopped.stderr!r}")


@pytest.fixture(scope="session")
def dask_scheduler(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A `dask scheduler` and one `dask worker` (2 threads), separate processes on 127.0.0.1."""
    from distributed import Client

    from flows.server import free_port

    logs = tmp_path_factory.mktemp("dask")
    address = f"tcp://127.0.0.1:{free_port()}"
    bin_dir = Path(sys.executable).parent
    port = address.rsplit(":", 1)[1]
    processes = []
    try:
        for name, command in (
            ("scheduler", [str(bin_dir / "dask"), "scheduler", "--host", "127.0.0.1", "--port", port]),
            ("worker", [str(bin_dir / "dask"), "worker", address, "--nthreads", "2", "--host", "127.0.0.1"]),
        ):
            with open(logs / f"{name}.log", "wb") as log:
                processes.append(
                    subprocess.Popen(
                        [*command, "--no-dashboard"],
                        cwd=ROOT,
                        stdout=log,
                        stderr=subprocess.STDOUT,
                        start_new_session=True,
                    )
                )
        with Client(address, timeout=60) as client:
            client.wait_for_workers(1, timeout=60)
        yield address
    finally:
        for process in reversed(processes):
            kill_group(process)


#: The standard AWS variables through which the store code (Icechunk ``from_env``) and every
#: subprocess (builds, Dask workers, torchrun ranks) reach the loopback object store.
S3_CREDENTIALS = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_REGION": "us-east-1",
    "AWS_ALLOW_HTTP": "true",
}


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """An S3-compatible server (moto's server mode) on 127.0.0.1, its endpoint exported as
    ``AWS_ENDPOINT_URL`` with test credentials; ended, process group and all, at the end."""
    import urllib.request

    from flows.server import free_port

    endpoint = f"http://127.0.0.1:{free_port()}"
    log_path = tmp_path_factory.mktemp("moto") / "moto.log"
    saved = {key: os.environ.get(key) for key in [*S3_CREDENTIALS, "AWS_ENDPOINT_URL"]}
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", endpoint.rsplit(":", 1)[1]],
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(endpoint, timeout=2).close()
                break
            except OSError:
                if process.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(
                        f"moto server did not start: {log_path.read_text()[-2000:]}"
                    ) from None
                time.sleep(0.2)
        os.environ.update(S3_CREDENTIALS, AWS_ENDPOINT_URL=endpoint)
        yield endpoint
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
        kill_group(process)


@pytest.fixture
def s3_store(s3_server: str, request: pytest.FixtureRequest) -> str:
    """``s3://BUCKET/store``: a fresh bucket on the loopback server for each test."""
    import re
    import urllib.request

    bucket = (
        re.sub(r"[^a-z0-9-]", "-", request.node.name.lower())[:50].strip("-") + f"-{time.time_ns() % 10**6}"
    )
    urllib.request.urlopen(urllib.request.Request(f"{s3_server}/{bucket}", method="PUT"), timeout=10).close()
    return f"s3://{bucket}/store"
