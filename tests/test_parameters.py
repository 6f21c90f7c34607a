"""Each job's parameters are declared once: the command line and the flows follow the config dataclasses."""

from __future__ import annotations

import argparse
import inspect
import typing
from dataclasses import MISSING, fields
from pathlib import Path

import numpy as np
import pytest

from flows.dataset import BUILD_PARAMETERS, build_dataset, flow_parameters, run_build_flow
from pipelines.build import BuildConfig, add_build_arguments, build_config_from_args
from storage.reader import DatasetReader
from storage.schema import SPLITS

CONFIG_FIELDS = [spec.name for spec in fields(BuildConfig)]


def test_build_flow_parameters_equal_the_build_config_fields() -> None:
    signature = inspect.signature(build_dataset.fn).parameters
    assert [name for name in signature if name != "force"] == CONFIG_FIELDS
    assert list(BUILD_PARAMETERS) == CONFIG_FIELDS
    assert set(build_dataset.parameters.properties) == {*CONFIG_FIELDS, "force"}
    for spec in fields(BuildConfig):
        flow_default = signature[spec.name].default
        if spec.default is not MISSING:
            assert flow_default == spec.default, spec.name
        elif spec.default_factory is not MISSING:  # a mutable default: None in the flow, {} in the config
            assert flow_default is None and spec.default_factory() == {}, spec.name
        else:
            assert flow_default is inspect.Parameter.empty, spec.name
    config = BuildConfig(source="nmnist", raw="r", store="s", test_fraction=0.25, batch_size=7)
    params = flow_parameters(config)
    assert list(params) == CONFIG_FIELDS
    assert params["test_fraction"] == 0.25 and params["batch_size"] == 7


def test_build_dataset_options_are_the_build_config_fields() -> None:
    parser = argparse.ArgumentParser()
    add_build_arguments(parser)
    dests = [action.dest for action in parser._actions if action.dest != "help"]
    assert dests == CONFIG_FIELDS
    argv = ["--source", "builtin", "--raw", "r", "--store", "s"]
    assert build_config_from_args(parser.parse_args(argv)) == BuildConfig(
        source="builtin", raw="r", store="s"
    )
    every = argv + ["--time-bins", "8", "--size", "40", "48", "--mode", "count", "--denoise-us", "5000"]
    every += ["--static-mode", "v", "--static-fit", "pad", "--val-fraction", "0.2", "--test-fraction", "0.3"]
    every += ["--seed", "4", "--workers", "1", "--dask-address", "tcp://h:1", "--max-bad-fraction", "0.5"]
    every += ["--batch-size", "8", "--source-option", "recordings_per_class=6", "--static", "m"]
    config = build_config_from_args(parser.parse_args(every))
    assert config == BuildConfig(
        source="builtin",
        raw="r",
        store="s",
        static="m",
        time_bins=8,
        size=(40, 48),
        mode="count",
        denoise_us=5000,
        static_mode="v",
        static_fit="pad",
        val_fraction=0.2,
        test_fraction=0.3,
        seed=4,
        workers=1,
        dask_address="tcp://h:1",
        max_bad_fraction=0.5,
        batch_size=8,
        source_options={"recordings_per_class": 6},
    )
    sliced = build_config_from_args(parser.parse_args([*argv, "--window-us", "5000", "--slices"]))
    assert (sliced.window_us, sliced.slices) == (5000, True)  # a bool field is a flag, not --slices X
    with pytest.raises(SystemExit):
        parser.parse_args([*argv, "--mode", "sideways"])


@pytest.mark.slow
def test_a_non_default_test_fraction_reaches_the_build_through_the_flow(
    prefect_server: str, dask_scheduler: str, tmp_path: Path
) -> None:
    config = BuildConfig(
        source="builtin",
        raw=str(tmp_path / "raw"),
        store=str(tmp_path / "store"),
        test_fraction=0.5,
        val_fraction=0.2,
        batch_size=16,
        dask_address=dask_scheduler,
        source_options={"recordings_per_class": 10},
    )
    result = run_build_flow(config)
    reader = DatasetReader(config.store)
    assert result.committed and reader.snapshot_id == result.snapshot
    assert reader.build_params["test_fraction"] == 0.5 and reader.build_params["batch_size"] == 16
    assert reader.attrs["data_params"]["test_fraction"] == 0.5
    counts = np.bincount(reader.splits, minlength=len(SPLITS))
    assert counts.sum() == 100
    # the default (0.1) would hold out about 10 of 100 recordings for test; 0.5 holds out about half
    assert 35 <= counts[SPLITS.index("test")] <= 65, counts
    assert "test if u < 0.5" in reader.attrs["split_rule"]


