"""Each loss against its formula, computed independently on hand-made tensors."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from tmkt.losses import cka_loss, linear_cka, mag_loss, mrp_loss, tet_loss
from tmkt.mixing import mag_targets, mrp_targets


def _log_softmax(row: list[float]) -> list[float]:
    m = max(row)
    lse = m + math.log(sum(math.exp(v - m) for v in row))
    return [v - lse for v in row]


def test_tet_loss_is_the_mean_over_steps_of_cross_entropy():
    logits = torch.tensor(
        [[[2.0, 0.0, -1.0], [0.5, 0.5, 0.0]], [[0.0, 1.0, 0.0], [-2.0, 3.0, 1.0]]]
    )  # [T=2, B=2, K=3]
    labels = torch.tensor([0, 2])
    per_step = []
    for t in range(2):
        ces = [-_log_softmax(logits[t, b].tolist())[labels[b]] for b in range(2)]
        per_step.append(sum(ces) / 2)
    expected = sum(per_step) / 2
    assert tet_loss(logits, labels).item() == pytest.approx(expected, rel=1e-6)


def test_tet_loss_mse_term_follows_tet():
    logits = torch.tensor([[[1.0, 3.0]], [[0.0, -1.0]]])  # [T=2, B=1, K=2]
    labels = torch.tensor([1])
    ce = (-_log_softmax([1.0, 3.0])[1] - _log_softmax([0.0, -1.0])[1]) / 2
    mse = ((1 - 1) ** 2 + (3 - 1) ** 2 + (0 - 1) ** 2 + (-1 - 1) ** 2) / 4  # phi = 1
    w = 0.25
    assert tet_loss(logits, labels, mse_weight=w).item() == pytest.approx((1 - w) * ce + w * mse, rel=1e-6)
    assert tet_loss(logits, labels).item() == pytest.approx(ce, rel=1e-6)


def test_mag_loss_is_bce_against_the_cut_mask():
    T = 3
    cut = np.array([2, 4])  # sample 0: static, event, event; sample 1: no cut (all static)
    targets = torch.from_numpy(mag_targets(cut, T))  # [B, T]
    assert targets.tolist() == [[0, 1, 1], [0, 0, 0]]
    logits_tb = torch.tensor([[0.0, 1.0], [2.0, -1.0], [-3.0, 0.5]])  # [T, B]
    total = 0.0
    for t in range(T):
        for b in range(2):
            z, y = logits_tb[t, b].item(), targets[b, t].item()
            sig = 1 / (1 + math.exp(-z))
            total += -(y * math.log(sig) + (1 - y) * math.log(1 - sig))
    assert mag_loss(logits_tb, targets).item() == pytest.approx(total / (T * 2), rel=1e-6)


def test_mrp_loss_is_mse_against_the_event_fraction():
    T = 4
    target = torch.from_numpy(mrp_targets(np.array([1, 3, 5]), T))
    assert target.tolist() == pytest.approx([1.0, 0.5, 0.0])
    pred = torch.tensor([0.8, 0.25, 0.5])
    expected = ((0.8 - 1.0) ** 2 + (0.25 - 0.5) ** 2 + 0.5**2) / 3
    assert mrp_loss(pred, target).item() == pytest.approx(expected, rel=1e-6)


def _cka_numpy(x: np.ndarray, y: np.ndarray) -> float:
    """CKA through centred Gram matrices (HSIC form), a different route than the feature-space one."""
    n = x.shape[0]
    h = np.eye(n) - np.ones((n, n)) / n
    k, l_ = h @ (x @ x.T) @ h, h @ (y @ y.T) @ h
    return float(np.sum(k * l_) / np.sqrt(np.sum(k * k) * np.sum(l_ * l_)))


def test_linear_cka_matches_the_gram_formula_and_its_invariances():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(6, 4))
    y = rng.normal(size=(6, 3))
    got = linear_cka(torch.from_numpy(x), torch.from_numpy(y)).item()
    assert got == pytest.approx(_cka_numpy(x, y), rel=1e-5)
    assert 0.0 < got < 1.0
    # invariant to an orthogonal rotation and an isotropic scale: CKA(x, 3 x Q) = 1
    q, _ = np.linalg.qr(rng.normal(size=(4, 4)))
    same = linear_cka(torch.from_numpy(x), torch.from_numpy(3.0 * x @ q)).item()
    assert same == pytest.approx(1.0, abs=1e-6)
    assert cka_loss(torch.from_numpy(x), torch.from_numpy(x)).item() == pytest.approx(0.0, abs=1e-6)


def test_linear_cka_of_wide_features_is_the_same_value_and_gradient_either_way():
    """Fewer samples than features (a batch of per-step feature maps) go through the Gram matrices;
    value and gradient equal the d x d formula's."""
    rng = np.random.default_rng(2)
    x, y = (torch.from_numpy(rng.normal(size=(8, d))).double().requires_grad_() for d in (300, 200))
    got = linear_cka(x, y)
    assert got.item() == pytest.approx(_cka_numpy(x.detach().numpy(), y.detach().numpy()), rel=1e-5)
    (gx,) = torch.autograd.grad(got, x)
    xc, yc = x - x.mean(0, keepdim=True), y - y.mean(0, keepdim=True)
    direct = (yc.T @ xc).pow(2).sum() / torch.sqrt((xc.T @ xc).pow(2).sum() * (yc.T @ yc).pow(2).sum() + 1e-8)
    (want,) = torch.autograd.grad(direct, x)
    torch.testing.assert_close(gx, want, rtol=1e-3, atol=1e-6)  # float32 inside linear_cka


def test_cka_loss_flattens_per_sample_features():
    rng = np.random.default_rng(1)
    x = rng.normal(size=(5, 2, 3))
    y = rng.normal(size=(5, 2, 3))
    expected = 1.0 - _cka_numpy(x.reshape(5, -1), y.reshape(5, -1))
    assert cka_loss(torch.from_numpy(x), torch.from_numpy(y)).item() == pytest.approx(expected, rel=1e-5)
