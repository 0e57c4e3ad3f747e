"""The RL core: the rollout layout, returns, GAE, baselines and masked statistics (torch only)."""

from lmpo.core.advantages import (
    apply_baseline,
    discounted_returns,
    estimate_advantages,
    gae,
    leave_one_out_baseline,
    reverse_scan,
)
from lmpo.core.rollout import Rollout
from lmpo.core.stats import explained_variance, masked_mean, masked_sum, masked_var, masked_whiten

__all__ = [
    "Rollout",
    "apply_baseline",
    "discounted_returns",
    "estimate_advantages",
    "explained_variance",
    "gae",
    "leave_one_out_baseline",
    "masked_mean",
    "masked_sum",
    "masked_var",
    "masked_whiten",
    "reverse_scan",
]
