"""`tmkt serve`: serve every deployment from one long-running process (Prefect's `serve`).

Runs start when `prefect deployment run NAME` (or the refresh schedule) asks for them; each run
executes in a child process of this one. It needs a Prefect API that other processes share:
PREFECT_API_URL pointing at `tmkt server start`'s server, a self-hosted one, or Prefect Cloud.

    tmkt serve [--refresh-cron "*/15 * * * *"] [--param store=/data/s1] [--param train/default:epochs=30]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from flows.deployments import DEFAULT_REFRESH_CRON, SCHEDULED, DeploymentError, ServeConfig, data_home

#: Seconds between the serving process's queries for runs to start. Prefect's default, 10, left a
#: `prefect deployment run` waiting 5 s on average (up to 10) before its run began; a query a second
#: is nothing for the API.
QUERY_SECONDS = 1.0


def parse_param(text: str) -> tuple[str, str, Any]:
    """``[FLOW/DEPLOYMENT:]KEY=VALUE`` -> (deployment, key, value); VALUE is JSON when it parses as JSON.

    Without a deployment the parameter is for the scheduled refresh, the one deployment that runs
    unattended with no chance to pass parameters at run time.
    """
    target, value = text.split("=", 1) if "=" in text else (text, None)
    if value is None or not target:
        raise DeploymentError(f"--param {text!r}: expected [FLOW/DEPLOYMENT:]KEY=VALUE")
    deployment, _, key = target.rpartition(":")
    try:
        parsed: Any = json.loads(value)
    except ValueError:
        parsed = value
    return deployment or SCHEDULED, key, parsed


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="tmkt serve",
        description="Serve build-dataset/default, build-dataset/builtin, refresh-dataset/default (scheduled) "
        "and train/default until interrupted. Needs PREFECT_API_URL (see `tmkt server start`).",
    )
    parser.add_argument(
        "--data-home",
        type=Path,
        help="folder of the built-in raw files, store and runs (default $TMKT_HOME or ./data)",
    )
    parser.add_argument(
        "--refresh-cron",
        default=DEFAULT_REFRESH_CRON,
        help=f"cron schedule of refresh-dataset/default (default {DEFAULT_REFRESH_CRON!r}: hourly)",
    )
    parser.add_argument("--paused-refresh", action="store_true", help="register the refresh schedule paused")
    parser.add_argument(
        "--param",
        action="append",
        default=[],
        metavar="[DEPLOYMENT:]KEY=VALUE",
        help="override a default parameter (JSON value or text); without DEPLOYMENT it is for "
        f"{SCHEDULED}; repeatable",
    )
    parser.add_argument("--limit", type=int, help="at most this many runs at a time")
    return parser


def serve_config(args: argparse.Namespace) -> ServeConfig:
    overrides: dict[str, dict[str, Any]] = {}
    for text in args.param:
        deployment, key, value = parse_param(text)
        overrides.setdefault(deployment, {})[key] = value
    return ServeConfig(
        home=(args.data_home.resolve() if args.data_home else data_home()),
        refresh_cron=args.refresh_cron,
        overrides=overrides,
        paused_refresh=args.paused_refresh,
    )


def main(argv: list[str] | None = None) -> int:
    from flows.server import ServerUnreachable, require_api

    args = _parser().parse_args(argv)
    try:
        config = serve_config(args)
        url = require_api(shared=True)
        from flows.deployments import make_deployments

        deployments = make_deployments(config)
    except (DeploymentError, ServerUnreachable) as err:
        print(f"tmkt serve: error: {err}", file=sys.stderr)
        return 2
    from prefect import serve

    print(f"serving {len(deployments)} deployments against {url}; data folder {config.home}", flush=True)
    serve(*deployments, limit=args.limit, query_seconds=QUERY_SECONDS)
    return 0
