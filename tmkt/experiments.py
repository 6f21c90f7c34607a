"""`tmkt experiment`: a grid of training runs on one store, and its report.

Every run is an ordinary `tmkt train` run (same trainer, same budget, its own folder with
`result.json`, `metrics.jsonl` and `checkpoint.pt`). Methods are compared on the *validation*
split; the test split, when the store has one, is only read for the final numbers. The report:

- `results.md`: mean ± std over seeds per method (and per recordings-per-class budget),
- `curves.png`: validation accuracy per epoch per method,
- `scarcity.png`: accuracy against the number of event recordings per class used for training.
"""

from __future__ import annotations

import argparse
import json
import logging
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
) -> list[Path]:
    """Train every (budget, method, seed); runs already finished are kept, not repeated."""
    from tmkt.train import TrainConfig, config_with

    runs = []
    total = len(methods) * len(seeds) * len(per_class)
    started = time.perf_counter()
    for k in per_class:
        for method in methods:
            for seed in seeds:
                run_dir = out / f"k{k or 'all'}" / f"{method}-s{seed}"
                runs.append(run_dir)
                if (run_dir / "result.json").is_file():
                    continue
                config = config_with(
                    TrainConfig(store=store, method=method, seed=seed, out=str(run_dir)),
                    {**overrides, "max_recordings_per_class": k, "tag": "", "progress_bar": False},
                )
                from tmkt.train import train

                result = train(config)
                done = len([r for r in runs if (r / "result.json").is_file()])
                log.info(
                    "[%d/%d] k=%s %s seed %d: val %.4f (%.0f s elapsed)",
                    done,
                    total,
                    k or "all",
                    method,
                    seed,
                    result["val_accuracy"],
                    time.perf_counter() - started,
                )
    return runs


def write_report(out: Path, runs: list[Path]) -> dict[str, Any]:
    from tmkt.plots import load_run, mean_std, plot_curves, results_table

    budgets = sorted({r.parent.name for r in runs}, key=lambda name: (name != "kall", name))
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
        sections.append(f"## {_budget_title(budget)}\n\n{results_table(group)}\n")
    _plot_scarcity(summary, out / "scarcity.png")
    (out / "summary.json").write_text(json.dumps(summary, indent=2))
    (out / "results.md").write_text(
        "# Results\n\nValidation accuracy on event recordings only (mean ± std over seeds).\n\n"
        + "\n".join(sections)
        + "\n![curves](curves.png)\n\n![scarcity](scarcity.png)\n"
    )
    return summary


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
        runs = run_grid(args.store, args.out, methods, seeds, per_class, overrides)
    summary = write_report(args.out, runs)
    print(json.dumps(summary, indent=2))
    return 0
