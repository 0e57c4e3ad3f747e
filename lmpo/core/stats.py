"""Masked statistics over padded ``[B, T]`` tensors."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor


def masked_sum(x: Tensor, mask: Tensor) -> Tensor:
    """Sum of ``x`` over the entries where ``mask`` is 1."""
    return (x * mask).sum()


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of ``x`` over the real entries; padding neither adds to the sum nor to the count."""
    return (x * mask).sum() / mask.sum().clamp_min(1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the real entries (Bessel-corrected when ``unbiased``)."""
    n = mask.sum()
    mean = masked_mean(x, mask)
    sq = masked_sum((x - mean) ** 2, mask)
    if unbiased:
        if n <= 1:
            return torch.zeros((), dtype=x.dtype, device=x.device)
        return sq / (n - 1)
    return sq / n.clamp_min(1.0)


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Scale ``x`` to unit variance (and zero mean if ``shift_mean``) over the real entries; padding stays 0."""
    mean = masked_mean(x, mask)
    std = masked_var(x, mask).sqrt()
    out = (x - mean) / (std + eps) if shift_mean else x / (std + eps)
    return out * mask


def explained_variance(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """1 - Var[target - pred] / Var[target]: 1 is a perfect value function, 0 no better than a constant."""
    var_t = masked_var(target, mask)
    if var_t.item() == 0:
        return float("nan")
    return float(1.0 - masked_var(target - pred, mask) / var_t)


LossAggregation = Literal["token_mean", "sequence_mean", "token_sum"]


def loss_weights(mask: Tensor, how: LossAggregation = "token_mean") -> Tensor:
    """Weights ``w (B, T)`` such that ``(x * w).sum()`` aggregates a per-token loss ``x`` over the batch.

    ``token_mean``: every real token counts the same (one long reply weighs more than a short one);
    ``sequence_mean``: the mean over each row's tokens, then over rows (GRPO's original loss: a short reply's tokens
    weigh more, which biases towards long wrong answers, Liu et al. 2025); ``token_sum``: the sum over each row's
    tokens, then the mean over rows (Dr. GRPO's length-unbiased loss, up to the constant factor Adam ignores).
    """
    if how == "token_mean":
        return mask / mask.sum().clamp_min(1.0)
    rows = mask.shape[0]
    if how == "sequence_mean":
        return mask / (mask.sum(1, keepdim=True).clamp_min(1.0) * rows)
    if how == "token_sum":
        return mask / rows
    raise ValueError(f"unknown loss aggregation {how!r}")
