"""Spiking backbones with the heads TMKT needs.

Every backbone runs in spikingjelly's multi-step mode: input ``[T, B, 2, H, W]`` (two
polarity channels), per-step feature maps out. Stateless layers (conv, BN, pooling) are
wrapped in ``SeqToANNContainer`` so they run once on the ``T*B`` batch; only the neurons
step through time.

On top of the backbone, :class:`SpikingClassifier` pools each time-step's feature map to a
vector and adds

- a linear classifier applied per time-step (TET needs per-step logits),
- the MAG head (per step: "is this frame static or event?"), a logit per step,
- the MRP head (per sequence: "which fraction is event?"), a sigmoid on time-pooled features.

A head that is switched off is not built, so DDP never sees unused parameters.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from spikingjelly.activation_based import functional, layer, neuron, surrogate
from torch import nn

from tmkt.settings import ModelConfig


@dataclass
class ModelOutput:
    """What one forward pass returns; heads that are off give ``None``."""

    logits: torch.Tensor  # [T, B, K] per-step class logits
    features: torch.Tensor  # [T, B, D] spatially pooled per-step features (for CKA)
    mag_logits: torch.Tensor | None  # [T, B]
    mrp: torch.Tensor | None  # [B] in (0, 1)


def make_neuron(cfg: ModelConfig) -> nn.Module:
    """A multi-step spiking neuron as configured (detach_reset as in TET/He et al. training)."""
    sg = surrogate.ATan() if cfg.surrogate == "atan" else surrogate.Sigmoid()
    common = dict(surrogate_function=sg, detach_reset=True, step_mode="m")
    if cfg.neuron == "lif":
        return neuron.LIFNode(tau=cfg.tau, **common)
    if cfg.neuron == "plif":
        return neuron.ParametricLIFNode(init_tau=cfg.tau, **common)
    return neuron.IFNode(**common)


def _ch(base: int, width: float) -> int:
    return max(1, int(round(base * width)))


def conv_bn_spike(cin: int, cout: int, cfg: ModelConfig, stride: int = 1) -> nn.Sequential:
    """conv3x3 - BN - spiking neuron, the unit of every backbone here."""
    return nn.Sequential(
        layer.SeqToANNContainer(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False), nn.BatchNorm2d(cout)
        ),
        make_neuron(cfg),
    )


def _pool(kind: str) -> nn.Module:
    """2x2 pooling of a plan: "P" averages (VGG-SNN), "M" takes the maximum."""
    return layer.SeqToANNContainer(nn.AvgPool2d(2) if kind == "P" else nn.MaxPool2d(2))


class VGGBackbone(nn.Module):
    """VGG-SNN of He et al. 2024 / TET: 64,128,P,256,256,P,512,512,P,512,512,P (P = avg-pool 2).

    Other plans may use M (max-pool 2).
    """

    PLAN: tuple = (64, 128, "P", 256, 256, "P", 512, 512, "P", 512, 512, "P")

    def __init__(self, cfg: ModelConfig, in_channels: int = 2, plan: tuple | None = None) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        cin = in_channels
        for item in plan or self.PLAN:
            if item in ("P", "M"):
                blocks.append(_pool(item))
            else:
                cout = _ch(item, cfg.width)
                blocks.append(conv_bn_spike(cin, cout, cfg))
                cin = cout
        self.features = nn.Sequential(*blocks)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


class SmallBackbone(VGGBackbone):
    """Three conv units, for quick CPU runs and tests."""

    def __init__(self, cfg: ModelConfig, in_channels: int = 2) -> None:
        super().__init__(cfg, in_channels, plan=(16, "P", 32, "P", 64))


class Conv3Backbone(VGGBackbone):
    """Three conv units of 32, 64 and 128 channels, each followed by 2x2 max pooling: the net of a
    plain spiking-CNN script for N-MNIST, kept as a backbone to compare against on equal terms."""

    def __init__(self, cfg: ModelConfig, in_channels: int = 2) -> None:
        super().__init__(cfg, in_channels, plan=(32, "M", 64, "M", 128, "M"))


class SpikingBasicBlock(nn.Module):
    """ResNet basic block; the spike comes after the residual sum (spiking ResNet)."""

    def __init__(self, cin: int, cout: int, stride: int, cfg: ModelConfig) -> None:
        super().__init__()
        self.conv1 = conv_bn_spike(cin, cout, cfg, stride)
        self.conv2 = layer.SeqToANNContainer(
            nn.Conv2d(cout, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout)
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.shortcut = layer.SeqToANNContainer(
                nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout)
            )
        self.spike = make_neuron(cfg)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.spike(self.conv2(self.conv1(x)) + self.shortcut(x))


class ResNet18Backbone(nn.Module):
    """Spiking ResNet-18 for small inputs: 3x3 stem, no max-pool (as CIFAR ResNets), 4 stages of 2 blocks."""

    def __init__(self, cfg: ModelConfig, in_channels: int = 2) -> None:
        super().__init__()
        widths = [_ch(c, cfg.width) for c in (64, 128, 256, 512)]
        stages: list[nn.Module] = [conv_bn_spike(in_channels, widths[0], cfg)]
        cin = widths[0]
        for i, cout in enumerate(widths):
            stride = 1 if i == 0 else 2
            stages.append(SpikingBasicBlock(cin, cout, stride, cfg))
            stages.append(SpikingBasicBlock(cout, cout, 1, cfg))
            cin = cout
        self.features = nn.Sequential(*stages)
        self.out_channels = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x)


#: Backbone constructors by name: ``(cfg, in_channels) -> module`` with ``out_channels``.
BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "small": SmallBackbone,
    "cnn3": Conv3Backbone,
    "vgg_snn": VGGBackbone,
    "resnet18": ResNet18Backbone,
}


#: Side of the spatial map the heads see, whatever the frame size.
POOLED_SIZE = 3


class SpikingClassifier(nn.Module):
    """Backbone + per-step classifier + optional MAG/MRP heads. Input ``[T, B, 2, H, W]``."""

    def __init__(self, cfg: ModelConfig, num_classes: int, T: int, in_channels: int = 2) -> None:
        super().__init__()
        self.cfg = cfg
        self.num_classes = num_classes
        self.T = T
        self.backbone = BACKBONES[cfg.backbone](cfg, in_channels)
        # Pooling to a fixed 3x3 map keeps where things are (the VGG-SNN of He et al. flattens its
        # 3x3 map at 48x48) while accepting any frame size. Global pooling to 1x1 throws the layout
        # away: on N-MNIST it learnt several times slower in the same number of steps.
        dim = self.backbone.out_channels * POOLED_SIZE**2
        self.pool = layer.SeqToANNContainer(nn.AdaptiveAvgPool2d(POOLED_SIZE), nn.Flatten())
        self.classifier = nn.Linear(dim, num_classes)
        self.mag = nn.Linear(dim, 1) if cfg.mag_head else None
        self.mrp = nn.Sequential(nn.Linear(dim, 1), nn.Sigmoid()) if cfg.mrp_head else None

    def forward(self, x: torch.Tensor) -> ModelOutput:
        if x.dim() != 5:
            raise ValueError(f"expected input [T, B, C, H, W], got shape {tuple(x.shape)}")
        # Membrane potentials persist between calls in spikingjelly; every sequence starts from rest.
        functional.reset_net(self)
        features = self.pool(self.backbone(x))  # [T, B, D]
        logits = self.classifier(features)  # Linear applies per step on the last dim
        mag = self.mag(features).squeeze(-1) if self.mag is not None else None
        mrp = self.mrp(features.mean(0)).squeeze(-1) if self.mrp is not None else None
        return ModelOutput(logits=logits, features=features, mag_logits=mag, mrp=mrp)


def build_model(cfg: ModelConfig, num_classes: int, T: int) -> SpikingClassifier:
    """The model for ``cfg`` with ``num_classes`` outputs over ``T`` time-steps of 2-channel frames."""
    if num_classes < 1:
        raise ValueError(f"num_classes must be >= 1, got {num_classes}")
    if T < 1:
        raise ValueError(f"T must be >= 1, got {T}")
    return SpikingClassifier(cfg, num_classes, T)
