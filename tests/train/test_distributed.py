"""Data-parallel training under torchrun (2 CPU processes, gloo): each process collects its share with its own
random streams; given the same global batch, the update equals one process's (to float tolerance) for each
algorithm on a control task and a text task; only rank 0 writes; --resume continues exactly."""

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from lmpo.cli import load_recipe, resolve_recipe
from lmpo.train.logging import read_metrics
from lmpo.train.trainer import Trainer
from tests.conftest import chatml_gpt2

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
    replay_two_processes_in_one(tmp_path, recipe, [*CASES[recipe], f"train.runs_dir={tmp_path / 'runs'}"])


@pytest.fixture(scope="module")
def tiny_hf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GPT-2 with a ChatML tokenizer, saved like a hub checkpoint."""
    path = tmp_path_factory.mktemp("fsdp") / "m"
    chatml_gpt2(path, width=32, layers=2, heads=2, vocab_size=400)
    return path


def fsdp_text(model: Path, runs: Path) -> list[str]:
    """The prompt set with the tiny hf model, pre-trained for an epoch, sharded by FSDP."""
    return [*QUIET, "policy.kind=hf", f"policy.path={model}", f"train.runs_dir={runs}", "train.fsdp=true",
            f"env.kwargs.path={ROOT / 'examples' / 'prompts.jsonl'}", "text.pretrain.epochs=1",
            "text.sampling.max_new_tokens=12", "text.conversations_per_update=4", "text.eval_samples=1",
            "train.total_steps=48"]


@pytest.mark.parametrize("algo", [[], ["algo.name=ppo", "algo.epochs=2", "algo.batch_size=8", "train.eval_every=16",
                                       "policy.gradient_checkpointing=true"],
                                  ["algo.name=ppo", "algo.epochs=2", "algo.batch_size=8", "policy.lora.r=4",
                                   "text.pretrain.epochs=0"]], ids=["reinforce", "ppo", "ppo-lora"])
def test_fsdp_on_two_processes_updates_as_one_process_does(tmp_path: Path, tiny_hf: Path, algo: list[str],
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """FSDP2 (weights, gradients and Adam's state sharded over 2 gloo processes; with LoRA, the frozen base weights
    and the adapters) gives one process's updates on the same global batch, and exports the gathered model (a LoRA
    run: its adapter in peft's format, and merged)."""
    monkeypatch.chdir(ROOT)  # the recipe names its reward file relative to the repository
    run = replay_two_processes_in_one(tmp_path, str(ROOT / "configs" / "prompts-example.yaml"),
                                      [*fsdp_text(tiny_hf, tmp_path / "runs"), *algo], cwd=ROOT)
    checkpoint = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    assert (checkpoint / "dcp" / ".metadata").is_file() and len(list((checkpoint / "dcp").glob("*.distcp"))) == 2
    from safetensors.torch import load_file
    from transformers import AutoModelForCausalLM

    weights = load_file(checkpoint / "policy.safetensors")  # the gathered weights, whole
    exported = AutoModelForCausalLM.from_pretrained(run / "hf")
    if "policy.lora.r=4" in algo:  # the trained adapter in peft's format, and the model with it merged
        from peft import PeftModel

        adapted = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_hf), run / "hf" / "adapter")
        trained = [k for k in weights if ".lora_B." in k]
        assert trained and any(bool(weights[k].abs().sum() > 0) for k in trained)  # (lora_B starts at zero)
        for key, value in adapted.state_dict().items():
            assert torch.equal(value, weights[f"body.model.{key}"]), key
        merged = adapted.merge_and_unload().state_dict()
        for key, value in exported.state_dict().items():
            torch.testing.assert_close(value, merged[key], msg=key)
        return
    for key, value in exported.state_dict().items():
        assert torch.equal(value, weights[f"body.model.{key}"]), key


def replay_two_processes_in_one(tmp_path: Path, recipe: str, over: list[str], cwd: Path | None = None) -> Path:
    """Train ``recipe`` on 2 processes recording each update; replay the updates in one process and compare the
    weights and metrics after each. Returns the 2-process run's directory."""
    torchrun(str(ROOT / "tests" / "train" / "ddp_replay.py"), recipe, str(tmp_path / "records.pt"), *over,
             cwd=cwd or tmp_path)
    saved = torch.load(tmp_path / "records.pt", weights_only=False)
    records = saved["records"]
    assert len(records) >= 2 and all(r["world"] == 2 for r in records)
    assert all(r["sharded"] == ("train.fsdp=true" in over) for r in records)
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
    return run


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


