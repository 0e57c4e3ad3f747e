"""lmpo vs Stable-Baselines3 / sb3-contrib on CartPole-v1: sample efficiency, time to 475, throughput.

Pairs: lmpo PPO vs SB3 PPO, lmpo TRPO vs sb3-contrib TRPO (both with the RL Zoo's tuned CartPole
hyper-parameters), lmpo REINFORCE beside SB3 A2C (zoo settings). Same seeds, same evaluation protocol:
after the first update whose consumed environment steps pass each multiple of 5,000, 10 deterministic
episodes on the same seeded evaluation environments. Time is training wall-clock with evaluation excluded.
Every run is its own process pinned to one core with one torch thread; the lmpo run and its SB3 twin run
at the same time on the two cores (swapping cores from seed to seed), so both see the same machine.

    python bench/classic.py [--seeds 3] [--algos ppo trpo reinforce] [--out bench/results/classic.json]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
TARGET, EVAL_EVERY, EVAL_EPISODES, EVAL_SEED_OFFSET = 475.0, 5_000, 10, 10_000

# the RL Zoo's tuned CartPole-v1 settings (rl-baselines3-zoo hyperparams/{ppo,trpo,a2c}.yml)
PAIRS: dict[str, dict[str, Any]] = {
    "ppo": {"lmpo": "configs/cartpole-ppo.yaml", "peer": "PPO", "budget": 100_000, "n_envs": 8,
            "kwargs": {"n_steps": 32, "batch_size": 256, "gae_lambda": 0.8, "gamma": 0.98, "n_epochs": 20,
                       "ent_coef": 0.0, "learning_rate": "lin_0.001", "clip_range": "lin_0.2"}},
    "trpo": {"lmpo": "configs/cartpole-trpo.yaml", "peer": "TRPO", "budget": 100_000, "n_envs": 2,
             "kwargs": {"n_steps": 512, "batch_size": 512, "cg_damping": 1e-3, "gae_lambda": 0.98, "gamma": 0.99,
                        "learning_rate": 1e-3, "n_critic_updates": 20}},
    "reinforce": {"lmpo": "configs/cartpole-reinforce.yaml", "peer": "A2C", "budget": 200_000, "n_envs": 8,
                  "kwargs": {"ent_coef": 0.0}},
}


def _pin(core: int) -> None:
    os.sched_setaffinity(0, {core})
    import torch

    torch.set_num_threads(1)


def _linear(value: Any) -> Any:
    if isinstance(value, str) and value.startswith("lin_"):
        start = float(value[4:])
        return lambda progress_remaining: progress_remaining * start
    return value


def run_sb3(algo: str, seed: int) -> dict[str, Any]:
    """Train the SB3 / sb3-contrib twin, evaluating with lmpo's protocol between updates."""
    import numpy as np
    import torch
    from stable_baselines3.common.callbacks import BaseCallback
    from stable_baselines3.common.env_util import make_vec_env

    from lmpo.envs import make_vector_env

    spec = PAIRS[algo]
    if spec["peer"] == "TRPO":
        from sb3_contrib import TRPO as Peer
    else:
        import stable_baselines3

        Peer = getattr(stable_baselines3, spec["peer"])
    evals: list[dict[str, float]] = []

    class Evaluate(BaseCallback):
        """Between updates (at rollout start), evaluate once per passed multiple of EVAL_EVERY."""

        def __init__(self) -> None:
            super().__init__()
            self.next_eval, self.eval_time, self.start = EVAL_EVERY, 0.0, time.perf_counter()

        def _on_rollout_start(self) -> None:
            if self.num_timesteps < self.next_eval:
                return
            while self.next_eval <= self.num_timesteps:
                self.next_eval += EVAL_EVERY
            t = time.perf_counter()
            env = make_vector_env("CartPole-v1", EVAL_EPISODES)
            obs, _ = env.reset(seed=seed + EVAL_SEED_OFFSET)
            returns, running = np.zeros(EVAL_EPISODES), np.ones(EVAL_EPISODES, dtype=bool)
            while running.any():
                actions, _ = self.model.predict(obs, deterministic=True)
                obs, r, term, trunc, _ = env.step(actions)
                returns += r * running
                running &= ~(term | trunc)
            self.eval_time += time.perf_counter() - t
            evals.append({"steps": self.num_timesteps, "return": float(returns.mean()),
                          "time": time.perf_counter() - self.start - self.eval_time})

        def _on_step(self) -> bool:
            return True

    torch.manual_seed(seed)
    env = make_vec_env("CartPole-v1", n_envs=spec["n_envs"], seed=seed)
    model = Peer("MlpPolicy", env, seed=seed, device="cpu", verbose=0,
                 **{k: _linear(v) for k, v in spec["kwargs"].items()})
    cb = Evaluate()
    cb.start = time.perf_counter()
    model.learn(total_timesteps=spec["budget"], callback=cb)
    train_time = time.perf_counter() - cb.start - cb.eval_time
    return {"evals": evals, "steps": int(model.num_timesteps), "train_time": train_time}


