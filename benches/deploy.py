"""`tmkt bench deploy`: what a deployment run costs beyond the same build through `tmkt build-dataset`.

    tmkt bench deploy --raw ../shared/data/nmnist --static ../shared/data/mnist --json OUT

In one run, on a Prefect server of its own on 127.0.0.1 (`tmkt server start`, under a temporary
``PREFECT_HOME``) and `tmkt serve`:

- `tmkt build-dataset` into a fresh store, and again with nothing changed (the CLI path: Prefect's
  ephemeral API, no server);
- `prefect deployment run build-dataset/default --watch` into another fresh store, then
  `prefect deployment run refresh-dataset/default --watch` with nothing changed.

Each is timed as the user waits (the command's wall time); for the deployment runs the flow run's own
start and end (from the API) split the wall into waiting to start, the run, and the watch's last poll.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

REFRESH_CRON = "17 3 * * *"  # never due during the bench, so the schedule starts no run of its own


def tmkt(*args: str) -> list[str]:
    return [sys.executable, "-m", "flows.cli", *args]


def timed(command: list[str], env: dict[str, str], timeout: float = 600) -> tuple[float, str]:
    """(wall seconds, stdout) of a command that must succeed."""
    started = time.perf_counter()
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout, check=False)
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"{' '.join(command[:6])} failed:\n{done.stdout[-2000:]}\n{done.stderr[-2000:]}")
    return wall, done.stdout


def deployment_run(name: str, params: dict[str, str], env: dict[str, str]) -> dict[str, Any]:
    """`prefect deployment run NAME --watch`: wall seconds, and the run's own timing from the API."""
    command = [str(Path(sys.executable).parent / "prefect"), "deployment", "run", name, "--watch"]
    command += ["--watch-interval", "1"]
    for key, value in params.items():
        command += ["--param", f"{key}={value}"]
    wall, out = timed(command, env)
    match = re.search(r"UUID: ([0-9a-f-]{36})", out)
    if not match or "Completed" not in out:
        raise RuntimeError(f"{name} did not complete:\n{out[-2000:]}")
    return {"wall_seconds": wall, **flow_run_times(match.group(1), env)}


def flow_run_times(run_id: str, env: dict[str, str]) -> dict[str, float]:
    """Seconds from the run's creation to its start (the serving process picking it up and starting
    its process), and of the run itself, as the API recorded them."""
    code = (
        "import json, sys; from prefect import get_client\n"
        "with get_client(sync_client=True) as c:\n"
        f"    r = c.read_flow_run({run_id!r})\n"
        "print(json.dumps([r.created.timestamp(), r.start_time.timestamp(), r.end_time.timestamp()]))"
    )
    _, out = timed([sys.executable, "-c", code], env)
    created, start, end = json.loads(out.strip().splitlines()[-1])
    return {"waiting_seconds": start - created, "run_seconds": end - start}


def serve(home: Path, env: dict[str, str]) -> subprocess.Popen:
    """`tmkt serve`, once it says its deployments are served."""
    log = home / "serve.log"
    command = tmkt("serve", "--data-home", str(home), "--refresh-cron", REFRESH_CRON)
    with open(log, "wb") as out:
        process = subprocess.Popen(
            command, stdout=out, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    deadline = time.monotonic() + 120
    while "being served" not in log.read_text(errors="replace"):
        if process.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"tmkt serve did not start:\n{log.read_text()[-2000:]}")
        time.sleep(0.5)
    return process


def run(raw: Path, static: Path) -> dict[str, Any]:
    from flows.server import free_port

    with tempfile.TemporaryDirectory() as tmp:
        home = Path(tmp)
        env = dict(os.environ, PREFECT_HOME=str(home / "prefect"))
        env.pop("PREFECT_API_URL", None)
        build = ["build-dataset", "--source", "nmnist", "--raw", str(raw), "--static", str(static)]
        result: dict[str, Any] = {"recordings": sum(1 for _ in raw.rglob("*.bin"))}
        result["cli_build_seconds"], _ = timed(tmkt(*build, "--store", str(home / "cli")), env)
        result["cli_noop_seconds"], _ = timed(tmkt(*build, "--store", str(home / "cli")), env)

        port = free_port()
        timed(tmkt("server", "start", "--port", str(port)), env)
        env["PREFECT_API_URL"] = f"http://127.0.0.1:{port}/api"
        process = serve(home, env)
        try:
            params = {"source": "nmnist", "raw": str(raw), "static": str(static), "store": str(home / "dep")}
            result["deployment_build"] = deployment_run("build-dataset/default", params, env)
            result["deployment_noop"] = deployment_run(
                "refresh-dataset/default", {"store": str(home / "dep")}, env
            )
        finally:
            os.killpg(process.pid, 15)
            process.wait(timeout=30)
            timed(tmkt("server", "stop"), env)
    result["deployment_overhead_seconds"] = (
        result["deployment_build"]["wall_seconds"] - result["cli_build_seconds"]
    )
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tmkt bench deploy", description=__doc__.split("\n\n")[0])
    real = Path(os.environ.get("TMKT_REAL_DATA", "../shared/data"))
    parser.add_argument(
        "--raw", type=Path, default=real / "nmnist", help="N-MNIST folder (Train/<digit>/*.bin)"
    )
    parser.add_argument("--static", type=Path, default=real / "mnist", help="MNIST IDX folder")
    parser.add_argument("--json", type=Path, required=True, help="write the results here")
    args = parser.parse_args(argv)
    result = run(args.raw.resolve(), args.static.resolve())
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0
