"""Learning curves and result tables over run directories written by ``tmkt.train``, the pictures
of a report (the r_m schedule of a run, example static, event and mixed frames), and pictures of a
store's frames (``show_store``, behind ``tmkt store show``).

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
from PIL import Image

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
    # per inference on the validation recordings (`tmkt.energy`); None for runs that did not count it
    firing_rate: float | None = None
    synops: float | None = None


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
        firing_rate=(result.get("energy") or {}).get("firing_rate"),
        synops=(result.get("energy") or {}).get("synops"),
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


def _cell(values: list[float | None], scale: float = 100.0) -> str:
    """Mean ± std over seeds of ``values * scale`` (percent by default)."""
    present = [v * scale for v in values if v is not None]
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
    """Markdown table: per method, the number of seeds, the recordings of each split (n), the
    accuracy (%) as mean ± std over seeds, and what an inference costs: the mean firing rate of the
    spiking layers and the SynOps (millions), as mean ± std over seeds."""
    lines = [
        "| method | seeds | train n | val n | val accuracy (%) | test n | test accuracy (%) "
        "| firing rate (%) | SynOps (M) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for method, runs in group_runs(run_dirs).items():
        val = _cell([r.val_accuracy for r in runs])
        test = _cell([r.test_accuracy for r in runs])
        n = {key: _count(runs, key) for key in ("train_n", "val_n", "test_n")}
        rate = _cell([r.firing_rate for r in runs])
        synops = _cell([r.synops for r in runs], scale=1e-6)
        lines.append(
            f"| {method} | {len(runs)} | {n['train_n']} | {n['val_n']} | {val} | {n['test_n']} | {test} "
            f"| {rate} | {synops} |"
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
    _draw_frame_rows(rows, cut, float(max(data.static_scale, 1.0)), f"class {label}", Path(out_png))
    return Path(out_png)


def _draw_frame_rows(rows: dict[str, Any], cut: int, static_max: float, title: str, out_png: Path) -> None:
    """Static time-steps in gray, event time-steps as ON minus OFF counts (red ON, blue OFF), with a
    colour scale for each and a legend for the polarity colours."""
    from matplotlib.colors import Normalize
    from matplotlib.patches import Patch

    T = next(iter(rows.values())).shape[0]
    event_max = max(1.0, float(max(abs(seq[:, 1] - seq[:, 0]).max() for seq in rows.values())))
    gray = Normalize(0.0, static_max)
    signed = Normalize(-event_max, event_max)
    fig, axes = plt.subplots(3, T, figsize=(1.3 * T + 1.6, 4.9), squeeze=False)
    for r, (name, seq) in enumerate(rows.items()):
        for t in range(T):
            ax = axes[r][t]
            # a static frame is the same in both channels: show one; events show ON minus OFF
            static_step = name == "static" or (name.startswith("mixed") and t + 1 < cut)
            if static_step:
                ax.imshow(seq[t, 0].numpy(), cmap="gray", norm=gray)
            else:
                ax.imshow((seq[t, 1] - seq[t, 0]).numpy(), cmap="bwr", norm=signed)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 0:
                ax.set_title(f"t={t + 1}", fontsize=8)
        axes[r][0].set_ylabel(name, fontsize=8)
    fig.suptitle(f"{title}: static before t*, events from t* on", fontsize=9)
    fig.tight_layout(rect=(0, 0.07, 0.86, 1))
    for norm, cmap, label, bottom in (
        (signed, "bwr", "events per pixel: ON minus OFF", 0.55),
        (gray, "gray", "static pixel value (in events)", 0.12),
    ):
        bar_ax = fig.add_axes((0.88, bottom, 0.018, 0.33))
        bar = fig.colorbar(plt.cm.ScalarMappable(norm=norm, cmap=cmap), cax=bar_ax)
        bar.set_label(label, fontsize=7)
        bar.ax.tick_params(labelsize=7)
    fig.legend(
        handles=[
            Patch(color="red", label="ON events (brightness up)"),
            Patch(color="blue", label="OFF events (brightness down)"),
            Patch(facecolor="white", edgecolor="black", label="no event / equal ON and OFF"),
        ],
        loc="lower center",
        ncol=3,
        fontsize=7,
        frameon=False,
    )
    fig.savefig(out_png, dpi=110)
    plt.close(fig)


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


# ---------------------------------------------------------------------------------------------
# pictures of a store's frames

#: RGB of each polarity channel. OFF and ON add up to grey where both are equal, so a static image
#: (the same values in both channels, as the loader feeds it) shows in grey beside coloured events.
POLARITY_COLOURS = {0: (0.0, 1.0, 1.0), 1: (1.0, 0.0, 0.0)}
POLARITY_NAMES = {0: "OFF (p=0)", 1: "ON (p=1)"}
SHOW_KINDS = ("events", "static", "mixed")
PANELS_PER_ROW = 10


class ShowError(ValueError):
    """An index, split, kind or cut that does not fit the store (one line for the user)."""


@dataclass
class ShowConfig:
    """What to draw: recording (or static image) ``index``, counted within ``split`` when given.

    ``mixed``: the static image before step ``cut`` (1-based, the loader's ``t*``; 0 = the middle)
    and the recording's frames from it on, the static paired as ``static_index`` (-1 = the first
    static image of the recording's class) and scaled as the loader scales it.
    """

    index: int
    split: str | None = None
    kind: str = "events"
    cut: int = 0
    static_index: int = -1
    frames_key: str | None = None
    snapshot: str | None = None

    def __post_init__(self) -> None:
        if self.kind not in SHOW_KINDS:
            raise ShowError(f"kind must be one of {SHOW_KINDS}, got {self.kind!r}")


@dataclass
class FrameSequence:
    """Frames to draw: float32 ``[T, 2, H, W]`` with a title per step and one for the picture."""

    frames: np.ndarray
    step_titles: list[str]
    title: str
    unit: str  # what the colour scale measures
    static_steps: int = 0  # steps drawn from a static image (grey in the legend)


def _pick(count: int, index: int, split: str | None, splits: np.ndarray, what: str) -> int:
    """The store-wide position of item ``index`` of ``split`` (or of all items)."""
    from storage.schema import SPLITS

    if split is not None and split not in SPLITS:
        raise ShowError(f"unknown split {split!r}; expected one of {SPLITS}")
    positions = np.arange(count) if split is None else np.flatnonzero(splits == SPLITS.index(split))
    if not 0 <= index < len(positions):
        where = f"split {split!r}" if split else "the store"
        raise ShowError(f"{what} index {index} out of range: {where} holds {len(positions)}")
    return int(positions[index])


def load_sequence(store: str | Path, cfg: ShowConfig) -> FrameSequence:
    """Read what ``cfg`` names from a store snapshot."""
    from storage.reader import DatasetReader
    from tmkt.data import static_lut, static_scale_of

    reader = DatasetReader(store, cfg.snapshot)
    try:
        spec = reader.frame_spec(cfg.frames_key)
    except KeyError as err:
        raise ShowError(str(err).strip("'\"")) from None
    key, classes = spec.key, reader.classes
    if cfg.kind == "static":
        j = _pick(reader.n_images, cfg.index, cfg.split, reader.image_splits, "static image")
        image = reader.static_frames(key)[j].astype(np.float32)
        title = f"static image {j} ({classes[reader.image_labels[j]]})"
        return FrameSequence(np.stack([image, image])[None], ["static"], title, "intensity (0-255)", 1)
    i = _pick(reader.n_recordings, cfg.index, cfg.split, reader.splits, "recording")
    events = reader.event_frames(key, np.array([i]))[0].astype(np.float32)
    T, label = len(events), int(reader.labels[i])
    title = f"recording {i} ({classes[label]}), {T} bins of {spec.size[0]}x{spec.size[1]}"
    sources = reader.attrs.get("recording_sources")
    title += f", {Path(sources[i]).name}" if sources else ""
    if cfg.kind == "events":
        return FrameSequence(events, [f"t={t}" for t in range(1, T + 1)], title, "events per pixel and bin")
    cut = cfg.cut or T // 2 + 1
    if not 1 <= cut <= T + 1:
        raise ShowError(f"cut must lie in 1..{T + 1} (T+1 = all static), got {cut}")
    if cfg.static_index >= 0:
        j = _pick(reader.n_images, cfg.static_index, None, reader.image_splits, "static image")
    else:
        same = np.flatnonzero(reader.image_labels == label)
        if not len(same):
            raise ShowError(f"no static image of class {classes[label]!r} to pair recording {i} with")
        j = int(same[0])
    static = reader.static_frames(key)[j]
    scaled = static_lut(static_scale_of(events[None], static[None]))[static]
    frames = events.copy()
    frames[: cut - 1] = scaled
    steps = [f"t={t} {'static' if t < cut else 'events'}" for t in range(1, T + 1)]
    title += f" after static image {j} (cut t*={cut})"
    return FrameSequence(frames, steps, title, "events per pixel and bin; static scaled to match", cut - 1)


def polarity_rgb(frames: np.ndarray, vmax: float) -> np.ndarray:
    """float ``[T, H, W, 3]`` in 0..1: each polarity's count / ``vmax`` in its colour, added up."""
    scaled = np.clip(frames / vmax, 0.0, 1.0)
    colours = np.array([POLARITY_COLOURS[0], POLARITY_COLOURS[1]])  # [2, 3]
    return np.clip(np.einsum("tphw,pc->thwc", scaled, colours), 0.0, 1.0)


def _scale_and_legend(fig, axes, seq: FrameSequence, vmax: float) -> None:
    """One colour bar per colour drawn (0..vmax) and a legend of the polarity colours."""
    from matplotlib.cm import ScalarMappable
    from matplotlib.colors import LinearSegmentedColormap, Normalize
    from matplotlib.patches import Patch

    shown = {}
    if seq.static_steps < len(seq.frames):
        shown.update({POLARITY_NAMES[p]: POLARITY_COLOURS[p] for p in (1, 0)})
    if seq.static_steps:
        shown["static (both channels)"] = (1.0, 1.0, 1.0)
    for name, colour in shown.items():
        cmap = LinearSegmentedColormap.from_list(name, [(0, 0, 0), colour])
        bar = fig.colorbar(ScalarMappable(Normalize(0, vmax), cmap), ax=axes, shrink=0.8, pad=0.01)
        bar.set_label(name, fontsize=8)
        bar.ax.tick_params(labelsize=7)
    handles = [Patch(facecolor=colour, edgecolor="black", label=name) for name, colour in shown.items()]
    fig.legend(handles=handles, loc="outside lower center", ncol=len(handles), fontsize=8, frameon=False)
    fig.suptitle(f"{seq.title}\ncolour scale: {seq.unit}", fontsize=9)


def sequence_figure(seq: FrameSequence, steps: list[int] | None = None):
    """A figure with one panel per step (``steps``, default all), ``PANELS_PER_ROW`` to a row.

    Returns ``(figure, panels)``; ``panels[k]`` is the axes of the k-th step drawn.
    """
    steps = list(range(len(seq.frames))) if steps is None else steps
    vmax = float(seq.frames.max()) or 1.0
    rgb = polarity_rgb(seq.frames[steps], vmax)
    cols = min(len(steps), PANELS_PER_ROW)
    rows = -(-len(steps) // cols)
    fig, grid = plt.subplots(
        rows, cols, figsize=(1.6 * cols + 1.6, 1.6 * rows + 1.1), squeeze=False, layout="constrained"
    )
    panels = []
    for k, ax in enumerate(grid.flat):
        ax.set_axis_off()
        if k < len(steps):
            ax.imshow(rgb[k], interpolation="nearest")
            ax.set_title(seq.step_titles[steps[k]], fontsize=8)
            panels.append(ax)
    _scale_and_legend(fig, grid, seq, vmax)
    return fig, panels


def _figure_image(fig) -> Image.Image:
    fig.canvas.draw()
    return Image.fromarray(np.asarray(fig.canvas.buffer_rgba())[..., :3].copy())


def write_sequence(seq: FrameSequence, out: str | Path, dpi: int = 100) -> Path:
    """A PNG with every step side by side, or an animated GIF (one frame per step) for ``*.gif``."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    if out.suffix.lower() == ".gif":
        pictures = []
        for t in range(len(seq.frames)):
            fig, _ = sequence_figure(seq, [t])
            fig.set_dpi(dpi)
            pictures.append(_figure_image(fig))
            plt.close(fig)
        pictures[0].save(out, save_all=True, append_images=pictures[1:], duration=400, loop=0)
    else:
        fig, _ = sequence_figure(seq)
        fig.savefig(out, dpi=dpi)
        plt.close(fig)
    return out


def show_store(store: str | Path, cfg: ShowConfig, out: str | Path) -> Path:
    """``tmkt store show``: draw what ``cfg`` names from ``store`` into ``out`` (PNG or GIF)."""
    return write_sequence(load_sequence(store, cfg), out)
