"""`tmkt`: the command line of the whole system.

This module is the entry layer: it may reach every package (the library modules of `tmkt` itself
depend on `storage` only). Heavy imports happen inside each command so `tmkt --help` stays fast.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path

#: Commands whose argument parsing lives with their implementation: `tmkt NAME ...` -> main(argv).
PASSTHROUGH: dict[str, tuple[str, str]] = {
    "train": ("tmkt.train", "train a spiking network on a store (methods tmkt, event, finetune, he2024)"),
    "eval": ("tmkt.evaluate", "evaluate a checkpoint on a store's event recordings"),
    "experiment": ("tmkt.experiments", "a grid of runs (methods x seeds x data budget) and its report"),
    "serve": ("flows.serve", "serve the Prefect deployments (long-running)"),
    "server": ("flows.server", "start, stop or query a local Prefect server"),
    "demo": ("flows.demo", "the main job end to end on built-in data, with a report"),
}
BENCHES: dict[str, tuple[str, str]] = {
    "ingest": ("pipelines.bench_ingest", "decode + bin + write events/s against tonic"),
    "loader": ("tmkt.bench_loader", "mixed samples/s of the DALI loader against DataLoader baselines"),
    "train": ("tmkt.bench_train", "training samples/s and data-wait share per backbone"),
}


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit code 2."""


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    # Without PREFECT_API_URL, flows run on Prefect's temporary in-process server, whose first start
    # (database migrations) can outlast Prefect's 20 s default on a small, busy machine.
    os.environ.setdefault("PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS", "120")
    # Prefect reads these at import. Analytics off for every server a command starts (the temporary
    # one of a build included): its telemetry service printed "database is locked" tracebacks
    # while a build's tasks wrote to the same SQLite file.
    os.environ.setdefault("PREFECT_SERVER_ANALYTICS_ENABLED", "false")
    os.environ.setdefault("DO_NOT_TRACK", "1")
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", datefmt="%H:%M:%S")
    for noisy in ("distributed", "httpx", "prefect", "asyncio"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    try:
        if argv and argv[0] in PASSTHROUGH:
            return _run_module(PASSTHROUGH[argv[0]][0], argv[1:])
        if len(argv) >= 2 and argv[0] == "bench" and argv[1] in BENCHES:
            return _run_module(BENCHES[argv[1]][0], argv[2:])
        args = _parser().parse_args(argv)
        return args.func(args) or 0
    except KeyboardInterrupt:
        print("tmkt: interrupted", file=sys.stderr)
        return 130
    except Exception as err:
        message = _user_message(err)
        if message is None:
            raise
        print(f"tmkt: error: {message}", file=sys.stderr)
        return 2


def _user_message(err: Exception) -> str | None:
    """One line for the mistakes users make; None for bugs, which keep their traceback."""
    from flows.deployments import DeploymentError
    from flows.server import ServerError, ServerUnreachable
    from pipelines.build import BuildError
    from storage.repo import StoreNotFound
    from tmkt.errors import UserInputError
    from tmkt.train import DeviceUnavailable

    known = (
        DeviceUnavailable,
        UserError,
        BuildError,
        StoreNotFound,
        FileNotFoundError,
        ServerUnreachable,
        ServerError,
        DeploymentError,
        UserInputError,
    )
    if isinstance(err, known):
        return str(err).splitlines()[0] if str(err) else type(err).__name__
    return disk_full_message(err)


def disk_full_message(err: BaseException) -> str | None:
    """One line when ``err`` (or what caused it) is a full disk, whatever layer reported it.

    The errno survives as ``OSError.errno`` from Python writes; Icechunk (Rust) and Dask workers
    pass the operating system's text on in their own exception types, so that is matched too.
    """
    import errno

    seen: set[int] = set()
    while err is not None and id(err) not in seen:
        seen.add(id(err))
        if (isinstance(err, OSError) and err.errno == errno.ENOSPC) or "No space left on device" in str(err):
            return "no space left on device: free space (or choose another --store) and run again"
        err = err.__cause__ or err.__context__
    return None


def _run_module(module: str, argv: list[str]) -> int:
    import importlib

    entry: Callable[[list[str]], int | None] = importlib.import_module(module).main
    return entry(argv) or 0


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tmkt",
        description="Versioned event/static datasets, a time-step mixing loader and a spiking trainer.",
        epilog="Also: " + "; ".join(f"tmkt {name}: {help_}" for name, (_, help_) in PASSTHROUGH.items()),
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    build = sub.add_parser(
        "build-dataset",
        help="turn raw recordings and static images into a new store snapshot",
        description="Build (or refresh) a dataset store. Unchanged recordings are reused from the "
        "previous snapshot; bad files are quarantined and reported; one commit per build.",
    )
    add_build_arguments(build)
    build.set_defaults(func=_cmd_build)

    store = sub.add_parser("store", help="inspect and check a store").add_subparsers(
        dest="store_command", required=True, metavar="ACTION"
    )
    info = store.add_parser("info", help="counts, classes, frames and quarantined files of a snapshot")
    info.add_argument("path")
    info.add_argument("--snapshot", help="snapshot id (default: the latest)")
    info.add_argument("--json", action="store_true", help="print JSON")
    info.set_defaults(func=_cmd_info)
    verify = store.add_parser("verify", help="re-check hashes and invariants; non-zero exit on any fault")
    verify.add_argument("path")
    verify.add_argument("--snapshot")
    verify.add_argument("--raw", help="raw folder to re-hash (default: the one recorded at build)")
    verify.add_argument("--json", action="store_true", help="print JSON (path, ok, faults)")
    verify.set_defaults(func=_cmd_verify)
    history = store.add_parser("history", help="the snapshots of a store, newest first")
    history.add_argument("path")
    history.add_argument("--json", action="store_true", help="print JSON (id, written_at, message)")
    history.set_defaults(func=_cmd_history)

    bench = sub.add_parser("bench", help="benchmarks against baselines in the same run")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="NAME")
    for name, (_, help_) in BENCHES.items():
        bench_sub.add_parser(name, help=help_, add_help=False)
    for name, (_, help_) in PASSTHROUGH.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def add_build_arguments(parser: argparse.ArgumentParser) -> None:
    from pipelines.sources import SOURCES

    parser.add_argument("--source", required=True, choices=sorted(SOURCES))
    parser.add_argument("--raw", required=True, help="folder of raw recordings (as downloaded)")
    parser.add_argument("--static", help="folder of static images (MNIST IDX, CIFAR batches, JPEG/PNG)")
    parser.add_argument("--store", required=True, help="store path (local folder or s3://bucket/prefix)")
    parser.add_argument("--time-bins", type=int, default=10, help="T, frames per recording (default 10)")
    parser.add_argument(
        "--size", type=int, nargs=2, metavar=("H", "W"), help="frame size (default per source)"
    )
    parser.add_argument("--mode", choices=("time", "count"), default="time", help="binning by time or count")
    parser.add_argument("--denoise-us", type=int, default=0, help="drop isolated events (0 = off)")
    parser.add_argument("--static-mode", choices=("gray", "v"), default="gray", help="gray or HSV V channel")
    parser.add_argument(
        "--static-fit", choices=("resize", "pad"), help="statics to frame size: resize, or centre (pad)"
    )
    parser.add_argument("--val-fraction", type=float, default=0.1)
    parser.add_argument("--seed", type=int, default=0, help="seed of the split assignment")
    parser.add_argument("--workers", type=int, default=2, help="Dask workers of the local cluster")
    parser.add_argument("--dask-address", help="use an existing Dask scheduler (tcp://host:port)")
    parser.add_argument(
        "--max-bad-fraction", type=float, default=0.1, help="fail past this share of bad recordings"
    )
    parser.add_argument(
        "--source-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="an option of the source adapter, e.g. recordings_per_class=10 for builtin (repeatable)",
    )
    parser.add_argument("--json", help="also write the build report to this file")


