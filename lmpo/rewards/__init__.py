"""Reward functions: plain callables scoring replies (the ``Reward`` protocol) and the simulated user."""

from lmpo.rewards.base import Reward
from lmpo.rewards.satisfaction import SimulatedUser, Verdict, token_f1

__all__ = ["Reward", "SimulatedUser", "Verdict", "token_f1"]
