"""The `build-dataset` and `refresh-dataset` flows: `pipelines.build` with retries, logs and a report.

Both flows run the same three tasks, which pass a plan (paths and ids) and a result (snapshot id and
report), never arrays: the arrays move between Dask workers and the store inside `execute`.

    plan-build  ->  execute-build  ->  publish-report (a markdown artifact)

A refresh is the same plan made from the parameters the store recorded at its build: unchanged
recordings are reused from the previous snapshot, and when nothing changed nothing is committed.
`tmkt build-dataset` and the deployments run these same flows.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import time
from collections.abc import Iterator
from dataclasses import asdict, fields
from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from pipelines.build import (
    BuildConfig,
    BuildError,
    BuildPlan,
    BuildResult,
    dask_client,
    execute_plan,
    noop_refresh,
    plan_build,
    run_as_writer,
)
from pipelines.build.config import default
from storage.reader import DatasetReader

#: Seconds Prefect's temporary API server may take to start (see `patient_ephemeral_server`).
EPHEMERAL_STARTUP_SECONDS = 120
#: pipelines/ and storage/ log under this name; the flows forward it into the flow run logs.
LIBRARY_LOGGER = "tmkt"
#: OSErrors that retrying cannot fix: a missing or forbidden path stays so.
PERMANENT_OS_ERRORS = (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)
#: Up to this many quarantined files are listed one by one in the report artifact.
REPORT_MAX_QUARANTINED = 50
#: The parameters of `build_dataset` that come from a `BuildConfig`: all of its fields.
BUILD_PARAMETERS = tuple(spec.name for spec in fields(BuildConfig))


def is_transient_io_error(exc: BaseException) -> bool:
    """Worth a retry: an I/O error that may pass (network store, NFS hiccup, a busy file).

    A `BuildError` (bad inputs, too many bad files) and a missing or forbidden path fail the same way
    every time, so they fail at once. A retry is safe: nothing is visible before the single commit.
    """
    if isinstance(exc, BuildError) or not isinstance(exc, OSError):
        return False
    return not isinstance(exc, PERMANENT_OS_ERRORS)


def _retry_on_transient_io(task: Any, task_run: Any, state: Any) -> bool:
    try:
        exc = state.result(raise_on_failure=False)
    except Exception as err:  # the state holds no readable exception: judge the error raised instead
        exc = err
    return isinstance(exc, BaseException) and is_transient_io_error(exc)


# Cache policy: NO_CACHE on every task, on purpose. A build's output depends on the contents of the
# raw files and on the store's current snapshot, which no task input captures (the inputs are paths),
# and `execute` commits a snapshot: a cache hit would silently skip a build that was asked for.
# Re-running is cheap anyway: the plan reuses every unchanged recording from the previous snapshot
# and commits nothing when nothing changed, which is the caching that is correct here.
_TASK_OPTIONS: dict[str, Any] = {"cache_policy": NO_CACHE, "persist_result": False}
_IO_RETRIES: dict[str, Any] = {
    "retries": 2,
    "retry_delay_seconds": [2, 10],
    "retry_condition_fn": _retry_on_transient_io,
}


@task(name="plan-build", **_TASK_OPTIONS, **_IO_RETRIES)
def plan_task(config: BuildConfig) -> BuildPlan:
    """List the raw folder, read the previous snapshot's manifest, assign splits, cut batches."""
    logger = get_run_logger()
    plan = plan_build(config)
    logger.info(
        "plan: %d recordings in %d batches, %d static images, %d removed since snapshot %s",
        len(plan.work),
        len(plan.batches()),
        len(plan.statics),
        len(plan.removed),
        plan.previous_snapshot or "(none: first build)",
    )
    return plan


@task(name="execute-build", **_TASK_OPTIONS, **_IO_RETRIES)
def execute_task(plan: BuildPlan, force: bool = False) -> BuildResult:
    """Hash, decode or reuse, bin and write on Dask; one commit, or none when nothing changed."""
    logger = get_run_logger()
    unchanged = noop_refresh(plan, force)
    if unchanged is not None:  # size and mtime vouch for every file: no cluster is started
        return unchanged
    where = plan.config.dask_address or f"a local cluster of {plan.config.workers} workers"
    logger.info("processing %d recordings on %s", len(plan.work), where)
    with dask_client(plan.config) as client:
        return execute_plan(plan, client, force=force)


@task(name="publish-report", **_TASK_OPTIONS)
def report_task(kind: str, store: str, result: dict[str, Any]) -> str:
    """The build report as a markdown artifact on the flow run (key ``<kind>-report``)."""
    artifact = create_markdown_artifact(
        markdown=report_markdown(kind, store, result),
        key=f"{kind}-report",
        description=f"{kind} of {store}",
    )
    return str(artifact)


