"""Policies behind one protocol: MLPs for control now, language models later."""

from lmpo.policies.base import Evaluation, Policy, PolicyStep
from lmpo.policies.mlp import MLPPolicy, RunningNorm

__all__ = ["Evaluation", "MLPPolicy", "Policy", "PolicyStep", "RunningNorm"]
