"""The one data layout of lmpo: a batch of experience as padded ``[B, T]`` tensors with a mask.

For classic control a row is one environment's stream of ``T`` steps (several episodes may follow each
other in a row, separated by ``dones``) or one whole episode; for a language model a row is one response
and ``T`` runs over its tokens, and a multi-turn conversation is several consecutive rows of one episode
(``episode_ids``). Every algorithm reads this and nothing else.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

from torch import Tensor


@dataclass
class Rollout:
    """Experience collected by the behaviour policy; every tensor field is ``(B, T, ...)``."""

    obs: Any  # (B, T, *obs_shape) for control; whatever the policy's ``evaluate`` takes otherwise
    actions: Tensor  # (B, T, *action_shape)
    logprobs: Tensor  # (B, T) log pi_behaviour(a_t | s_t), of the distribution actually sampled from
    rewards: Tensor  # (B, T)
    mask: Tensor  # (B, T) 1.0 for real steps, 0.0 for padding
    dones: Tensor  # (B, T) 1.0 where the return recursion is cut after step t (episode or row end)
    values: Tensor | None = None  # (B, T) V(s_t) at collection time
    next_values: Tensor | None = None  # (B, T) V(s_t+1); 0 after termination, V(final obs) after truncation
    group_ids: Tensor | None = None  # (B,) rows with the same id answer the same prompt (leave-one-out)
    episode_ids: Tensor | None = None  # (B,) rows with the same id, consecutive and in order, are one episode
    advantages: Tensor | None = None  # (B, T) filled by ``estimate_advantages``
    returns: Tensor | None = None  # (B, T) regression targets for the value function

    @property
    def batch_size(self) -> int:
        """Number of rows ``B``."""
        return int(self.mask.shape[0])

    @property
    def num_steps(self) -> int:
        """Number of real (unmasked) steps in the batch."""
        return int(self.mask.sum().item())

    def _map(self, fn: Any) -> Rollout:
        """Apply ``fn`` to every tensor field whose first dimension is the batch."""
        out = {}
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            out[f.name] = fn(v) if isinstance(v, Tensor) else v
        return Rollout(**out)

    def select(self, rows: Tensor) -> Rollout:
        """The sub-batch of the given rows (used for minibatches)."""
        return self._map(lambda t: t[rows])

    def flatten(self) -> Rollout:
        """Turn ``(B, T)`` into ``(N, 1)`` keeping only real steps: for Markov policies, every step is a row.

        Advantages and returns must already be computed, since the time structure is gone afterwards.
        """
        if not isinstance(self.obs, Tensor):
            raise TypeError("flatten() needs tensor observations")
        keep = self.mask.reshape(-1).bool()

        def flat(t: Tensor) -> Tensor:
            if t.dim() < 2 or t.shape[:2] != self.mask.shape:
                raise ValueError("flatten() needs every per-step field to be (B, T, ...)")
            return t.reshape(-1, *t.shape[2:])[keep].unsqueeze(1)

        return dataclasses.replace(self, group_ids=None, episode_ids=None)._map(flat)
