"""KL to a frozen reference policy: per-token estimators and the penalty coefficient controllers.

The estimators (Schulman 2020, "Approximating KL Divergence") estimate ``KL(pi || pi_ref)`` from tokens
sampled from ``pi``, with ``log r = log pi_ref(x) - log pi(x)``:

- ``k1 = -log r``: unbiased, high variance, can be negative per token;
- ``k2 = (log r)^2 / 2``: biased, low variance, always >= 0;
- ``k3 = (r - 1) - log r``: unbiased and always >= 0.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import Tensor

KLEstimator = Literal["k1", "k2", "k3"]


def kl_estimate(logprobs: Tensor, ref_logprobs: Tensor, kind: KLEstimator = "k1") -> Tensor:
    """Per-token estimate of ``KL(pi || pi_ref)`` from the sampled tokens' log-probabilities."""
    log_r = ref_logprobs - logprobs
    if kind == "k1":
        return -log_r
    if kind == "k2":
        return 0.5 * log_r.square()
    if kind == "k3":
        return torch.expm1(log_r) - log_r
    raise ValueError(f"unknown KL estimator {kind!r} (k1, k2 or k3)")


def kl_penalized_rewards(rewards: Tensor, logprobs: Tensor, ref_logprobs: Tensor, mask: Tensor, kl_coef: float,
                         kind: KLEstimator = "k1") -> Tensor:
    """``r_t - kl_coef * KL_t`` on every real token (Ziegler et al. 2019; Ouyang et al. 2022)."""
    return (rewards - kl_coef * kl_estimate(logprobs, ref_logprobs, kind)) * mask


class FixedKLController:
    """A constant KL coefficient: the config's, also after a resume (a resume may change it)."""

    def __init__(self, kl_coef: float) -> None:
        self.start = self.value = kl_coef

    def update(self, current_kl: float, n_steps: int) -> float:
        """Nothing to adapt; returns the coefficient."""
        return self.value

    def state_dict(self) -> dict[str, float]:
        """The coefficient and the one it started from, for checkpoints."""
        return {"value": self.value, "start": self.start}

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Nothing to restore: the configured coefficient holds."""


class AdaptiveKLController(FixedKLController):
    """Proportional controller steering the measured KL towards ``target`` (Ziegler et al. 2019, eq. 2).

    ``e = clip(KL / target - 1, -0.2, 0.2)``, ``beta <- beta * (1 + e * n_steps / horizon)``.
    """

    def __init__(self, kl_coef: float, target: float, horizon: int) -> None:
        if target <= 0 or horizon <= 0:
            raise ValueError("the adaptive KL controller needs target > 0 and horizon > 0")
        super().__init__(kl_coef)
        self.target, self.horizon = target, horizon

    def update(self, current_kl: float, n_steps: int) -> float:
        """Adapt the coefficient after a batch of ``n_steps`` samples whose mean KL was ``current_kl``."""
        if math.isfinite(current_kl):
            error = min(max(current_kl / self.target - 1.0, -0.2), 0.2)
            self.value *= 1.0 + error * n_steps / self.horizon
        return self.value

    def load_state_dict(self, state: dict[str, float]) -> None:
        """Continue from the adapted coefficient, unless the configured start has changed since it was saved."""
        if state.get("start", self.start) == self.start:
            self.value = state["value"]
