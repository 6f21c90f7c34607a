"""Training throughput per backbone, and how much of each step is spent waiting for data.

    tmkt bench train --store PATH --json OUT [--steps N] [--batch-size B] [--backbones small,vgg_snn]
        [--max-resident-bytes N] [--compile]

Each backbone trains the TMKT objective (mixed batches, MAG + MRP heads) on the store's training
split at the store's frame size, one forward pass per step (``l_event=0``: the trainer's default
adds a second, on the pure event sequence, which doubles the step). ``data_wait_fraction`` is the
time blocked in ``next(loader)`` divided by the whole step time: near 0 means the loader keeps up
and the model is the bottleneck.
The first ``warmup`` steps (kernel selection, allocator growth; with ``--compile``, compilation)
are not timed. ``--max-resident-bytes`` loads the split as training does under that budget, so a
small one measures the streaming loader (``tmkt.streaming``); ``--compile`` times each backbone
again under ``torch.compile``, in the same run, and reports the ratio.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from contextlib import nullcontext
from pathlib import Path
from typing import Any

import torch

from tmkt.methods import MethodConfig, build_method
from tmkt.mixing import RatioSchedule
from tmkt.models import BACKBONES, ModelConfig, build_model
from tmkt.system import to_device


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def bench_backbone(
    data,
    backbone: str,
    steps: int = 10,
    batch_size: int = 8,
    device: str | torch.device = "cpu",
    warmup: int = 2,
    num_threads: int = 2,
    compiled: bool = False,
) -> dict[str, Any]:
    """Time ``steps`` training steps of ``backbone`` on ``data`` (a MixData, resident or streamed)
    with the mixing loader, the model under ``torch.compile`` if ``compiled``."""
    from tmkt.loader import LoaderConfig, endless
    from tmkt.streaming import make_loader

    device = torch.device(device)
    torch.manual_seed(0)
    method = build_method(MethodConfig(schedule=RatioSchedule("constant", 0.5, 0.5), l_event=0.0))
    T = data.event_frames.shape[1]
    model = build_model(ModelConfig(backbone=backbone), data.num_classes, T).to(device).train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3)
    model = torch.compile(model) if compiled else model
    cfg = LoaderConfig(
        batch_size=batch_size,
        mode="mix",
        shuffle=True,
        seed=0,
        device=device.type,
        num_threads=num_threads,
        drop_last=True,
    )
    loader = make_loader(data, cfg)
    if len(loader) == 0:
        raise ValueError(f"the training split holds fewer than batch_size={batch_size} recordings")
    autocast = torch.autocast("cuda", dtype=torch.bfloat16) if device.type == "cuda" else nullcontext()
    batches = endless(loader)
    wait = total = 0.0
    samples = 0
    for i in range(warmup + steps):
        method.on_step(loader, 0.5)
        t0 = time.perf_counter()
        batch = next(batches)
        batch = to_device(batch, device)
        _sync(device)
        t1 = time.perf_counter()
        with autocast:
            loss = method.loss(model, batch, 0.5)["loss"]
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        _sync(device)
        t2 = time.perf_counter()
        if i >= warmup:
            wait, total, samples = wait + (t1 - t0), total + (t2 - t0), samples + batch.labels.shape[0]
    return {
        "samples_per_s": samples / total,
        "data_wait_fraction": wait / total,
        "step_ms": 1000.0 * total / steps,
        "steps": steps,
        "parameters": sum(p.numel() for p in model.parameters()),
        "loader": type(loader).__name__,
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="tmkt bench train", description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", required=True)
    parser.add_argument("--json", required=True, help="output JSON file")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=None, help="default: 8 on CPU, 64 on CUDA")
    parser.add_argument("--backbones", default=",".join(BACKBONES))
    parser.add_argument("--snapshot", default=None)
    parser.add_argument("--device", default="auto")
    parser.add_argument(
        "--max-resident-bytes", type=int, default=0, help="the split's memory budget; 0 = resident"
    )
    parser.add_argument("--compile", action="store_true", help="also time each backbone compiled")
    args = parser.parse_args(argv)

    from tmkt.streaming import StreamConfig, load_split

    device = torch.device(
        ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" else args.device
    )
    batch_size = args.batch_size or (64 if device.type == "cuda" else 8)
    budget = StreamConfig(max_resident_bytes=args.max_resident_bytes or 1 << 62)
    data = load_split(args.store, snapshot=args.snapshot, split="train", stream=budget)
    report: dict[str, Any] = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "torch_threads": torch.get_num_threads(),
        "store": args.store,
        "store_snapshot": getattr(data, "snapshot", ""),
        "frames_shape": list(data.event_frames.shape[1:]),
        "batch_size": batch_size,
        "amp": "bf16" if device.type == "cuda" else "off",
        "max_resident_bytes": args.max_resident_bytes,
        "backbones": {},
    }
    for name in [b.strip() for b in args.backbones.split(",") if b.strip()]:
        if name not in BACKBONES:
            parser.error(f"unknown backbone {name!r}; expected some of {sorted(BACKBONES)}")
        result = bench_backbone(data, name, args.steps, batch_size, device, args.warmup)
        if args.compile:
            timing = (data, name, args.steps, batch_size, device, args.warmup)
            result["compiled"] = bench_backbone(*timing, compiled=True)
            result["compiled_speedup"] = result["compiled"]["samples_per_s"] / result["samples_per_s"]
        report["backbones"][name] = result
        print(name, json.dumps(result), file=sys.stderr)
    out = Path(args.json)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2))
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
