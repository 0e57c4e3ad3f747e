"""Deterministic evaluation of a control policy on fresh environments."""

from __future__ import annotations

from typing import Any

import numpy as np
import torch

from lmpo.envs import make_vector_env
from lmpo.policies.mlp import MLPPolicy


@torch.no_grad()
def evaluate_policy(
    policy: MLPPolicy, env_id: str, episodes: int, seed: int, kwargs: dict[str, Any] | None = None,
    deterministic: bool = True,
) -> np.ndarray:
    """Returns of ``episodes`` episodes, one per env of a vector env, acting on the policy's mode."""
    env = make_vector_env(env_id, episodes, "sync", kwargs)
    device = next(iter(policy.parameters())).device
    obs, _ = env.reset(seed=seed)
    returns = np.zeros(episodes)
    running = np.ones(episodes, dtype=bool)
    while running.any():
        out = policy.sample(torch.as_tensor(obs, dtype=torch.float32, device=device), deterministic)
        obs, reward, terminated, truncated, _ = env.step(policy.env_action(out.actions, env.single_action_space))
        returns += reward * running
        running &= ~(terminated | truncated)
    env.close()
    return returns
