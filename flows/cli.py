"""`tmkt`: the command line of the whole system.

This module is the top floor: it may reach `flows`, `pipelines`, `storage` and `tmkt`, and names the
`benches` modules that `tmkt bench NAME` runs. Nothing imports it, so the packages below keep their
one direction of dependency. Heavy imports happen inside each command so `tmkt --help` stays fast.
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
    "train": ("tmkt.config", "train a spiking network on a store (methods tmkt, event, finetune, he2024)"),
    "eval": ("tmkt.evaluate", "evaluate a checkpoint on a store's event recordings"),
    "export": (
        "tmkt.export",
        "write a checkpoint's classifier as a NIR graph (neuromorphic hardware, snnTorch, ...)",
    ),
    "experiment": ("tmkt.experiments", "a grid of runs (methods x seeds x data budget) and its report"),
    "serve": ("flows.serve", "serve the Prefect deployments (long-running)"),
    "server": ("flows.server", "start, stop or query a local Prefect server"),
    "demo": ("flows.demo", "the main job end to end on built-in data, with a report"),
}
BENCHES: dict[str, tuple[str, str]] = {
    "ingest": ("benches.ingest", "decode + bin + write events/s against tonic"),
    "decode": ("benches.decode", "each event format's reader, events/s against tonic / expelliarmus"),
    "loader": ("benches.loader", "mixed samples/s of the DALI loader against DataLoader baselines"),
    "train": ("benches.train", "training samples/s and data-wait share per backbone"),
    "scale": ("benches.scale", "every stage from 1k to 70k recordings, with tonic beside it"),
    "deploy": ("benches.deploy", "a deployment run's wall time against the same build through the CLI"),
}


class UserError(Exception):
    """A mistake the user can fix; printed as one line, exit code 2."""


#: Commands whose services are meant to outlive them (`tmkt server start` leaves a server running).
OUTLIVING = ("server",)


def main(argv: list[str] | None = None) -> int:
    if argv is None and sys.argv[1:2] and sys.argv[1] not in OUTLIVING:
        from flows.lifeline import hold

        hold()  # from the command line: whatever this command starts ends with it, even on SIGKILL
    argv = list(sys.argv[1:] if argv is None else argv)
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
    from tmkt.system import DeviceUnavailable

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

    from pipelines.build import add_build_arguments

    build = sub.add_parser(
        "build-dataset",
        help="turn raw recordings and static images into a new store snapshot",
        description="Build (or refresh) a dataset store. Unchanged recordings are reused from the "
        "previous snapshot; bad files are quarantined and reported; one commit per build.",
    )
    add_build_arguments(build)
    build.add_argument("--json", help="also write the build report to this file")
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
    from storage.maintenance import DEFAULT_GRACE

    gc = store.add_parser(
        "gc",
        help="reclaim space: delete what no snapshot references (killed or failed builds' chunks)",
        description="Delete every object no branch or tag reaches and older than --grace-minutes "
        "(what killed or failed builds left); with --expire-days, first drop snapshots older than "
        "that from the history (keep it longer than any training job that pins one).",
    )
    gc.add_argument("path")
    gc.add_argument(
        "--expire-days", type=float, help="also expire snapshots older than this (default: keep all)"
    )
    gc.add_argument(
        "--grace-minutes",
        type=float,
        default=DEFAULT_GRACE.total_seconds() / 60,
        help=f"never delete objects younger than this (default {DEFAULT_GRACE.total_seconds() / 60:.0f})",
    )
    gc.add_argument("--dry-run", action="store_true", help="report what would be deleted, delete nothing")
    gc.add_argument("--json", action="store_true", help="print JSON")
    gc.set_defaults(func=_cmd_gc)
    show = store.add_parser("show", help="draw a recording's frames, a static image or a mixed sequence")
    show.add_argument("path")
    show.add_argument("--index", type=int, required=True, help="recording (or image) index, within --split")
    show.add_argument("--split", help="count --index within this split (train, val, test)")
    show.add_argument("--kind", default="events", help="events | static | mixed (static, then events)")
    show.add_argument("--cut", type=int, default=0, help="mixed: first event step t*, 1-based (0: middle)")
    show.add_argument("--static", type=int, default=-1, help="mixed: static image index (-1: first of class)")
    show.add_argument("--snapshot")
    show.add_argument("--frames-key", help="frame representation (default: the store's)")
    show.add_argument("--out", default="show.png", help="a .png (a panel per bin) or .gif (a frame per bin)")
    show.set_defaults(func=_cmd_show)

    bench = sub.add_parser("bench", help="benchmarks against baselines in the same run")
    bench_sub = bench.add_subparsers(dest="bench_command", required=True, metavar="NAME")
    for name, (_, help_) in BENCHES.items():
        bench_sub.add_parser(name, help=help_, add_help=False)
    for name, (_, help_) in PASSTHROUGH.items():
        sub.add_parser(name, help=help_, add_help=False)
    return parser


def _cmd_build(args: argparse.Namespace) -> int:
    from flows.dataset import run_build_flow  # the same flow the deployments run
    from flows.logs import one_line_run_failures
    from pipelines.build import build_config_from_args
    from pipelines.checks import check_build_inputs

    config = build_config_from_args(args)
    try:
        config.frame_spec()  # --slices without --window-us, --window-us with --mode count, ...
    except ValueError as err:
        raise UserError(str(err)) from None
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
    from pipelines.sources import SOURCES
    from storage.reader import DatasetReader

    reader = DatasetReader(args.path, args.snapshot)
    info = reader.info()
    published = getattr(SOURCES.get(info["source"]), "published", None)
    info["count_warnings"] = published.warnings(info["classes"], reader.manifest) if published else []
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
    if info["count_warnings"]:
        print(f"  warning: the recordings differ from the published download ({published.source}):")
        print("\n".join(f"    {line}" for line in info["count_warnings"]))
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


def _cmd_gc(args: argparse.Namespace) -> int:
    import datetime as dt

    from storage.maintenance import collect_garbage

    expire = dt.timedelta(days=args.expire_days) if args.expire_days is not None else None
    report = collect_garbage(args.path, expire, dt.timedelta(minutes=args.grace_minutes), args.dry_run)
    if args.json:
        print(json.dumps(report.to_dict(), indent=2))
        return 0
    verb = "would delete" if args.dry_run else "deleted"
    print(
        f"{args.path}: {verb} {report.chunks_deleted} chunks, {report.manifests_deleted} manifests, "
        f"{report.snapshots_deleted} snapshots ({report.bytes_deleted / 1e6:.1f} MB); "
        f"{report.snapshots_expired} snapshots expired"
    )
    return 0


def _cmd_history(args: argparse.Namespace) -> int:
    from storage.reader import DatasetReader

    snapshots = DatasetReader(args.path).history()
    if args.json:
        print(json.dumps(snapshots, indent=2))
        return 0
    for snap in snapshots:
        print(f"{snap['id']}  {snap['written_at']}  {snap['message']}")
    return 0


def _cmd_show(args: argparse.Namespace) -> int:
    from tmkt.plots import ShowConfig, ShowError, show_store

    try:
        cfg = ShowConfig(
            index=args.index,
            split=args.split,
            kind=args.kind,
            cut=args.cut,
            static_index=args.static,
            frames_key=args.frames_key,
            snapshot=args.snapshot,
        )
        print(f"wrote {show_store(args.path, cfg, args.out)}")
    except ShowError as err:
        raise UserError(str(err)) from None
    return 0


if __name__ == "__main__":
    sys.exit(main())
