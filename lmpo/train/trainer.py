"""The one training loop of lmpo: collect -> reward -> shape -> advantage -> update -> log/eval/checkpoint."""

from __future__ import annotations

import contextlib
import pickle
import random
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from lmpo.algorithms import make_algorithm
from lmpo.config import Config, ConfigError, load_config
from lmpo.core import Rollout, estimate_advantages, explained_variance
from lmpo.rewards.registry import NonFiniteReward, RewardError
from lmpo.train import distributed
from lmpo.train.checkpoint import (
    DCP_DIR,
    latest_checkpoint,
    load_checkpoint,
    remove_temporary,
    save_checkpoint,
    staging_dir,
    write_atomic,
)
from lmpo.train.logging import MetricsLogger, NullLogger, read_metrics
from lmpo.train.progress import PhaseStatus, TrainingProgress
from lmpo.train.rundir import RunLock, claim_run_dir
from lmpo.train.runtime import TrainingDiverged, autocast, first_non_finite, tune_allocator
from lmpo.train.tasks import make_task

# metrics of an update that must be finite: a NaN here means the update has (or is about to) poison the weights
CHECKED_METRICS = ("losses/", "charts/grad_norm", "charts/approx_kl", "trpo/kl")


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
    if device.type not in ("cpu", "cuda"):
        raise ConfigError(f"train.device: {name!r} is not one lmpo trains on ('cpu', 'cuda', 'cuda:N' or 'auto')")
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
        write_atomic(run_dir / f"config-until-iter{iteration}.yaml", before.encode())
    write_atomic(path, text.encode())  # a kill mid-write never leaves a run without its config


