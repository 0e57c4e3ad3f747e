"""The RL core: the rollout layout, returns, GAE, baselines, KL estimators and controllers (torch only)."""

from lmpo.core.advantages import (
    apply_baseline,
    discounted_returns,
    episode_starts,
    estimate_advantages,
    gae,
    group_mean_std,
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
from lmpo.core.stats import (
    LossAggregation,
    explained_variance,
    loss_weights,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

__all__ = [
    "AdaptiveKLController",
    "LossAggregation",
    "FixedKLController",
    "Rollout",
    "apply_baseline",
    "discounted_returns",
    "episode_starts",
    "estimate_advantages",
    "explained_variance",
    "gae",
    "group_mean_std",
    "kl_estimate",
    "kl_penalized_rewards",
    "leave_one_out_baseline",
    "linked_returns",
    "loss_weights",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "reverse_scan",
]
