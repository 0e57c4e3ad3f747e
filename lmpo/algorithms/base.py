"""What the three algorithms share: the ``Algorithm`` protocol and the few lines every optimiser step needs."""

from __future__ import annotations

import math
from typing import Any, Protocol

import torch
from torch import Tensor, nn

from lmpo.core import Rollout
from lmpo.policies.base import Policy


class Algorithm(Protocol):
    """Turns a rollout into parameter updates; never collects, logs or saves."""

    def update(self, policy: Policy, rollout: Rollout, progress: float) -> dict[str, float]:
        """One update from ``rollout``; ``progress`` in [0, 1) is the fraction of training done."""
        ...

    def gradient_parameters(self) -> list[nn.Parameter]:
        """The parameters its optimiser steps from backward passes (data-parallel training averages their
        gradients)."""
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


def trainable(params: list[nn.Parameter]) -> list[nn.Parameter]:
    """The parameters an optimiser moves: those that require gradients (frozen ones, such as a LoRA model's base
    weights, stay where they are and cost no optimiser state)."""
    return [p for p in params if p.requires_grad]


class Optimizer(Protocol):
    """Adam as the algorithms use it: a learning-rate schedule, one step per loss, state for checkpoints."""

    params: list[nn.Parameter]  # what it trains

    def set_lr(self, base_lr: float, progress: float, anneal: bool) -> float:
        """Set and return the learning rate in force."""
        ...

    def step(self, loss: Tensor, max_grad_norm: float | None) -> Tensor:
        """Backward, optional clipping, a step; returns the gradient norm before clipping."""
        ...

    def state_dict(self) -> dict[str, Any]:
        """Moments and step count."""
        ...

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        ...


class _Wrapped:
    """What both Adams share: a ``torch.optim`` optimiser's schedule and state."""

    optimizer: torch.optim.Optimizer

    def set_lr(self, base_lr: float, progress: float, anneal: bool) -> float:
        """Linear decay ``lr = base_lr * (1 - progress)`` when ``anneal``; returns the learning rate in force."""
        lr = base_lr * (1.0 - progress) if anneal else base_lr
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        return lr

    def state_dict(self) -> dict[str, Any]:
        """Adam's moments and step count."""
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned."""
        self.optimizer.load_state_dict(state)


class Adam(_Wrapped):
    """``torch.optim.Adam`` over the parameters as they are (no shared buffer)."""

    def __init__(self, params: list[nn.Parameter], lr: float, eps: float) -> None:
        self.params = params
        self.optimizer = torch.optim.Adam(params, lr=lr, eps=eps)

    def step(self, loss: Tensor, max_grad_norm: float | None) -> Tensor:
        """Backward, optional global-norm clipping, Adam step; returns the gradient norm before clipping."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = torch.nn.utils.clip_grad_norm_(self.params, math.inf if max_grad_norm is None else max_grad_norm)
        self.optimizer.step()
        full = getattr(norm, "full_tensor", None)  # the norm of FSDP's sharded gradients is a DTensor
        return full() if full is not None else norm


def make_optimizer(params: list[nn.Parameter], kind: str, lr: float, eps: float) -> Optimizer:
    """Adam over the ``trainable`` of ``params``: ``flat_adam`` (one buffer; faster on small dense policies; what
    ``auto`` is) or ``adam`` (torch's, over the parameters as they are)."""
    params = trainable(params)
    if not params:
        raise ValueError("no parameter to train: every one of them is frozen (requires_grad=False)")
    return Adam(params, lr, eps) if kind == "adam" else FlatAdam(params, lr, eps)


class FlatAdam(_Wrapped):
    """Adam over parameters re-homed as views of one contiguous buffer, gradients too.

    The optimiser, gradient clipping and zeroing then touch a single tensor: on small policies this cuts
    their cost about five-fold (Python overhead per tensor dominates); on large ones it is one fused pass.
    The parameters stay ordinary ``nn.Parameter`` objects of the policy, now sharing storage with the buffer.
    """

    def __init__(self, params: list[nn.Parameter], lr: float, eps: float) -> None:
        self.params = params
        with torch.no_grad():
            self.flat = nn.Parameter(torch.cat([p.detach().reshape(-1) for p in params]))
        self.flat.grad = torch.zeros_like(self.flat)
        offset = 0
        for p in params:
            n = p.numel()
            p.data = self.flat.data[offset:offset + n].view_as(p)
            p.grad = self.flat.grad[offset:offset + n].view_as(p)  # autograd accumulates in place
            offset += n
        self.optimizer = torch.optim.Adam([self.flat], lr=lr, eps=eps, fused=True)

    def step(self, loss: Tensor, max_grad_norm: float | None) -> Tensor:
        """Backward, optional global-norm clipping, Adam step; returns the gradient norm before clipping."""
        grad = self.flat.grad
        assert grad is not None
        grad.zero_()
        loss.backward()
        norm = torch.linalg.vector_norm(grad)
        if max_grad_norm is not None:
            grad.mul_(torch.clamp(max_grad_norm / (norm + 1e-6), max=1.0))
        self.optimizer.step()
        return norm


class Shuffler:
    """Random row orders for minibatches from the algorithm's own generator, seeded by the run: every process
    draws the same ones (their collection streams differ), and so does a single process given the same batch."""

    def __init__(self, seed: int) -> None:
        self.generator = torch.Generator().manual_seed(seed)

    def permutation(self, n: int, device: torch.device) -> Tensor:
        """A random order of ``n`` rows."""
        return torch.randperm(n, generator=self.generator).to(device)

    def state_dict(self) -> dict[str, Any]:
        """The generator's state."""
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore what ``state_dict`` returned (a checkpoint without it keeps the fresh generator)."""
        if "generator" in state:
            self.generator.set_state(state["generator"])


def value_error(values: Tensor, returns: Tensor, old_values: Tensor | None = None,
                clip: float | None = None) -> Tensor:
    """Per-step squared error to the returns, optionally PPO's clipped variant (the max of both errors)."""
    err = (values - returns).square()
    if clip is not None and old_values is not None:
        clipped = old_values + (values - old_values).clamp(-clip, clip)
        err = torch.maximum(err, (clipped - returns).square())
    return err
