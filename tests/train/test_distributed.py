"""Data-parallel training under torchrun (2 CPU processes, gloo): each process collects its share with its own
random streams; given the same global batch, the update equals one process's (to float tolerance) for each
algorithm on a control task and a text task; only rank 0 writes; --resume continues exactly."""

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmpo.cli import load_recipe, resolve_recipe
from lmpo.train.logging import read_metrics
from lmpo.train.trainer import Trainer

ROOT = Path(__file__).resolve().parents[2]
TORCHRUN = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--standalone"]
QUIET = ["train.progress=false", "train.eval_every=0", "train.threads=1"]
CONTROL = [*QUIET, "train.eval_episodes=1", "env.num_envs=4", "rollout.steps_per_env=32", "train.total_steps=384"]
TEXT = [*QUIET, "env.kwargs.products=40", "env.kwargs.orders=40", "env.kwargs.transcripts=60",
        "env.kwargs.train_goals=10", "env.kwargs.eval_goals=4", "policy.n_layer=1", "policy.d_model=32",
        "text.vocab_size=400", "text.pretrain.epochs=1", "text.sampling.max_new_tokens=12",
        "text.conversations_per_update=4", "text.samples_per_prompt=2", "text.eval_samples=1",
        "text.eval_conversations=2", "train.total_steps=40"]
CASES = {
    "cartpole-reinforce": CONTROL,
    "cartpole-trpo": [*CONTROL, "algo.vf_batch_size=32", "algo.fvp_fraction=0.5"],
    "cartpole-ppo": [*CONTROL, "algo.epochs=2", "algo.batch_size=32", "algo.target_kl=0.05"],
    "support-reinforce": TEXT,
    "support-trpo": [*TEXT, "algo.vf_batch_size=8"],
    "support": [*TEXT, "algo.epochs=2", "algo.batch_size=8"],
}


def torchrun(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([*TORCHRUN, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    return proc


@pytest.mark.parametrize("recipe", list(CASES))
def test_two_processes_update_as_one_does_on_the_same_global_batch(tmp_path: Path, recipe: str) -> None:
    over = [*CASES[recipe], f"train.runs_dir={tmp_path / 'runs'}"]
    torchrun(str(ROOT / "tests" / "train" / "ddp_replay.py"), recipe, str(tmp_path / "records.pt"), *over,
             cwd=tmp_path)
    saved = torch.load(tmp_path / "records.pt", weights_only=False)
    records = saved["records"]
    assert len(records) >= 2 and all(r["world"] == 2 for r in records)
    # one process, the same seed: the same initial weights (and pre-training), then the same updates
    one = Trainer(load_recipe(resolve_recipe(recipe), [*over, "name=one"]))
    first = records[0]["rollout"]
    # the processes collected different data (their own streams), gathered in rank order
    half = first.batch_size // 2 if first.group_ids is None else int((first.group_ids <= first.group_ids.max() // 2)
                                                                     .sum())
    assert not torch.equal(first.actions[:half].float().mean(), first.actions[half:].float().mean())
    for i, rec in enumerate(records):
        metrics = one.learn(rec["rollout"], rec["progress"])
        for key, value in rec["weights"].items():
            torch.testing.assert_close(one.policy.state_dict()[key], value, rtol=1e-4, atol=2e-5,
                                       msg=lambda m, k=key, i=i: f"update {i + 1}, {k}: {m}")
        for key, value in rec["metrics"].items():
            if key != "charts/explained_variance" or value == value:
                assert metrics[key] == pytest.approx(value, rel=1e-3, abs=1e-5), (i, key)
    one.close()
    # only rank 0 wrote the run: one record per update, every process's streams in the checkpoint
    run = Path(saved["run_dir"])
    assert [r["iteration"] for r in read_metrics(run)] == list(range(len(records) + 1)) + [len(records)]
    state = torch.load(next((run / "checkpoints").glob("iter_*")) / "state.pt", weights_only=False)
    assert len(state["other_ranks"]) == 1 and state["other_ranks"][0]["task"] != state["task"]


def test_torchrun_train_and_resume_are_exact(tmp_path: Path) -> None:
    """`torchrun ... -m lmpo train`, and `--resume` of a run two processes were training, continue exactly."""
    over = [*CONTROL, "train.checkpoint_every=2", "algo.anneal_lr=false", "algo.anneal_clip=false",
            f"train.runs_dir={tmp_path}"]  # no schedules: the first part of "split" stops at a smaller total
    out = torchrun("-m", "lmpo", "train", "cartpole-ppo", *over, "name=straight", "train.total_steps=768",
                   cwd=tmp_path)
    assert "(2 processes)" in out.stdout and out.stdout.count("run directory") == 1  # rank 0 reports
    torchrun("-m", "lmpo", "train", "cartpole-ppo", *over, "name=split", "train.total_steps=384", cwd=tmp_path)
    torchrun("-m", "lmpo", "train", "--resume", str(tmp_path / "split"), "train.total_steps=768", cwd=tmp_path)

    def final(run: Path) -> dict[str, torch.Tensor]:
        from safetensors.torch import load_file

        latest = (run / "checkpoints" / "latest").read_text().strip()
        return load_file(run / "checkpoints" / latest / "policy.safetensors")

    straight, resumed = final(tmp_path / "straight"), final(tmp_path / "split")
    assert straight.keys() == resumed.keys()
    for key in straight:
        assert torch.equal(straight[key], resumed[key]), key


def test_a_run_resumes_on_another_number_of_processes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two processes checkpoint; one process resumes: the weights and optimiser go on, collection takes new streams."""
    from lmpo.cli import main

    over = [*CONTROL, "train.checkpoint_every=2", f"train.runs_dir={tmp_path}", "name=r"]
    torchrun("-m", "lmpo", "train", "cartpole-ppo", *over, cwd=tmp_path)
    first = len(read_metrics(tmp_path / "r"))
    assert main(["train", "--resume", str(tmp_path / "r"), "train.total_steps=768"]) == 0
    records = read_metrics(tmp_path / "r")
    assert len(records) > first and [r for r in records if "env_steps" in r][-1]["env_steps"] >= 768
    assert "written by 2 processes, this run has 1" in capsys.readouterr().out
