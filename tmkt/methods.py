"""Training methods by name, all driven by the same loop in ``tmkt.train`` with the same budget.

A method says which loader mode it needs (per epoch), sets the loader's mixing ratio before
each step, decides which heads the model builds, and turns ``(model, batch, progress)`` into a
dict of losses whose ``"loss"`` entry is optimised. ``progress`` is the fraction of the whole
training run done, in [0, 1].

- ``tmkt``: Time-step Mixup with the MAG and MRP heads; ``r_m`` follows a RatioSchedule. Each
  mixed batch's pure event sequence adds a classification loss (``l_event``; scaled by ``r_m``
  with ``event_ramp``) and, optionally, a CKA loss aligning its features with the mixed
  sequence's (``l_align``). Ablations: ``tsm`` (no heads), ``tsm+mag``, ``tsm+mrp``.
- ``event``: event frames only (the TET baseline).
- ``finetune``: static images for the first ``static_fraction`` of the epochs, then events.
- ``he2024``: He et al. 2024: per sample, the static sequence is replaced by the event sequence
  with probability ``progress**3``, plus a CKA loss aligning static and event features.

The method classes take their weights as keywords without defaults: `MethodConfig` holds the one
default of each, and `build_method` passes them on.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Protocol

import torch

from tmkt.losses import cka_loss, mag_loss, mrp_loss, tet_loss
from tmkt.mixing import RatioSchedule
from tmkt.settings import METHOD_NAMES as METHOD_NAMES
from tmkt.settings import MethodConfig


def time_major(frames_btchw: torch.Tensor) -> torch.Tensor:
    """Loader batches are ``[B, T, C, H, W]``; spikingjelly's multi-step mode wants ``[T, B, C, H, W]``."""
    return frames_btchw.transpose(0, 1)