def run_lmpo(algo: str, seed: int, runs_dir: str) -> dict[str, Any]:
    """Train lmpo from its recipe; the trainer evaluates with the same protocol and excludes eval time."""
    from lmpo.config import load_config
    from lmpo.train import Trainer
    from lmpo.train.logging import read_metrics

    spec = PAIRS[algo]
    cfg = load_config(ROOT / spec["lmpo"], [
        f"seed={seed}", f"name={algo}-s{seed}", f"train.runs_dir={runs_dir}", f"train.total_steps={spec['budget']}",
        f"train.eval_every={EVAL_EVERY}", f"train.eval_episodes={EVAL_EPISODES}", "train.progress=false",
        "train.checkpoint_every=1000000", "train.threads=1"])
    trainer = Trainer(cfg)
    trainer.train()
    records = read_metrics(trainer.run_dir)
    evals = [{"steps": r["env_steps"], "return": r["eval/mean_return"], "time": r["time"]}
             for r in records if "eval/mean_return" in r and "env_steps" in r]
    last = [r for r in records if "env_steps" in r][-1]
    return {"evals": evals, "steps": last["env_steps"], "train_time": last["time"]}


def first_reach(evals: list[dict[str, float]]) -> tuple[float, float]:
    """Steps and seconds of the first evaluation at or above TARGET (inf when never reached)."""
    for e in evals:
        if e["return"] >= TARGET:
            return e["steps"], e["time"]
    return float("inf"), float("inf")


def _worker(args: argparse.Namespace) -> None:
    _pin(args.core)
    out = run_lmpo(args.algo, args.seed, args.runs_dir) if args.worker == "lmpo" else run_sb3(args.algo, args.seed)
    print(json.dumps(out))


def _spawn(lib: str, algo: str, seed: int, core: int, runs_dir: str) -> subprocess.Popen:
    cmd = [sys.executable, __file__, "--worker", lib, "--algo", algo, "--seed", str(seed), "--core", str(core),
           "--runs-dir", runs_dir]
    env = {**os.environ, "OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=env)


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--algos", nargs="+", default=list(PAIRS), choices=list(PAIRS))
    parser.add_argument("--out", default=str(ROOT / "bench" / "results" / "classic.json"))
    parser.add_argument("--worker", choices=["lmpo", "sb3"])
    parser.add_argument("--algo")
    parser.add_argument("--seed", type=int)
    parser.add_argument("--core", type=int, default=0)
    parser.add_argument("--runs-dir", help="where lmpo's runs go (default: a new temporary directory)")
    args = parser.parse_args()
    if args.worker:
        _worker(args)
        return
    args.runs_dir = args.runs_dir or tempfile.mkdtemp(prefix="lmpo-bench-")
    cores = sorted(os.sched_getaffinity(0))[:2]
    results: dict[str, Any] = {}
    for algo in args.algos:
        for seed in range(1, args.seeds + 1):
            a, b = (cores[0], cores[-1]) if seed % 2 else (cores[-1], cores[0])
            procs = {"lmpo": _spawn("lmpo", algo, seed, a, args.runs_dir), "sb3": _spawn("sb3", algo, seed, b, "")}
            for lib, proc in procs.items():
                stdout, _ = proc.communicate()
                if proc.returncode != 0:
                    raise SystemExit(f"{lib} {algo} seed {seed} failed")
                run = json.loads(stdout.strip().splitlines()[-1])
                run["reach_steps"], run["reach_time"] = first_reach(run["evals"])
                run["sps"] = run["steps"] / run["train_time"]
                results.setdefault(algo, {}).setdefault(lib, []).append(run)
                print(f"{algo:9s} {lib:4s} seed {seed}: 475 at {run['reach_steps']} steps / "
                      f"{run['reach_time']:.1f} s, {run['sps']:.0f} steps/s", flush=True)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(json.dumps(results, indent=1))
    print()
    print(f"CartPole-v1, {args.seeds} seeds, median over seeds (inf: 475 not reached within the budget)")
    print(f"{'algorithm':22s} {'steps to 475':>13s} {'s to 475':>9s} {'steps/s':>8s} | "
          f"{'ratio steps':>11s} {'ratio time':>10s} {'ratio sps':>9s}")
    for algo, libs in results.items():
        med = {lib: {k: _median([r[k] for r in runs]) for k in ("reach_steps", "reach_time", "sps")}
               for lib, runs in libs.items()}
        peer = PAIRS[algo]["peer"]
        for lib, name in (("lmpo", f"lmpo {algo}"), ("sb3", f"SB3 {peer}")):
            m = med[lib]
            print(f"{name:22s} {m['reach_steps']:13.0f} {m['reach_time']:9.1f} {m['sps']:8.0f} |", end="")
            if lib == "lmpo":
                ratios = [m[k] / med["sb3"][k] for k in ("reach_steps", "reach_time", "sps")]
                print(f" {ratios[0]:11.2f} {ratios[1]:10.2f} {ratios[2]:9.2f}")
            else:
                print()


if __name__ == "__main__":
    main()