@flow(name="build-dataset", flow_run_name="build {source} into {store}")
def build_dataset(
    source: str,
    raw: str,
    store: str,
    static: str | None = default("static"),
    time_bins: int = default("time_bins"),
    window_us: int = default("window_us"),
    slices: bool = default("slices"),
    size: list[int] | None = default("size"),
    mode: str = default("mode"),
    denoise_us: int = default("denoise_us"),
    static_mode: str = default("static_mode"),
    static_fit: str | None = default("static_fit"),
    val_fraction: float = default("val_fraction"),
    test_fraction: float | None = default("test_fraction"),
    seed: int = default("seed"),
    workers: int = default("workers"),
    dask_address: str | None = default("dask_address"),
    worker_memory: str = default("worker_memory"),
    max_bad_fraction: float = default("max_bad_fraction"),
    batch_size: int = default("batch_size"),
    rehash: bool = default("rehash"),
    source_options: dict[str, Any] | None = None,
    force: bool = False,
) -> dict[str, Any]:
    """Build (or refresh) a store from raw recordings; the parameters are the fields of `BuildConfig`
    (those of `tmkt build-dataset`), with their defaults; a test checks that they stay equal.

    Returns ``{"snapshot", "committed", "report"}``. ``force`` commits even when nothing changed.
    """
    params = {name: value for name, value in locals().items() if name in BUILD_PARAMETERS}
    params["size"] = tuple(size) if size else None
    params["source_options"] = dict(source_options or {})
    return _run(BuildConfig(**params), "build", force)


@flow(name="refresh-dataset", flow_run_name="refresh {store}")
def refresh_dataset(
    store: str,
    raw: str | None = None,
    static: str | None = None,
    workers: int | None = None,
    dask_address: str | None = None,
    worker_memory: str | None = None,
    rehash: bool = False,
) -> dict[str, Any]:
    """Bring a store up to date with its raw folder: one new snapshot, or nothing when nothing changed.

    Every data parameter comes from the store's recorded build parameters; ``raw``/``static`` (moved
    folders) and ``workers``/``dask_address``/``worker_memory`` (where it runs) may be overridden. A
    file whose size and mtime match the store's manifest is taken as unchanged without reading it;
    ``rehash`` hashes every file (a build's ``rehash`` is not recorded for later refreshes).
    """
    config = refresh_config(
        store,
        raw=raw,
        static=static,
        workers=workers,
        dask_address=dask_address,
        worker_memory=worker_memory,
        rehash=rehash,
    )
    return _run(config, "refresh", force=False)


def refresh_config(store: str, **overrides: Any) -> BuildConfig:
    """The store's recorded `BuildConfig`, with the non-None ``overrides`` applied."""
    recorded = DatasetReader(store).build_params
    known = {f.name for f in fields(BuildConfig)}
    params = {k: v for k, v in recorded.items() if k in known and k != "rehash"}
    params.update({k: v for k, v in overrides.items() if v is not None})
    params["store"] = store
    if params.get("size"):
        params["size"] = tuple(params["size"])
    return BuildConfig(**params)


def flow_parameters(config: BuildConfig) -> dict[str, Any]:
    """`build_dataset` keyword arguments for a `BuildConfig` (how `tmkt build-dataset` calls the flow)."""
    params = asdict(config)
    params["size"] = list(config.size) if config.size else None
    return params


def run_build_flow(config: BuildConfig, force: bool = False) -> BuildResult:
    """Run the `build-dataset` flow in this process, against the configured API or the ephemeral one.

    Raises `flows.server.ServerUnreachable` (one line) when PREFECT_API_URL is set but does not answer.
    """
    from flows.server import require_api

    require_api(shared=False)
    with patient_ephemeral_server():
        out = build_dataset(**flow_parameters(config), force=force)
    return BuildResult(out["snapshot"], out["committed"], out["report"])


@contextlib.contextmanager
def patient_ephemeral_server() -> Iterator[None]:
    """Give Prefect's temporary API server `EPHEMERAL_STARTUP_SECONDS` to start.

    Without PREFECT_API_URL a flow starts that server in a subprocess; its first start runs the
    database migrations, which outlast Prefect's 20 s default on a small, busy machine and fail the
    build before it began. A value the user set in the environment is kept.
    """
    from prefect.settings import PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS, temporary_settings

    if PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS.name in os.environ:
        yield
        return
    with temporary_settings(
        updates={PREFECT_SERVER_EPHEMERAL_STARTUP_TIMEOUT_SECONDS: EPHEMERAL_STARTUP_SECONDS}
    ):
        yield


