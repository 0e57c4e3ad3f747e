"""Gymnasium vector environments built so that their whole state can be saved with a checkpoint."""

from __future__ import annotations

import functools
from typing import Any

import gymnasium as gym
from gymnasium.vector import AsyncVectorEnv, AutoresetMode, SyncVectorEnv, VectorEnv


def make_vector_env(
    env_id: str, num_envs: int, vectorization: str = "sync", kwargs: dict[str, Any] | None = None
) -> VectorEnv:
    """``num_envs`` copies of ``env_id`` that reset in the same step they end (final obs in ``info``).

    The sub-env factories are ``functools.partial`` objects, so a ``SyncVectorEnv`` pickles with the exact
    state of every environment and its random generator (what makes ``--resume`` exact).
    """
    factory = functools.partial(gym.make, env_id, **(kwargs or {}))
    fns = [factory] * num_envs
    if vectorization == "async":
        return AsyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
    return SyncVectorEnv(fns, autoreset_mode=AutoresetMode.SAME_STEP)
