"""MLP policies for Gymnasium control: categorical (``Discrete``) and diagonal Gaussian (``Box``)."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any, Literal

import gymnasium as gym
import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmpo.policies.base import Evaluation, ForwardEvaluation, PolicyStep

_LOG_2PI = math.log(2.0 * math.pi)
_ACTIVATIONS: dict[str, Callable[[Tensor], Tensor]] = {"tanh": torch.tanh, "relu": torch.relu, "gelu": F.gelu}


class RunningNorm(nn.Module):
    """Observation normaliser with running mean and variance (Chan et al.'s parallel update), clipped."""

    mean: Tensor
    var: Tensor
    count: Tensor

    def __init__(self, shape: tuple[int, ...], clip: float = 10.0, eps: float = 1e-8) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(shape, dtype=torch.float64))
        self.register_buffer("var", torch.ones(shape, dtype=torch.float64))
        self.register_buffer("count", torch.tensor(eps, dtype=torch.float64))
        self.clip, self.eps = clip, eps

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold a batch ``(N, *shape)`` into the running statistics."""
        x = x.reshape(-1, *self.mean.shape).to(torch.float64)
        n = x.shape[0]
        b_mean, b_var = x.mean(0), x.var(0, unbiased=False)
        delta, total = b_mean - self.mean, self.count + n
        m2 = self.var * self.count + b_var * n + delta.pow(2) * self.count * n / total
        self.mean.add_(delta * n / total)
        self.var.copy_(m2 / total)
        self.count.fill_(total.item())

    def forward(self, x: Tensor) -> Tensor:
        z = (x - self.mean.to(x.dtype)) / torch.sqrt(self.var.to(x.dtype) + self.eps)
        return z.clamp(-self.clip, self.clip)


class MLP(nn.Module):
    """Linear layers with ``activation`` between them, orthogonally initialised (as in SB3 and CleanRL).

    The forward pass calls ``F.linear`` directly: on the small networks of control tasks, module-call
    overhead is half the cost of a forward pass.
    """

    def __init__(self, sizes: list[int], activation: str, out_gain: float, final_activation: bool = False) -> None:
        super().__init__()
        self.layers = nn.ModuleList()
        for i in range(len(sizes) - 1):
            lin = nn.Linear(sizes[i], sizes[i + 1])
            last = i == len(sizes) - 2
            nn.init.orthogonal_(lin.weight, gain=out_gain if last else math.sqrt(2.0))
            nn.init.zeros_(lin.bias)
            self.layers.append(lin)
        self.act = _ACTIVATIONS[activation]
        self.n_act = len(self.layers) if final_activation else len(self.layers) - 1

    def forward(self, x: Tensor) -> Tensor:
        for i, layer in enumerate(self.layers):
            assert isinstance(layer, nn.Linear)
            x = F.linear(x, layer.weight, layer.bias)
            if i < self.n_act:
                x = self.act(x)
        return x


class MLPPolicy(ForwardEvaluation, nn.Module):
    """Actor MLP with a categorical or diagonal-Gaussian head, plus a value function.

    ``critic="separate"`` gives the value function its own MLP (needed by TRPO, whose natural-gradient
    step must not be disturbed by value regression); ``critic="shared"`` puts a value head on the actor's
    trunk; ``critic="none"`` has no value function (plain REINFORCE).
    """

    markov = True

    def __init__(
        self,
        observation_space: gym.spaces.Space,
        action_space: gym.spaces.Space,
        hidden_sizes: list[int],
        activation: str = "tanh",
        critic: Literal["separate", "shared", "none"] = "separate",
        log_std_init: float = 0.0,
        normalize_obs: bool = False,
    ) -> None:
        super().__init__()
        if not isinstance(observation_space, gym.spaces.Box) or len(observation_space.shape) != 1:
            raise ValueError(f"MLP policies need a flat Box observation space, got {observation_space}")
        obs_dim = int(observation_space.shape[0])
        self.discrete = isinstance(action_space, gym.spaces.Discrete)
        if self.discrete:
            assert isinstance(action_space, gym.spaces.Discrete)
            act_dim = int(action_space.n)
        elif isinstance(action_space, gym.spaces.Box) and len(action_space.shape) == 1:
            act_dim = int(action_space.shape[0])
            self.log_std = nn.Parameter(torch.full((act_dim,), float(log_std_init)))
        else:
            raise ValueError(f"MLP policies support Discrete or flat Box actions, got {action_space}")
        self.obs_dim, self.act_dim = obs_dim, act_dim
        self.normalizer = RunningNorm((obs_dim,)) if normalize_obs else None
        sizes = [obs_dim, *hidden_sizes]
        self.trunk = MLP(sizes, activation, math.sqrt(2.0), final_activation=True)
        self.head = MLP([sizes[-1], act_dim], activation, 0.01)
        self.critic_kind = critic
        self.critic: MLP | None = None
        if critic == "separate":
            self.critic = MLP([obs_dim, *hidden_sizes, 1], activation, 1.0)
        elif critic == "shared":
            self.critic = MLP([sizes[-1], 1], activation, 1.0)
        self.has_value = critic != "none"
        self._fused: list[tuple[Tensor, Tensor]] | None = None  # weights of _fused_inference, eval mode only

    # ----------------------------------------------------------------------------------------------
    def _features(self, obs: Tensor) -> Tensor:
        return self.normalizer(obs) if self.normalizer is not None else obs

    def heads(self, obs: Tensor) -> tuple[Tensor, Tensor | None]:
        """Distribution parameters ``(..., P)`` and values ``(...)`` in one pass."""
        x = self._features(obs)
        if self.critic_kind == "separate" and not self.training and not torch.is_grad_enabled():
            out = self._fused_inference(x)  # (..., A + 1): action head outputs, then the value
            return self._dist(out[..., :-1]), out[..., -1]
        h = self.trunk(x)
        values = None
        if self.critic is not None:
            values = self.critic(h if self.critic_kind == "shared" else x).squeeze(-1)
        return self._dist(self.head(h)), values

    def _dist(self, head_out: Tensor) -> Tensor:
        if self.discrete:
            return F.log_softmax(head_out, dim=-1)  # (..., A) normalised logits
        return torch.cat([head_out, self.log_std.expand_as(head_out)], dim=-1)  # (..., 2A) mean, log-std

    def _fused_inference(self, x: Tensor) -> Tensor:
        """Actor and separate critic as one MLP with block-diagonal weights: half the ops, for acting.

        Only in ``eval()`` mode without gradients: the fused weights are built on first use and dropped by
        every ``train()``/``eval()`` switch, ``load_state_dict`` and ``.to()``; an optimiser step must not
        happen in eval mode (the trainer switches to ``train()`` around every update).
        """
        assert self.critic is not None
        if self._fused is None:
            actor, critic = [*self.trunk.layers, *self.head.layers], list(self.critic.layers)
            self._fused = []
            for i, (a, c) in enumerate(zip(actor, critic, strict=True)):
                assert isinstance(a, nn.Linear) and isinstance(c, nn.Linear)
                w = torch.cat([a.weight, c.weight]) if i == 0 else torch.block_diag(a.weight, c.weight)
                self._fused.append((w, torch.cat([a.bias, c.bias])))
        layers = self._fused
        for i, (w, b) in enumerate(layers):
            x = F.linear(x, w, b)
            if i < len(layers) - 1:
                x = self.trunk.act(x)
        return x

    def _log_prob(self, dist: Tensor, actions: Tensor) -> Tensor:
        if self.discrete:
            return dist.gather(-1, actions.long().unsqueeze(-1)).squeeze(-1)
        mean, log_std = dist.split(self.act_dim, dim=-1)
        z = (actions - mean) * torch.exp(-log_std)
        return (-0.5 * z.square() - log_std - 0.5 * _LOG_2PI).sum(-1)

    def _entropy(self, dist: Tensor) -> Tensor:
        if self.discrete:
            return -(dist.exp() * dist).sum(-1)
        return (dist[..., self.act_dim:] + 0.5 + 0.5 * _LOG_2PI).sum(-1)

    # the fused inference weights are copies: drop them whenever the parameters may change or move
    def train(self, mode: bool = True) -> MLPPolicy:
        """Switch mode (``eval()`` calls this too)."""
        self._fused = None
        return super().train(mode)

    def load_state_dict(self, state_dict: Mapping[str, Any], strict: bool = True, assign: bool = False) -> Any:
        """``nn.Module.load_state_dict``."""
        self._fused = None
        return super().load_state_dict(state_dict, strict, assign)

    def _apply(self, fn: Any, recurse: bool = True) -> MLPPolicy:  # behind .to(), .cuda(), .double(), ...
        self._fused = None
        return super()._apply(fn, recurse)

    # ---------------------------------------------------------------------- the Policy protocol
    @torch.no_grad()
    def sample(self, obs: Tensor, deterministic: bool = False) -> PolicyStep:
        """Actions for ``obs`` ``(N, obs_dim)``; Gaussian actions are unclipped (the env wrapper clips)."""
        dist, values = self.heads(obs)
        if self.discrete:
            if deterministic:
                actions = dist.argmax(-1)
            else:
                # Gumbel-max: argmax(logits - log E), E ~ Exp(1), is an exact categorical sample
                # (4 cheap ops; torch.multinomial validates its input and costs 10x more per call)
                actions = (dist - torch.empty_like(dist).exponential_().log()).argmax(-1)
        else:
            mean, log_std = dist.split(self.act_dim, dim=-1)
            actions = mean if deterministic else mean + log_std.exp() * torch.randn_like(mean)
        return PolicyStep(actions, self._log_prob(dist, actions), values)

    def forward(self, obs: Tensor, actions: Tensor | None = None, value_only: bool = False) -> Evaluation | Tensor:
        """``evaluate``: log-probs, entropy, values and distribution parameters of ``actions`` ``(B, T, ...)``;
        ``value``: ``V(s)`` alone (``actions`` are not needed), an error without a value function."""
        if value_only:
            if self.critic is None:
                raise RuntimeError("this policy has no value function (critic='none')")
            x = self._features(obs)
            return self.critic(self.trunk(x) if self.critic_kind == "shared" else x).squeeze(-1)
        assert actions is not None
        dist, values = self.heads(obs)
        return Evaluation(self._log_prob(dist, actions), values, dist, self._entropy)

    def kl(self, old_dist: Tensor, new_dist: Tensor) -> Tensor:
        """Analytic ``KL(old || new)`` per step."""
        if self.discrete:
            return (old_dist.exp() * (old_dist - new_dist)).sum(-1)
        mu0, ls0 = old_dist.split(self.act_dim, dim=-1)
        mu1, ls1 = new_dist.split(self.act_dim, dim=-1)
        # KL(N0 || N1) = log(s1/s0) + (s0^2 + (mu0 - mu1)^2) / (2 s1^2) - 1/2, summed over dimensions
        kl = ls1 - ls0 + (torch.exp(2 * ls0) + (mu0 - mu1).pow(2)) / (2 * torch.exp(2 * ls1)) - 0.5
        return kl.sum(-1)

    def actor_parameters(self) -> list[nn.Parameter]:
        """Trunk, action head and (Gaussian) log-std."""
        params = [*self.trunk.parameters(), *self.head.parameters()]
        return params if self.discrete else [*params, self.log_std]

    def critic_parameters(self) -> list[nn.Parameter]:
        """The separate critic MLP, or the shared value head."""
        return [] if self.critic is None else list(self.critic.parameters())

    def update_normalizer(self, obs: Tensor) -> None:
        """Fold collected observations into the running statistics (no-op without normalisation)."""
        if self.normalizer is not None:
            self.normalizer.update(obs)

    def env_action(self, actions: Tensor, action_space: gym.spaces.Space) -> np.ndarray:
        """The actions as the environment takes them: Gaussian samples clipped to the Box bounds."""
        a = actions.cpu().numpy()
        if isinstance(action_space, gym.spaces.Box):
            return np.clip(a, action_space.low, action_space.high)
        return a
