"""The one training loop of lmpo: collect -> reward -> shape -> advantage -> update -> log/eval/checkpoint."""

from __future__ import annotations

import pickle
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml
from gymnasium.vector import AsyncVectorEnv

from lmpo.algorithms import make_algorithm
from lmpo.config import Config, ConfigError, build_config
from lmpo.core import estimate_advantages, explained_variance
from lmpo.envs import make_vector_env
from lmpo.policies.mlp import MLPPolicy
from lmpo.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from lmpo.train.collect import ControlCollector
from lmpo.train.evaluate import evaluate_policy
from lmpo.train.logging import MetricsLogger
from lmpo.train.progress import TrainingProgress


def resolve_device(name: str) -> torch.device:
    """``'auto'`` picks CUDA when present; an unavailable CUDA device is a config error."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"train.device: {name!r} requested but CUDA is not available")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise ConfigError(f"train.device: unknown device {name!r}") from None
    if device.type == "cuda" and (device.index or 0) >= torch.cuda.device_count():
        raise ConfigError(f"train.device: {name!r} requested but only {torch.cuda.device_count()} CUDA devices")
    return device


def build_policy(cfg: Config, observation_space: Any, action_space: Any) -> MLPPolicy:
    """The policy described by ``cfg.policy`` for the given spaces."""
    p = cfg.policy
    return MLPPolicy(observation_space, action_space, p.hidden_sizes, p.activation, p.critic,
                     p.log_std_init, p.normalize_obs)


def save_config(cfg: Config, run_dir: Path) -> None:
    """Write the resolved config next to the run's outputs."""
    (run_dir / "config.yaml").write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))


