"""`tmkt experiment`: a grid of training runs on one store, and its report.

Every run is an ordinary `tmkt train` run (same trainer, same budget, its own folder with
`result.json`, `metrics.jsonl` and `checkpoint.pt`). Methods are compared on the *validation*
split (``eval_split=unused``: on every train/val recording a run did not train on, ten times more
at 10 recordings per class of N-MNIST); the test split, when the store has one, is only read for
the final numbers. The report:

- `results.md`: mean ± std over seeds per method (and per recordings-per-class budget), the number
  of recordings behind each split, and per method a sentence against `event` that says whether the
  difference is within noise (the rule of `tmkt.stats`),
- `curves.png`: validation accuracy per epoch per method,
- `scarcity.png`: accuracy against the number of event recordings per class used for training.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import time
from pathlib import Path
from typing import Any

log = logging.getLogger("tmkt.experiment")


def run_grid(
    store: str,
    out: Path,
    methods: list[str],
    seeds: list[int],
    per_class: list[int],
    overrides: dict[str, str],
    parallel: int = 1,
) -> list[Path]:
    """Train every (budget, method, seed); runs already finished are kept, not repeated.

    ``parallel`` > 1 trains that many runs at once in separate processes: small spiking nets leave a
    big GPU (or a many-core host) mostly idle, and independent runs fill it.
    """
    from tmkt.config import TrainConfig, config_with

    runs, todo = [], []
    for k in per_class:
        for method in methods:
            for seed in seeds:
                run_dir = out / f"k{k or 'all'}" / f"{method}-s{seed}"
                runs.append(run_dir)
                if not (run_dir / "result.json").is_file():
                    values = {**overrides, "max_recordings_per_class": k, "progress_bar": False}
                    base = TrainConfig(store=store, method=method, seed=seed, out=str(run_dir))
                    todo.append(config_with(base, values))
    started = time.perf_counter()
    if parallel > 1:
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor, as_completed

        with ProcessPoolExecutor(parallel, mp_context=multiprocessing.get_context("spawn")) as pool:
            threads = max(1, (os.cpu_count() or 1) // parallel)
            futures = {pool.submit(_train, config, threads): config for config in todo}
            for done, future in enumerate(as_completed(futures), 1):
                _log_run(futures[future], future.result(), done, len(todo), started)
    else:
        for done, config in enumerate(todo, 1):
            _log_run(config, _train(config), done, len(todo), started)
    return runs


def _train(config: Any, threads: int = 0) -> dict[str, Any]:
    import torch

    from tmkt.train import train

    if threads:
        # runs side by side share the cores: more compute threads than cores made each run's
        # OpenMP workers spin against the others' (on a busy 2-core host, 5x the CPU time per run)
        torch.set_num_threads(threads)
    return train(config)


def _log_run(config: Any, result: dict[str, Any], done: int, total: int, started: float) -> None:
    log.info(
        "[%d/%d] k=%s %s seed %d: val %.4f (%.0f s elapsed)",
        done,
        total,
        config.max_recordings_per_class or "all",
        config.method,
        config.seed,
        result["val_accuracy"] or 0.0,
        time.perf_counter() - started,
    )


def write_report(out: Path, runs: list[Path]) -> dict[str, Any]:
    from tmkt.plots import comparisons, load_run, mean_std, plot_curves, results_table

    budgets = sorted(
        {r.parent.name for r in runs},
        key=lambda name: (name != "kall", int(name[1:] or 0) if name != "kall" else 0),
    )
    summary: dict[str, Any] = {}
    sections = []
    for budget in budgets:
        group = [r for r in runs if r.parent.name == budget and (r / "result.json").is_file()]
        if not group:
            continue
        by_method: dict[str, list[float]] = {}
        for run in map(load_run, group):
            by_method.setdefault(run.method, []).append(run.val_accuracy or 0.0)
        summary[budget] = {
            m: dict(zip(("mean", "std"), mean_std(v), strict=True)) | {"n": len(v)}
            for m, v in by_method.items()
        }
        if budget == "kall":
            plot_curves(group, out / "curves.png")
        verdicts = comparisons(group)
        for method, text in verdicts.items():
            summary[budget][method]["vs_event"] = text
        said = "".join(f"- {text}\n" for text in verdicts.values())
        sections.append(f"## {_budget_title(budget)}\n\n{results_table(group)}\n{said}")
    _plot_scarcity(summary, out / "scarcity.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "results.md").write_text(
        f"# Results\n\nAccuracy on event recordings only, on {_evaluated_on(runs)}: mean ± sample "
        "standard deviation over seeds, with the number of recordings (n) behind each split. Each method "
        "is compared with `event` in words: a difference no larger than the spread over seeds is within "
        "noise, and a win also needs Welch's t-test p < 0.05 (`tmkt/stats.py`).\n\n"
        + "\n".join(sections)
        + "\n![curves](curves.png)\n\n![scarcity](scarcity.png)\n"
    )
    return summary


def _evaluated_on(runs: list[Path]) -> str:
    """What the runs' ``val_accuracy`` was measured on, from their recorded ``eval_split``."""
    splits = {
        json.loads((r / "result.json").read_text())["config"].get("eval_split", "val")
        for r in runs
        if (r / "result.json").is_file()
    }
    if splits == {"unused"}:
        return "every train/val recording that each run did not train on (eval_split unused)"
    return "the validation split" if splits == {"val"} else f"the splits {sorted(splits)}"


