"""The deployments that `tmkt serve` serves, with their default parameters and the refresh schedule.

    build-dataset/default     any source; every required parameter is given per run
    build-dataset/builtin     the built-in source, raw files and store under the data folder
    refresh-dataset/default   on a cron schedule (hourly by default): refresh the data folder's store
    train/default             train on a store snapshot

The data folder is ``$TMKT_HOME``, else ``./data``. Parameters given at serve time override these
defaults per deployment; parameters given with `prefect deployment run --param` override both.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flows.dataset import build_dataset, refresh_dataset
from flows.training import train_flow

DEFAULT_REFRESH_CRON = "0 * * * *"  # hourly, on the hour
#: The deployment a bare `--param KEY=VALUE` of `tmkt serve` applies to: the one that runs unattended.
SCHEDULED = "refresh-dataset/default"
FLOWS = {"build-dataset": build_dataset, "refresh-dataset": refresh_dataset, "train": train_flow}


class DeploymentError(ValueError):
    """A deployment option that cannot work (unknown deployment or parameter, bad cron)."""


def data_home() -> Path:
    """Where the built-in deployments keep raw files, stores and runs."""
    return Path(os.environ.get("TMKT_HOME") or "data").resolve()


@dataclass
class ServeConfig:
    home: Path = field(default_factory=data_home)
    refresh_cron: str = DEFAULT_REFRESH_CRON
    #: deployment name ("flow/deployment") -> parameters that replace its defaults
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)
    paused_refresh: bool = False


def default_parameters(home: Path) -> dict[str, dict[str, Any]]:
    """Default parameters per deployment name; paths are absolute so the runs do not depend on a cwd."""
    builtin_store = str(home / "builtin" / "store")
    return {
        "build-dataset/default": {},
        "build-dataset/builtin": {
            "source": "builtin",
            "raw": str(home / "builtin" / "raw"),
            "store": builtin_store,
        },
        SCHEDULED: {"store": builtin_store},
        "train/default": {"store": builtin_store, "out": str(home / "runs" / "train-default")},
    }


def deployment_parameters(config: ServeConfig) -> dict[str, dict[str, Any]]:
    """Defaults with the overrides applied; unknown deployments or parameters fail here, not at run time."""
    params = default_parameters(config.home)
    for name, values in config.overrides.items():
        if name not in params:
            raise DeploymentError(f"unknown deployment {name!r}; served: {', '.join(params)}")
        known = set(FLOWS[name.split("/", 1)[0]].parameters.properties)
        unknown = sorted(set(values) - known)
        if unknown:
            raise DeploymentError(f"{name}: unknown parameter(s) {unknown}; known: {sorted(known)}")
        params[name] = {**params[name], **values}
    return params


def validate_cron(cron: str) -> str:
    from prefect.client.schemas.schedules import CronSchedule

    try:
        CronSchedule(cron=cron)
    except ValueError as err:
        raise DeploymentError(f"invalid cron expression {cron!r} for --refresh-cron") from err
    return cron


def make_deployments(config: ServeConfig) -> list[Any]:
    """`RunnerDeployment`s for `prefect.serve`, one per served deployment."""
    params = deployment_parameters(config)
    cron = validate_cron(config.refresh_cron)
    deployments = []
    for name, values in params.items():
        flow_name, deployment_name = name.split("/", 1)
        # `serve` pauses its deployments on shutdown; say "not paused" so a restart serves again
        schedule: dict[str, Any] = {"paused": False}
        if name == SCHEDULED:
            schedule = {"cron": cron, "paused": config.paused_refresh}
        deployments.append(
            FLOWS[flow_name].to_deployment(
                name=deployment_name,
                parameters=values,
                description=_DESCRIPTIONS[name],
                tags=["tmkt"],
                **schedule,
            )
        )
    return deployments


_DESCRIPTIONS = {
    "build-dataset/default": "Build a store from raw recordings (the parameters of `tmkt build-dataset`).",
    "build-dataset/builtin": "Build the built-in dataset (simulated events of scikit-learn digits).",
    SCHEDULED: "Refresh a store from its raw folder: a new snapshot for new, changed or removed files.",
    "train/default": "Train a spiking network on a pinned store snapshot.",
}
