"""Services a command starts end with it: SIGKILL of `tmkt build-dataset` leaves no process behind."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import time
from pathlib import Path

import pytest

from flows.lifeline import descendants
from tests.conftest import ROOT, kill_group, tmkt_command


def alive(processes: list[tuple[int, int]]) -> list[tuple[int, int]]:
    out = []
    for pid, start in processes:
        try:
            text = Path(f"/proc/{pid}/stat").read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if fields[0] != "Z" and int(fields[19]) == start:
            out.append((pid, start))
    return out


@pytest.mark.slow
def test_sigkill_of_a_build_ends_its_prefect_server_and_dask_cluster(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if k != "PREFECT_API_URL"}
    env["PREFECT_HOME"] = str(tmp_path / "prefect-home")
    log_path = tmp_path / "build.log"
    raw, store = str(tmp_path / "raw"), str(tmp_path / "s")
    command = tmkt_command(
        "build-dataset", "--source", "builtin", "--raw", raw, "--store", store,
        "--workers", "1", "--source-option", "recordings_per_class=60",
    )  # fmt: skip
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    try:
        deadline = time.monotonic() + 240
        while not re.search(r"processed \d+/\d+ batches", log_path.read_text(errors="replace")):
            assert process.poll() is None, log_path.read_text()[-3000:]
            assert time.monotonic() < deadline, log_path.read_text()[-3000:]
            time.sleep(0.05)
        started = descendants(process.pid)
        names = [Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ") for pid, _ in started]
        assert any(b"uvicorn" in n or b"prefect" in n for n in names), names  # the temporary API server
        os.kill(process.pid, signal.SIGKILL)
        process.wait(timeout=10)
        deadline = time.monotonic() + 30
        while alive(started) and time.monotonic() < deadline:
            time.sleep(0.2)
        left = alive(started)
        assert not left, [Path(f"/proc/{pid}/cmdline").read_bytes() for pid, _ in left]
    finally:
        kill_group(process)
