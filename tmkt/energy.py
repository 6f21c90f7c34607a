"""What a spiking network costs per inference: firing rates, synaptic operations and an energy estimate.

Papers on SNNs report next to accuracy (as TMKT's and He et al. 2024 do):

- the **firing rate** of each spiking layer: spikes per neuron per time step;
- **SynOps**, the accumulate operations of the layers driven by spikes: each incoming spike adds one
  weight to every neuron it reaches, so a layer's SynOps are its incoming spikes times their fan-out;
- the **multiply-accumulates** (MACs) of the layers that are not driven by spikes: the first
  convolution reads event counts (the encoding layer) and the classifier reads spike rates pooled
  over space (the head), so both multiply;
- the **ANN-equivalent MACs**: every convolution and linear layer of the same architecture, run
  densely once, as a non-spiking network of that shape would;
- an **energy estimate** from those counts: ``E_SNN = E_MAC * MACs + E_AC * SynOps`` against
  ``E_ANN = E_MAC * ANN MACs``, with the 45 nm figures of Horowitz (ISSCC 2014, "Computing's energy
  problem"): a 32-bit float add costs 0.9 pJ and a multiply 3.7 pJ, so an accumulate 0.9 pJ and a
  multiply-accumulate 4.6 pJ. The estimate counts arithmetic only (no memory traffic), as the papers do.

The counts are exact for the input they see: forward hooks on the model count, per convolution, the
(input spike, output neuron) connections with an all-ones kernel of the same shape, stride and
padding, so borders are counted as they are. A convolution after 2x2 average pooling of spikes reads
spike counts divided by the pool's area; each spike still reaches every neuron the pooled value
does, so its input is scaled back to spike counts first, by the area of the pooling that precedes it
in the model (max pooling of spikes passes spikes on). The area comes from the architecture, not
from the values seen: a batch whose pooled cells all hold two spikes would otherwise be counted half.
The MAG and MRP heads serve training only and are not counted (``tmkt export`` leaves them out too).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from spikingjelly.activation_based.neuron import BaseNode
from torch import nn

#: 45 nm, 32-bit float (Horowitz, ISSCC 2014): add 0.9 pJ, multiply 3.7 pJ.
E_AC_PJ = 0.9
E_MAC_PJ = 4.6


@dataclass
class LayerCost:
    """One convolution or linear layer, summed over the samples seen (divide by ``samples``)."""

    name: str
    kind: str  # "encoding" (MACs on event counts), "spiking" (SynOps on spikes) or "head" (MACs)
    dense_macs_per_step: int = 0  # one time step of one sample, every weight applied
    ops: float = 0.0  # MACs (encoding, head) or SynOps (spiking), all time steps, all samples


@dataclass
class NeuronCost:
    name: str
    spikes: float = 0.0
    neuron_steps: int = 0  # neurons x time steps x samples

    @property
    def firing_rate(self) -> float:
        return self.spikes / self.neuron_steps if self.neuron_steps else 0.0


@dataclass
class CostMeter:
    """Counts a `SpikingClassifier`'s operations over the batches it runs while the meter is open.

    ``with CostMeter(model) as meter: model(x)`` then ``meter.report()``.
    """

    model: nn.Module
    layers: dict[str, LayerCost] = field(default_factory=dict)
    neurons: dict[str, NeuronCost] = field(default_factory=dict)
    samples: int = 0
    time_steps: int = 0
    #: per spike-driven convolution, the area of the average pooling between it and the spikes
    pooled_area: dict[str, int] = field(default_factory=dict)

    def __enter__(self) -> CostMeter:
        self._handles = [self.model.register_forward_pre_hook(self._count_samples)]
        first, area = True, 1
        # modules in the order they are built, which is the order the backbones run them in
        for name, module in self.model.named_modules():
            if isinstance(module, BaseNode):
                self.neurons[name] = NeuronCost(name)
                self._handles.append(module.register_forward_hook(self._neuron_hook(name)))
                area = 1  # fresh spikes
            elif isinstance(module, nn.AvgPool2d) and name.startswith("backbone."):
                area *= _area(module)
            elif isinstance(module, nn.Conv2d | nn.Linear) and name.startswith(("backbone.", "classifier")):
                kind = "head" if name.startswith("classifier") else ("encoding" if first else "spiking")
                first = first and kind != "encoding"
                self.layers[name] = LayerCost(name, kind)
                self.pooled_area[name] = area
                self._handles.append(module.register_forward_hook(self._layer_hook(name)))
        return self

    def __exit__(self, *exc: object) -> None:
        for handle in self._handles:
            handle.remove()

    def _count_samples(self, module: nn.Module, args: tuple) -> None:
        x = args[0]  # [T, B, C, H, W]
        self.time_steps = int(x.shape[0])
        self.samples += int(x.shape[1])

    def _neuron_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            cost = self.neurons[name]
            cost.spikes += float(out.detach().float().sum())
            cost.neuron_steps += out.numel()

        return hook

    def _layer_hook(self, name: str):
        def hook(module: nn.Module, args: tuple, out: torch.Tensor) -> None:
            cost, x = self.layers[name], args[0].detach().float()
            steps = x.shape[0]  # T*B for a layer in SeqToANNContainer, [T, B, D] rows for the head
            if isinstance(module, nn.Linear):
                rows = x.reshape(-1, module.in_features).shape[0]
                cost.dense_macs_per_step = module.in_features * module.out_features
                cost.ops += cost.dense_macs_per_step * rows
                return
            cost.dense_macs_per_step = out[0].numel() * (module.in_channels // module.groups) * _area(module)
            if cost.kind == "encoding":
                cost.ops += cost.dense_macs_per_step * steps
            else:
                cost.ops += synops_conv(module, spike_counts(x, self.pooled_area[name], name))

        return hook

    def report(self, e_ac_pj: float = E_AC_PJ, e_mac_pj: float = E_MAC_PJ) -> dict[str, Any]:
        """Per inference (one sample, all time steps): the counts, per layer and in total, and energy."""
        n = max(self.samples, 1)
        macs = sum(c.ops for c in self.layers.values() if c.kind != "spiking") / n
        synops = sum(c.ops for c in self.layers.values() if c.kind == "spiking") / n
        ann_macs = sum(c.dense_macs_per_step for c in self.layers.values())
        snn_pj, ann_pj = e_mac_pj * macs + e_ac_pj * synops, e_mac_pj * ann_macs
        spikes = sum(c.spikes for c in self.neurons.values())
        neuron_steps = sum(c.neuron_steps for c in self.neurons.values())
        return {
            "samples": self.samples,
            "time_steps": self.time_steps,
            "firing_rate": spikes / neuron_steps if neuron_steps else 0.0,
            "layers": [
                {
                    "name": c.name,
                    "firing_rate": c.firing_rate,
                    "neurons_per_step": c.neuron_steps // n // max(self.time_steps, 1),
                }
                for c in self.neurons.values()
            ],
            "ops": [{**asdict(c), "ops": c.ops / n} for c in self.layers.values()],
            "synops": synops,
            "macs": macs,
            "ann_macs": ann_macs,
            "energy_pj": snn_pj,
            "ann_energy_pj": ann_pj,
            "ann_to_snn_energy": ann_pj / snn_pj if snn_pj else None,
            "constants": {
                "e_ac_pj": e_ac_pj,
                "e_mac_pj": e_mac_pj,
                "source": "Horowitz, ISSCC 2014: 45 nm, 32-bit float add 0.9 pJ, multiply 3.7 pJ",
            },
        }


def _area(module: nn.Conv2d | nn.AvgPool2d) -> int:
    size = module.kernel_size  # an int or a pair for pooling, a pair for convolutions
    kh, kw = (size, size) if isinstance(size, int) else size
    return kh * kw


def spike_counts(x: torch.Tensor, area: int, name: str) -> torch.Tensor:
    """A spike-driven layer's input as spike counts: binary spikes (``area`` 1) as they are, spikes
    average-pooled over ``area`` cells (multiples of 1/area, at most 1) times the area. Anything else
    is not spike-driven: ValueError."""
    counts = x * area
    rounded = torch.round(counts)
    if not torch.allclose(counts, rounded, atol=1e-4) or rounded.min() < 0 or rounded.max() > area:
        raise ValueError(f"{name}: input is not spikes or pooled spikes; cannot count SynOps")
    return rounded


def synops_conv(module: nn.Conv2d, counts: torch.Tensor) -> float:
    """Connections from the input's spikes to the conv's output neurons: each spike at an input
    position reaches every output neuron whose receptive field holds it, in every output channel
    of its group (an all-ones kernel counts them exactly, borders included)."""
    ones = torch.ones(1, module.in_channels, *module.kernel_size, device=counts.device)
    per_position = F.conv2d(
        counts, ones, stride=module.stride, padding=module.padding, dilation=module.dilation
    )
    return float(per_position.sum()) * module.out_channels / module.groups


def describe_energy(report: dict[str, Any]) -> str:
    """The lines ``tmkt eval --energy`` prints: totals, then the firing rate of each spiking layer."""
    ratio = report["ann_to_snn_energy"]
    lines = [
        f"per inference ({report['time_steps']} steps, {report['samples']} samples): firing rate "
        f"{report['firing_rate']:.4f}, {report['synops'] / 1e6:.2f} M SynOps, "
        f"{report['macs'] / 1e6:.2f} M MACs "
        f"-> {report['energy_pj'] / 1e6:.3f} uJ; as an ANN {report['ann_macs'] / 1e6:.2f} M MACs -> "
        f"{report['ann_energy_pj'] / 1e6:.3f} uJ" + (f" ({ratio:.1f}x the SNN)" if ratio else ""),
    ]
    lines += [f"  {layer['name']}: firing rate {layer['firing_rate']:.4f}" for layer in report["layers"]]
    return "\n".join(lines)