def _budget_title(budget: str) -> str:
    return "All training recordings" if budget == "kall" else f"{budget[1:]} event recordings per class"


def _plot_scarcity(summary: dict[str, Any], out_png: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    budgets = [b for b in summary if b != "kall"]
    if not budgets:
        return
    fig, ax = plt.subplots(figsize=(5.5, 3.5))
    methods = sorted({m for b in budgets for m in summary[b]})
    xs = sorted(int(b[1:]) for b in budgets)
    for method in methods:
        points = [(k, summary[f"k{k}"][method]) for k in xs if method in summary[f"k{k}"]]
        ax.errorbar(
            [k for k, _ in points],
            [p["mean"] for _, p in points],
            yerr=[p["std"] or 0.0 for _, p in points],
            marker="o",
            capsize=3,
            label=method,
        )
    ax.set_xscale("log")
    ax.set_xticks(xs, [str(x) for x in xs])
    ax.minorticks_off()  # the log axis would label its minor ticks too
    ax.set_xlabel("event recordings per class used for training")
    ax.set_ylabel("validation accuracy")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tmkt experiment", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--out", required=True, type=Path)
    parser.add_argument("--methods", default="tmkt,event,finetune,he2024,tsm,tsm+mag,tsm+mrp")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--per-class", default="0", help="recordings per class, 0 = all (e.g. 0,5,10,25)")
    parser.add_argument("--parallel", type=int, default=1, help="runs trained at once (processes)")
    parser.add_argument("--report-only", action="store_true", help="only rebuild the report from runs")
    parser.add_argument("overrides", nargs="*", help="TrainConfig key=value for every run")
    args = parser.parse_args(argv)
    overrides = dict(item.split("=", 1) for item in args.overrides)
    methods = [m for m in args.methods.split(",") if m]
    seeds = [int(s) for s in args.seeds.split(",")]
    per_class = [int(k) for k in args.per_class.split(",")]
    args.out.mkdir(parents=True, exist_ok=True)
    if args.report_only:
        runs = [d for d in sorted(args.out.glob("k*/*")) if (d / "result.json").is_file()]
    else:
        runs = run_grid(args.store, args.out, methods, seeds, per_class, overrides, args.parallel)
    summary = write_report(args.out, runs)
    print(json.dumps(summary, indent=2))
    return 0