def _run(config: BuildConfig, kind: str, force: bool) -> dict[str, Any]:
    logger = get_run_logger()
    started = time.perf_counter()
    with forward_library_logs():
        result = run_as_writer(config, plan_task, lambda plan: execute_task(plan, force=force))
    result.report.setdefault("timings", {})["total"] = time.perf_counter() - started
    out = {"snapshot": result.snapshot, "committed": result.committed, "report": _plain(result.report)}
    if result.committed:
        logger.info(
            "committed snapshot %s: %d recordings, %d events, %d images, %d quarantined, in %.1f s",
            result.snapshot,
            out["report"].get("recordings", 0),
            out["report"].get("events", 0),
            out["report"].get("images", 0),
            len(out["report"].get("quarantined", [])),
            out["report"]["timings"]["total"],
        )
    else:
        logger.info("nothing changed: the store stays at snapshot %s, nothing committed", result.snapshot)
    report_task(kind, config.store, out)
    return out


@contextlib.contextmanager
def forward_library_logs() -> Iterator[None]:
    """Send the library's INFO logs (progress of pipelines.build) to the flow run logs.

    Prefect only ships its own loggers to the API; the library logs through `logging` and must not
    import Prefect, so the flow lends it Prefect's API handler for the duration of the run.
    """
    from prefect.logging.handlers import APILogHandler

    logger = logging.getLogger(LIBRARY_LOGGER)
    # the local Dask scheduler logs every connection at INFO: that would bury the progress lines
    dask_logger = logging.getLogger("distributed")
    handler = APILogHandler()
    levels = (logger.level, dask_logger.level)
    logger.addHandler(handler)
    if logger.getEffectiveLevel() > logging.INFO:
        logger.setLevel(logging.INFO)
    dask_logger.setLevel(max(dask_logger.getEffectiveLevel(), logging.WARNING))
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.setLevel(levels[0])
        dask_logger.setLevel(levels[1])


def _plain(value: Any) -> Any:
    """JSON-safe copy (numpy scalars and paths as plain values), so results serialize anywhere."""
    return json.loads(json.dumps(value, default=lambda v: v.item() if hasattr(v, "item") else str(v)))


# --------------------------------------------------------------------------------------------
# the report artifact
# --------------------------------------------------------------------------------------------
def report_markdown(kind: str, store: str, result: dict[str, Any]) -> str:
    """Markdown of a build result: snapshot, counts, changes, quarantined files with reasons, timings."""
    report = result.get("report", {})
    snapshot = result.get("snapshot")
    if result.get("committed"):
        title = f"# Dataset {kind}: committed snapshot `{snapshot}`"
    else:
        title = f"# Dataset {kind}: nothing changed, nothing committed (still snapshot `{snapshot}`)"
    lines = [
        title,
        "",
        f"- store: `{store}`",
        f"- source: `{report.get('source')}`",
        f"- parent snapshot: `{report.get('parent_snapshot')}`",
        f"- frames key: `{report.get('frames_key')}`",
        "",
        "| recordings | events | images | classes | decoded | reused | quarantined |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
        "| {} | {} | {} | {} | {} | {} | {} |".format(
            report.get("recordings", 0),
            report.get("events", 0),
            report.get("images", 0),
            report.get("classes", 0),
            report.get("decoded", 0) if result.get("committed") else 0,
            report.get("reused", 0) if result.get("committed") else 0,
            len(report.get("quarantined", [])),
        ),
    ]
    changes = report.get("changes") or {}
    if changes:
        lines += ["", "## Changes", "", "| " + " | ".join(changes) + " |", "|" + " ---: |" * len(changes)]
        lines.append("| " + " | ".join(str(v) for v in changes.values()) + " |")
    lines += _quarantine_lines(report.get("quarantined", []))
    timings = report.get("timings") or {}
    if timings:
        lines += ["", "## Timings (s)", "", "| stage | seconds |", "| --- | ---: |"]
        lines += [f"| {stage} | {seconds:.2f} |" for stage, seconds in timings.items()]
    return "\n".join(lines) + "\n"


def _quarantine_lines(quarantined: list[dict[str, Any]]) -> list[str]:
    if not quarantined:
        return ["", "No file was quarantined."]
    lines = [
        "",
        f"## Quarantined files ({len(quarantined)})",
        "",
        "| file | kind | reason |",
        "| --- | --- | --- |",
    ]
    for row in quarantined[:REPORT_MAX_QUARANTINED]:
        reason = str(row.get("reason", "")).replace("|", "\\|")
        lines.append(f"| `{row.get('path')}` | {row.get('kind', 'events')} | {reason} |")
    if len(quarantined) > REPORT_MAX_QUARANTINED:
        lines.append(f"| ... and {len(quarantined) - REPORT_MAX_QUARANTINED} more | | |")
    return lines