def read_run_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The config a run was started with (plus optional overrides)."""
    from lmpo.config import apply_overrides

    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"not a run directory (no config.yaml): {run_dir}")
    return build_config(apply_overrides(yaml.safe_load(path.read_text()), overrides or []))


def fresh_run_dir(cfg: Config) -> Path:
    """``runs/<name>``, or ``runs/<name>-N`` when that already holds a run: nothing is overwritten."""
    base = Path(cfg.train.runs_dir) / cfg.name
    path, n = base, 1
    while (path / "config.yaml").exists():
        path, n = base.with_name(f"{base.name}-{n}"), n + 1
    return path


class Trainer:
    """Wires config, environments, policy and algorithm together and runs the loop."""

    def __init__(self, cfg: Config, run_dir: Path | None = None, resume: bool = False) -> None:
        self.cfg = cfg
        self.run_dir = run_dir if run_dir is not None else fresh_run_dir(cfg)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        if cfg.train.threads is not None:
            torch.set_num_threads(cfg.train.threads)
        self.device = resolve_device(cfg.train.device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        env = make_vector_env(cfg.env.id, cfg.env.num_envs, cfg.env.vectorization, cfg.env.kwargs)
        self.collector = ControlCollector(env, cfg.seed, self.device)
        self.policy = build_policy(cfg, env.single_observation_space, env.single_action_space).to(self.device)
        self.algo = make_algorithm(cfg.algo, self.policy)
        self.iteration, self.next_eval = 0, cfg.train.eval_every
        # training wall-clock, evaluation excluded (logging and checkpoints included), carried across resumes
        self._elapsed_before, self._clock, self._eval_time = 0.0, time.perf_counter(), 0.0
        self.last_eval: float | None = None
        self._saved_iteration: int | None = None
        ckpt = latest_checkpoint(self.ckpt_dir) if resume else None
        if ckpt is not None:
            self._restore(ckpt)
        else:
            save_config(cfg, self.run_dir)
        self.logger = MetricsLogger(self.run_dir, self.iteration if resume else None, self.collector.total_steps)

    @property
    def elapsed(self) -> float:
        """Seconds spent training so far, excluding evaluation, including time before a resume."""
        return self._elapsed_before + time.perf_counter() - self._clock - self._eval_time

    @property
    def ckpt_dir(self) -> Path:
        """Where checkpoints live."""
        return self.run_dir / "checkpoints"

    # ------------------------------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        """Run until ``train.total_steps`` environment steps; returns the final summary."""
        cfg, total = self.cfg, self.cfg.train.total_steps
        self._clock, self._eval_time = time.perf_counter(), 0.0
        with TrainingProgress(total, self.collector.total_steps, enabled=cfg.train.progress) as bar:
            while self.collector.total_steps < total:
                t0 = time.perf_counter()
                progress = self.collector.total_steps / total
                # step 1. collect: the policy acts in the batched environments
                self.policy.eval()
                if cfg.rollout.mode == "steps":
                    rollout = self.collector.collect_steps(self.policy, cfg.rollout.steps_per_env)
                else:
                    rollout = self.collector.collect_episodes(self.policy, cfg.rollout.episodes_per_env)
                t1 = time.perf_counter()
                # step 2. reward: the environments' own rewards for control tasks
                # step 3. shape: no KL-to-reference penalty for control tasks
                # step 4. advantage: returns / GAE / baseline, then one row per step for Markov policies
                adv = cfg.algo.advantage
                rollout = estimate_advantages(rollout, adv.estimator, adv.gamma, adv.gae_lambda, adv.baseline,
                                              adv.whiten)
                ev = float("nan")
                if rollout.values is not None and rollout.returns is not None:
                    ev = explained_variance(rollout.values, rollout.returns, rollout.mask)
                if self.policy.markov:
                    rollout = rollout.flatten()
                # step 5. update
                self.policy.train()
                metrics = self.algo.update(self.policy, rollout, progress)
                self.policy.update_normalizer(rollout.obs)
                self.iteration += 1
                dt = time.perf_counter() - t0
                # step 6. log / evaluate / checkpoint
                record = self._record(metrics, rollout.num_steps, dt, t1 - t0, ev)
                self.logger.log(self.collector.total_steps, record)
                bar.update(self.collector.total_steps, record.get("charts/episode_return"), self.last_eval)
                if self.iteration % cfg.train.checkpoint_every == 0:
                    self.save()
        if self._saved_iteration != self.iteration:
            self.save()
        final = self.evaluate()
        self.logger.log(self.collector.total_steps, {"iteration": self.iteration, "final": True, **final})
        self.logger.close()
        return {"run_dir": str(self.run_dir), "env_steps": self.collector.total_steps,
                "iterations": self.iteration, **final}

    def _record(self, metrics: dict[str, float], steps: int, dt: float, t_collect: float,
                ev: float) -> dict[str, Any]:
        record: dict[str, Any] = {"iteration": self.iteration, "env_steps": self.collector.total_steps,
                                  "time": round(self.elapsed, 4), **metrics}
        record["charts/sps"] = steps / dt
        record["charts/explained_variance"] = ev
        record["time/collect_s"], record["time/update_s"] = t_collect, dt - t_collect
        if self.collector.recent:
            rets, lens = zip(*self.collector.recent, strict=True)
            record["charts/episode_return"] = float(np.mean(rets))
            record["charts/episode_length"] = float(np.mean(lens))
        if self.cfg.train.eval_every and self.collector.total_steps >= self.next_eval:
            while self.next_eval <= self.collector.total_steps:
                self.next_eval += self.cfg.train.eval_every
            record.update(self.evaluate())
        return record

    def evaluate(self, episodes: int | None = None) -> dict[str, float]:
        """Mean and std of deterministic returns on fresh environments (fixed evaluation seed)."""
        self.policy.eval()
        start = time.perf_counter()
        returns = evaluate_policy(self.policy, self.cfg.env.id, episodes or self.cfg.train.eval_episodes,
                                  seed=self.cfg.seed + 10_000, kwargs=self.cfg.env.kwargs)
        self.last_eval = float(returns.mean())
        self._eval_time += time.perf_counter() - start
        return {"eval/mean_return": self.last_eval, "eval/std_return": float(returns.std())}

    # ------------------------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Atomically write weights, optimiser, RNG and environment state."""
        async_env = isinstance(self.collector.env, AsyncVectorEnv)
        state = {
            "iteration": self.iteration, "next_eval": self.next_eval, "elapsed": self.elapsed,
            "algo": self.algo.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            # subprocess environments cannot be pickled; a resumed async run restarts its episodes
            "collector": None if async_env else pickle.dumps(self.collector),
            "env_steps": self.collector.total_steps,
        }
        self._saved_iteration = self.iteration
        return save_checkpoint(self.ckpt_dir, self.iteration, self.policy, state, self.cfg.train.keep_checkpoints)

    def _restore(self, path: Path) -> None:
        state = load_checkpoint(path, self.policy)
        self.algo.load_state_dict(state["algo"])
        self.iteration, self.next_eval, self._elapsed_before = state["iteration"], state["next_eval"], state["elapsed"]
        self._saved_iteration = self.iteration
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        if state["collector"] is not None:
            self.collector.env.close()
            self.collector = pickle.loads(state["collector"])
            self.collector.device = self.device
        else:
            self.collector.total_steps = state["env_steps"]

