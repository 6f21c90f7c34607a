"""The cost counts of `tmkt.energy` against a hand count on a tiny network whose spikes are known,
and `tmkt eval --energy --json` on a trained checkpoint."""

from __future__ import annotations

import json

import pytest
import torch
from spikingjelly.activation_based import functional, layer, neuron
from torch import nn

from tests.test_cli_errors import built, tmkt  # noqa: F401  (built is a fixture)
from tmkt.energy import E_AC_PJ, E_MAC_PJ, CostMeter, synops_conv


class Tiny(nn.Module):
    """conv1x1 (2 -> 1, weights 1) - IF - avgpool 2 - conv3x3 (1 -> 3, pad 1, weights 0) - IF - linear."""

    def __init__(self) -> None:
        super().__init__()
        conv1 = nn.Conv2d(2, 1, 1, bias=False)
        conv2 = nn.Conv2d(1, 3, 3, padding=1, bias=False)
        nn.init.ones_(conv1.weight)
        nn.init.zeros_(conv2.weight)
        self.backbone = nn.Sequential(
            layer.SeqToANNContainer(conv1),
            neuron.IFNode(step_mode="m"),  # threshold 1: an input of 2 spikes at every step
            layer.SeqToANNContainer(nn.AvgPool2d(2)),
            layer.SeqToANNContainer(conv2),
            neuron.IFNode(step_mode="m"),  # its input is 0: never spikes
        )
        self.classifier = nn.Linear(3 * 2 * 2, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        functional.reset_net(self)
        return self.classifier(self.backbone(x).flatten(2))


def test_counts_equal_a_hand_count_on_known_spikes():
    T, B = 2, 1
    x = torch.zeros(T, B, 2, 4, 4)
    x[:, :, 0, 0, 0] = 2.0  # pixel (0, 0) spikes at both steps
    x[:, :, 1, 1, 2] = 2.0  # pixel (1, 2) too: two spikes per step, four per inference
    model = Tiny()
    with torch.no_grad(), CostMeter(model) as meter:
        model(x)
    report = meter.report()

    first, second = report["layers"]
    assert first["firing_rate"] == pytest.approx(4 / (16 * 2))  # 4 spikes of 16 neurons x 2 steps
    assert second["firing_rate"] == 0.0
    assert report["firing_rate"] == pytest.approx(4 / (16 * 2 + 12 * 2))
    # each spike lands in one pooled cell of a 2x2 map, which a 3x3 kernel with padding 1 carries
    # to all 4 output positions of each of 3 channels: 12 accumulates per spike, 4 spikes
    assert report["synops"] == pytest.approx(4 * 12)
    # encoding conv: 16 outputs x 2 inputs per step, 2 steps; head: 12 x 5 per step, 2 steps
    assert report["macs"] == pytest.approx(16 * 2 * 2 + 12 * 5 * 2)
    # as an ANN, each layer densely once: 32 + 12 outputs x 9 taps + 60
    assert report["ann_macs"] == 32 + 12 * 9 + 60
    assert report["energy_pj"] == pytest.approx(E_MAC_PJ * 184 + E_AC_PJ * 48)
    assert report["ann_energy_pj"] == pytest.approx(E_MAC_PJ * 200)
    assert [c["kind"] for c in report["ops"]] == ["encoding", "spiking", "head"]


def synops_of(x: torch.Tensor) -> float:
    model = Tiny()
    with torch.no_grad(), CostMeter(model) as meter:
        model(x)
    return meter.report()["synops"]


def test_pooled_spikes_are_counted_by_the_pooling_area_not_by_the_values_seen():
    x = torch.zeros(1, 1, 2, 4, 4)
    x[:, :, 0, 0, 0] = x[:, :, 0, 0, 1] = 2.0  # two spikes in one 2x2 window: its pooled cell holds 0.5
    assert synops_of(x) == 2 * 12  # not 12, as if 0.5 were one spike
    x[:, :, 0, 2, 2] = x[:, :, 0, 2, 3] = x[:, :, 0, 3, 2] = 2.0  # three in another window: 0.75
    assert synops_of(x) == 5 * 12


def test_synops_count_borders_exactly():
    conv = nn.Conv2d(1, 4, 3, padding=1)
    corner, centre = torch.zeros(1, 1, 5, 5), torch.zeros(1, 1, 5, 5)
    corner[0, 0, 0, 0] = centre[0, 0, 2, 2] = 1.0
    assert synops_conv(conv, corner) == 4 * 4  # a corner spike reaches a 2x2 block of outputs
    assert synops_conv(conv, centre) == 9 * 4
    strided = nn.Conv2d(1, 2, 3, stride=2, padding=1)
    assert synops_conv(strided, centre) == 1 * 2  # of a 3x3 output map only (1, 1) covers (2, 2)


def test_a_non_spike_input_to_a_spiking_layer_is_refused():
    model = Tiny()
    model.backbone[1] = nn.Identity()  # conv2 now reads event counts times weights, not spikes
    x = torch.rand(2, 1, 2, 4, 4)
    with pytest.raises(ValueError, match="not spikes"), torch.no_grad(), CostMeter(model):
        model(x)
    model.backbone[1], model.backbone[2] = nn.Identity(), nn.Identity()  # no pooling either
    counts = torch.full((2, 1, 2, 4, 4), 3.0)  # whole numbers, but 6 per pixel is not a spike
    with pytest.raises(ValueError, match="not spikes"), torch.no_grad(), CostMeter(model):
        model(counts)


def test_eval_energy_json_on_a_trained_checkpoint(tmp_path, built):  # noqa: F811
    out = tmp_path / "run"
    ran = tmkt(
        tmp_path, "train", "--store", str(built / "store"), "--method", "event", "--out", str(out),
        "--epochs", "1", "min_steps=0", "backbone=small", "batch_size=8", "device=cpu", "checkpoint_every=0",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    ran = tmkt(
        tmp_path, "eval", "--checkpoint", str(out / "checkpoint.pt"), "--store", str(built / "store"),
        "--split", "all", "--energy", "--json",
    )  # fmt: skip
    assert ran.returncode == 0, ran.stderr
    result = json.loads(ran.stdout)
    energy = result["energy"]
    assert energy["samples"] == result["n"] and energy["time_steps"] == 10
    # small: three conv-BN-LIF units; the first reads event counts, the other two spikes
    assert [c["kind"] for c in energy["ops"]] == ["encoding", "spiking", "spiking", "head"]
    assert len(energy["layers"]) == 3 and all(0 <= r["firing_rate"] <= 1 for r in energy["layers"])
    assert energy["synops"] > 0 and energy["ann_macs"] > energy["ops"][0]["dense_macs_per_step"]
    assert energy["energy_pj"] == pytest.approx(E_MAC_PJ * energy["macs"] + E_AC_PJ * energy["synops"])
    text = tmkt(
        tmp_path, "eval", "--checkpoint", str(out / "checkpoint.pt"), "--store", str(built / "store"),
        "--split", "all", "--energy",
    ).stdout  # fmt: skip
    assert "M SynOps" in text and "backbone.features.0.1: firing rate" in text
