"""Train a spiking network with TMKT or a baseline: one readable loop, in the spirit of nanoGPT.

    tmkt train --store PATH --method tmkt --out runs/tmkt-s0 [--config cfg.toml] [key=value ...]
    torchrun --nproc-per-node 2 -m tmkt.train --store PATH --method tmkt --out runs/ddp

Configuration (`tmkt.config`): the ``TrainConfig`` defaults, then ``--config FILE`` (JSON or TOML),
then the named flags, then ``key=value`` overrides typed by the dataclass fields; ``tmkt train --help``
lists every key. Run records are `tmkt.records`, device and RNG helpers `tmkt.system`, the data,
loaders and optimizer `tmkt.train_setup`; this module is the loop. Validation data is the store's
"val" split (the split is made once, when the store is built, so every method and seed sees the same
one), or with ``eval_split=unused`` every train/val recording the run does not train on; the "test"
split, when the store has one, is evaluated once at the end. The budget is ``epochs``, raised on small
sets to ``min_steps`` optimizer steps (`tmkt.config.budget_epochs`).

Outputs in ``out``: ``run.json`` (at start), ``metrics.jsonl`` (training rows every ``log_every``
steps, a ``val_accuracy`` row per epoch), ``tb/`` (TensorBoard), ``ckpt.pt`` (resumable state every
``checkpoint_every`` steps and at the end), ``checkpoint.pt`` (final weights + primitive metadata,
loadable with ``weights_only=True``) and ``result.json``.

Resume (``resume=true``) restores model, optimizer, step, RNG states and the loader position; the
loader is replayed from the start of the interrupted epoch (with the same per-step ratios) and the
batches already trained on are skipped, so a resumed run continues exactly as an uninterrupted one.
Resuming a run folder without ``ckpt.pt`` is an error, never a silent fresh start over its metrics.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from tmkt.config import TrainConfig, budget_epochs
from tmkt.config import main as config_main
from tmkt.energy import CostMeter
from tmkt.evaluate import accuracy_on, checkpoint_metadata, eval_loader
from tmkt.methods import Method, build_method, require_statics
from tmkt.models import build_model
from tmkt.records import (
    MetricsLog,
    host_record,
    load_resume_state,
    save_resume_state,
    save_weights,
    write_json,
)
from tmkt.system import (
    Dist,
    amp_context,
    device_kind,
    gather_rng,
    model_for_eval,
    resolve_device,
    seed_all,
    set_rng_state,
    setup_distributed,
    to_device,
)
from tmkt.train_setup import Datasets, in_memory_datasets, load_datasets, lr_at, make_optimizer, train_loader


@dataclass
class Run:
    """Everything one training run holds while it runs."""

    cfg: TrainConfig
    ddp: Dist
    device: torch.device
    out: Path
    ds: Datasets
    method: Method
    raw_model: torch.nn.Module
    optimizer: torch.optim.Optimizer
    loaders: dict[str, Any]  # loader mode -> MixLoader
    modes: list[str]  # loader mode of each epoch
    epoch_steps: list[int]
    model: torch.nn.Module | None = None  # raw_model, compiled and/or under DDP
    log: MetricsLog | None = None
    val: Any = None
    seen: Any = None  # file of trained sample indices (record_indices)

    @property
    def total_steps(self) -> int:
        return sum(self.epoch_steps)


@dataclass
class Progress:
    """Where a run is; a checkpoint saves it and a resume restores it."""

    step: int = 0
    epoch: int = 0
    position: int = 0  # batches of this epoch already trained on
    resumed_lines: int | None = None  # metrics rows kept on resume; None: a fresh run
    stopped: bool = False  # max_steps ended the run before its last epoch
    val_accuracy: float | None = None
    val_n: int = 0  # recordings behind val_accuracy
    train_time: float = 0.0
    train_samples: int = 0


def train(cfg: TrainConfig, data=None, val_data=None, test_data=None) -> dict[str, Any]:
    """Train as configured and return the result (also written to ``out/result.json``).

    ``data`` (a ``tmkt.data.MixData``) bypasses the store, for tests and notebooks; ``val_data`` and
    ``test_data`` are then optional.
    """
    ddp = setup_distributed(device_kind(cfg.device))
    device = resolve_device(cfg.device, ddp.local_rank)
    if cfg.backbone == "auto":  # recorded resolved, so result.json and checkpoints name the real model
        cfg = dataclasses.replace(cfg, backbone="vgg_snn" if device.type == "cuda" else "cnn3")
    seed_all(cfg.seed + ddp.rank)
    out = Path(cfg.out)
    # a user's mistake (store, resume without checkpoint, method without statics) writes nothing
    ds = in_memory_datasets(data, val_data, test_data) if data is not None else load_datasets(cfg)
    state = load_resume_state(out, device) if cfg.resume else None
    run = prepare(cfg, ddp, device, out, ds)
    out.mkdir(parents=True, exist_ok=True)
    progress = resume(run, state)
    open_outputs(run, progress)
    train_epochs(run, progress)
    save_checkpoint(run, progress)
    result = finish(run, progress) if ddp.is_main else {}
    run.log.close()
    if ddp.world_size > 1:
        dist.barrier()
    return result


def prepare(cfg: TrainConfig, ddp: Dist, device: torch.device, out: Path, ds: Datasets) -> Run:
    """The method, the model on ``device``, its optimizer, and one loader per loader mode.

    ``epochs`` is resolved here by the budget rule, like the backbone, so that run.json, ckpt.pt and
    result.json record the epochs actually run.
    """
    T = ds.train.event_frames.shape[1]
    method = build_method(cfg.method_config())
    require_statics(method, cfg.epochs, len(ds.train.static_frames), cfg.store)
    raw_model = build_model(cfg.model_config(method.mag_head, method.mrp_head), ds.train.num_classes, T)
    raw_model = raw_model.to(device)
    optimizer = make_optimizer(raw_model, cfg)
    first = method.mode_for_epoch(0, cfg.epochs)
    loaders = {first: train_loader(ds.train, cfg, first, ddp, device, method.wants_events)}
    cfg = dataclasses.replace(cfg, epochs=budget_epochs(cfg, len(loaders[first])))
    modes = [method.mode_for_epoch(e, cfg.epochs) for e in range(cfg.epochs)]
    for mode in dict.fromkeys(modes):
        if mode not in loaders:
            loaders[mode] = train_loader(ds.train, cfg, mode, ddp, device, method.wants_events)
    epoch_steps = [len(loaders[m]) for m in modes]
    return Run(cfg, ddp, device, out, ds, method, raw_model, optimizer, loaders, modes, epoch_steps)


def resume(run: Run, state: dict[str, Any] | None) -> Progress:
    """A fresh start (no ``state``), or exactly where the checkpoint ``state`` was taken."""
    if state is None:
        return Progress()
    run.raw_model.load_state_dict(state["model"])
    run.optimizer.load_state_dict(state["optimizer"])
    states = state["rng"]
    set_rng_state(states[run.ddp.rank] if run.ddp.rank < len(states) else states[0])
    return Progress(state["step"], state["epoch"], state["position"], state["metrics_lines"])


def open_outputs(run: Run, progress: Progress) -> None:
    """Compile and wrap the model, open the metrics log, write run.json, make the validation loader."""
    cfg, ddp, device = run.cfg, run.ddp, run.device
    model: torch.nn.Module = torch.compile(run.raw_model) if cfg.compile else run.raw_model
    if ddp.world_size > 1:
        model = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    run.model = model
    run.log = MetricsLog(run.out, ddp.is_main, progress.resumed_lines)
    if ddp.is_main and progress.resumed_lines is None:
        write_json(run.out / "run.json", host_record(cfg, run.ds.snapshot, ddp, device))
    if cfg.record_indices:
        mode = "a" if progress.resumed_lines is not None else "w"
        run.seen = (run.out / f"indices_rank{ddp.rank}.jsonl").open(mode)
    if run.ds.val is not None:
        run.val = eval_loader(run.ds.val, cfg.eval_batch_size or cfg.batch_size, device)


def save_checkpoint(run: Run, progress: Progress) -> None:
    states = gather_rng(run.ddp)  # collective: every rank calls it
    if run.ddp.is_main:
        payload = {
            "model": run.raw_model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "step": progress.step,
            "epoch": progress.epoch,
            "position": progress.position,
            "rng": states,
            "metrics_lines": run.log.lines,
            "config": asdict(run.cfg),
        }
        save_resume_state(run.out, payload)


def train_epochs(run: Run, progress: Progress) -> None:
    """Epochs from ``progress`` on, validating every ``val_every`` and after the last, until the last
    or ``max_steps``."""
    from tqdm import tqdm

    cfg = run.cfg
    show = cfg.progress_bar and run.ddp.is_main
    bar = tqdm(total=run.total_steps, initial=progress.step, disable=not show, unit="step")
    run.model.train()
    while progress.epoch < cfg.epochs and not progress.stopped:
        progress.stopped = train_epoch(run, progress, bar)
        if progress.stopped:
            break
        last = progress.epoch == cfg.epochs - 1
        due = last or (cfg.val_every and (progress.epoch + 1) % cfg.val_every == 0)
        if run.val is not None and run.ddp.is_main and due:
            validate(run, progress, bar)
        progress.epoch, progress.position = progress.epoch + 1, 0
        if cfg.max_steps and progress.step >= cfg.max_steps:
            progress.stopped = progress.epoch < cfg.epochs
    bar.close()
    if run.seen is not None:
        run.seen.close()


def train_epoch(run: Run, progress: Progress, bar: Any) -> bool:
    """The rest of epoch ``progress.epoch``; True when ``max_steps`` stopped it before its end.

    A resumed epoch is replayed from its start (the same draws, the same ratios) and the batches
    already trained on are skipped.
    """
    cfg, epoch = run.cfg, progress.epoch
    steps = run.epoch_steps[epoch]
    if progress.position >= steps:
        return False
    loader = run.loaders[run.modes[epoch]]
    loader.set_epoch(epoch)
    first_step = sum(run.epoch_steps[:epoch])
    batches = iter(loader)
    for i in range(steps):
        fraction = (first_step + i) / run.total_steps
        r_m = run.method.on_step(loader, fraction)
        t0 = time.perf_counter()
        batch = next(batches)
        if i < progress.position:
            continue  # replaying the interrupted epoch up to where the checkpoint was taken
        train_step(run, progress, batch, fraction, r_m, t0, i, bar)
        if cfg.checkpoint_every and progress.step % cfg.checkpoint_every == 0:
            save_checkpoint(run, progress)
        if cfg.max_steps and progress.step >= cfg.max_steps:
            return progress.position < steps
    return False


def train_step(
    run: Run, progress: Progress, batch: Any, fraction: float, r_m: Any, t0: float, i: int, bar: Any
) -> None:
    """One optimizer step on batch ``i`` of the epoch, and its metrics row every ``log_every`` steps."""
    cfg = run.cfg
    t1 = time.perf_counter()
    batch = to_device(batch, run.device)
    lr = lr_at(progress.step, run.total_steps, cfg)
    losses = optimize(run.model, run.method, run.optimizer, batch, fraction, lr, cfg, run.device)
    progress.step, progress.position = progress.step + 1, i + 1
    if run.seen is not None and batch.index is not None:
        run.seen.write(json.dumps({"step": progress.step, "index": batch.index.tolist()}) + "\n")
    logging = progress.step % cfg.log_every == 0 or progress.step == run.total_steps
    # float() waits for the device, so timings of logged steps are complete
    row = {k: float(v.detach()) for k, v in losses.items()} if logging else {}
    dt = time.perf_counter() - t0
    n = batch.labels.shape[0] * run.ddp.world_size
    progress.train_time, progress.train_samples = progress.train_time + dt, progress.train_samples + n
    bar.update(1)
    if logging:
        row.update(step=progress.step, epoch=progress.epoch, lr=lr, samples_per_s=n / dt)
        row.update(data_wait_fraction=(t1 - t0) / dt, r_m=r_m)
        run.log.write(row)
        bar.set_postfix(loss=f"{row['loss']:.3f}", samples_s=f"{n / dt:.0f}")


def validate(run: Run, progress: Progress, bar: Any) -> None:
    model = model_for_eval(run.model)
    accuracy, n_val = accuracy_on(model, run.val, run.device, amp_context(run.cfg.amp, run.device))
    progress.val_accuracy, progress.val_n = accuracy, n_val
    run.log.write({"step": progress.step, "epoch": progress.epoch, "val_accuracy": accuracy, "val_n": n_val})
    if run.cfg.progress_bar:  # interactive runs; grids of runs read metrics.jsonl instead
        epochs = run.cfg.epochs
        line = f"epoch {progress.epoch + 1}/{epochs}: val accuracy {accuracy:.4f} ({n_val} recordings)"
        bar.write(line, file=sys.stderr)  # stdout keeps only the final JSON
    run.model.train()


def finish(run: Run, progress: Progress) -> dict[str, Any]:
    """Rank 0: the test accuracy (of a completed run), checkpoint.pt and result.json."""
    cfg, ds, device = run.cfg, run.ds, run.device
    test_accuracy, n_test = None, 0
    if ds.test is not None and not progress.stopped:
        test = eval_loader(ds.test, cfg.eval_batch_size or cfg.batch_size, device)
        test_accuracy, n_test = accuracy_on(run.raw_model, test, device, amp_context(cfg.amp, device))
    energy = None
    if ds.val is not None and not progress.stopped:  # what an inference costs, on the validation data
        val = eval_loader(ds.val, cfg.eval_batch_size or cfg.batch_size, device)
        with CostMeter(run.raw_model) as meter:
            accuracy_on(run.raw_model, val, device)
        energy = meter.report()
    T, _, H, W = ds.train.event_frames.shape[1:]
    model_cfg = cfg.model_config(run.method.mag_head, run.method.mrp_head)
    meta = checkpoint_metadata(
        model_cfg,
        ds.classes,
        ds.frames_key,
        T,
        (H, W),
        cfg.method,
        ds.snapshot,
        cfg.max_recordings_per_class,
        cfg.seed,
    )
    save_weights(run.out, run.raw_model, meta)
    result = {
        "method": cfg.method,
        "seed": cfg.seed,
        "val_accuracy": progress.val_accuracy,
        "test_accuracy": test_accuracy,
        # recordings behind each number: reports state them next to the accuracies
        "train_n": len(ds.train.event_labels),
        "val_n": progress.val_n,
        "test_n": n_test,
        "epochs": progress.epoch,
        "steps": progress.step,
        "completed": not progress.stopped,
        "samples_per_s": progress.train_samples / progress.train_time if progress.train_time else None,
        "store": cfg.store,
        "store_snapshot": ds.snapshot,
        "backbone": cfg.backbone,
        "world_size": run.ddp.world_size,
        "device": str(device),
        "energy": energy,
        "config": asdict(cfg),
    }
    write_json(run.out / "result.json", result)
    return result


def optimize(model, method, optimizer, batch, progress: float, lr: float, cfg: TrainConfig, device):
    """One optimizer step on ``batch``; returns the method's losses (``"loss"`` still attached)."""
    for group in optimizer.param_groups:
        group["lr"] = lr
    with amp_context(cfg.amp, device):
        losses = method.loss(model, batch, progress)
    optimizer.zero_grad(set_to_none=True)
    losses["loss"].backward()
    if cfg.grad_clip > 0:
        torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
    optimizer.step()
    return losses


def run(cfg: TrainConfig) -> int:
    """Train ``cfg``, print its result, and leave the process group (torchrun) behind."""
    result = train(cfg)
    if result:
        print(json.dumps({k: v for k, v in result.items() if k != "config"}, indent=2))
    if dist.is_initialized():
        dist.destroy_process_group()
    return 0


if __name__ == "__main__":  # torchrun -m tmkt.train: the same command line as `tmkt train`
    sys.exit(config_main())
