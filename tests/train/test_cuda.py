"""The GPU path, where a CUDA device is present (skipped cleanly without one: the CPU suite is the CI gate): training
on ``train.device=cuda``, bf16 autocast on a text job, and torchrun with nccl on two GPUs."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmpo.cli import load_recipe, resolve_recipe
from lmpo.train.trainer import Trainer
from tests.train.test_distributed import CONTROL, TEXT

ROOT = Path(__file__).resolve().parents[2]
pytestmark = [pytest.mark.cuda, pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")]


@pytest.mark.parametrize(("recipe", "extra"), [("cartpole-ppo", CONTROL),
                                                ("support", [*TEXT, "train.precision=bf16"])])
def test_training_on_cuda(tmp_path: Path, recipe: str, extra: list[str]) -> None:
    cfg = load_recipe(resolve_recipe(recipe), [*extra, "train.device=cuda", f"train.runs_dir={tmp_path}"])
    trainer = Trainer(cfg)
    before = {k: v.detach().clone() for k, v in trainer.policy.state_dict().items()}
    summary = trainer.train()
    assert all(p.device.type == "cuda" for p in trainer.policy.parameters())
    assert summary["iterations"] > 0
    assert any(not torch.equal(before[k], v) for k, v in trainer.policy.state_dict().items())


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="needs two CUDA devices")
def test_torchrun_on_two_gpus_with_nccl(tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "lmpo", "train", "cartpole-ppo", *CONTROL, "train.device=cuda",
                           f"train.runs_dir={tmp_path}"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert "(2 processes)" in proc.stdout
