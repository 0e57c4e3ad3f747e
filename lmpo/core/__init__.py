"""The RL core: the rollout layout, returns, GAE, baselines, KL estimators and controllers (torch only)."""

from lmpo.core.advantages import (
    apply_baseline,
    discounted_returns,
    episode_starts,
    estimate_advantages,
    gae,
    leave_one_out_baseline,
    linked_returns,
    reverse_scan,
)
from lmpo.core.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_estimate,
    kl_penalized_rewards,
)
from lmpo.core.rollout import Rollout
from lmpo.core.stats import explained_variance, masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "Rollout",
    "apply_baseline",
    "discounted_returns",
    "episode_starts",
    "estimate_advantages",
    "explained_variance",
    "gae",
    "kl_estimate",
    "kl_penalized_rewards",
    "leave_one_out_baseline",
    "linked_returns",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "reverse_scan",
]
