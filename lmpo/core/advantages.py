"""Returns, generalised advantage estimation and baselines on padded ``[B, T]`` rollouts.

Conventions shared by every function here:

- ``dones[b, t] = 1`` cuts the recursion after step ``t``: the episode terminated, was truncated, or the
  row ends (last real step of the row). Padding after a row's end must be masked out with ``mask``.
- ``next_values[b, t]`` is the value used to bootstrap from step ``t``: ``V(s_{t+1})`` inside an episode,
  ``0`` after a termination, and ``V(final observation)`` after a truncation (Gymnasium's ``truncated``
  says the episode did not end, it was only cut: Pardo et al. 2018, "Time Limits in RL").
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
from torch import Tensor

from lmpo.core.rollout import Rollout
from lmpo.core.stats import masked_mean, masked_whiten

Baseline = Literal["none", "mean", "loo", "group", "value"]
GROUP_STD_EPS = 1e-4  # added to a group's std before dividing (GRPO; TRL uses the same)


def reverse_scan(x: Tensor, coef: Tensor) -> Tensor:
    """``y_t = x_t + coef_t * y_{t+1}`` backwards over ``T`` (``y_T = 0``), for ``(B, T)`` tensors.

    Returns and GAE are both this recursion. It runs in NumPy float64: over long rows (T = 512 steps) a
    loop of tiny NumPy operations is ~5x cheaper than the same loop of torch operations.
    """
    xs = x.detach().to("cpu", torch.float64).numpy()
    cs = coef.detach().to("cpu", torch.float64).numpy()
    out = np.empty_like(xs)
    running = np.zeros(xs.shape[0])
    for t in range(xs.shape[1] - 1, -1, -1):
        running = xs[:, t] + cs[:, t] * running
        out[:, t] = running
    return torch.from_numpy(out).to(x.device, x.dtype)


def discounted_returns(
    rewards: Tensor, dones: Tensor, gamma: float, mask: Tensor, next_values: Tensor | None = None
) -> Tensor:
    """Monte-Carlo returns ``G_t = r_t + gamma * (G_{t+1} if not done_t else bootstrap_t)``.

    ``bootstrap_t`` is ``next_values[t]`` (0 where not given), so a truncated episode is not treated as ended.
    """
    boot = torch.zeros_like(rewards) if next_values is None else next_values
    # G_t = r_t + gamma * done_t * bootstrap_t + gamma * (1 - done_t) * G_{t+1}, zero on padding
    return reverse_scan(mask * (rewards + gamma * dones * boot), mask * gamma * (1.0 - dones))


def episode_starts(episode_ids: Tensor) -> Tensor:
    """``(B,)`` index of the first row of each row's episode (an episode's rows are consecutive)."""
    index = torch.arange(episode_ids.shape[0], device=episode_ids.device)
    new = torch.ones_like(episode_ids, dtype=torch.bool)
    new[1:] = episode_ids[1:] != episode_ids[:-1]
    return torch.cummax(torch.where(new, index, 0), 0).values


def linked_returns(
    rewards: Tensor, dones: Tensor, gamma: float, mask: Tensor, next_values: Tensor | None, episode_ids: Tensor
) -> Tensor:
    """Monte-Carlo returns of episodes spanning several rows: a row's last step bootstraps from the return
    of its episode's next row (a conversation's later replies), the episode's last row from ``next_values``.

    Every row must end with ``done`` on its last real step. One pass per row of the longest episode.
    """
    b = rewards.shape[0]
    linked = torch.zeros(b, dtype=torch.bool, device=rewards.device)
    linked[:-1] = episode_ids[1:] == episode_ids[:-1]
    rows = torch.nonzero(linked).flatten()
    last = (mask.sum(1).long() - 1).clamp_min(0)[rows]
    boot = torch.zeros_like(rewards) if next_values is None else next_values.clone()
    ret = discounted_returns(rewards, dones, gamma, mask, boot)
    depth = int(torch.unique(episode_ids, return_counts=True)[1].max()) if b else 1
    for _ in range(depth - 1):
        boot[rows, last] = ret[rows + 1, 0]
        ret = discounted_returns(rewards, dones, gamma, mask, boot)
    return ret


def gae(
    rewards: Tensor,
    values: Tensor,
    next_values: Tensor,
    dones: Tensor,
    mask: Tensor,
    gamma: float,
    lam: float,
) -> tuple[Tensor, Tensor]:
    """Generalised advantage estimation (Schulman et al. 2016); returns ``(advantages, returns)``.

    ``returns = advantages + values`` are the TD(lambda) targets for the value function.
    """
    # delta_t = r_t + gamma V(s_t+1) - V(s_t), with V(s_t+1) already 0 after a termination
    delta = rewards + gamma * next_values - values
    # A_t = delta_t + gamma lambda (1 - done_t) A_{t+1}, zero on padding
    advantages = reverse_scan(mask * delta, mask * gamma * lam * (1.0 - dones))
    return advantages, (advantages + values) * mask


def leave_one_out_baseline(scores: Tensor, group_ids: Tensor) -> Tensor:
    """For each row, the mean score of the *other* rows of its group (RLOO, Kool et al. 2019).

    ``scores`` is ``(B,)``; every group needs at least two rows, or there is no "other" to average.
    """
    groups, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    if bool((counts < 2).any()):
        raise ValueError("leave-one-out baseline needs at least 2 rows per group")
    sums = torch.zeros(len(groups), dtype=scores.dtype, device=scores.device).index_add_(0, inverse, scores)
    n = counts.to(scores.dtype)[inverse]
    return (sums[inverse] - scores) / (n - 1)


def group_mean_std(scores: Tensor, group_ids: Tensor) -> tuple[Tensor, Tensor]:
    """Each row's group mean and (Bessel-corrected) group std of ``scores (B,)``; a one-row group's std is 0."""
    groups, inverse, counts = torch.unique(group_ids, return_inverse=True, return_counts=True)
    zeros = torch.zeros(len(groups), dtype=scores.dtype, device=scores.device)
    n = counts.to(scores.dtype)
    mean = zeros.index_add(0, inverse, scores) / n
    sq = zeros.index_add(0, inverse, (scores - mean[inverse]).square())
    std = (sq / (n - 1).clamp_min(1.0)).sqrt()
    return mean[inverse], std[inverse]


def apply_baseline(
    returns: Tensor, mask: Tensor, baseline: Baseline, values: Tensor | None = None,
    group_ids: Tensor | None = None, episode_ids: Tensor | None = None, group_std: bool = False,
) -> Tensor:
    """Advantages ``returns - b`` for one of the baselines: none, batch mean, leave-one-out, group mean, value.

    The batch mean is over every real step. Leave-one-out (RLOO, Kool et al. 2019) and the group mean (GRPO, Shao
    et al. 2024) compare episodes' returns from their first step with the other episodes of their group (k samples
    of one prompt) and subtract the same number from every step of a row; a later row of a multi-row episode has
    that baseline lowered by what its episode earned before the row (which depends only on the past, so the
    estimate stays unbiased). ``group_std`` divides a group's advantages by its returns' std plus 1e-4 (GRPO's
    normalisation; without it, Dr. GRPO's, Liu et al. 2025).
    """
    if baseline == "none":
        return returns * mask
    if baseline == "mean":
        return (returns - masked_mean(returns, mask)) * mask
    if baseline == "value":
        if values is None:
            raise ValueError("baseline 'value' needs a policy with a value function")
        return (returns - values) * mask
    if baseline in ("loo", "group"):
        if group_ids is None:
            raise ValueError(f"baseline {baseline!r} needs group_ids (k samples per prompt or start state)")
        if episode_ids is None:  # one episode per row
            episode_ids = torch.arange(returns.shape[0], device=returns.device)
        start = episode_starts(episode_ids)
        first = start == torch.arange(len(start), device=start.device)
        per_episode = torch.zeros_like(returns[:, 0])
        scale = torch.ones_like(returns[:, 0])
        if baseline == "loo":
            per_episode[first] = leave_one_out_baseline(returns[first, 0], group_ids[first])
        else:
            per_episode[first], std = group_mean_std(returns[first, 0], group_ids[first])
            if group_std:
                scale[first] = std + GROUP_STD_EPS
        b = per_episode[start] - (returns[start, 0] - returns[:, 0])
        return (returns - b.unsqueeze(1)) / scale[start].unsqueeze(1) * mask
    raise ValueError(f"unknown baseline {baseline!r}")


def estimate_advantages(
    rollout: Rollout,
    estimator: Literal["gae", "returns"],
    gamma: float,
    gae_lambda: float = 1.0,
    baseline: Baseline = "value",
    whiten: bool = False,
    group_std: bool = False,
) -> Rollout:
    """Fill ``rollout.advantages`` and ``rollout.returns`` with GAE or Monte-Carlo returns minus a baseline."""
    m = rollout.mask
    if estimator == "gae":
        if rollout.values is None or rollout.next_values is None:
            raise ValueError("GAE needs values and next_values in the rollout")
        adv, ret = gae(rollout.rewards, rollout.values, rollout.next_values, rollout.dones, m, gamma, gae_lambda)
    elif estimator == "returns":
        if rollout.episode_ids is None:
            ret = discounted_returns(rollout.rewards, rollout.dones, gamma, m, rollout.next_values)
        else:
            ret = linked_returns(rollout.rewards, rollout.dones, gamma, m, rollout.next_values, rollout.episode_ids)
        adv = apply_baseline(ret, m, baseline, rollout.values, rollout.group_ids, rollout.episode_ids, group_std)
    else:
        raise ValueError(f"unknown advantage estimator {estimator!r}")
    if whiten:
        adv = masked_whiten(adv, m)
    rollout.advantages, rollout.returns = adv, ret
    return rollout
