"""REINFORCE, TRPO and PPO, each an object with ``update(policy, rollout, progress) -> metrics``."""

from __future__ import annotations

from lmpo.algorithms.base import Algorithm
from lmpo.algorithms.ppo import PPO
from lmpo.algorithms.reinforce import Reinforce
from lmpo.algorithms.trpo import TRPO, conjugate_gradient
from lmpo.config import PPOConfig, ReinforceConfig, TRPOConfig
from lmpo.policies.base import Policy

ALGORITHMS = {"reinforce": Reinforce, "trpo": TRPO, "ppo": PPO}


def make_algorithm(cfg: ReinforceConfig | TRPOConfig | PPOConfig, policy: Policy, seed: int = 0) -> Algorithm:
    """The algorithm named by ``cfg.name``, built for ``policy``; ``seed`` seeds its minibatch shuffles."""
    return ALGORITHMS[cfg.name](cfg, policy, seed)


__all__ = ["ALGORITHMS", "PPO", "TRPO", "Algorithm", "Reinforce", "conjugate_gradient", "make_algorithm"]