def read_run_config(run_dir: Path, overrides: list[str] | None = None) -> Config:
    """The config a run was started with (plus optional overrides)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        raise ConfigError(f"not a run directory (no config.yaml): {run_dir}")
    try:
        saved = load_config(path)
    except ConfigError as e:
        raise ConfigError(str(e) if str(e).startswith(str(path)) else f"{path}: {e}") from None
    cfg = load_config(path, overrides) if overrides else saved  # an override's mistake is the override's
    if cfg.algo.name != saved.algo.name:
        raise ConfigError(f"algo.name cannot change when a run resumes (its optimiser state is {saved.algo.name}'s); "
                          "start a new run")
    return cfg


def _seed(seed: int) -> None:
    """Seed torch, numpy and Python's ``random``."""
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class Trainer:
    """Wires config, environments, policy and algorithm together and runs the loop."""

    def __init__(self, cfg: Config, run_dir: Path | None = None, resume: bool = False) -> None:
        self.cfg = cfg
        # under torchrun rank 0 leads: it claims and writes the run directory, evaluates and shows progress
        self.lead = distributed.rank() == 0
        if run_dir is None:
            run_dir = distributed.broadcast(claim_run_dir(cfg.train.runs_dir, cfg.name) if self.lead else None)
        assert run_dir is not None
        self.run_dir = run_dir
        try:
            self.run_dir.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            raise ConfigError(f"cannot create the run directory {self.run_dir}: {e.strerror}") from None
        # the one writer; released by close() or when the process ends
        self._lock = RunLock(self.run_dir) if self.lead else None
        try:
            self._start(cfg, resume)
        except BaseException:
            self.close()
            raise

    def _runtime(self, cfg: Config) -> None:
        """Threads, device, precision, allocator and this process's random streams (rank 0's are the run's)."""
        if cfg.train.threads is not None:
            torch.set_num_threads(distributed.threads(cfg.train.threads))
        self.device = distributed.local_device(resolve_device(cfg.train.device))
        if cfg.train.precision == "bf16" and self.device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError(f"train.precision: bf16 is not supported on {torch.cuda.get_device_name(self.device)}")
        if not cfg.train.fsdp:  # kept blocks fragment between FSDP's gathers: +1.4 GiB peak on a 100 M model
            tune_allocator()
        _seed(distributed.rank_seed(cfg.seed))

    def _start(self, cfg: Config, resume: bool) -> None:
        if self.lead:
            remove_temporary(self.ckpt_dir)  # a crashed save's leftovers: ours to remove, as the writer
        self._runtime(cfg)
        if not self.lead:  # the lead sets the run up first (tokenizer, pre-training, the reference), then the rest
            distributed.barrier()
        self.task = make_task(cfg, self.run_dir, self.device, writer=self.lead)
        self.policy: Any = self._build_policy()
        ckpt = self._checkpoint(resume)
        if self.lead:
            self._check_run(resume, ckpt)
        state = load_checkpoint(ckpt, self.policy) if ckpt is not None else None
        # before RL: pre-training and the frozen reference for text (a resumed run reloads them)
        with self.autocast(weights_change=True):
            self.prepare_metrics = self.task.prepare(self.policy, resumed=state is not None)
        if self.lead and resume and state is None:  # resumed before its first checkpoint: overrides pre-training took
            save_config(cfg, self.run_dir)
        if self.lead:
            distributed.barrier()
        self._learner(cfg)
        self.iteration, self.next_eval = 0, cfg.train.eval_every
        # training wall-clock, evaluation excluded (logging and checkpoints included), carried across resumes
        self._elapsed_before, self._clock, self._eval_time = 0.0, time.perf_counter(), 0.0
        self.last_eval: float | None = None
        self._bar: TrainingProgress | None = None  # the training bar while it is live
        self._saved_iteration: int | None = None
        if state is not None:
            try:
                assert ckpt is not None
                self._restore(state, ckpt)
            except ConfigError:
                raise
            except (KeyError, TypeError, AttributeError, ValueError, pickle.UnpicklingError) as e:
                assert ckpt is not None
                raise ConfigError(f"{ckpt / 'state.pt'} is not this run's training state ({type(e).__name__}: "
                                  f"{str(e)[:80]})") from None
            if self.lead:
                save_config(cfg, self.run_dir, self.iteration)  # a resume's overrides are part of the record
        # a resume keeps the records up to its checkpoint; before the first update none (iteration 0, evaluation
        # and pre-training's metrics, is recorded again)
        kept = None
        if resume:
            kept = self.iteration if self.iteration > 0 else -1
        self.logger: MetricsLogger | NullLogger = NullLogger()
        if self.lead:
            self.logger = MetricsLogger(self.run_dir, kept, self.task.steps, cfg.train.loggers, cfg.train.wandb,
                                        cfg.model_dump(mode="json"))
        self._samples: list[dict[str, Any]] = []  # the last evaluation's sample completions, logged with its record

    def _checkpoint(self, resume: bool) -> Path | None:
        """The checkpoint a resume starts from (None for a fresh run, or a run without one yet), written with the
        run's ``train.fsdp``: the optimiser's state is in the DCP directory with it, in ``state.pt`` without."""
        ckpt = latest_checkpoint(self.ckpt_dir) if resume else None
        if ckpt is not None and (ckpt / DCP_DIR).is_dir() != self.cfg.train.fsdp:
            raise ConfigError(f"{ckpt} was written with train.fsdp={str(not self.cfg.train.fsdp).lower()}: resume it "
                              "with the same setting")
        return ckpt

    def _learner(self, cfg: Config) -> None:
        """The algorithm, and the policy as it updates it: under torchrun in DDP, or sharded by FSDP (before the
        optimiser sees the weights), with rank 0's weights on every process."""
        self.gathered: Any = None  # the FSDP policy's switch between gathered and sharded weights
        if cfg.train.fsdp and distributed.world_size() > 1:
            if not hasattr(torch.distributed.fsdp, "fully_shard"):
                raise ConfigError("train.fsdp needs torch>=2.6 (fully_shard)")
            from lmpo.train import sharded

            distributed.broadcast_weights(self.policy)
            sharded.shard(self.policy, self.device)
            self.gathered = sharded.Gathered(self.policy)
        algo_cfg = cfg.algo
        if cfg.train.fsdp and algo_cfg.optimizer == "auto":
            algo_cfg = algo_cfg.model_copy(update={"optimizer": "adam"})
        self.algo = make_algorithm(algo_cfg, self.policy, cfg.seed)
        self.learner = self.policy if cfg.train.fsdp else distributed.data_parallel(
            self.policy, self.device, self.algo.gradient_parameters())

    def _build_policy(self) -> Any:
        """The task's policy on the run's device; running out of memory is the config's error."""
        try:
            return self.task.build_policy().to(self.device)
        except (MemoryError, RuntimeError) as e:  # the CPU allocator's failure is a RuntimeError
            if isinstance(e, RuntimeError) and "alloc" not in str(e):
                raise
            raise ConfigError(f"policy: the network of policy.* does not fit in memory ({str(e).splitlines()[0]})"
                              ) from None

    def _check_run(self, resume: bool, ckpt: Path | None) -> None:
        """Refuse to resume what cannot be, or to start over a run; record the config a fresh run starts with."""
        trained = resume and any(r.get("iteration", 0) > 0 for r in read_metrics(self.run_dir, missing_ok=True))
        if trained and ckpt is None:  # starting over silently would throw the run away
            raise ConfigError(f"{self.run_dir} has trained (metrics.jsonl) but has no checkpoint left in "
                              f"{self.ckpt_dir}: nothing to resume from; start a new run")
        if not resume and any(self.ckpt_dir.glob("iter_*")):
            raise ConfigError(f"{self.run_dir} already holds a run; continue it with lmpo train --resume")
        if not resume:
            save_config(self.cfg, self.run_dir)  # first: a run killed while pre-training can be resumed

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
        """Run until ``train.total_steps`` environment steps; returns the final summary. The run directory is
        released when it returns or fails."""
        try:
            return self._train()
        finally:
            self.close()

    def close(self) -> None:
        """Close the logs and give up the run directory (another process may then resume it)."""
        try:
            if hasattr(self, "logger"):
                self.logger.close()
        finally:
            if self._lock is not None:
                self._lock.release()

    def _train(self) -> dict[str, Any]:
        cfg, total, start = self.cfg, self.cfg.train.total_steps, self.iteration
        self._clock, self._eval_time = time.perf_counter(), 0.0
        before: dict[str, float] = {}
        self._gather(True)
        if self.iteration == 0 and self.lead:  # a fresh run: where training starts from (after pre-training, for text)
            before = self.evaluate()
            sizes = {"model/parameters": sum(p.numel() for p in self.policy.parameters()),
                     "model/trainable_parameters": sum(p.numel() for p in self.policy.parameters() if p.requires_grad)}
            self._log(0, {"iteration": 0, **self.prepare_metrics, **sizes, **before})
        with TrainingProgress(total, self.task.steps, enabled=cfg.train.progress and self.lead) as bar:
            self._bar = bar
            while self.task.steps < total:
                t0 = time.perf_counter()
                progress = self.task.steps / total
                # steps 1-3. collect -> reward -> shape: the environments' own rewards (control); for text,
                # ConversationCollector.collect's generate -> score (the reward functions) -> shape (KL penalty)
                self.policy.eval()
                rollout, stats = self._collect()
                t1 = time.perf_counter()
                metrics = self.learn(rollout, progress)  # steps 4-5. advantage -> update
                self.iteration += 1
                dt = time.perf_counter() - t0
                # step 6. log / evaluate / checkpoint
                record = self._record({**stats, **metrics}, rollout.num_steps, dt, t1 - t0)
                self._log(self.task.steps, record)
                bar.update(self.task.steps, record.get("charts/episode_return"), self.last_eval)
                if self.iteration % cfg.train.checkpoint_every == 0:
                    self.save()
            self._bar = None
        if self._saved_iteration != self.iteration:
            self.save()
        self._finish()
        if not self.lead:
            return {"run_dir": str(self.run_dir), "env_steps": self.task.steps, "iterations": self.iteration}
        final = self.evaluate()
        if not (self.logger.finished and self.iteration == start):  # a finished run resumed: recorded already
            self._log(self.task.steps, {"iteration": self.iteration, "final": True, **final})
        return {"run_dir": str(self.run_dir), "env_steps": self.task.steps, "iterations": self.iteration,
                "before": before, **final}

    def _finish(self) -> None:
        """The task's export, by rank 0 (of an FSDP policy's whole weights, gathered onto it alone: a collective),
        then the weights gathered everywhere for the final evaluation."""
        if self.gathered is not None:
            from lmpo.train import sharded

            self._gather(False)
            weights = sharded.full_weights(self.policy)
            if self.lead:
                self.task.finish(self.policy, weights)
            del weights  # before every process gathers the weights again
        elif self.lead:
            self.task.finish(self.policy)
        self._gather(True)

    def learn(self, rollout: Rollout, progress: float) -> dict[str, float]:
        """Steps 4-5 of the loop on a collected rollout (under torchrun, every process's, gathered): advantages,
        then the algorithm's update; returns the update's metrics (averaged over processes) with the value
        function's explained variance."""
        # step 4. advantage: returns / GAE / baseline, then one row per step for Markov policies
        adv = self.cfg.algo.advantage
        rollout = estimate_advantages(rollout, adv.estimator, adv.gamma, adv.gae_lambda, adv.baseline,
                                      adv.whiten, adv.group_std)
        self._check_advantages(rollout)
        ev = float("nan")
        if adv.needs_value and rollout.values is not None and rollout.returns is not None:
            ev = explained_variance(rollout.values, rollout.returns, rollout.mask)
        if self.policy.markov:
            rollout = rollout.flatten()
        # step 5. update
        self._gather(False)
        self.policy.train()
        with self.autocast(weights_change=True):
            metrics = distributed.mean_metrics(self.algo.update(self.learner, rollout, progress))
        self.task.after_update(self.policy, rollout)
        self._check_update(metrics)  # before any checkpoint: a non-finite one is never written
        return {**metrics, "charts/explained_variance": ev}

    def _log(self, step: int, record: dict[str, Any]) -> None:
        """One record to every sink, with the sample completions of the evaluation it holds."""
        self.logger.log(step, record)
        if self._samples:
            self.logger.samples(step, record["iteration"], self._samples)
            self._samples = []

    def _diverged(self, what: str, where: str = "") -> TrainingDiverged:
        saved = latest_checkpoint(self.ckpt_dir)
        kept = f"{saved.name} (latest) is the last finite checkpoint" if saved else "before the first checkpoint"
        return TrainingDiverged(f"{where or f'iteration {self.iteration + 1}'}: {what} is not finite (NaN or inf); "
                                f"training stopped, {kept}")

    @contextlib.contextmanager
    def _finite_rewards(self, where: str) -> Iterator[None]:
        """A reward function that returns a non-finite number stops the run, naming ``where``: a user's function's
        as the user's error (exit 2), a built-in one's as a run that diverged (exit 1)."""
        try:
            yield
        except NonFiniteReward as e:
            if e.user:
                raise RewardError(f"{where}: {e}", user=True) from None
            raise self._diverged(f"the reward ({e})", where) from None

    def _collect(self) -> tuple[Rollout, dict[str, float]]:
        """The task's rollout, its rewards checked."""
        self._gather(True)
        with self._finite_rewards(f"iteration {self.iteration + 1}"), self.autocast():
            rollout, stats = self.task.collect(self.policy)
        self._check_rewards(rollout, stats)
        return rollout, stats

    def _check_rewards(self, rollout: Rollout, stats: dict[str, float]) -> None:
        """Stop at a non-finite reward, naming the reward component (text) or the environment (control)."""
        if not torch.isfinite(rollout.rewards[rollout.mask > 0]).all():
            component = first_non_finite({k: v for k, v in stats.items() if k.startswith("rewards/")})
            raise self._diverged(f"the reward ({component})" if component else f"the reward of {self.cfg.env.id}")

    def _check_advantages(self, rollout: Rollout) -> None:
        """Stop at a non-finite advantage."""
        assert rollout.advantages is not None
        if not torch.isfinite(rollout.advantages[rollout.mask > 0]).all():
            raise self._diverged("the advantage")

    def _check_update(self, metrics: dict[str, Any]) -> None:
        """Stop at a non-finite loss, gradient norm or KL of the update, or a non-finite parameter or buffer."""
        key = first_non_finite({k: v for k, v in metrics.items() if k.startswith(CHECKED_METRICS)})
        if key is not None:
            raise self._diverged(key)
        # FSDP: each process checks its shards (a DTensor's own check would read only them anyway), then all agree
        key = first_non_finite({k: v.to_local() if hasattr(v, "to_local") else v
                                for k, v in self.policy.state_dict().items()})
        if self.gathered is not None:
            key = next((k for k in distributed.all_gather(key) if k is not None), None)
        if key is not None:
            raise self._diverged(f"parameter {key} after the update")

    def _record(self, metrics: dict[str, float], steps: int, dt: float, t_collect: float) -> dict[str, Any]:
        record: dict[str, Any] = {"iteration": self.iteration, "env_steps": self.task.steps,
                                  "time": round(self.elapsed, 4), **metrics}
        record["charts/sps"] = steps / dt
        record["time/collect_s"], record["time/update_s"] = t_collect, dt - t_collect
        if self.cfg.train.eval_every and self.task.steps >= self.next_eval:
            while self.next_eval <= self.task.steps:
                self.next_eval += self.cfg.train.eval_every
            self._gather(True)
            if self.lead:  # the others go on collecting, and wait for it at the next gather
                record.update(self.evaluate())
        return record

    def evaluate(self) -> dict[str, float]:
        """The task's evaluation, timed apart from training, on a forked RNG: how often a run evaluates
        never changes what it trains (text evaluation samples replies)."""
        self.policy.eval()
        start = time.perf_counter()
        with torch.random.fork_rng(), self._finite_rewards(f"the evaluation after iteration {self.iteration}"):
            if self._bar is not None:  # a periodic evaluation: said on the training bar (rich 13 refuses a 2nd live)
                bar, steps = self._bar, self.task.steps
                out = self.task.evaluate(self.policy, lambda part: bar.update(steps, None, None, f"evaluating: {part}"))
            else:
                with PhaseStatus("evaluate", enabled=self.cfg.train.progress) as status:
                    out = self.task.evaluate(self.policy, status.part)
        self.last_eval = out["eval/mean_return"]
        self._samples = self.task.samples()
        self._eval_time += time.perf_counter() - start
        return out

    # ------------------------------------------------------------------------------------ checkpoints
    def _streams(self) -> dict[str, Any]:
        """This process's random streams and collection state (environments mid-episode for control, the
        conversation stream for text)."""
        cuda = torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None
        return {"rng": {"torch": torch.get_rng_state(), "numpy": np.random.get_state(), "python": random.getstate(),
                        "cuda": cuda},
                "task": self.task.state()}

    def save(self) -> Path | None:
        """Atomically write weights, optimiser, RNG and environment state (every process's streams: under
        torchrun rank 0 writes them all); returns the checkpoint (None on the other processes). Under
        ``train.fsdp`` the weights and Adam's state go to a DCP directory every process writes its shards to, and
        rank 0 writes the gathered weights beside it for readers."""
        streams = distributed.gather_to_lead(self._streams())
        self._saved_iteration = self.iteration
        algo = self.algo.state_dict()
        weights: Any = self.policy
        staged = None
        if self.cfg.train.fsdp:
            from lmpo.train import sharded

            self._gather(False)
            staged = distributed.broadcast(staging_dir(self.ckpt_dir, self.iteration) if self.lead else None)
            sharded.save(staged / DCP_DIR, self.policy, self._torch_optimizer())
            weights = sharded.full_weights(self.policy) if self.gathered is not None else self.policy
            del algo["optimizer"]  # REINFORCE's and PPO's Adam: in the DCP directory
        if streams is None:
            return None
        mine, *others = streams
        state = {"iteration": self.iteration, "next_eval": self.next_eval, "elapsed": self.elapsed,
                 "algo": algo, **mine, "other_ranks": others, "env_steps": self.task.steps}
        return save_checkpoint(self.ckpt_dir, self.iteration, weights, state, self.cfg.train.keep_checkpoints,
                               staged=staged)

    def _torch_optimizer(self) -> torch.optim.Optimizer:
        """The ``torch.optim`` optimiser of the algorithm (REINFORCE's and PPO's one Adam)."""
        return self.algo.optimizer.optimizer  # type: ignore[attr-defined]

    def _load_algorithm(self, algo: dict[str, Any], ckpt: Path) -> None:
        """The algorithm's state from a checkpoint; a DCP directory's weights and Adam state (``train.fsdp``),
        resharded to this run's processes, first."""
        if self.cfg.train.fsdp:
            from lmpo.train import sharded

            optimizer = self._torch_optimizer()
            sharded.load(ckpt / DCP_DIR, self.policy, optimizer)
            algo = {**algo, "optimizer": optimizer.state_dict()}
        self.algo.load_state_dict(algo)

    def _gather(self, on: bool) -> None:
        """An FSDP policy's weights gathered on every process (collection, evaluation, the export) or sharded (the
        update, checkpoints); every process switches at the same points. Nothing to do without FSDP."""
        if self.gathered is None:
            return
        if on:
            self.gathered.gather()
        else:
            self.gathered.scatter()

    def _restore(self, state: dict[str, Any], ckpt: Path) -> None:
        self._load_algorithm(state["algo"], ckpt)
        self.iteration, self.next_eval, self._elapsed_before = state["iteration"], state["next_eval"], state["elapsed"]
        self._saved_iteration = self.iteration
        mine: dict[str, Any] | None = state
        others = state.get("other_ranks", [])
        if distributed.rank() > 0:
            mine = others[distributed.rank() - 1] if len(others) == distributed.world_size() - 1 else None
        elif len(others) != distributed.world_size() - 1:
            mine = None
        if mine is None:  # saved by another number of processes: the weights and optimiser go on, new streams
            if self.lead:
                written = len(others) + 1
                print(f"lmpo: note: the checkpoint was written by {written} process{'es' if written > 1 else ''}, this "
                      f"run has {distributed.world_size()}: collection continues on new random streams")
            seed = self.cfg.seed + 7919 * self.iteration
            _seed(distributed.rank_seed(seed))
            self.task.restore(state["task"], state["env_steps"], reseed=seed)  # rank 0's: what all processes share
            return
        torch.set_rng_state(mine["rng"]["torch"])
        np.random.set_state(mine["rng"]["numpy"])
        random.setstate(mine["rng"]["python"])
        if mine["rng"]["cuda"] is not None and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(mine["rng"]["cuda"])
        self.task.restore(mine["task"], state["env_steps"])

