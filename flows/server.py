"""`tmkt server start|stop|status`: a local Prefect server on 127.0.0.1, and API reachability checks.

The server is Prefect's own: `prefect server start --background` (SQLite database under
``PREFECT_HOME``, Prefect's embedded default; its pid file is ``PREFECT_HOME/server.pid``),
`prefect server status --wait` and `prefect server stop`. This module adds what those lack: a port
check with one clear line, the port remembered under ``PREFECT_HOME`` (so `status` and a second
`start` find the URL again), a stale pid file cleared, a `stop` that returns once the process is
gone, and the ``export PREFECT_API_URL=...`` line to paste.

Deployment runs need a server that several processes share (`prefect deployment run` in one, the
serving process in another): Prefect's ephemeral API lives inside one process and cannot be seen by
the others, hence this command.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

DEFAULT_PORT = 4200
HOST = "127.0.0.1"
#: Written by `prefect server start --background` (the pid of its uvicorn process), removed by `stop`.
PREFECT_PID_FILE = "server.pid"
#: The port of the server started here (Prefect's pid file holds only the pid).
PORT_FILE = "tmkt-server.json"


class ServerError(RuntimeError):
    """A local server that cannot be started or stopped; the message is one line for the user."""


class ServerUnreachable(ConnectionError):
    """The configured Prefect API does not answer; the message says what to run."""


@dataclass
class ServerRecord:
    """What `start` leaves under PREFECT_HOME so that `stop` and `status` find the server."""

    pid: int
    port: int

    @property
    def api_url(self) -> str:
        return api_url(self.port)


def api_url(port: int) -> str:
    return f"http://{HOST}:{port}/api"


def export_line(port: int) -> str:
    return f"export PREFECT_API_URL={api_url(port)}"


def prefect_home() -> Path:
    """PREFECT_HOME as Prefect itself resolves it (environment, then profile, then ~/.prefect)."""
    from prefect.settings import get_current_settings

    return Path(get_current_settings().home).expanduser()


def configured_api_url() -> str | None:
    """The API URL Prefect would use in this process, or None for its ephemeral in-process API."""
    from prefect.settings import get_current_settings

    url = get_current_settings().api.url
    return str(url).rstrip("/") if url else None


def api_healthy(url: str, timeout: float = 2.0) -> bool:
    """True when ``<url>/health`` answers 200 (``url`` ends in ``/api``)."""
    try:
        with urllib.request.urlopen(f"{url.rstrip('/')}/health", timeout=timeout) as response:
            return response.status == 200
    except (OSError, urllib.error.URLError, ValueError):
        return False


def require_api(shared: bool = False) -> str | None:
    """Check the configured Prefect API before work starts, so failures are one clear line.

    ``shared`` is for callers that need a server other processes can see (serving deployments):
    they cannot use the ephemeral API. Returns the URL in use (None: ephemeral).
    """
    url = configured_api_url()
    if url is None:
        if not shared:
            return None
        record = read_record(prefect_home())
        hint = (
            f"`{export_line(record.port)}` (a local server is running)"
            if record is not None and process_alive(record.pid)
            else "`tmkt server start` and export the PREFECT_API_URL line it prints"
        )
        raise ServerUnreachable(f"PREFECT_API_URL is not set, so deployments cannot be served: run {hint}")
    if not api_healthy(url):
        raise ServerUnreachable(f"Prefect server not reachable at {url}: run `tmkt server start`")
    return url


# --------------------------------------------------------------------------------------------
# the record under PREFECT_HOME
# --------------------------------------------------------------------------------------------
def read_record(home: Path) -> ServerRecord | None:
    """The server started under ``home``: Prefect's pid file and the port remembered beside it."""
    try:
        pid = int((home / PREFECT_PID_FILE).read_text())
        port = int(json.loads((home / PORT_FILE).read_text())["port"])
    except (OSError, ValueError, TypeError, KeyError):
        return None
    return ServerRecord(pid=pid, port=port)


def _forget(home: Path) -> None:
    (home / PREFECT_PID_FILE).unlink(missing_ok=True)
    (home / PORT_FILE).unlink(missing_ok=True)


def process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of this very process still answers kill(0): reap it if it is ours
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
        return done == 0
    except ChildProcessError:
        return True


