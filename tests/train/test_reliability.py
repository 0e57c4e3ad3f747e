"""Reliability (docs/guarantees.md): no silent NaN, one writer per run directory, readers that never hurt a live run,
a failed start that leaves nothing behind, a full disk said in one line."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import gymnasium as gym
import pytest
import torch
from gymnasium.envs.classic_control import CartPoleEnv
from safetensors.torch import load_file, save_file

import lmpo
from lmpo.cli import main
from lmpo.config import ConfigError, load_config
from lmpo.rewards import register_reward
from lmpo.train import pretrain
from lmpo.train.checkpoint import latest_checkpoint
from lmpo.train.logging import read_metrics
from lmpo.train.pretrain import bucketed_order

CONFIGS = Path(__file__).resolve().parents[2] / "configs"
TINY = ["train.progress=false", "train.eval_every=0", "train.eval_episodes=1", "env.num_envs=2",
        "rollout.steps_per_env=64", "train.checkpoint_every=1", "policy.hidden_sizes=[16]"]


class NaNRewardCartPole(CartPoleEnv):
    """CartPole whose reward is NaN from its ``after``-th step on (a broken environment)."""

    def __init__(self, after: int = 100, **kwargs: object) -> None:
        super().__init__(**kwargs)
        self.after, self.taken = after, 0

    def step(self, action: int) -> tuple:
        obs, reward, terminated, truncated, info = super().step(action)
        self.taken += 1
        return obs, float("nan") if self.taken >= self.after else reward, terminated, truncated, info


gym.register("NaNRewardCartPole-v0", entry_point=NaNRewardCartPole, max_episode_steps=500)


def _one_error_line(err: str) -> str:
    lines = [ln for ln in err.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lmpo: error:") and "Traceback" not in err, err
    return lines[0]


def _all_finite(run: Path) -> None:
    for ckpt in (run / "checkpoints").glob("iter_*"):
        assert all(torch.isfinite(t).all() for t in load_file(str(ckpt / "policy.safetensors")).values()), ckpt


@pytest.mark.parametrize("recipe", ["cartpole-ppo", "cartpole-reinforce", "cartpole-trpo"])
def test_divergence_stops_with_one_line_and_keeps_the_last_finite_checkpoint(
        tmp_path: Path, recipe: str, capsys: pytest.CaptureFixture[str]) -> None:
    """An absurd learning rate (finite, so valid) poisons the weights: exit 1 at that update, nothing written."""
    assert main(["train", recipe, *TINY, f"train.runs_dir={tmp_path}", "name=r", "train.total_steps=256"]) == 0
    run = tmp_path / "r"
    saved = (run / "checkpoints" / "latest").read_text()
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "algo.lr=1e38", "train.total_steps=5000"]) == 1
    line = _one_error_line(capsys.readouterr().err)
    latest = (run / "checkpoints" / "latest").read_text()
    failed = int(line.split("iteration ")[1].split(":")[0])
    assert f"is not finite (NaN or inf); training stopped, {latest} (latest) is the last finite checkpoint" in line
    assert latest >= saved and int(latest.removeprefix("iter_")) == failed - 1, line  # every update checkpoints
    _all_finite(run)
    assert main(["eval", str(run), "--episodes", "1"]) == 0  # the run is still usable


def test_a_nan_reward_from_the_environment_stops_training(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "cartpole-ppo", *TINY, f"train.runs_dir={tmp_path}", "name=n", "env.id=NaNRewardCartPole-v0",
                 "env.kwargs.after=100", "train.total_steps=2000"]) == 1  # step 100: update 2
    line = _one_error_line(capsys.readouterr().err)
    assert "iteration 2: the reward of NaNRewardCartPole-v0 is not finite" in line, line
    assert (tmp_path / "n" / "checkpoints" / "latest").read_text() == "iter_0000001"
    _all_finite(tmp_path / "n")


def test_readers_refuse_non_finite_weights(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "cartpole-ppo", *TINY, f"train.runs_dir={tmp_path}", "name=w", "train.total_steps=128"]) == 0
    run = tmp_path / "w"
    weights = latest_checkpoint(run / "checkpoints") / "policy.safetensors"
    tensors = load_file(str(weights))
    name = next(iter(tensors))
    tensors[name][0] = float("nan")
    save_file(tensors, str(weights))
    capsys.readouterr()
    assert main(["eval", str(run)]) == 2
    assert f"non-finite weights (NaN or inf in {name}" in _one_error_line(capsys.readouterr().err)
    with pytest.raises(ConfigError, match="non-finite weights"):
        lmpo.load(run)


def _train_process(*args: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "lmpo.cli", "train", "cartpole-ppo", *TINY, *args],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen) -> None:
    deadline = time.time() + 120
    while not path.exists():
        assert proc.poll() is None and time.time() < deadline, proc.stderr.read() if proc.stderr else ""
        time.sleep(0.02)


def test_a_reader_in_a_loop_never_hurts_the_live_run(tmp_path: Path) -> None:
    """``lmpo.load`` over and over while the run checkpoints every update and keeps only one: every load gets a
    whole checkpoint, and the trainer (whose temporary files a reader used to delete) finishes."""
    proc = _train_process(f"train.runs_dir={tmp_path}", "name=live", "train.total_steps=6000",
                          "train.keep_checkpoints=1")
    run = tmp_path / "live"
    _wait_for(run / "checkpoints" / "latest", proc)
    loads = 0
    while proc.poll() is None:
        policy, tokenizer = lmpo.load(run)
        assert tokenizer is None and all(torch.isfinite(p).all() for p in policy.parameters())
        loads += 1
    assert proc.wait() == 0, proc.stderr.read() if proc.stderr else ""
    assert loads >= 5
    records = [r for r in read_metrics(run) if not r.get("final")]
    assert [r["iteration"] for r in records] == list(range(len(records)))


def test_one_writer_per_run_directory(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Two runs started at once with one name get two directories; resuming a live run is refused while it lives,
    and allowed once it is killed (the kernel drops the lock)."""
    args = [f"train.runs_dir={tmp_path}", "name=twin", "train.total_steps=100000"]
    a, b = _train_process(*args), _train_process(*args)
    for run in (tmp_path / "twin", tmp_path / "twin-1"):
        _wait_for(run / "checkpoints" / "latest", a)
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "twin")]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert "being written by another lmpo process (pid " in line, line
    assert str(a.pid) in line or str(b.pid) in line
    for proc in (a, b):
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    for run in (tmp_path / "twin", tmp_path / "twin-1"):
        assert len(list((run / "tb").iterdir())) == 1  # one writer each: one event file, one record stream
        records = read_metrics(run)
        assert [r["iteration"] for r in records] == list(range(len(records)))
    done = read_metrics(tmp_path / "twin")[-1]["iteration"]
    assert main(["train", "--resume", str(tmp_path / "twin"), f"train.total_steps={128 * (done + 2)}"]) == 0


