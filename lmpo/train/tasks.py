"""What the one training loop needs from each kind of environment: a ``Task``.

``ControlTask`` steps Gymnasium vector envs with an MLP policy; ``TextTask`` plays conversations in any text
environment (``lmpo/Chatbot-v0``, ``lmpo/Support-v0``, ...) with a language-model policy (pre-trained first, then
kept close to that frozen reference by the KL penalty). The loop itself lives in ``trainer.py`` and is the same for
both.
"""

from __future__ import annotations

import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import Tensor

from lmpo.config import Config
from lmpo.core import Rollout
from lmpo.envs import make_vector_env
from lmpo.policies.mlp import MLPPolicy
from lmpo.train import distributed
from lmpo.train.collect import ControlCollector
from lmpo.train.evaluate import evaluate_policy


class Task(Protocol):
    """Steps 1-3 of the loop (collect, reward, shape), evaluation, and the state a checkpoint keeps."""

    @property
    def steps(self) -> int:
        """Progress units done: environment steps (control) or replies (text)."""
        ...

    def build_policy(self) -> Any:
        """The policy this task trains (an ``nn.Module`` implementing ``Policy``), freshly initialised."""
        ...

    def prepare(self, policy: Any, resumed: bool) -> dict[str, float]:
        """Work before RL (pre-training for text); returns metrics to log."""
        ...

    def collect(self, policy: Any) -> tuple[Rollout, dict[str, float]]:
        """A rollout with its rewards shaped, and statistics of what happened."""
        ...

    def after_update(self, policy: Any, rollout: Rollout) -> None:
        """Bookkeeping once the algorithm has updated the policy."""
        ...

    def finish(self, policy: Any, weights: dict[str, Tensor] | None = None) -> None:
        """Work once training is done (an export of the trained model; ``weights``: the policy's, where it does not
        hold them whole itself, sharded by FSDP)."""
        ...

    def evaluate(self, policy: Any, report: Callable[[str], None] | None = None) -> dict[str, float]:
        """Evaluation; ``report(part)`` is called as each part starts (for a progress display)."""
        ...

    def samples(self) -> list[dict[str, Any]]:
        """The last evaluation's sample completions with their rewards (logged as a table), if it has any."""
        ...

    def state(self) -> bytes | None:
        """Everything needed to continue exactly (None when that cannot be saved)."""
        ...

    def restore(self, state: bytes | None, steps: int, reseed: int | None = None) -> None:
        """Continue from ``state``; with ``reseed``, only from what all processes share (a run resumed by another
        number of processes), collecting on new streams seeded ``reseed``."""
        ...


class ControlTask:
    """Gymnasium control environments through the vector API."""

    def __init__(self, cfg: Config, device: torch.device) -> None:
        self.cfg, self.device = cfg, device
        # under torchrun each process steps its share of the environments; global env i is seeded seed + i
        n = distributed.split(cfg.env.num_envs, "env.num_envs")
        env = make_vector_env(cfg.env.id, n, cfg.env.vectorization, cfg.env.kwargs)
        self.collector = ControlCollector(env, cfg.seed + n * distributed.rank(), device)
        self.steps = 0  # environment steps of every process

    def build_policy(self) -> MLPPolicy:
        """The MLP described by ``cfg.policy`` for the environment's spaces."""
        p, env = self.cfg.policy, self.collector.env
        return MLPPolicy(env.single_observation_space, env.single_action_space, p.hidden_sizes, p.activation,
                         p.critic, p.log_std_init, p.normalize_obs)

    def prepare(self, policy: MLPPolicy, resumed: bool) -> dict[str, float]:
        """Nothing to prepare."""
        return {}

    def collect(self, policy: MLPPolicy) -> tuple[Rollout, dict[str, float]]:
        """Fixed-length rows or whole episodes; the environments' own rewards."""
        before = self.collector.total_steps
        if self.cfg.rollout.mode == "steps":
            rollout = self.collector.collect_steps(policy, self.cfg.rollout.steps_per_env)
        else:
            rollout = self.collector.collect_episodes(policy, self.cfg.rollout.episodes_per_env)
        # every process's rows, finished episodes and steps taken, on every process
        rollout, parts = distributed.gather_rollout(rollout, None, (list(self.collector.recent),
                                                                    self.collector.total_steps - before))
        recent = [e for part, _ in parts for e in part]
        self.steps += sum(taken for _, taken in parts)
        stats: dict[str, float] = {}
        if recent:
            rets, lens = zip(*recent, strict=True)
            stats = {"charts/episode_return": float(np.mean(rets)), "charts/episode_length": float(np.mean(lens))}
        return rollout, stats

    def after_update(self, policy: MLPPolicy, rollout: Rollout) -> None:
        """Fold the rollout's observations into the normaliser (frozen while collecting and updating)."""
        policy.update_normalizer(rollout.obs)

    def finish(self, policy: MLPPolicy, weights: dict[str, Tensor] | None = None) -> None:
        """Nothing to export: the checkpoint is the model."""

    def evaluate(self, policy: MLPPolicy, report: Callable[[str], None] | None = None) -> dict[str, float]:
        """Mean and std of deterministic returns on fresh environments (fixed evaluation seed)."""
        if report is not None:
            report(f"{self.cfg.train.eval_episodes} deterministic episodes")
        returns = evaluate_policy(policy, self.cfg.env.id, self.cfg.train.eval_episodes, seed=self.cfg.seed + 10_000,
                                  kwargs=self.cfg.env.kwargs)
        return {"eval/mean_return": float(returns.mean()), "eval/std_return": float(returns.std())}

    def samples(self) -> list[dict[str, Any]]:
        """Control episodes have no completions to show."""
        return []

    def state(self) -> bytes | None:
        """The pickled collector: environments mid-episode included (subprocess envs cannot be pickled)."""
        from gymnasium.vector import AsyncVectorEnv

        return None if isinstance(self.collector.env, AsyncVectorEnv) else pickle.dumps(self.collector)

    def restore(self, state: bytes | None, steps: int, reseed: int | None = None) -> None:
        """Replace the collector by the saved one (or only its step count for async envs); with ``reseed``, keep
        this one and restart its environments on seeds from ``reseed``."""
        self.steps = steps
        if reseed is not None:
            n = self.collector.num_envs
            self.collector.obs, _ = self.collector.env.reset(seed=reseed + n * distributed.rank())
            self.collector.ep_return[:] = 0.0
            self.collector.ep_length[:] = 0
            return
        if state is None:
            return
        self.collector.env.close()
        self.collector = pickle.loads(state)
        self.collector.device = self.device


def make_task(cfg: Config, run_dir: Path, device: torch.device, writer: bool = True) -> Task:
    """The task for ``cfg.env.id``; a reader's (``writer=False``) writes nothing into ``run_dir``."""
    if cfg.is_text:
        from lmpo.train.text_task import TextTask

        return TextTask(cfg, run_dir, device, writer)
    return ControlTask(cfg, device)