def test_train_help_lists_every_config_key_with_type_default_and_meaning(capsys) -> None:
    from flows.cli import main
    from tmkt.config import TrainConfig

    with pytest.raises(SystemExit) as done:
        main(["train", "--help"])
    assert done.value.code == 0
    text = capsys.readouterr().out
    hints = typing.get_type_hints(TrainConfig)
    for spec in fields(TrainConfig):
        line = f"  {spec.name} ({hints[spec.name].__name__}, default {spec.default!r}"
        assert line in text, spec.name
        assert spec.metadata["help"] and spec.metadata["help"] in text, spec.name
    assert "--backbone {auto,small,cnn3,vgg_snn,resnet18}" in text and "--device {auto,cpu,cuda}" in text
    # --epochs says how the budget is chosen, with the defaults of both fields
    flat = " ".join(text.split())
    budget = f"(default {TrainConfig.epochs}), raised on small sets until the run makes at least min_steps"
    assert budget in flat and f"(default {TrainConfig.min_steps}; min_steps=0 turns that off)" in flat


def test_an_unknown_train_key_is_one_line_with_a_suggestion_and_exit_2(capsys) -> None:
    from flows.cli import main

    assert main(["train", "--store", "s", "bach_size=8"]) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and "unknown config key(s) 'bach_size' (did you mean 'batch_size'?)" in err
    with pytest.raises(SystemExit) as done:  # argparse: not one of the choices
        main(["train", "--store", "s", "--backbone", "vgg"])
    assert done.value.code == 2 and "invalid choice: 'vgg'" in capsys.readouterr().err


def test_eval_split_and_device_have_choices(capsys) -> None:
    from tmkt.evaluate import main

    with pytest.raises(SystemExit) as done:
        main(["--checkpoint", "c.pt", "--store", "s", "--split", "tset"])
    assert done.value.code == 2 and "invalid choice: 'tset'" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["--checkpoint", "c.pt", "--store", "s", "--device", "gpu"])
    assert "invalid choice: 'gpu'" in capsys.readouterr().err


def test_train_flow_defaults_are_the_train_config_defaults() -> None:
    from flows.training import train_flow
    from tmkt.config import TrainConfig

    signature = inspect.signature(train_flow.fn).parameters
    defaults = {spec.name: spec.default for spec in fields(TrainConfig)}
    # every named parameter is a TrainConfig key (overrides sets the others)
    assert set(signature) - {"overrides"} <= set(defaults)
    assert signature["method"].default == defaults["method"]
    assert signature["epochs"].default == defaults["epochs"]


def test_every_method_option_is_a_train_config_knob_and_reaches_the_method() -> None:
    from tmkt.config import TrainConfig
    from tmkt.methods import MethodConfig

    options = [spec.name for spec in fields(MethodConfig) if spec.name not in ("name", "schedule")]
    defaults = {spec.name: spec.default for spec in fields(TrainConfig)}
    base = {name: getattr(MethodConfig(), name) for name in options}
    # one default per value: each knob's default is the method's
    assert {name: defaults[name] for name in options} == base
    changed = {name: not v if isinstance(v, bool) else v + 0.25 for name, v in base.items()}
    method = TrainConfig(method="tsm", ratio_kind="linear", **changed).method_config()
    assert (method.name, method.schedule.kind) == ("tsm", "linear")
    assert {name: getattr(method, name) for name in options} == changed


def test_batches_hold_at_most_batch_size_recordings_and_16_mib_of_raw_files(tmp_path):
    """Small files go ``batch_size`` to a task; large ones as many as fit in `BATCH_BYTES`, and a
    file larger than that alone. Every recording is in one batch, in store order."""
    from pipelines.build.plan import BATCH_BYTES, plan_build

    sizes = {"small": 1000, "large": 6 << 20, "huge": 20 << 20}
    for digit, kind in enumerate(("small", "small", "large", "huge")):
        folder = tmp_path / "raw" / "Train" / str(digit)
        folder.mkdir(parents=True)
        for i in range({"small": 9, "large": 5, "huge": 2}[kind]):
            (folder / f"{i}.bin").write_bytes(b"\0" * sizes[kind])
    plan = plan_build(
        BuildConfig(source="nmnist", raw=str(tmp_path / "raw"), store=str(tmp_path / "s"), batch_size=4)
    )
    batches = plan.batches()
    assert [i for b in batches for i in b] == list(range(25))
    raw = plan.raw_sizes()
    assert sorted(raw) == [1000] * 18 + [6 << 20] * 5 + [20 << 20] * 2
    for batch in batches:
        held = [raw[i] for i in batch]
        assert len(batch) <= 4 and (sum(held) <= BATCH_BYTES or len(batch) == 1), held
    # greedy: a batch is cut only when the next recording would break a limit
    for batch, after in zip(batches, batches[1:], strict=False):
        assert len(batch) == 4 or sum(raw[i] for i in batch) + raw[after[0]] > BATCH_BYTES
