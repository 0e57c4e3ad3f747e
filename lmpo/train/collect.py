"""Collect ``Rollout``s from a Gymnasium vector env with a control policy (step 1 of the loop)."""

from __future__ import annotations

from collections import deque
from typing import Any

import numpy as np
import torch
from gymnasium.vector import VectorEnv
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence

from lmpo.core import Rollout
from lmpo.policies.mlp import MLPPolicy


class ControlCollector:
    """Steps ``num_envs`` environments with the current policy and packs what happened as a ``Rollout``.

    It owns the environments and the episode statistics, so pickling it saves exactly where every
    environment is (mid-episode included): that is what a checkpoint stores to make resuming exact.
    """

    def __init__(self, env: VectorEnv, seed: int, device: torch.device, window: int = 20) -> None:
        self.env, self.device = env, device
        self.num_envs = env.num_envs
        self.obs, _ = env.reset(seed=seed)
        self.ep_return = np.zeros(self.num_envs)
        self.ep_length = np.zeros(self.num_envs, dtype=np.int64)
        self.recent: deque[tuple[float, int]] = deque(maxlen=window)  # (return, length) of finished episodes
        self.total_steps = 0

    def _tensor(self, x: Any) -> Tensor:
        return torch.as_tensor(np.asarray(x), dtype=torch.float32, device=self.device)

    def _step(self, policy: MLPPolicy) -> dict[str, Any]:
        """One step of every env; returns the step's record (tensors from the policy, numpy from the envs)."""
        obs = self._tensor(self.obs)
        out = policy.sample(obs)
        next_obs, reward, terminated, truncated, info = self.env.step(
            policy.env_action(out.actions, self.env.single_action_space)
        )
        done = terminated | truncated
        # a truncated episode did not end: bootstrap from the value of its last (final) observation
        boot = np.zeros(self.num_envs, dtype=np.float32)
        if policy.has_value and truncated.any():
            idx = np.flatnonzero(truncated)
            final = np.stack([info["final_obs"][i] for i in idx])
            boot[idx] = policy.value(self._tensor(final)).cpu().numpy()
        self.ep_return += reward
        self.ep_length += 1
        if done.any():
            for i in np.flatnonzero(done):
                self.recent.append((float(self.ep_return[i]), int(self.ep_length[i])))
            self.ep_return[done] = 0.0
            self.ep_length[done] = 0
        self.obs = next_obs
        self.total_steps += self.num_envs
        return {"obs": obs, "actions": out.actions, "logprobs": out.log_probs, "values": out.values,
                "rewards": reward, "done": done, "boot": boot}

    def _stack(self, recs: list[dict[str, Any]], key: str) -> Tensor:
        """``(B, T, ...)`` from per-step records (one copy; numpy fields are converted once)."""
        items = [r[key] for r in recs]
        if isinstance(items[0], np.ndarray):
            return self._tensor(np.stack(items, axis=1))
        return torch.stack(items, dim=1)

    @torch.no_grad()
    def collect_steps(self, policy: MLPPolicy, steps_per_env: int) -> Rollout:
        """``B = num_envs`` rows of ``T = steps_per_env`` steps; episodes continue across rollouts."""
        recs = [self._step(policy) for _ in range(steps_per_env)]
        ended = self._stack(recs, "done")  # (B, T) an episode ended at t
        dones = ended.clone()
        dones[:, -1] = 1.0  # the row ends: cut the recursion and bootstrap from V(s_T)
        values = next_values = None
        if policy.has_value:
            values = self._stack(recs, "values")
            last = policy.value(self._tensor(self.obs))  # (B,) V(s_T)
            following = torch.cat([values[:, 1:], last.unsqueeze(1)], dim=1)  # V(s_t+1) if no reset between
            # after a reset the next row entry belongs to a new episode: use 0 (terminated) or V(final obs)
            next_values = following * (1.0 - ended) + self._stack(recs, "boot")
        return Rollout(obs=self._stack(recs, "obs"), actions=self._stack(recs, "actions"),
                       logprobs=self._stack(recs, "logprobs"), rewards=self._stack(recs, "rewards"),
                       mask=torch.ones_like(dones), dones=dones, values=values, next_values=next_values)

    @torch.no_grad()
    def collect_episodes(self, policy: MLPPolicy, episodes_per_env: int) -> Rollout:
        """One row per whole episode, ``episodes_per_env`` from each env, padded to the longest.

        Every env starts afresh and contributes its first ``episodes_per_env`` episodes; steps an env takes
        after its quota are discarded, so long episodes are not under-represented (no length bias).
        """
        self.obs, _ = self.env.reset()
        self.ep_return[:] = 0.0
        self.ep_length[:] = 0
        recs: list[dict[str, Any]] = []
        count = np.zeros(self.num_envs, dtype=np.int64)
        while (count < episodes_per_env).any():
            rec = self._step(policy)
            recs.append(rec)
            count += rec["done"]
        full = {k: self._stack(recs, k) for k, v in recs[0].items() if v is not None}  # (N, S, ...)
        rows: list[dict[str, Tensor]] = []
        for i in range(self.num_envs):
            start = 0
            for end in torch.nonzero(full["done"][i]).flatten()[:episodes_per_env].tolist():
                rows.append({k: v[i, start:end + 1] for k, v in full.items()})
                start = end + 1
        return _pad_episodes(rows, policy.has_value, self.device)


def _pad_episodes(rows: list[dict[str, Tensor]], has_value: bool, device: torch.device) -> Rollout:
    """Stack variable-length episodes into ``(B, T_max)`` tensors with a mask."""
    lengths = [len(r["rewards"]) for r in rows]
    b, t_max = len(rows), max(lengths)

    def pad(key: str) -> Tensor:  # (B, T_max, ...), zeros after each episode's end
        return pad_sequence([r[key] for r in rows], batch_first=True)

    mask = torch.zeros(b, t_max, device=device)
    dones = torch.zeros(b, t_max, device=device)
    for i, n in enumerate(lengths):
        mask[i, :n] = 1.0
        dones[i, n - 1] = 1.0
    values = next_values = None
    if has_value:
        values = pad("values")
        # inside an episode V(s_t+1) is the next entry; at its end 0 (terminated) or V(final obs) (truncated)
        following = torch.cat([values[:, 1:], torch.zeros(b, 1, device=device)], dim=1)
        next_values = (following * (1.0 - dones) + pad("boot")) * mask
    return Rollout(obs=pad("obs"), actions=pad("actions"), logprobs=pad("logprobs"), rewards=pad("rewards"),
                   mask=mask, dones=dones, values=values, next_values=next_values,
                   group_ids=torch.zeros(b, dtype=torch.long, device=device))
