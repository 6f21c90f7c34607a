"""Losses of TMKT and its baselines, each a pure function of tensors.

- ``tet_loss``: classification on every time-step (TET, Deng et al. 2022), which trains the
  network to be right at each step instead of only on the average of its outputs.
- ``mag_loss``: Modality Aware Guidance, per-step BCE "is this frame an event frame".
- ``mrp_loss``: Mixup Ratio Perception, MSE on the event fraction of the sequence.
- ``linear_cka`` / ``cka_loss``: the domain-alignment term of He et al. 2024.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def tet_loss(
    logits_tbk: torch.Tensor, labels: torch.Tensor, mse_weight: float = 0.0, mse_target: float = 1.0
) -> torch.Tensor:
    """``(1 - w) * mean_t CE(O_t, y) + w * mean_t MSE(O_t, phi)``, logits ``[T, B, K]``, labels ``[B]``.

    The MSE term of TET pulls every logit toward ``phi`` (``mse_target``, 1 in TET) to regularise the
    membrane outputs; TET used ``w = 1e-3``. The default here is ``w = 0`` (plain per-step CE), as in
    the TMKT objective; set ``mse_weight`` to reproduce TET exactly.
    """
    if logits_tbk.dim() != 3:
        raise ValueError(f"logits must be [T, B, K], got shape {tuple(logits_tbk.shape)}")
    T, B, K = logits_tbk.shape
    # One CE over all T*B rows with mean reduction equals the mean over steps of per-step CE means.
    ce = F.cross_entropy(logits_tbk.reshape(T * B, K), labels.repeat(T))
    if mse_weight == 0.0:
        return ce
    mse = F.mse_loss(logits_tbk, torch.full_like(logits_tbk, mse_target))
    return (1.0 - mse_weight) * ce + mse_weight * mse


def mag_loss(mag_logits_tb: torch.Tensor, mag_targets_bt: torch.Tensor) -> torch.Tensor:
    """BCE with logits between the MAG head ``[T, B]`` and the loader's per-step mask ``[B, T]``.

    The two layouts differ on purpose: the model is time-major, the loader batch-major.
    """
    target = mag_targets_bt.transpose(0, 1).to(mag_logits_tb.dtype)
    if target.shape != mag_logits_tb.shape:
        raise ValueError(f"MAG logits {tuple(mag_logits_tb.shape)} vs targets {tuple(mag_targets_bt.shape)}")
    return F.binary_cross_entropy_with_logits(mag_logits_tb, target)


def mrp_loss(pred_b: torch.Tensor, target_b: torch.Tensor) -> torch.Tensor:
    """Mean squared error between the predicted and the true event fraction per sequence."""
    return F.mse_loss(pred_b, target_b.to(pred_b.dtype))


def linear_cka(x: torch.Tensor, y: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Linear CKA (Kornblith et al. 2019) between ``x [n, d1]`` and ``y [n, d2]`` (rows = same samples).

    ``CKA = ||Yc^T Xc||_F^2 / (||Xc^T Xc||_F ||Yc^T Yc||_F)`` with column-centred ``Xc, Yc``;
    1 when the two representations agree up to rotation and isotropic scale.
    """
    if x.dim() != 2 or y.dim() != 2 or x.shape[0] != y.shape[0]:
        raise ValueError(f"expected [n, d1] and [n, d2], got {tuple(x.shape)} and {tuple(y.shape)}")
    x = x.float() - x.float().mean(0, keepdim=True)
    y = y.float() - y.float().mean(0, keepdim=True)
    n, d1, d2 = x.shape[0], x.shape[1], y.shape[1]
    if n * n * (d1 + d2) < n * (d1 * d2 + d1 * d1 + d2 * d2):
        # The same three norms through the n x n Gram matrices (||Yc^T Xc||_F^2 = <Kx, Ky>,
        # ||Xc^T Xc||_F = ||Kx||_F): a batch of 32 with 9,216 features a sample (T=8 steps of a
        # 128-channel 3x3 map) costs 300 times fewer operations than the d x d products.
        kx, ky = x @ x.T, y @ y.T
        cross, xx, yy = (kx * ky).sum(), kx.pow(2).sum(), ky.pow(2).sum()
    else:
        cross, xx, yy = (y.T @ x).pow(2).sum(), (x.T @ x).pow(2).sum(), (y.T @ y).pow(2).sum()
    # eps inside the root keeps the gradient finite when a representation is all zeros
    # (a layer with no spikes yet), where the plain norms would give 0/0.
    return cross / torch.sqrt(xx * yy + eps)


def cka_loss(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """``1 - linear_cka(x, y)``; features of more than 2 dims are flattened per sample (dim 0)."""
    return 1.0 - linear_cka(x.reshape(x.shape[0], -1), y.reshape(y.shape[0], -1))
