"""Learning curves and result tables over run directories written by ``tmkt.train``, and the
pictures of a report (the r_m schedule of a run, example static, event and mixed frames).

Runs are grouped by method (``method/tag`` when the run's config has a ``tag``), so several seeds
of one method become one curve and one table row: mean and spread over seeds.
The spread is the sample standard deviation (ddof=1) over seeds; with one seed it is not defined
and the table says so.
"""

from __future__ import annotations

import json
from collections import defaultdict
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

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


def results_table(run_dirs: list[Path]) -> str:
    """Markdown table: per method, number of seeds and accuracy (%) as mean ± std over seeds."""
    lines = [
        "| method | seeds | val accuracy (%) | test accuracy (%) |",
        "| --- | --- | --- | --- |",
    ]
    for method, runs in group_runs(run_dirs).items():
        val = _cell([r.val_accuracy for r in runs])
        test = _cell([r.test_accuracy for r in runs])
        lines.append(f"| {method} | {len(runs)} | {val} | {test} |")
    return "\n".join(lines) + "\n"


def example_frames_png(store: str | Path, out_png: str | Path, cut: int | None = None, seed: int = 0) -> Path:
    """One training recording, a static image of its class, and their mix at cut ``t*`` (rows)."""
    import torch

    from tmkt.data import MixData, static_lut
    from tmkt.reference import apply_mix, expand_static

    data = MixData.from_store(store, split="train")
    rng = np.random.default_rng(seed)
    index = int(rng.integers(len(data.event_labels)))
    label = data.event_labels[index]
    candidates = np.flatnonzero(data.static_labels == label)
    static = static_lut(data.static_scale)[data.static_frames[rng.choice(candidates)]]
    T = data.time_steps
    cut = cut or T // 2 + 1
    events = torch.from_numpy(data.event_frames[index : index + 1].astype(np.float32))
    statics = expand_static(torch.from_numpy(static[None]), T)
    mixed = apply_mix(statics, events, torch.tensor([cut]))
    rows = {"static": statics[0], "event": events[0], f"mixed (t* = {cut})": mixed[0]}
    vmax = float(max(data.static_scale, 1.0))
    fig, axes = plt.subplots(3, T, figsize=(1.3 * T, 4.4), squeeze=False)
    for r, (name, seq) in enumerate(rows.items()):
        for t in range(T):
            ax = axes[r][t]
            # ON minus OFF shows polarity; a static frame is the same in both channels, so show one
            image = seq[t, 0] if name == "static" else seq[t, 1] - seq[t, 0]
            if name.startswith("mixed") and t + 1 < cut:
                image = seq[t, 0]
            ax.imshow(
                image.numpy(),
                cmap="gray" if image.min() >= 0 else "bwr",
                vmin=-vmax if image.min() < 0 else 0,
                vmax=vmax,
            )
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={t + 1}", fontsize=8)
        axes[r][0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"class {label}: static before t*, events from t* on", fontsize=9)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def ratio_schedule_png(config: dict[str, Any], out_png: str | Path, time_steps: int) -> Path:
    """Target event ratio r_m and the mixing probability p over training, as the trainer uses them:
    the schedule is the run's (its recorded ``config``, defaults from `TrainConfig`)."""
    from tmkt.config import TrainConfig, config_with
    from tmkt.mixing import solve_p

    known = {f.name for f in fields(TrainConfig)}
    schedule = config_with(TrainConfig(), {k: v for k, v in config.items() if k in known}).schedule()
    progress = np.linspace(0.0, 1.0, 201)
    ratio = np.array([schedule(x) for x in progress])
    p = np.array([solve_p(r, time_steps) for r in ratio])
    fig, ax = plt.subplots(figsize=(5.5, 3.2))
    ax.plot(progress, ratio, label="r_m (expected event fraction)")
    ax.plot(progress, p, "--", label=f"p (cut-point law, T={time_steps})")
    ax.set_xlabel("training progress")
    ax.set_ylim(0, 1)
    ax.set_title(f"r_m schedule: {schedule.kind} {schedule.start:g} -> {schedule.end:g}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    out_png = Path(out_png)
    fig.savefig(out_png, dpi=110)
    plt.close(fig)
    return out_png


def report_pictures(store: str | Path, run_config: dict[str, Any], out: str | Path) -> dict[str, Path]:
    """The pictures of a run's report, in ``out``: the r_m schedule of the run (``run_config``, the
    ``config`` of its result.json) at the store's T, and example static, event and mixed frames."""
    from storage.reader import DatasetReader

    out = Path(out)
    time_steps = DatasetReader(store).frame_spec().time_bins
    return {
        "schedule": ratio_schedule_png(run_config, out / "ratio_schedule.png", time_steps),
        "frames": example_frames_png(store, out / "frames.png"),
    }
