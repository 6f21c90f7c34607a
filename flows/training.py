"""The `train` flow: `tmkt.train.train` on one pinned store snapshot, with a result artifact.

The snapshot is resolved when the run starts (the latest one unless given) and handed to the
trainer, so a refresh that commits while the run trains changes nothing the run reads, and the run
record names the exact data it saw. torch is imported inside the task: serving this deployment
costs nothing until a run starts.
"""

from __future__ import annotations

from typing import Any

from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE

from storage.reader import DatasetReader


def train_config_values(
    store: str, method: str, out: str, snapshot: str, epochs: int, overrides: dict[str, Any] | None
) -> dict[str, Any]:
    """`TrainConfig` keys of one run: the named parameters, then ``overrides`` (any TrainConfig key).

    The progress bar is off by default: a flow run's output is a log, not a terminal.
    """
    values: dict[str, Any] = {"progress_bar": False}
    values.update(overrides or {})
    values.update(store=store, method=method, out=out, snapshot=snapshot, epochs=epochs)
    return values


# NO_CACHE: a training run is an experiment with side effects (checkpoints, metrics files); running
# the flow again means training again. Resuming is the trainer's job (overrides {"resume": true}).
@task(name="train-model", cache_policy=NO_CACHE, persist_result=False)
def train_task(values: dict[str, Any]) -> dict[str, Any]:
    from tmkt.config import TrainConfig, config_with
    from tmkt.train import train

    return train(config_with(TrainConfig(), values))


@flow(name="train", flow_run_name="train {method} on {store}")
def train_flow(
    store: str,
    method: str = "tmkt",
    out: str = "runs/flow",
    snapshot: str | None = None,
    epochs: int = 60,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Train ``method`` on ``store`` at ``snapshot`` (default: the latest when the run starts).

    ``overrides`` sets any other `tmkt.config.TrainConfig` field, e.g. ``{"batch_size": 32}``.
    ``epochs`` is the TrainConfig default, raised on small sets to its ``min_steps`` budget.
    """
    logger = get_run_logger()
    pinned = DatasetReader(store, snapshot or None).snapshot_id
    logger.info("training %s on %s at snapshot %s for %d epochs into %s", method, store, pinned, epochs, out)
    result = train_task(train_config_values(store, method, out, pinned, epochs, overrides))
    logger.info(
        "done: val accuracy %s, test accuracy %s, %s steps",
        result.get("val_accuracy"),
        result.get("test_accuracy"),
        result.get("steps"),
    )
    create_markdown_artifact(
        markdown=result_markdown(result), key="train-result", description=f"{method} on {store}"
    )
    return result


def result_markdown(result: dict[str, Any]) -> str:
    """The scalar fields of a training result as a markdown table."""
    lines = [f"# Training run: {result.get('method')} on snapshot `{result.get('store_snapshot')}`", ""]
    lines += ["| field | value |", "| --- | --- |"]
    lines += [
        f"| {key} | {value} |"
        for key, value in result.items()
        if isinstance(value, str | int | float | bool) or value is None
    ]
    return "\n".join(lines) + "\n"
