"""Crash safety: SIGKILL a run (also half-way through a checkpoint write), resume it, and get bit-identical
parameters to an uninterrupted run; no checkpoint on disk is ever half-written."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file

from lmpo.config import load_config
from lmpo.train import Trainer, read_run_config
from lmpo.train.checkpoint import latest_checkpoint
from lmpo.train.logging import read_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
# 30 PPO updates of 8 envs x 32 steps, a checkpoint every 2 updates
ARGS = ["train.total_steps=7680", "train.checkpoint_every=2", "train.eval_every=0", "train.eval_episodes=2",
        "train.progress=false", "train.keep_checkpoints=3"]


def _cli(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmpo.cli", "train", *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={**os.environ, **(env or {})})


def _final_weights(run_dir: Path) -> dict[str, torch.Tensor]:
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    assert ckpt is not None
    return load_file(str(ckpt / "policy.safetensors"))


def _assert_checkpoints_whole(run_dir: Path) -> None:
    """Every visible checkpoint is complete and loadable; ``latest`` names one of them."""
    ckpt_dir = run_dir / "checkpoints"
    for d in ckpt_dir.glob("iter_*"):
        load_file(str(d / "policy.safetensors"))
        torch.load(d / "state.pt", weights_only=False)
    latest = (ckpt_dir / "latest").read_text().strip()
    assert (ckpt_dir / latest).is_dir()


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory) -> dict[str, torch.Tensor]:
    root = tmp_path_factory.mktemp("ref")
    proc = _cli(str(CONFIGS / "cartpole-ppo.yaml"), f"train.runs_dir={root}", "name=ref", *ARGS)
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    return _final_weights(root / "ref")


def _wait_for_checkpoint(run_dir: Path, proc: subprocess.Popen, at_least: int) -> None:
    deadline = time.time() + 120
    pointer = run_dir / "checkpoints" / "latest"
    while time.time() < deadline and proc.poll() is None:
        # read only: latest_checkpoint() would tidy the live run's temporary directories
        if pointer.exists() and int(pointer.read_text().split("_")[1]) >= at_least:
            return
        time.sleep(0.01)
    raise AssertionError("the run ended or stalled before the expected checkpoint")


def _resume_and_compare(run_dir: Path, reference: dict[str, torch.Tensor]) -> None:
    proc = _cli("--resume", str(run_dir))
    assert proc.wait(timeout=300) == 0, proc.stderr.read() if proc.stderr else ""
    final = _final_weights(run_dir)
    assert final.keys() == reference.keys()
    assert all(torch.equal(final[k], reference[k]) for k in final)


def test_sigkill_mid_run_then_resume_is_exact(tmp_path: Path, reference: dict[str, torch.Tensor]) -> None:
    run_dir = tmp_path / "killed"
    proc = _cli(str(CONFIGS / "cartpole-ppo.yaml"), f"train.runs_dir={tmp_path}", "name=killed", *ARGS)
    _wait_for_checkpoint(run_dir, proc, at_least=6)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    _assert_checkpoints_whole(run_dir)
    _resume_and_compare(run_dir, reference)


def test_sigkill_during_checkpoint_write_then_resume_is_exact(tmp_path: Path,
                                                              reference: dict[str, torch.Tensor]) -> None:
    run_dir = tmp_path / "torn"
    # the 4th checkpoint write dies after its weights file is on disk, before the checkpoint is committed
    proc = _cli(str(CONFIGS / "cartpole-ppo.yaml"), f"train.runs_dir={tmp_path}", "name=torn", *ARGS,
                env={"LMPO_FAULT_KILL_DURING_CHECKPOINT": "4"})
    assert proc.wait(timeout=300) == -signal.SIGKILL
    ckpt_dir = run_dir / "checkpoints"
    assert list(ckpt_dir.glob(".tmp-iter_0000008"))  # the torn write is there, but invisible
    assert (ckpt_dir / "latest").read_text().strip() == "iter_0000006"
    _assert_checkpoints_whole(run_dir)
    _resume_and_compare(run_dir, reference)
    assert not list(ckpt_dir.glob(".tmp-*"))


@pytest.mark.parametrize("recipe", ["cartpole-reinforce.yaml", "cartpole-trpo.yaml", "pendulum-ppo.yaml"])
def test_in_process_resume_is_exact(tmp_path: Path, recipe: str) -> None:
    """Stop after a checkpoint (drop the trainer), resume in a new Trainer: same parameters as straight through."""
    over = [f"train.runs_dir={tmp_path}", "train.progress=false", "train.eval_every=0", "train.eval_episodes=1",
            "train.checkpoint_every=2", "env.num_envs=2", "rollout.steps_per_env=64"]
    if "ppo" in recipe:  # the first half is stopped by a smaller total_steps, which would change the schedule
        over += ["algo.anneal_lr=false"]
    straight = Trainer(load_config(CONFIGS / recipe, [*over, "name=a", "train.total_steps=1200"]))
    straight.train()
    first = Trainer(load_config(CONFIGS / recipe, [*over, "name=b", "train.total_steps=600"]))
    first.train()
    resumed = Trainer(load_config(CONFIGS / recipe, [*over, "name=b", "train.total_steps=1200"]),
                      run_dir=first.run_dir, resume=True)
    assert resumed.iteration == first.iteration > 0
    # the record says what each phase ran with
    kept = first.run_dir / f"config-until-iter{first.iteration}.yaml"
    assert yaml.safe_load(kept.read_text())["train"]["total_steps"] == 600
    assert read_run_config(first.run_dir).train.total_steps == 1200
    resumed.train()
    for (k, a), (_, b) in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().items()):
        assert torch.equal(a, b), k


def test_resuming_a_finished_run_changes_nothing(tmp_path: Path) -> None:
    over = [f"train.runs_dir={tmp_path}", "train.progress=false", "train.eval_every=0", "train.eval_episodes=1",
            "train.total_steps=512", "train.checkpoint_every=1"]
    first = Trainer(load_config(CONFIGS / "cartpole-ppo.yaml", over))
    first.train()
    ckpts = sorted(p.name for p in (first.run_dir / "checkpoints").iterdir())
    finals = sum(bool(r.get("final")) for r in read_metrics(first.run_dir))
    again = Trainer(read_run_config(first.run_dir), run_dir=first.run_dir, resume=True)
    summary = again.train()
    assert sum(bool(r.get("final")) for r in read_metrics(first.run_dir)) == finals == 1  # recorded once
    assert summary["iterations"] == first.iteration
    assert sorted(p.name for p in (first.run_dir / "checkpoints").iterdir()) == ckpts
    assert not list(first.run_dir.glob("config-until-*"))  # no overrides: the record is unchanged
    for (k, a), (_, b) in zip(first.policy.state_dict().items(), again.policy.state_dict().items()):
        assert torch.equal(a, b), k