def batch_accuracy(logits_tbk: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Accuracy of the time-averaged logits (how SNN outputs are read out), detached."""
    return (logits_tbk.detach().mean(0).argmax(-1) == labels).float().mean()


class Method(Protocol):
    name: str
    mag_head: bool
    mrp_head: bool
    wants_events: bool  # mode "mix" batches must carry their pure event sequence (loader with_events)

    def mode_for_epoch(self, epoch: int, epochs: int) -> str: ...

    def on_step(self, loader, progress: float) -> float | None: ...

    def loss(self, model, batch, progress: float) -> dict[str, torch.Tensor]: ...


@dataclass(kw_only=True)
class EventOnly:
    """Event frames only; per-step TET loss."""

    name: str = "event"
    tet_mse_weight: float
    mag_head: bool = field(default=False, init=False)
    mrp_head: bool = field(default=False, init=False)
    wants_events: bool = field(default=False, init=False)

    def mode_for_epoch(self, epoch: int, epochs: int) -> str:
        return "event"

    def on_step(self, loader, progress: float) -> float | None:
        return None

    def loss(self, model, batch, progress: float) -> dict[str, torch.Tensor]:
        out = model(time_major(batch.frames))
        cls = tet_loss(out.logits, batch.labels, self.tet_mse_weight)
        return {"loss": cls, "cls": cls.detach(), "train_acc": batch_accuracy(out.logits, batch.labels)}


@dataclass(kw_only=True)
class StaticThenEvent(EventOnly):
    """Static pre-training for the first ``static_fraction`` of the epochs, then event fine-tuning."""

    name: str = "finetune"
    static_fraction: float

    def __post_init__(self) -> None:
        if not 0.0 <= self.static_fraction <= 1.0:
            raise ValueError(f"finetune_static_fraction must be in [0, 1], got {self.static_fraction}")

    def mode_for_epoch(self, epoch: int, epochs: int) -> str:
        return "static" if epoch < round(self.static_fraction * epochs) else "event"


@dataclass(kw_only=True)
class TimeStepMixup:
    """TSM with optional MAG (per-step modality) and MRP (event fraction) objectives.

    With ``l_event`` or ``l_align`` above 0 the pure event sequence of the batch runs a forward
    pass of its own (so BatchNorm sees event-only batch statistics, as at evaluation): ``l_event``
    weights its classification loss, ``l_align`` a linear-CKA loss between its features and the
    mixed sequence's.

    ``event_ramp`` with ``l_align`` is He et al.'s (2024) recipe on time-step mixup, for very
    scarce event data. Early in training ``r_m`` is near 0 and the mixed sequence mostly static;
    with the event loss scaled by ``r_m`` the event sequence learns mainly through the CKA term,
    which pulls its features toward what the statics taught, instead of fitting the few event
    recordings from the first step. Measured on the N-MNIST recordings not trained on, on the same
    draws: with 5 recordings per class it raised tmkt on every seed, by +1.4 ± 0.4 points at the
    default schedule (3 seeds). The rest was measured with ``r_m = progress**3`` (the ramp is the
    schedule; ``ratio_power=3`` reproduces it): at 5 per class +1.2 ± 0.6 (3 seeds; the ramp alone
    +0.4 ± 0.5, the alignment alone -0.5 ± 0.3), with 10 it changed nothing (+0.0 ± 1.1, 5 seeds),
    with 25 it cost 1.2 ± 0.8 (3 seeds; the ramp alone 1.3 ± 0.6), so both are off by default.
    """

    name: str = "tmkt"
    schedule: RatioSchedule
    mag: bool
    mrp: bool
    l_mag: float
    l_mrp: float
    tet_mse_weight: float
    l_event: float
    l_align: float
    event_ramp: bool

    @property
    def mag_head(self) -> bool:
        return self.mag

    @property
    def mrp_head(self) -> bool:
        return self.mrp

    def mode_for_epoch(self, epoch: int, epochs: int) -> str:
        return "mix"

    @property
    def wants_events(self) -> bool:
        """Whether the mixed batches must carry their pure event sequence too."""
        return self.l_event > 0 or self.l_align > 0

    def on_step(self, loader, progress: float) -> float | None:
        r_m = self.schedule(progress)
        loader.set_ratio(r_m)
        return r_m

    def loss(self, model, batch, progress: float) -> dict[str, torch.Tensor]:
        out = model(time_major(batch.frames))
        cls = tet_loss(out.logits, batch.labels, self.tet_mse_weight)
        total = cls
        losses = {"cls": cls.detach()}
        if self.mag:
            term = mag_loss(out.mag_logits, batch.mag)
            total = total + self.l_mag * term
            losses["mag"] = term.detach()
        if self.mrp:
            term = mrp_loss(out.mrp, batch.mrp)
            total = total + self.l_mrp * term
            losses["mrp"] = term.detach()
        if self.wants_events:
            if batch.events is None:
                raise ValueError(
                    "l_event or l_align > 0 needs the loader's pure event sequence (with_events)"
                )
            events = model(time_major(batch.events))
            if self.l_event:
                term = tet_loss(events.logits, batch.labels, self.tet_mse_weight)
                weight = self.l_event * (self.schedule(progress) if self.event_ramp else 1.0)
                total = total + weight * term
                losses["event_cls"] = term.detach()
            if self.l_align:
                term = cka_loss(out.features.transpose(0, 1), events.features.transpose(0, 1))
                total = total + self.l_align * term
                losses["cka"] = term.detach()
        return {"loss": total, **losses, "train_acc": batch_accuracy(out.logits, batch.labels)}


@dataclass(kw_only=True)
class He2024:
    """Sliding replacement + CKA domain alignment (He et al., AAAI 2024), on loader mode "pair".

    One forward pass runs the static and the event sequence of every sample side by side
    (batch ``2B``). The classification loss uses, per sample, the event outputs with probability
    ``progress**3`` and the static outputs otherwise, which is the whole-sample replacement of
    He et al.; the CKA loss aligns the flattened per-step features of the two streams.
    """

    name: str = "he2024"
    l_cka: float
    tet_mse_weight: float
    mag_head: bool = field(default=False, init=False)
    mrp_head: bool = field(default=False, init=False)
    wants_events: bool = field(default=False, init=False)

    def mode_for_epoch(self, epoch: int, epochs: int) -> str:
        return "pair"

    def on_step(self, loader, progress: float) -> float | None:
        return None

    def loss(self, model, batch, progress: float) -> dict[str, torch.Tensor]:
        if batch.static is None:
            raise ValueError("he2024 needs the loader's 'pair' mode (batch.static is None)")
        B = batch.frames.shape[0]
        out = model(time_major(torch.cat([batch.static, batch.frames], dim=0)))
        static_logits, event_logits = out.logits[:, :B], out.logits[:, B:]
        # Drawn on the CPU generator so that the checkpointed RNG state replays it on resume.
        use_event = (torch.rand(B) < progress**3).to(out.logits.device)
        logits = torch.where(use_event[None, :, None], event_logits, static_logits)
        cls = tet_loss(logits, batch.labels, self.tet_mse_weight)
        feats = out.features.transpose(0, 1)  # [2B, T, D]
        cka = cka_loss(feats[:B], feats[B:])
        return {
            "loss": cls + self.l_cka * cka,
            "cls": cls.detach(),
            "cka": cka.detach(),
            "event_share": use_event.float().mean(),
            "train_acc": batch_accuracy(logits, batch.labels),
        }


def build_method(config: MethodConfig) -> Method:
    """The method ``config.name`` (one of ``METHOD_NAMES``) with its options."""
    c = config
    heads = {"tmkt": (True, True), "tsm": (False, False), "tsm+mag": (True, False), "tsm+mrp": (False, True)}
    if c.name in heads:
        mag, mrp = heads[c.name]
        return TimeStepMixup(
            name=c.name,
            schedule=c.schedule,
            mag=mag,
            mrp=mrp,
            l_mag=c.l_mag,
            l_mrp=c.l_mrp,
            tet_mse_weight=c.tet_mse_weight,
            l_event=c.l_event,
            l_align=c.l_align,
            event_ramp=c.event_ramp,
        )
    if c.name == "event":
        return EventOnly(tet_mse_weight=c.tet_mse_weight)
    if c.name == "finetune":
        return StaticThenEvent(tet_mse_weight=c.tet_mse_weight, static_fraction=c.finetune_static_fraction)
    return He2024(l_cka=c.l_cka, tet_mse_weight=c.tet_mse_weight)


def require_statics(method: Method, epochs: int, n_static: int, store: str) -> None:
    """Raise `MissingStatics` before training when ``method`` reads static images and there are none."""
    from tmkt.errors import MissingStatics

    modes = {method.mode_for_epoch(e, epochs) for e in range(epochs)}
    if n_static == 0 and modes - {"event"}:
        raise MissingStatics(
            f"method {method.name!r} mixes static images, but {store or 'the data'} has none: "
            f"build the store with --static, or train --method event"
        )
