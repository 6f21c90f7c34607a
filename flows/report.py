"""Pictures for reports: example frames (static, event, mixed) and the r_m schedule."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


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

    plt = _pyplot()
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


def ratio_schedule_png(config: dict[str, Any], out_png: str | Path, time_steps: int = 10) -> Path:
    """Target event ratio r_m and the mixing probability p over training, as the trainer uses them."""
    from tmkt.mixing import RatioSchedule, solve_p

    schedule = RatioSchedule(
        kind=config.get("ratio_kind", "constant"),
        start=float(config.get("ratio_start", 0.5)),
        end=float(config.get("ratio_end", 0.5)),
        power=float(config.get("ratio_power", 2.0)),
    )
    progress = np.linspace(0.0, 1.0, 201)
    ratio = np.array([schedule(x) for x in progress])
    p = np.array([solve_p(r, time_steps) for r in ratio])
    plt = _pyplot()
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
