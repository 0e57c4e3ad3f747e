"""Reward functions: ``reward(prompts, completions, **fields) -> list[float]``, registered by name (or a user's own
as ``module:function`` / ``file.py:function``), combined as a checked weighted sum."""

from lmpo.rewards.registry import REWARDS, RewardError, WeightedReward, load_reward, register_reward

__all__ = ["REWARDS", "RewardError", "WeightedReward", "load_reward", "register_reward"]