def test_a_failed_start_leaves_nothing_behind(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """A mistake found while the run starts (here: a tokenizer directory that is not there) removes the directory
    it claimed: no half-made run for a later one to trip on."""
    assert main(["train", "chatbot", f"train.runs_dir={tmp_path}", "text.tokenizer=/no/such/tokenizer",
                 "train.progress=false"]) == 2
    assert "text.tokenizer" in _one_error_line(capsys.readouterr().err)
    assert list(tmp_path.iterdir()) == []


def test_run_names_cannot_leave_runs_dir(tmp_path: Path) -> None:
    for name in (".", "..", "../x", "a/b", ""):
        with pytest.raises(ConfigError, match="name"):
            load_config(None, [f"train.runs_dir={tmp_path}", f"name={name}"])


def test_a_full_disk_is_one_line_and_the_last_checkpoint_survives(tmp_path: Path,
                                                                  capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "cartpole-ppo", *TINY, f"train.runs_dir={tmp_path}", "name=d", "train.total_steps=128"]) == 0
    ckpts = tmp_path / "d" / "checkpoints"
    saved = (ckpts / "latest").read_text()
    os.symlink("/dev/full", ckpts / ".latest.tmp")  # the next write of the pointer hits a full device
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "d"), "train.total_steps=384"]) == 2
    line = _one_error_line(capsys.readouterr().err)
    assert ".latest.tmp" in line and "No space left on device" in line, line
    assert (ckpts / "latest").read_text() == saved
    (ckpts / ".latest.tmp").unlink()
    assert main(["train", "--resume", str(tmp_path / "d"), "train.total_steps=384"]) == 0


