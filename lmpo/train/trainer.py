"""The one training loop of lmpo: collect -> reward -> shape -> advantage -> update -> log/eval/checkpoint."""

from __future__ import annotations

import contextlib
import random
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from lmpo.algorithms import make_algorithm
from lmpo.config import Config, ConfigError, apply_overrides, build_config
from lmpo.core import estimate_advantages, explained_variance
from lmpo.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from lmpo.train.logging import MetricsLogger
from lmpo.train.progress import PhaseStatus, TrainingProgress
from lmpo.train.runtime import autocast, tune_allocator
from lmpo.train.tasks import make_task


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


def save_config(cfg: Config, run_dir: Path, iteration: int = 0) -> None:
    """Write the resolved config next to the run's outputs. A resume that changes it keeps the config in force
    until then as ``config-until-iter<N>.yaml``, so the run's record says what every phase ran with."""
    path, text = run_dir / "config.yaml", yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
    before = path.read_text() if path.is_file() else None
    if before == text:
        return
    if before is not None:
        (run_dir / f"config-until-iter{iteration}.yaml").write_text(before)
    path.write_text(text)


def read_run_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The config a run was started with (plus optional overrides)."""
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
        if cfg.train.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"train.precision: bf16 is not supported on {torch.cuda.get_device_name(self.device)}")
        tune_allocator()
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        self.task = make_task(cfg, self.run_dir, self.device)
        self.policy: Any = self.task.build_policy().to(self.device)
        ckpt = latest_checkpoint(self.ckpt_dir) if resume else None
        if ckpt is None:
            save_config(cfg, self.run_dir)
        state = load_checkpoint(ckpt, self.policy) if ckpt is not None else None
        # before RL: pre-training and the frozen reference for text (a resumed run reloads them)
        with self.autocast(weights_change=True):
            self.prepare_metrics = self.task.prepare(self.policy, resumed=state is not None)
        self.algo = make_algorithm(cfg.algo, self.policy)
        self.iteration, self.next_eval = 0, cfg.train.eval_every
        # training wall-clock, evaluation excluded (logging and checkpoints included), carried across resumes
        self._elapsed_before, self._clock, self._eval_time = 0.0, time.perf_counter(), 0.0
        self.last_eval: float | None = None
        self._bar: TrainingProgress | None = None  # the training bar while it is live
        self._saved_iteration: int | None = None
        if state is not None:
            self._restore(state)
            save_config(cfg, self.run_dir, self.iteration)  # a resume's overrides are part of the record
        self.logger = MetricsLogger(self.run_dir, self.iteration if resume else None, self.task.steps)

    @property
    def elapsed(self) -> float:
        """Seconds spent training so far, excluding evaluation, including time before a resume."""
        return self._elapsed_before + time.perf_counter() - self._clock - self._eval_time

    def autocast(self, weights_change: bool = False) -> contextlib.AbstractContextManager[None]:
        """The run's ``train.precision`` for pre-training, collection and updates (see ``runtime.autocast``)."""
        return autocast(self.cfg.train.precision, self.device, weights_change)

    @property
    def ckpt_dir(self) -> Path:
        """Where checkpoints live."""
        return self.run_dir / "checkpoints"

    # ------------------------------------------------------------------------------------------ loop
    def train(self) -> dict[str, Any]:
        """Run until ``train.total_steps`` environment steps; returns the final summary."""
        cfg, total = self.cfg, self.cfg.train.total_steps
        self._clock, self._eval_time = time.perf_counter(), 0.0
        before: dict[str, float] = {}
        if self.iteration == 0:  # a fresh run: where training starts from (after pre-training, for text)
            before = self.evaluate()
            self.logger.log(0, {"iteration": 0, **self.prepare_metrics, **before})
        with TrainingProgress(total, self.task.steps, enabled=cfg.train.progress) as bar:
            self._bar = bar
            while self.task.steps < total:
                t0 = time.perf_counter()
                progress = self.task.steps / total
                # steps 1-3. collect -> reward -> shape: the environments' own rewards (control); for text,
                # ConversationCollector.collect's generate -> score (the reward functions) -> shape (KL penalty)
                self.policy.eval()
                with self.autocast():
                    rollout, stats = self.task.collect(self.policy)
                t1 = time.perf_counter()
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
                with self.autocast(weights_change=True):
                    metrics = self.algo.update(self.policy, rollout, progress)
                self.task.after_update(self.policy, rollout)
                self.iteration += 1
                dt = time.perf_counter() - t0
                # step 6. log / evaluate / checkpoint
                record = self._record({**stats, **metrics}, rollout.num_steps, dt, t1 - t0, ev)
                self.logger.log(self.task.steps, record)
                bar.update(self.task.steps, record.get("charts/episode_return"), self.last_eval)
                if self.iteration % cfg.train.checkpoint_every == 0:
                    self.save()
            self._bar = None
        if self._saved_iteration != self.iteration:
            self.save()
        self.task.finish(self.policy)
        final = self.evaluate()
        self.logger.log(self.task.steps, {"iteration": self.iteration, "final": True, **final})
        self.logger.close()
        return {"run_dir": str(self.run_dir), "env_steps": self.task.steps, "iterations": self.iteration,
                "before": before, **final}

    def _record(self, metrics: dict[str, float], steps: int, dt: float, t_collect: float,
                ev: float) -> dict[str, Any]:
        record: dict[str, Any] = {"iteration": self.iteration, "env_steps": self.task.steps,
                                  "time": round(self.elapsed, 4), **metrics}
        record["charts/sps"] = steps / dt
        record["charts/explained_variance"] = ev
        record["time/collect_s"], record["time/update_s"] = t_collect, dt - t_collect
        if self.cfg.train.eval_every and self.task.steps >= self.next_eval:
            while self.next_eval <= self.task.steps:
                self.next_eval += self.cfg.train.eval_every
            record.update(self.evaluate())
        return record

    def evaluate(self) -> dict[str, float]:
        """The task's evaluation, timed apart from training, on a forked RNG: how often a run evaluates
        never changes what it trains (text evaluation samples replies)."""
        self.policy.eval()
        start = time.perf_counter()
        with torch.random.fork_rng():
            if self._bar is not None:  # a periodic evaluation: said on the training bar (rich 13 refuses a 2nd live)
                bar, steps = self._bar, self.task.steps
                out = self.task.evaluate(self.policy, lambda part: bar.update(steps, None, None, f"evaluating: {part}"))
            else:
                with PhaseStatus("evaluate", enabled=self.cfg.train.progress) as status:
                    out = self.task.evaluate(self.policy, status.part)
        self.last_eval = out["eval/mean_return"]
        self._eval_time += time.perf_counter() - start
        return out

    # ------------------------------------------------------------------------------------ checkpoints
    def save(self) -> Path:
        """Atomically write weights, optimiser, RNG and environment state."""
        state = {
            "iteration": self.iteration, "next_eval": self.next_eval, "elapsed": self.elapsed,
            "algo": self.algo.state_dict(),
            "rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                    "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None},
            "task": self.task.state(),  # environments mid-episode (control) or conversation stream (text)
            "env_steps": self.task.steps,
        }
        self._saved_iteration = self.iteration
        return save_checkpoint(self.ckpt_dir, self.iteration, self.policy, state, self.cfg.train.keep_checkpoints)

    def _restore(self, state: dict[str, Any]) -> None:
        self.algo.load_state_dict(state["algo"])
        self.iteration, self.next_eval, self._elapsed_before = state["iteration"], state["next_eval"], state["elapsed"]
        self._saved_iteration = self.iteration
        torch.set_rng_state(state["rng"]["torch"])
        np.random.set_state(state["rng"]["numpy"])
        random.setstate(state["rng"]["python"])
        if state["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["rng"]["cuda"])
        self.task.restore(state["task"], state["env_steps"])

