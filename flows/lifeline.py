"""Services a command starts end with it, even when the command is killed with SIGKILL.

A build started from the command line brings up Prefect's temporary API server (a uvicorn subprocess)
and a Dask cluster (nanny and worker processes). They stop when the command exits, but SIGKILL gives
the command no chance to stop them: they are re-parented to init and run on, holding ports, memory
and the SQLite database. Neither library offers a parent-death option for the processes it spawns, so
the command forks a small watchdog first thing (before any thread exists). The watchdog holds the
read end of a pipe whose write end only the command holds: the kernel closes it however the command
ends, and the watchdog then ends every process it last saw descending from the command (SIGTERM, then
SIGKILL after a grace period). While the command lives, the watchdog refreshes that list from /proc;
a (pid, start time) pair identifies each process, so a recycled pid is never signalled.

Linux only (it reads /proc); elsewhere `hold` does nothing.
"""

from __future__ import annotations

import os
import select
import signal
import time
from pathlib import Path

#: How often the watchdog refreshes the command's descendants, and how long SIGTERM may take.
POLL_SECONDS = 0.25
GRACE_SECONDS = 5.0

Process = tuple[int, int]  # (pid, start time in clock ticks since boot)


def hold() -> None:
    """Fork the watchdog for this process; call once, early, before threads or services start."""
    if not Path("/proc/self/stat").exists() or os.environ.get("TMKT_LIFELINE") == "off":
        return
    owner = os.getpid()
    read_end, write_end = os.pipe()
    if os.fork() != 0:
        os.close(read_end)  # the command keeps the write end open until it ends, however it ends
        return
    os.close(write_end)
    quiet = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):  # hold no terminal or pipe of the caller: a reader waits for their end
        os.dup2(quiet, fd)
    try:
        _watch(owner, read_end)
    finally:
        os._exit(0)


def _watch(owner: int, pipe: int) -> None:
    os.setsid()  # out of the terminal's process group: Ctrl-C reaches the command, not the watchdog
    for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, signal.SIG_IGN)
    me = os.getpid()
    seen: dict[int, int] = {}
    while True:
        readable, _, _ = select.select([pipe], [], [], POLL_SECONDS)
        if readable and not os.read(pipe, 1):
            break  # end of file: the command is gone
        current = {pid: start for pid, start in descendants(owner) if pid != me}
        seen.update(current)
        seen = {pid: start for pid, start in seen.items() if _start_time(pid) == start}
    end_processes(list(seen.items()))


def end_processes(processes: list[Process], grace: float = GRACE_SECONDS) -> None:
    """SIGTERM each process that is still the one recorded, then SIGKILL what outlives ``grace``."""
    alive = [p for p in processes if _signal(p, signal.SIGTERM)]
    deadline = time.monotonic() + grace
    while alive and time.monotonic() < deadline:
        time.sleep(0.05)
        alive = [p for p in alive if _start_time(p[0]) == p[1]]
    for process in alive:
        _signal(process, signal.SIGKILL)


def descendants(root: int) -> list[Process]:
    """Every process below ``root`` (children, their children, ...) from one scan of /proc."""
    children: dict[int, list[Process]] = {}
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            stat = _stat(int(entry.name))
            if stat is not None:
                children.setdefault(stat[0], []).append((int(entry.name), stat[1]))
    found, queue = [], [root]
    while queue:
        for child in children.get(queue.pop(), []):
            found.append(child)
            queue.append(child[0])
    return found


def _signal(process: Process, sig: int) -> bool:
    if _start_time(process[0]) != process[1]:
        return False
    try:
        os.kill(process[0], sig)
    except ProcessLookupError:
        return False
    return True


def _start_time(pid: int) -> int | None:
    stat = _stat(pid)
    return None if stat is None else stat[1]


def _stat(pid: int) -> tuple[int, int] | None:
    """(parent pid, start time) of a live process; None when gone or a zombie."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = text[text.rindex(")") + 2 :].split()  # the name may hold spaces and parentheses
    if fields[0] == "Z":
        return None
    return int(fields[1]), int(fields[19])