def test_switching_the_algorithm_takes_its_own_defaults(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``algo.name=trpo`` on a PPO recipe, as the README says: the recipe's PPO settings go, TRPO's defaults come;
    the algo.* overrides given with it stay, in any order. A resumed run keeps its algorithm."""
    cfg = load_config(CONFIGS / "cartpole-ppo.yaml", ["algo.vf_iters=3", "algo.name=trpo"])
    assert cfg.algo.name == "trpo" and cfg.algo.vf_iters == 3 and cfg.algo.max_kl == 0.01
    assert load_config(CONFIGS / "support.yaml", ["algo.name=reinforce"]).algo.name == "reinforce"
    assert main(["train", "cartpole-ppo", *TINY, f"train.runs_dir={tmp_path}", "name=s", "train.total_steps=128",
                 "algo.name=trpo"]) == 0
    capsys.readouterr()
    assert main(["train", "--resume", str(tmp_path / "s"), "algo.name=ppo"]) == 2
    assert "algo.name cannot change when a run resumes" in _one_error_line(capsys.readouterr().err)


TINY_TEXT = ["env.id=lmpo/Chatbot-v0", "policy.kind=gru", "policy.embed=32", "policy.hidden=64",
             "env.kwargs.categories=[greetings,humor]", "text.vocab_size=300", "text.pretrain.epochs=6",
             "text.pretrain.batch_size=4", "text.sampling.max_new_tokens=8", "env.kwargs.max_turns=2",
             "train.progress=false", "train.total_steps=32", "text.eval_conversations=4", "text.eval_samples=1",
             "text.pretrain.checkpoint_every_s=0.01", "seed=3"]


def test_a_run_killed_while_pre_training_resumes_it_bit_exact(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """SIGKILL during pre-training, then --resume: pre-training continues from its own checkpoint (not from
    scratch), RL follows, and the weights equal an uninterrupted run's; pretrain/* metrics are recorded once."""
    assert main(["train", "chatbot", *TINY_TEXT, f"train.runs_dir={tmp_path}", "name=straight"]) == 0
    proc = subprocess.Popen([sys.executable, "-m", "lmpo.cli", "train", "chatbot", *TINY_TEXT,
                             f"train.runs_dir={tmp_path}", "name=killed"], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    state = tmp_path / "killed" / "pretrain" / "state.pt"
    _wait_for(state, proc)
    while torch.load(state, weights_only=True)["epoch"] < 2:  # well into pre-training (the file is replaced whole)
        assert proc.poll() is None, "pre-training ended before the kill"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (tmp_path / "killed" / "reference.safetensors").exists()
    saved_epoch = torch.load(state, weights_only=True)["epoch"]
    epochs = []  # the epochs whose order the resumed run draws: from the saved one on, not from the first
    monkeypatch.setattr(pretrain, "bucketed_order", lambda *a, **k: epochs.append(1) or bucketed_order(*a, **k))
    assert main(["train", "--resume", str(tmp_path / "killed")]) == 0
    assert len(epochs) == 6 - saved_epoch < 5
    a = load_file(str(latest_checkpoint(tmp_path / "straight" / "checkpoints") / "policy.safetensors"))
    b = load_file(str(latest_checkpoint(tmp_path / "killed" / "checkpoints") / "policy.safetensors"))
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    records = read_metrics(tmp_path / "killed")
    assert sum("pretrain/loss" in r for r in records) == 1 and records[0]["iteration"] == 0
    assert records[0]["pretrain/loss"] == read_metrics(tmp_path / "straight")[0]["pretrain/loss"]


BROKEN = {"on": False}


@register_reward("test_reliability_brevity")
def _brevity(prompts: list[str], completions: list[str], **fields: object) -> list[float]:
    """A registered reward that a switch breaks (NaN): a reward inside lmpo going wrong, not a user's file."""
    return [float("nan") if BROKEN["on"] else -0.01 * len(c.split()) for c in completions]


def test_a_registered_reward_returning_nan_stops_the_run_naming_it(tmp_path: Path,
                                                                   capsys: pytest.CaptureFixture[str]) -> None:
    rewards = "text.rewards=[{name: satisfaction}, {name: test_reliability_brevity, weight: 0.5}]"
    assert main(["train", "chatbot", *TINY_TEXT[:-2], f"train.runs_dir={tmp_path}", "name=b", rewards]) == 0
    run = tmp_path / "b"
    saved = (run / "checkpoints" / "latest").read_text()
    BROKEN["on"] = True
    try:
        capsys.readouterr()
        assert main(["train", "--resume", str(run), "train.total_steps=1000"]) == 1
    finally:
        BROKEN["on"] = False
    line = _one_error_line(capsys.readouterr().err)
    assert "the reward (reward 'test_reliability_brevity' returned nan for completion 0" in line, line
    assert line.startswith(f"lmpo: error: iteration {int(saved.removeprefix('iter_')) + 1}:"), line
    assert (run / "checkpoints" / "latest").read_text() == saved


def test_a_reader_retries_when_rotation_removes_its_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer saves and rotates between a reader finding ``latest`` and reading it: the reader reads the new
    checkpoint instead of failing."""
    from lmpo.train import checkpoint

    model, ckpts = torch.nn.Linear(2, 2), tmp_path / "checkpoints"
    checkpoint.save_checkpoint(ckpts, 1, model, {"i": 1}, keep=1)
    real, raced = checkpoint.load_weights_checked, []

    def racing(module: torch.nn.Module, weights: Path) -> None:
        if not raced:
            raced.append(weights.parent)
            with torch.no_grad():
                model.weight.add_(1.0)
            checkpoint.save_checkpoint(ckpts, 2, model, {"i": 2}, keep=1)  # removes iteration 1
        real(module, weights)

    monkeypatch.setattr(checkpoint, "load_weights_checked", racing)
    reader = torch.nn.Linear(2, 2)
    found = checkpoint.read_latest(ckpts, reader)
    assert found is not None and raced[0].name == "iter_0000001" and not raced[0].exists()
    assert found.name == "iter_0000002" and torch.equal(reader.weight, model.weight)


def test_the_writer_puts_back_a_checkpoint_a_crash_left_moved_aside(tmp_path: Path) -> None:
    """Re-saving an iteration moves the old copy aside before the new one lands: a crash in between leaves only the
    aside copy, which the writer's next start restores (not deletes)."""
    from lmpo.train.checkpoint import remove_temporary, save_checkpoint

    ckpts = tmp_path / "checkpoints"
    save_checkpoint(ckpts, 1, torch.nn.Linear(2, 2), {}, keep=2)
    os.rename(ckpts / "iter_0000001", ckpts / ".tmp-stale-iter_0000001")
    (ckpts / ".tmp-iter_0000002").mkdir()  # a torn write: removed
    remove_temporary(ckpts)
    assert latest_checkpoint(ckpts) == ckpts / "iter_0000001" and not list(ckpts.glob(".tmp-*"))


def test_a_full_disk_while_pre_training_keeps_the_run_to_resume(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    """A fresh start that fails after pre-training has saved its state is not a failed start to clean up: the
    directory stays, and --resume continues once there is room."""
    real, writes = pretrain.write_atomic, []

    def filling(path: Path, data: bytes) -> None:
        writes.append(path)
        if len(writes) == 3:
            raise OSError(28, "No space left on device", str(path))
        real(path, data)

    monkeypatch.setattr(pretrain, "write_atomic", filling)
    assert main(["train", "chatbot", *TINY_TEXT, f"train.runs_dir={tmp_path}", "name=full"]) == 2
    assert "No space left on device" in _one_error_line(capsys.readouterr().err)
    assert (tmp_path / "full" / "pretrain" / "state.pt").is_file()
    monkeypatch.setattr(pretrain, "write_atomic", real)
    assert main(["train", "--resume", str(tmp_path / "full")]) == 0


def test_pretrain_then_resume_records_the_pre_training_metrics_once(text_run: Path, tmp_path: Path) -> None:
    """``lmpo pretrain`` then ``lmpo train --resume``: the first record holds pre-training's metrics, once, even
    when that resume is killed before its first update and resumed again."""
    import json
    import shutil

    run = tmp_path / "run"
    shutil.copytree(text_run, run)
    saved = json.loads((run / "pretrain" / "metrics.json").read_text())
    for _ in range(2):  # the second resume starts from the same iteration-0 checkpoint: nothing is recorded twice
        assert main(["train", "--resume", str(run), "train.total_steps=1", "text.eval_conversations=2"]) == 0
        shutil.rmtree(run / "checkpoints" / "iter_0000001")
        (run / "checkpoints" / "latest").write_text("iter_0000000")
    records = read_metrics(run)
    assert [r["iteration"] for r in records] == [0, 1, 1]  # before RL, the update, the final evaluation
    assert {k: records[0][k] for k in saved} == saved


class _Payload:
    """What a hostile ``state.pt`` holds: unpickling it touches a file."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return Path.touch, (self.marker,)


def test_readers_never_unpickle_state_and_a_run_without_checkpoints_is_not_restarted(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """``lmpo eval`` and ``lmpo.load`` read weights only (safetensors): a run someone else made cannot run code
    through its pickled ``state.pt``. A run whose checkpoints are gone is not silently trained again from scratch."""
    assert main(["train", "cartpole-ppo", *TINY, f"train.runs_dir={tmp_path}", "name=p", "train.total_steps=128"]) == 0
    run, marker = tmp_path / "p", tmp_path / "payload-ran"
    torch.save({"iteration": _Payload(marker)}, latest_checkpoint(run / "checkpoints") / "state.pt")
    assert main(["eval", str(run), "--episodes", "1"]) == 0
    lmpo.load(run)
    assert not marker.exists()
    import shutil

    shutil.rmtree(run / "checkpoints")
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "train.total_steps=256"]) == 2
    assert "no checkpoint left" in _one_error_line(capsys.readouterr().err)