def build_config_from_args(args: argparse.Namespace):  # -> pipelines.build.BuildConfig
    from pipelines.build import BuildConfig

    return BuildConfig(
        source=args.source,
        raw=args.raw,
        static=args.static,
        store=args.store,
        time_bins=args.time_bins,
        size=tuple(args.size) if args.size else None,
        mode=args.mode,
        denoise_us=args.denoise_us,
        static_mode=args.static_mode,
        static_fit=args.static_fit,
        val_fraction=args.val_fraction,
        seed=args.seed,
        workers=args.workers,
        dask_address=args.dask_address,
        max_bad_fraction=args.max_bad_fraction,
        source_options=dict(_parse_option(item) for item in args.source_option),
    )


def _parse_option(text: str) -> tuple[str, object]:
    """KEY=VALUE with VALUE read as JSON when it parses (numbers, booleans), else as a string."""
    key, sep, value = text.partition("=")
    if not sep or not key:
        raise UserError(f"--source-option takes KEY=VALUE, got {text!r}")
    try:
        return key, json.loads(value)
    except json.JSONDecodeError:
        return key, value


def _cmd_build(args: argparse.Namespace) -> int:
    from flows.dataset import run_build_flow  # the same flow the deployments run
    from flows.logs import one_line_run_failures
    from pipelines.checks import check_build_inputs

    config = build_config_from_args(args)
    for note in check_build_inputs(config):  # before Prefect or Dask start: a typo costs a second
        print(f"tmkt: note: {note}", file=sys.stderr)
    one_line_run_failures()  # the error itself is printed once, by main()
    result = run_build_flow(config)
    report = result.report
    print(_build_summary(result.snapshot, result.committed, report))
    if args.json:
        Path(args.json).write_text(json.dumps(report, indent=2, default=str))
    return 0


