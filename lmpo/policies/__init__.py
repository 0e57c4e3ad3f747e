"""Policies behind one protocol: MLPs for control; GRU/LSTM and GPT language models with generation."""

from lmpo.policies.base import Evaluation, Policy, PolicyStep
from lmpo.policies.generation import Generation, generate, to_rollout
from lmpo.policies.gpt import GPT, GPTConfig
from lmpo.policies.lm import LMPolicy
from lmpo.policies.mlp import MLPPolicy, RunningNorm
from lmpo.policies.recurrent import RecurrentLM
from lmpo.policies.sampling import SamplingConfig, sampling_logprobs

__all__ = [
    "GPT",
    "Evaluation",
    "GPTConfig",
    "Generation",
    "LMPolicy",
    "MLPPolicy",
    "Policy",
    "PolicyStep",
    "RecurrentLM",
    "RunningNorm",
    "SamplingConfig",
    "generate",
    "sampling_logprobs",
    "to_rollout",
]
