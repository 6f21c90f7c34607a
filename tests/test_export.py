"""`tmkt export`: a checkpoint's classifier as NIR, read back with `nir` and run by snnTorch's NIR
import, whose spikes and logits must equal the spikingjelly model's on the same input."""

from __future__ import annotations

import subprocess
import sys

import nir
import numpy as np
import pytest
import snntorch
import snntorch.utils
import torch
from snntorch.import_nir import import_from_nir
from spikingjelly.activation_based.neuron import BaseNode
from spikingjelly.activation_based.nir_exchange import import_from_nir as sj_import_from_nir

from tmkt.evaluate import checkpoint_metadata
from tmkt.export import DT, to_nir
from tmkt.models import ModelConfig, build_model
from tmkt.records import save_weights

T, SIZE, CLASSES = 6, (34, 34), 10


def trained_like(backbone: str = "small", neuron: str = "lif") -> torch.nn.Module:
    """A model with batch norm statistics and affine parameters away from their initial values, so
    that folding them into the convolutions is exercised."""
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone, neuron=neuron), CLASSES, T)
    for module in model.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2)
            module.running_var.uniform_(0.5, 1.5)
            module.weight.data.uniform_(0.8, 1.5)
            module.bias.data.uniform_(0.0, 0.3)
    return model.eval()


def spikes_of(model: torch.nn.Module, is_neuron, run) -> tuple[torch.Tensor, list[float]]:
    """``run()``'s output and the spikes each module ``is_neuron`` accepts emitted, in layer order."""
    layers = [m for m in model.modules() if is_neuron(m)]
    counts = [0.0] * len(layers)

    def hook(index: int):
        def count(module, args, out):
            spikes = out[0] if isinstance(out, tuple) else out
            counts[index] += float(spikes.sum())

        return count

    handles = [m.register_forward_hook(hook(i)) for i, m in enumerate(layers)]
    try:
        with torch.no_grad():
            output = run()
    finally:
        for handle in handles:
            handle.remove()
    return output, counts


def is_sj_neuron(module: torch.nn.Module) -> bool:
    return isinstance(module, BaseNode)


@pytest.mark.parametrize("neuron", ["lif", "plif"])
def test_nir_round_trip_through_snntorch_gives_the_same_spikes_and_logits(tmp_path, neuron):
    model = trained_like(neuron=neuron)
    x = torch.poisson(torch.full((T, 3, 2, *SIZE), 0.6))  # event counts of 3 samples (seeded above)
    reference, sj_spikes = spikes_of(model, is_sj_neuron, lambda: model(x).logits)

    path = tmp_path / "model.nir"
    nir.write(str(path), to_nir(model, T, SIZE))
    graph = nir.read(str(path))
    assert graph.metadata["dt"] == DT and graph.metadata["time_steps"] == T
    lifs = [node for node in graph.nodes.values() if isinstance(node, nir.LIF)]
    assert len(lifs) == 3 and np.allclose(lifs[0].v_threshold, 1.0) and np.allclose(lifs[0].v_reset, 0.0)
    if neuron == "lif":  # spikingjelly's tau=2 as a continuous time constant over steps of dt
        assert np.allclose(lifs[0].tau, 2.0 * DT) and np.allclose(lifs[0].r, 1.0)

    imported = import_from_nir(graph)

    def run_imported() -> torch.Tensor:
        per_sample = []
        for b in range(x.shape[1]):  # NIR shapes exclude the batch: one sample at a time
            snntorch.utils.reset(imported)
            steps = [imported(x[t, b]) for t in range(T)]
            per_sample.append(torch.stack([s[0] if isinstance(s, tuple) else s for s in steps]))
        return torch.stack(per_sample, 1)

    logits, snn_spikes = spikes_of(imported, lambda m: isinstance(m, snntorch.Leaky), run_imported)
    assert sum(sj_spikes) > 1000, "the input drives the network"
    # the same spikes in every layer; logits equal up to float32 rounding of the folded weights
    assert snn_spikes == sj_spikes
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)
    assert torch.equal(logits.mean(0).argmax(-1), reference.mean(0).argmax(-1))