def _build_summary(snapshot: str, committed: bool, report: dict) -> str:
    if not committed:
        return f"store is up to date at snapshot {snapshot}: nothing changed, nothing committed"
    lines = [
        f"committed snapshot {snapshot}: {report['recordings']} recordings, {report['events']} events, "
        f"{report['images']} images, {len(report['quarantined'])} quarantined "
        f"({report['decoded']} decoded, {report['reused']} reused) "
        f"in {report['timings'].get('total', 0):.1f} s"
    ]
    lines += [f"  quarantined {q['path']}: {q['reason']}" for q in report["quarantined"][:20]]
    return "\n".join(lines)


def _cmd_info(args: argparse.Namespace) -> int:
    from storage.reader import DatasetReader

    info = DatasetReader(args.path, args.snapshot).info()
    if args.json:
        print(json.dumps(info, indent=2, default=str))
        return 0
    print(f"{info['path']} @ {info['snapshot']} ({info['source']})")
    print(f"  {info['recordings']} recordings, {info['events']} events, {info['images']} images")
    print(f"  classes: {', '.join(info['classes'])}")
    print(f"  splits: {info['splits']}")
    for key, frames in info["frames"].items():
        print(f"  frames {key}: events {frames['events_shape']}, static {frames['static_shape']}")
    for row in info["quarantined"]:
        print(f"  quarantined {row['path']}: {row['reason']}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    from storage.verify import verify_store

    faults = verify_store(args.path, args.snapshot, args.raw)
    if args.json:
        print(json.dumps({"path": str(args.path), "ok": not faults, "faults": faults}, indent=2))
        return 1 if faults else 0
    for fault in faults:
        print(f"FAULT {fault}")
    print(f"{args.path}: {'OK' if not faults else f'{len(faults)} fault(s)'}")
    return 1 if faults else 0


def _cmd_history(args: argparse.Namespace) -> int:
    from storage.reader import DatasetReader

    snapshots = DatasetReader(args.path).history()
    if args.json:
        print(json.dumps(snapshots, indent=2))
        return 0
    for snap in snapshots:
        print(f"{snap['id']}  {snap['written_at']}  {snap['message']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
