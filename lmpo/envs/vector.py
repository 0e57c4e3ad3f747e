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


def control_env_problem(env_id: str, kwargs: dict[str, Any]) -> str | None:
    """Why an MLP policy cannot train on ``env_id`` made with ``kwargs`` (one line), or None when it can: one
    environment is made and closed, so that a setting it does not take fails before a run starts."""
    try:
        env = gym.make(env_id, **kwargs)
        try:
            env.reset(seed=0)  # what a setting breaks may show only here (render_mode='human' without pygame)
            obs, act = env.observation_space, env.action_space
        finally:
            env.close()
    except (TypeError, ValueError, AssertionError, ImportError, gym.error.Error) as e:  # ImportError: a missing extra
        why = " ".join(str(e).split()).split(" was raised from the environment creator")[0] or type(e).__name__
        return f"env.kwargs: {env_id} cannot be made with {kwargs} ({why})"
    if not isinstance(obs, gym.spaces.Box) or len(obs.shape) != 1:
        return f"env.id: {env_id} observes {obs}; the mlp policy needs a flat Box of numbers"
    if not isinstance(act, gym.spaces.Discrete) and not (isinstance(act, gym.spaces.Box) and len(act.shape) == 1):
        return f"env.id: {env_id} acts in {act}; the mlp policy needs Discrete or flat Box actions"
    return None
