"""`tmkt server start|stop|status`: a local Prefect server on 127.0.0.1, and API reachability checks.

The server is the stock `prefect server start` (SQLite database under ``PREFECT_HOME``, Prefect's
embedded default), started detached in its own process session so that it outlives the command and
`stop` can end it together with every child it spawned. Its pid, port and log live under
``PREFECT_HOME`` so that any later `tmkt server` call finds it again.

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
from dataclasses import asdict, dataclass
from pathlib import Path

DEFAULT_PORT = 4200
HOST = "127.0.0.1"
PID_FILE = "tmkt-server.json"
LOG_FILE = "tmkt-server.log"


class ServerError(RuntimeError):
    """A local server that cannot be started or stopped; the message is one line for the user."""


class ServerUnreachable(ConnectionError):
    """The configured Prefect API does not answer; the message says what to run."""


@dataclass
class ServerRecord:
    """What `start` leaves under PREFECT_HOME so that `stop` and `status` find the server."""

    pid: int
    port: int
    log: str
    started: float

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
    try:
        return ServerRecord(**json.loads((home / PID_FILE).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def _write_record(home: Path, record: ServerRecord) -> None:
    tmp = home / f"{PID_FILE}.tmp"
    tmp.write_text(json.dumps(asdict(record)))
    tmp.replace(home / PID_FILE)


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
def _prefect_command() -> list[str]:
    script = Path(sys.executable).parent / "prefect"
    return [str(script)] if script.exists() else [sys.executable, "-m", "prefect"]


def start_server(port: int = DEFAULT_PORT, home: Path | None = None, timeout: float = 90.0) -> ServerRecord:
    """Start `prefect server start` detached and return once its API answers."""
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
    if not port_free(port):
        raise ServerError(f"port {port} on {HOST} is already in use: choose another with --port")
    env = dict(os.environ)
    env["PREFECT_HOME"] = str(home)
    env.pop("PREFECT_API_URL", None)  # the server serves its own API; a client setting is not for it
    env.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    log_path = home / LOG_FILE
    with open(log_path, "ab") as log:
        process = subprocess.Popen(
            [*_prefect_command(), "server", "start", "--host", HOST, "--port", str(port)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=home,
            start_new_session=True,  # its own session: it outlives this command, stop ends the group
        )
    record = ServerRecord(pid=process.pid, port=port, log=str(log_path), started=time.time())
    _write_record(home, record)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            (home / PID_FILE).unlink(missing_ok=True)
            raise ServerError(f"the Prefect server exited with code {process.returncode}: see {log_path}")
        if api_healthy(record.api_url, timeout=1.0):
            return record
        time.sleep(0.25)
    _kill_group(process.pid, grace=5.0)
    (home / PID_FILE).unlink(missing_ok=True)
    raise ServerError(f"the Prefect server did not answer within {timeout:.0f} s: see {log_path}")


def stop_server(home: Path | None = None, grace: float = 15.0) -> ServerRecord | None:
    """End the recorded server and all its children; None when none was recorded."""
    home = home or prefect_home()
    record = read_record(home)
    if record is None:
        return None
    if process_alive(record.pid):
        _kill_group(record.pid, grace)
    (home / PID_FILE).unlink(missing_ok=True)
    return record


def _kill_group(pid: int, grace: float) -> None:
    """SIGTERM the process group led by ``pid``, then SIGKILL whatever is left after ``grace``."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        try:
            os.killpg(pid, sig)
        except ProcessLookupError:
            return
        deadline = time.monotonic() + grace
        while time.monotonic() < deadline:
            if not _group_alive(pid):
                return
            time.sleep(0.1)


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # the leader may be our own zombie child while the rest of its group is gone
    process_alive(pgid)
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


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
            print(f"Prefect server {state} at {record.api_url} (pid {record.pid}, log {record.log})")
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
