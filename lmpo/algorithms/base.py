"""What the three algorithms share: the ``Algorithm`` protocol and the few lines every optimiser step needs."""

from __future__ import annotations

from typing import Any, Protocol

import torch
from torch import Tensor, nn

from lmpo.core import Rollout, masked_mean
from lmpo.policies.base import Policy


class Algorithm(Protocol):
    """Turns a rollout into parameter updates; never collects, logs or saves."""

    def update(self, policy: Policy, rollout: Rollout, progress: float) -> dict[str, float]:
        """One update from ``rollout``; ``progress`` in [0, 1) is the fraction of training done."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Optimiser state, for checkpoints."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        ...


def unique_parameters(*groups: list[nn.Parameter]) -> list[nn.Parameter]:
    """Concatenate parameter lists without repeating a tensor (a shared trunk appears once)."""
    seen: set[int] = set()
    out = []
    for group in groups:
        for p in group:
            if id(p) not in seen:
                seen.add(id(p))
                out.append(p)
    return out


def adam(params: list[nn.Parameter], lr: float, eps: float) -> torch.optim.Adam:
    """Adam with foreach kernels (one fused launch per step instead of one per tensor)."""
    return torch.optim.Adam(params, lr=lr, eps=eps, foreach=True)


def set_lr(optimizer: torch.optim.Optimizer, base_lr: float, progress: float, anneal: bool) -> float:
    """Linear decay ``lr = base_lr * (1 - progress)`` when ``anneal``; returns the learning rate in force."""
    lr = base_lr * (1.0 - progress) if anneal else base_lr
    for group in optimizer.param_groups:
        group["lr"] = lr
    return lr


def optimizer_step(
    optimizer: torch.optim.Optimizer, loss: Tensor, params: list[nn.Parameter], max_grad_norm: float | None
) -> Tensor:
    """Backward, optional global-norm clipping, step; returns the gradient norm before clipping."""
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    if max_grad_norm is not None:
        norm = nn.utils.clip_grad_norm_(params, max_grad_norm, foreach=True)
    else:
        norm = torch.linalg.vector_norm(torch.stack([p.grad.norm() for p in params if p.grad is not None]))
    optimizer.step()
    return norm


def value_loss(
    values: Tensor, returns: Tensor, mask: Tensor, old_values: Tensor | None = None, clip: float | None = None
) -> Tensor:
    """Mean squared error to the returns, optionally with PPO's clipped variant (max of both errors)."""
    err = (values - returns).pow(2)
    if clip is not None and old_values is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        err = torch.maximum(err, (clipped - returns).pow(2))
    return masked_mean(err, mask)