def test_an_fsdp_checkpoint_resumes_on_one_process_with_its_optimiser_state(
        tmp_path: Path, tiny_hf: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Two FSDP processes write a torch.distributed.checkpoint; one process loads it, resharded: the same weights and
    the same Adam moments, by parameter name; training goes on."""
    monkeypatch.chdir(ROOT)
    from torch.distributed.checkpoint.format_utils import dcp_to_torch_save
    from torch.distributed.checkpoint.state_dict import get_optimizer_state_dict

    over = [*fsdp_text(tiny_hf, tmp_path), "train.checkpoint_every=2", "name=r"]
    torchrun("-m", "lmpo", "train", "configs/prompts-example.yaml", *over, cwd=ROOT)
    run = tmp_path / "r"
    checkpoint = run / "checkpoints" / (run / "checkpoints" / "latest").read_text().strip()
    dcp_to_torch_save(checkpoint / "dcp", tmp_path / "whole.pt")
    saved = torch.load(tmp_path / "whole.pt", weights_only=False)
    from lmpo.config import ConfigError

    with pytest.raises(ConfigError, match="written with train.fsdp=true"):  # the optimiser state is in the DCP
        Trainer(load_recipe(resolve_recipe(str(ROOT / "configs" / "prompts-example.yaml")),
                            [*over, "train.fsdp=false"]), run_dir=run, resume=True)
    # damaged: a shard's file cut short, or the index missing (then it is no complete checkpoint)
    for damage, message in [(lambda d: (d / "__1_0.distcp").write_bytes(b"\0" * 64), "dcp is damaged"),
                            (lambda d: (d / ".metadata").unlink(), "not a complete checkpoint")]:
        broken = tmp_path / "broken"
        shutil.rmtree(broken, ignore_errors=True)
        shutil.copytree(run, broken)
        damage(broken / "checkpoints" / checkpoint.name / "dcp")
        with pytest.raises(ConfigError, match=message):
            Trainer(load_recipe(resolve_recipe(str(ROOT / "configs" / "prompts-example.yaml")), over), run_dir=broken,
                    resume=True)
    # the weights come from the DCP directory, not from the copy for readers beside it
    from safetensors.torch import load_file, save_file

    readers = load_file(checkpoint / "policy.safetensors")
    save_file({k: v + 1.0 for k, v in readers.items()}, checkpoint / "policy.safetensors")
    one = Trainer(load_recipe(resolve_recipe(str(ROOT / "configs" / "prompts-example.yaml")),
                              [*over, "train.total_steps=96"]), run_dir=run, resume=True)
    for key, value in one.policy.state_dict().items():
        assert torch.equal(value, saved["model"][key]), key
    moments = get_optimizer_state_dict(one.policy, one.algo.optimizer.optimizer)["state"]  # type: ignore[attr-defined]
    assert moments.keys() == saved["optim"]["state"].keys()
    for name, state in moments.items():
        assert int(state["step"]) == len(read_metrics(run)) - 1 - 1  # every update so far (less iteration 0's record)
        for moment in ("exp_avg", "exp_avg_sq"):
            assert torch.equal(state[moment], saved["optim"]["state"][name][moment]), (name, moment)
    one.train()
    assert [r for r in read_metrics(run) if "env_steps" in r][-1]["env_steps"] >= 96


def test_a_non_finite_weight_in_one_shard_stops_every_process(tmp_path: Path, tiny_hf: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Each process checks its own shards after an update; a NaN in one process's stops them all (none waits in a
    collective the other left)."""
    monkeypatch.chdir(ROOT)
    out = torchrun(str(ROOT / "tests" / "train" / "fsdp_nan.py"), str(ROOT / "configs" / "prompts-example.yaml"),
                   *fsdp_text(tiny_hf, tmp_path), "text.pretrain.epochs=0", cwd=ROOT).stdout
    # the two processes share one stdout: their lines may run together, so each report is found, not each line
    stopped = re.findall(r"STOPPED (\d) iteration 1: parameter (\S+) after the update", out)
    assert sorted(stopped) == [("0", "body.model.transformer.h.1.mlp.c_fc.weight"),
                               ("1", "body.model.transformer.h.1.mlp.c_fc.weight")], out[-2000:]


@pytest.mark.parametrize(("overrides", "message"), [
    (["policy.kind=gru"], "is for hf policies"),
    (["algo.name=trpo"], "cannot serve TRPO"),
    (["policy.compile=[decode]"], "does not combine with policy.compile"),
    (["algo.optimizer=flat_adam"], "needs algo.optimizer 'adam' or 'auto'"),
    (["env.id=CartPole-v1", "policy.kind=mlp", "text=null"], "are for language-model policies"),
])
def test_fsdp_settings_that_cannot_work_are_refused(overrides: list[str], message: str) -> None:
    from lmpo.config import ConfigError, load_config

    base = ["env.id=lmpo/Prompts-v0", "policy.kind=hf", "policy.path=some/model", "train.fsdp=true"]
    with pytest.raises(ConfigError, match=message):
        load_config(None, [*base, *overrides])
    assert load_config(None, base).train.fsdp
