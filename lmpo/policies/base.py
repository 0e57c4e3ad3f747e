"""The ``Policy`` protocol: what every algorithm may ask of a policy, MLP or language model alike."""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

ENTROPY_SAMPLE = 256  # language-model steps whose entropy is logged (Evaluation.reported_entropy)


@dataclass
class PolicyStep:
    """What ``sample`` returns for a batch of observations ``(N, ...)``."""

    actions: Tensor  # (N, *action_shape) the actions actually taken; (B, T) tokens for a language model
    log_probs: Tensor  # (N,) log-probability under exactly the distribution sampled from; (B, T) for LMs
    values: Tensor | None  # (N,) V(s), or None for a policy without a value function; (B, T) for LMs
    mask: Tensor | None = None  # (B, T) real tokens, for policies that emit variable-length sequences


def unpack(x: Tensor, steps: Tensor) -> Tensor:
    """``x (N, ...)``, one entry per True of ``steps (B, T)`` row by row, as ``(B, T, ...)`` with zeros
    elsewhere (differentiable, twice too: TRPO's Fisher products go through it)."""
    rows, cols = steps.nonzero(as_tuple=True)
    return x.new_zeros(*steps.shape, *x.shape[1:]).index_put((rows, cols), x)


@dataclass
class Evaluation:
    """What ``evaluate`` returns for observations and actions ``(B, T, ...)`` in one forward pass."""

    log_probs: Tensor  # (B, T) log pi(a_t | s_t)
    values: Tensor | None  # (B, T) V(s_t)
    params: Tensor  # the distribution's parameters: (B, T, P), or (N, P) at the steps ``steps`` marks
    entropy_of: Callable[[Tensor], Tensor]  # params (..., P) -> (...) entropy
    steps: Tensor | None = None  # (B, T) bool: set when ``params`` holds only the real steps (language models)

    @cached_property
    def dist(self) -> Tensor:
        """``(B, T, P)`` parameters for ``Policy.kl`` (TRPO's trust region); zeros at steps not held."""
        return self.params if self.steps is None else unpack(self.params, self.steps)

    @cached_property
    def entropy(self) -> Tensor:
        """``(B, T)`` entropy of pi(. | s_t), computed on first use (an unused entropy costs nothing)."""
        h = self.entropy_of(self.params)
        return h if self.steps is None else unpack(h, self.steps)

    def reported_entropy(self, mask: Tensor, sample: int = ENTROPY_SAMPLE) -> Tensor:
        """The mean entropy over the steps ``mask`` keeps, for logs (no gradient, nothing cached). Unless already
        computed (an entropy bonus), a language model's is taken over ``sample`` of them evenly spread when there
        are more: over a batch's every token it costs about as much as the forward pass (an exp per vocabulary
        entry)."""
        cached = self.__dict__.get("entropy")  # (B, T), when the loss asked for it
        with torch.no_grad():
            if self.steps is None:
                h = cached if cached is not None else self.entropy_of(self.params)
                return (h * mask).sum() / mask.sum().clamp_min(1.0)
            keep = mask.bool() & self.steps
            if cached is not None:
                return cached[keep].mean() if bool(keep.any()) else cached.new_zeros(())
            rows = keep[self.steps].nonzero().squeeze(1)  # rows of params (the steps held) the mask keeps
            if rows.numel() == 0:
                return self.params.new_zeros(())
            if rows.numel() > sample:
                rows = rows[torch.linspace(0, rows.numel() - 1, sample, device=rows.device).round().long()]
            return self.entropy_of(self.params[rows]).mean()


@runtime_checkable
class Policy(Protocol):
    """A stochastic policy, optionally with a value function. Implemented by MLPs and language models."""

    has_value: bool  # whether ``values`` are available
    markov: bool  # True when each step depends only on its own observation (rows may be flattened)

    def sample(self, obs: Any, deterministic: bool = False) -> PolicyStep:
        """Draw actions for a batch of observations (the mode when ``deterministic``)."""
        ...

    def evaluate(self, obs: Any, actions: Tensor) -> Evaluation:
        """Score given actions: log-probs, entropy, values and distribution parameters, with gradients."""
        ...

    def value(self, obs: Any, actions: Tensor | None = None) -> Tensor:
        """``V(s)`` for a batch of observations (a language model reads it along the reply ``actions``)."""
        ...

    def kl(self, old_dist: Tensor, new_dist: Tensor) -> Tensor:
        """Analytic ``KL(old || new)`` per step from two outputs of ``Evaluation.dist``."""
        ...

    def actor_parameters(self) -> list[nn.Parameter]:
        """Parameters of the action distribution (what TRPO's natural gradient moves)."""
        ...

    def critic_parameters(self) -> list[nn.Parameter]:
        """Parameters only the value function uses (empty without a separate critic)."""
        ...


class ForwardEvaluation:
    """``evaluate`` and ``value`` by calling the module, so through ``forward(obs, actions, value_only)``: DDP's
    gradient hooks and FSDP's unsharding run in ``__call__``, and a method that bypassed it would skip them."""

    def evaluate(self, obs: Any, actions: Tensor) -> Evaluation:
        """Log-probs, entropy, values and distribution parameters of ``actions``, with gradients."""
        out = self(obs, actions)  # type: ignore[operator]
        assert isinstance(out, Evaluation)
        return out

    def value(self, obs: Any, actions: Tensor | None = None) -> Tensor:
        """``V(s)`` alone (cheaper than ``evaluate`` where the value has its own network)."""
        out = self(obs, actions, value_only=True)  # type: ignore[operator]
        assert isinstance(out, Tensor)
        return out


def save_weights(module: nn.Module | dict[str, Tensor], path: str | Path) -> None:
    """``module.state_dict()`` (or a state dict) as safetensors. Tensors that share storage with another (views of
    one optimiser buffer, tied weights), are not on the CPU or not contiguous are copied: safetensors refuses them."""
    state = module if isinstance(module, dict) else module.state_dict()
    seen: set[int] = set()
    tensors = {}
    for k, v in state.items():
        v = v.detach()
        shared = v.device.type != "cpu" or v.untyped_storage().data_ptr() in seen or not v.is_contiguous()
        seen.add(v.untyped_storage().data_ptr())
        tensors[k] = v.to("cpu", copy=True, memory_format=torch.contiguous_format) if shared else v
    try:
        save_file(tensors, str(path))
    except SafetensorError as e:  # a full disk: the OSError it is, naming the file
        code = re.search(r"os error (\d+)", str(e))
        if code is None:
            raise
        raise OSError(int(code[1]), os.strerror(int(code[1])), str(path)) from None


def load_weights(module: nn.Module, path: str | Path) -> None:
    """Load what ``save_weights`` wrote."""
    module.load_state_dict(load_file(str(path)))