def test_if_neurons_round_trip_through_spikingjellys_nir_import(tmp_path):
    """NIR's IF is dv/dt = r I, so one step of dt adds the input when r = 1 / dt; snnTorch 1.0's
    import reads an IF as a leaky neuron (beta 0.9), so spikingjelly's own import checks it."""
    model = trained_like(neuron="if")
    x = torch.poisson(torch.full((T, 3, 2, *SIZE), 0.6))
    reference, sj_spikes = spikes_of(model, is_sj_neuron, lambda: model(x).logits)
    path = tmp_path / "model.nir"
    nir.write(str(path), to_nir(model, T, SIZE))
    imported = sj_import_from_nir(nir.read(str(path)), dt=DT, step_mode="m")
    # the import wraps each neuron in a module that steps it functionally: count at the wrapper
    wrapped = lambda m: isinstance(getattr(m, "module", None), BaseNode)  # noqa: E731
    logits, imported_spikes = spikes_of(imported, wrapped, lambda: imported(x)[0])
    assert sum(sj_spikes) > 1000 and imported_spikes == sj_spikes
    torch.testing.assert_close(logits, reference, atol=1e-4, rtol=1e-4)


def export(tmp_path, backbone: str, out=None) -> subprocess.CompletedProcess:
    model = trained_like(backbone)
    meta = checkpoint_metadata(model.cfg, [str(k) for k in range(CLASSES)], "k", T, SIZE, "tmkt", "s", 0, 0)
    save_weights(tmp_path, model, meta)
    out = out or tmp_path / "model.nir"
    command = [sys.executable, "-m", "flows.cli", "export", "--checkpoint", str(tmp_path / "checkpoint.pt")]
    return subprocess.run([*command, "--out", str(out)], capture_output=True, text=True, timeout=300)


def test_export_writes_the_classifier_without_the_training_heads(tmp_path):
    done = export(tmp_path, "small")
    assert done.returncode == 0, done.stderr
    assert "MAG and MRP heads left out" in done.stdout
    graph = nir.read(str(tmp_path / "model.nir"))
    following = dict(graph.edges)  # a chain: each node has one successor
    order = ["input"]
    while order[-1] in following:
        order.append(following[order[-1]])
    kinds = [type(graph.nodes[name]).__name__ for name in order]
    # small: three conv-LIF units with two average poolings between, then the folded classifier
    assert kinds == [
        "Input", "Conv2d", "LIF", "AvgPool2d", "Conv2d", "LIF", "AvgPool2d", "Conv2d", "LIF",
        "Flatten", "Affine", "Output",
    ]  # fmt: skip
    assert graph.nodes["classifier"].weight.shape == (CLASSES, 64 * 8 * 8)
    assert "MAG" in graph.metadata["left_out"]


@pytest.mark.parametrize(("backbone", "reason"), [("cnn3", "max pooling"), ("resnet18", "residual")])
def test_what_nir_cannot_express_is_one_line_and_exit_2(tmp_path, backbone, reason):
    done = export(tmp_path, backbone)
    assert done.returncode == 2
    assert reason in done.stderr and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
    assert not (tmp_path / "model.nir").exists()


@pytest.mark.parametrize(
    ("where", "reason"), [("missing/model.nir", "does not exist"), (".", "is a directory")]
)
def test_an_out_path_that_cannot_be_written_is_one_line_and_exit_2(tmp_path, where, reason):
    done = export(tmp_path, "small", out=tmp_path / where)
    assert done.returncode == 2
    assert reason in done.stderr and "Traceback" not in done.stderr and len(done.stderr.splitlines()) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.pt"]  # nothing partial left
