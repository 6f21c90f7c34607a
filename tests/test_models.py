"""Backbones: output shapes, heads on/off, state reset, configuration errors."""

from __future__ import annotations

import pytest
import torch

from tmkt.models import BACKBONES, POOLED_SIZE, ModelConfig, build_model

T, B, K = 4, 2, 5


@pytest.mark.parametrize("backbone", sorted(BACKBONES))
def test_output_shapes(backbone):
    torch.manual_seed(0)
    model = build_model(ModelConfig(backbone=backbone), num_classes=K, T=T)
    out = model(torch.rand(T, B, 2, 32, 32))
    dim = model.backbone.out_channels * POOLED_SIZE**2
    assert out.logits.shape == (T, B, K)
    assert out.features.shape == (T, B, dim)
    assert out.mag_logits.shape == (T, B)
    assert out.mrp.shape == (B,)
    assert torch.all((out.mrp > 0) & (out.mrp < 1))


def test_heads_off_are_not_built():
    model = build_model(ModelConfig(mag_head=False, mrp_head=False), num_classes=K, T=T)
    out = model(torch.rand(T, B, 2, 16, 16))
    assert out.mag_logits is None and out.mrp is None
    names = [name for name, _ in model.named_parameters()]
    assert not any(name.startswith(("mag", "mrp")) for name in names)


@pytest.mark.parametrize("neuron", ["lif", "plif", "if"])
def test_state_is_reset_between_calls(neuron):
    torch.manual_seed(0)
    model = build_model(ModelConfig(neuron=neuron, width=0.5), num_classes=K, T=T).eval()
    x = 3.0 * torch.rand(T, B, 2, 16, 16)
    with torch.no_grad():
        first = model(x)
        model(5.0 * torch.rand(T, B, 2, 16, 16))  # a different sequence in between
        second = model(x)
    assert torch.equal(first.logits, second.logits)
    assert torch.equal(first.features, second.features)


def test_neurons_spike_and_gradients_reach_the_first_layer():
    torch.manual_seed(0)
    model = build_model(ModelConfig(surrogate="sigmoid"), num_classes=K, T=T)
    out = model(4.0 * torch.rand(T, B, 2, 16, 16))
    assert out.features.abs().sum() > 0  # some spikes reach the pooled features
    out.logits.sum().backward()
    first_conv = model.backbone.features[0][0][0]
    assert first_conv.weight.grad is not None and first_conv.weight.grad.abs().sum() > 0


def test_width_scales_channels_and_bad_options_fail():
    narrow = build_model(ModelConfig(backbone="vgg_snn", width=0.25), num_classes=K, T=T)
    assert narrow.backbone.out_channels == 128
    with pytest.raises(ValueError, match="backbone"):
        ModelConfig(backbone="vgg16")
    with pytest.raises(ValueError, match="neuron"):
        ModelConfig(neuron="izhikevich")
    with pytest.raises(ValueError, match="surrogate"):
        ModelConfig(surrogate="relu")
    with pytest.raises(ValueError, match="expected input"):
        build_model(ModelConfig(), num_classes=K, T=T)(torch.rand(B, 2, 16, 16))


def test_cnn3_is_three_conv_units_of_32_64_128_with_max_pooling():
    model = build_model(ModelConfig(backbone="cnn3"), num_classes=K, T=T)
    convs = [m for m in model.backbone.modules() if isinstance(m, torch.nn.Conv2d)]
    assert [c.out_channels for c in convs] == [32, 64, 128] and model.backbone.out_channels == 128
    assert sum(isinstance(m, torch.nn.MaxPool2d) for m in model.backbone.modules()) == 3
    x = torch.zeros(T, B, 2, 34, 34)
    assert model.backbone(x).shape == (T, B, 128, 4, 4)  # 34 -> 17 -> 8 -> 4


def test_the_light_settings_name_every_backbone_built():
    from tmkt.settings import BACKBONE_NAMES

    assert tuple(BACKBONES) == BACKBONE_NAMES


def test_train_help_does_not_import_torch():
    """`tmkt train --help` reads every default without the trainer's heavy libraries."""
    import subprocess
    import sys

    heavy = ("torch", "numba", "spikingjelly", "nvidia.dali", "zarr")
    code = (
        "import sys\nfrom flows.cli import main\n"
        "try:\n    main(['train', '--help'])\nexcept SystemExit:\n    pass\n"
        f"print('HEAVY', sorted(m for m in {heavy!r} if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "ratio_power (float, default 8.0)" in done.stdout
    assert done.stdout.strip().splitlines()[-1] == "HEAVY []"