def port_free(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
    return True


def free_port() -> int:
    """A port on 127.0.0.1 nobody listens on right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------------------------
# start / stop / status
# --------------------------------------------------------------------------------------------
def _prefect(
    home: Path, *args: str, api_url: str | None = None, timeout: float = 60.0, detach: bool = False
) -> str:
    """Run `prefect ARGS` with ``PREFECT_HOME=home``; its output, or ServerError with its last line.

    ``detach``: in a session of its own, so that the background server it leaves behind is out of
    reach of the caller's terminal signals (Ctrl-C in the shell that ran `tmkt server start`)."""
    script = Path(sys.executable).parent / "prefect"
    command = [str(script)] if script.exists() else [sys.executable, "-m", "prefect"]
    env = dict(os.environ, PREFECT_HOME=str(home))
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    env.pop("PREFECT_API_URL", None)  # the server serves its own API; a client setting is not for it
    if api_url:
        env["PREFECT_API_URL"] = api_url
    try:
        done = subprocess.run(
            [*command, *args],
            env=env,
            cwd=home,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            start_new_session=detach,
        )
    except subprocess.TimeoutExpired:
        raise ServerError(f"`prefect {' '.join(args)}` did not finish within {timeout:.0f} s") from None
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        last = output.splitlines()[-1] if output else f"exit code {done.returncode}"
        raise ServerError(f"`prefect {' '.join(args)}` failed: {last}")
    return output


def start_server(port: int = DEFAULT_PORT, home: Path | None = None, timeout: float = 90.0) -> ServerRecord:
    """`prefect server start --background` on 127.0.0.1, and return once its API answers."""
    home = home or prefect_home()
    home.mkdir(parents=True, exist_ok=True)
    running = read_record(home)
    if running is not None and process_alive(running.pid):
        if running.port != port:
            raise ServerError(
                f"a local Prefect server is already running at {running.api_url} (pid {running.pid}); "
                "`tmkt server stop` it first to use another port"
            )
        return running
    _forget(home)  # a pid file left by a server that died would make Prefect refuse to start
    if not port_free(port):
        raise ServerError(f"port {port} on {HOST} is already in use: choose another with --port")
    (home / PORT_FILE).write_text(json.dumps({"port": port}))
    try:
        _prefect(home, "server", "start", "--background", "--host", HOST, "--port", str(port), detach=True)
        record = read_record(home)
        if record is None:
            raise ServerError(f"`prefect server start --background` left no pid file in {home}")
        wait = ("server", "status", "--wait", "--timeout", str(max(1, round(timeout))))
        _prefect(home, *wait, api_url=api_url(port), timeout=timeout + 30)
    except ServerError:
        stop_server(home, grace=5.0)
        raise
    return record


def stop_server(home: Path | None = None, grace: float = 15.0) -> ServerRecord | None:
    """`prefect server stop`, then wait until the process is gone (SIGKILL after ``grace``);
    None when no server was recorded."""
    home = home or prefect_home()
    record = read_record(home)
    if (home / PREFECT_PID_FILE).exists():
        _prefect(home, "server", "stop")
    if record is not None:
        _wait_gone(record.pid, grace)
    _forget(home)
    return record


def _wait_gone(pid: int, grace: float) -> None:
    """Return once ``pid`` has exited; SIGKILL it when it outlives ``grace`` seconds."""
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline:
        if not process_alive(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return
    while process_alive(pid):
        time.sleep(0.1)


def server_status(home: Path | None = None) -> tuple[str, ServerRecord | None]:
    """("running" | "unhealthy" | "stopped", record)."""
    home = home or prefect_home()
    record = read_record(home)
    if record is None or not process_alive(record.pid):
        return "stopped", record
    return ("running" if api_healthy(record.api_url) else "unhealthy"), record


# --------------------------------------------------------------------------------------------
# command line
# --------------------------------------------------------------------------------------------
def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tmkt server",
        description="A local Prefect server on 127.0.0.1 (SQLite under PREFECT_HOME), for `tmkt serve` "
        "and `prefect deployment run`.",
    )
    sub = parser.add_subparsers(dest="action", required=True, metavar="ACTION")
    start = sub.add_parser("start", help="start it detached and wait until it answers")
    start.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port (default {DEFAULT_PORT})")
    start.add_argument("--timeout", type=float, default=90.0, help="seconds to wait for /api/health")
    sub.add_parser("stop", help="stop it and its child processes")
    sub.add_parser("status", help="running or not, and its URL (exit code 1 when not running)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    home = prefect_home()
    try:
        if args.action == "start":
            already = read_record(home)
            record = start_server(args.port, home, args.timeout)
            state = "already running" if already and already.pid == record.pid else "started"
            print(f"Prefect server {state} at {record.api_url} (pid {record.pid}, PREFECT_HOME {home})")
            print("To use it from this shell, run:")
            print(export_line(record.port))
            return 0
        if args.action == "stop":
            record = stop_server(home)
            print(f"stopped the Prefect server at {record.api_url}" if record else "no local server running")
            return 0
        state, record = server_status(home)
        if record is None or state == "stopped":
            print(f"not running (PREFECT_HOME {home})")
            return 1
        print(f"{state} at {record.api_url} (pid {record.pid}, PREFECT_HOME {home})")
        return 0 if state == "running" else 1
    except ServerError as err:
        print(f"tmkt server: error: {err}", file=sys.stderr)
        return 2
