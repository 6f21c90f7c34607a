"""Learning curves and result tables over run directories written by ``tmkt.train``.

Runs are grouped by method (``method/tag`` when the run's config has a ``tag``), so several seeds
of one method become one curve and one table row: mean and spread over seeds.
The spread is the sample standard deviation (ddof=1) over seeds; with one seed it is not defined
and the table says so.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only; no display on training machines

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


@dataclass
class Run:
    """What the plots need from one run directory."""

    path: Path
    method: str
    seed: int
    val_accuracy: float | None
    test_accuracy: float | None
    curve: dict[int, float] = field(default_factory=dict)  # epoch -> validation accuracy
    counts: dict[str, int | None] = field(default_factory=dict)  # recordings: train_n, val_n, test_n


def load_run(run_dir: str | Path) -> Run:
    run_dir = Path(run_dir)
    result_path = run_dir / "result.json"
    if not result_path.is_file():
        raise FileNotFoundError(f"{run_dir}: no result.json (the run did not finish)")
    result = json.loads(result_path.read_text())
    tag = (result.get("config") or {}).get("tag") or ""
    curve: dict[int, float] = {}
    metrics = run_dir / "metrics.jsonl"
    if metrics.is_file():
        for line in metrics.read_text().splitlines():
            row = json.loads(line)
            if row.get("val_accuracy") is not None:
                curve[int(row["epoch"])] = float(row["val_accuracy"])
    return Run(
        path=run_dir,
        method=result["method"] + (f"/{tag}" if tag else ""),
        seed=int(result["seed"]),
        val_accuracy=result.get("val_accuracy"),
        test_accuracy=result.get("test_accuracy"),
        curve=curve,
        counts={key: result.get(key) for key in ("train_n", "val_n", "test_n")},
    )


def group_runs(run_dirs: list[Path]) -> dict[str, list[Run]]:
    groups: dict[str, list[Run]] = defaultdict(list)
    for run_dir in run_dirs:
        run = load_run(run_dir)
        groups[run.method].append(run)
    return dict(sorted(groups.items()))


def mean_std(values: list[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (None for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def plot_curves(run_dirs: list[Path], out_png: str | Path) -> Path:
    """Validation accuracy vs epoch, one line per method (mean over seeds) with a ±1 std band."""
    groups = group_runs(run_dirs)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for method, runs in groups.items():
        # only epochs every seed reached, so the mean is over the same runs at each point
        epochs = sorted(set.intersection(*(set(r.curve) for r in runs)))
        if not epochs:
            continue
        acc = np.array([[r.curve[e] for e in epochs] for r in runs]) * 100.0
        x = np.asarray(epochs) + 1  # epochs completed
        mean = acc.mean(0)
        line = ax.plot(x, mean, marker="o", markersize=3, label=f"{method} (n={len(runs)})")[0]
        if len(runs) > 1:
            std = acc.std(0, ddof=1)
            ax.fill_between(x, mean - std, mean + std, color=line.get_color(), alpha=0.2)
    ax.set_xlabel("epoch")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    out_png = Path(out_png)
    out_png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out_png, dpi=120)
    plt.close(fig)
    return out_png


def _cell(values: list[float | None]) -> str:
    present = [v * 100.0 for v in values if v is not None]
    if not present:
        return "n/a"
    mean, std = mean_std(present)
    return f"{mean:.2f}" if std is None else f"{mean:.2f} ± {std:.2f}"


def _count(runs: list[Run], key: str) -> str:
    """The number of recordings behind a column: one value, or the range when seeds differ."""
    values = sorted({r.counts.get(key) for r in runs if r.counts.get(key) is not None})
    if not values:
        return "?"
    return str(values[0]) if len(values) == 1 else f"{values[0]}-{values[-1]}"


def results_table(run_dirs: list[Path]) -> str:
    """Markdown table: per method, the number of seeds, the recordings of each split (n) and the
    accuracy (%) as mean ± std over seeds."""
    lines = [
        "| method | seeds | train n | val n | val accuracy (%) | test n | test accuracy (%) |",
        "| --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, runs in group_runs(run_dirs).items():
        val = _cell([r.val_accuracy for r in runs])
        test = _cell([r.test_accuracy for r in runs])
        n = {key: _count(runs, key) for key in ("train_n", "val_n", "test_n")}
        lines.append(
            f"| {method} | {len(runs)} | {n['train_n']} | {n['val_n']} | {val} | {n['test_n']} | {test} |"
        )
    return "\n".join(lines) + "\n"


def comparisons(run_dirs: list[Path], baseline: str = "event") -> dict[str, str]:
    """Per method, one sentence against ``baseline`` on validation accuracy (see ``tmkt.stats``)."""
    from tmkt.stats import compare

    groups = group_runs(run_dirs)
    if baseline not in groups:
        return {}
    base = [r.val_accuracy for r in groups[baseline] if r.val_accuracy is not None]
    said = {}
    for method, runs in groups.items():
        values = [r.val_accuracy for r in runs if r.val_accuracy is not None]
        if method != baseline and values and base:
            said[method] = compare(method, values, baseline, base).text
    return said
