"""The dialogue job end to end on a tiny configuration: train, eval, chat, load, pretrain + resume."""

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

import lmpo
from lmpo.cli import main
from lmpo.config import load_config
from lmpo.train import Trainer, read_run_config
from lmpo.train.logging import read_metrics

TINY = ["env.id=lmpo/Chatbot-v0", "policy.kind=gru", "policy.embed=32", "policy.hidden=64",
        "algo.name=ppo", "algo.epochs=2", "algo.batch_size=16",
        "env.kwargs.categories=[greetings]", "text.vocab_size=300", "text.pretrain.epochs=3",
        "text.sampling.max_new_tokens=8", "text.conversations_per_update=4", "text.samples_per_prompt=2",
        "env.kwargs.max_turns=2", "train.total_steps=40", "train.eval_every=0", "train.checkpoint_every=2",
        "train.progress=false"]


def _cfg(tmp_path: Path, *extra: str):
    return load_config(None, [*TINY, f"train.runs_dir={tmp_path}", *extra])


def test_train_eval_chat_load(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "--resume", str(tmp_path / "nope")]) == 2  # not a run directory
    cfg_args = [*TINY, f"train.runs_dir={tmp_path}", "name=chat"]
    assert main(["pretrain", "configs/chatbot.yaml", *cfg_args]) == 0
    run = tmp_path / "chat"
    assert (run / "tokenizer").is_dir() and (run / "reference.safetensors").is_file()
    assert main(["train", "--resume", str(run), "text.kl.coef=0.07"]) == 0  # RL with another KL weight
    out = capsys.readouterr().out
    assert out.splitlines()[0] == f"run directory: {run}"  # said before pre-training starts
    coefs = {r["charts/kl_coef"] for r in read_metrics(run) if "charts/kl_coef" in r}
    assert coefs == {0.07}  # the override holds (the pre-training checkpoint's 0.02 once won)
    assert read_run_config(run).text.kl.coef == 0.07 and (run / "config-until-iter0.yaml").is_file()
    assert "before RL" in out  # RL after `lmpo pretrain` starts at update 0: before and after columns
    assert "satisfaction (greedy)" in out and "training examples" in out and "sample conversation" in out
    assert main(["eval", str(run)]) == 0
    assert "training examples" in capsys.readouterr().out
    policy, tokenizer = lmpo.load(run)
    assert not policy.training and tokenizer.eos_token == "<eos>"
    chat = subprocess.run([sys.executable, "-m", "lmpo.cli", "chat", str(run), "--temperature", "0"],
                          input="Hello\n/reset\nHi\n/quit\n", capture_output=True, text=True, timeout=120)
    assert chat.returncode == 0 and chat.stdout.count("bot:") == 2 and "(history cleared)" in chat.stdout


def test_fresh_run_prints_before_and_after(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["train", "configs/chatbot.yaml", *TINY, f"train.runs_dir={tmp_path}"]) == 0
    out = capsys.readouterr().out
    assert "before RL" in out and "after RL" in out and "KL to reference" in out


def test_text_resume_is_exact(tmp_path: Path) -> None:
    straight = Trainer(_cfg(tmp_path, "name=a", "train.total_steps=40"))
    straight.train()
    first = Trainer(_cfg(tmp_path, "name=b", "train.total_steps=20"))
    first.train()
    resumed = Trainer(_cfg(tmp_path, "name=b", "train.total_steps=40"), run_dir=first.run_dir, resume=True)
    assert resumed.iteration == first.iteration > 0
    resumed.train()
    for (k, a), (_, b) in zip(straight.policy.state_dict().items(), resumed.policy.state_dict().items()):
        assert torch.equal(a, b), k


def test_hf_policy_keeps_its_own_tokenizer_and_embeddings(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmpo.data import dialogue_texts, load_chatterbot
    from tests.conftest import gpt2_style_tokenizer

    tok = gpt2_style_tokenizer(dialogue_texts(load_chatterbot(["greetings"])))
    model = GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                                       bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id))
    model.save_pretrained(tmp_path / "model")
    tok.save_pretrained(tmp_path / "model")
    trainer = Trainer(_cfg(tmp_path, "name=hf", "policy.kind=hf", f"policy.path={tmp_path / 'model'}",
                           "text.pretrain.epochs=1", "train.total_steps=16"))
    task_tok = trainer.task.tokenizer
    assert task_tok.eos_token == "<|endoftext|>" and len(task_tok) == len(tok) + 4  # pad and three role tokens
    assert trainer.policy.pad_id != trainer.policy.eos_id == tok.eos_token_id
    original = model.get_input_embeddings().weight
    fresh = trainer.task.build_policy().body.model.get_input_embeddings().weight
    assert fresh.shape[0] == len(task_tok) and torch.equal(fresh[: len(tok)], original)
    summary = trainer.train()
    assert summary["iterations"] > 0 and 0.0 <= summary["eval/train_satisfaction"] <= 1.0
    export = trainer.run_dir / "hf"  # save_pretrained of the trained model and its tokenizer
    from transformers import AutoModelForCausalLM, AutoTokenizer

    trained = AutoModelForCausalLM.from_pretrained(export)
    assert torch.equal(trained.get_input_embeddings().weight, trainer.policy.body.model.get_input_embeddings().weight)
    assert len(AutoTokenizer.from_pretrained(export)) == len(task_tok)
    shutil.rmtree(tmp_path / "model")  # the base model is gone: the run still loads, from its export
    policy, _ = lmpo.load(trainer.run_dir)
    assert torch.equal(policy.body.model.get_input_embeddings().weight, trained.get_input_embeddings().weight)
    from lmpo.api import served_model

    assert served_model(trainer.run_dir).max_positions == 128  # lmpo serve fits prompt and reply in n_positions


def test_bf16_precision_trains_and_keeps_float32_weights(tmp_path: Path) -> None:
    fp32 = Trainer(_cfg(tmp_path, "name=fp32")).prepare_metrics["pretrain/train_ppl"]
    trainer = Trainer(_cfg(tmp_path, "name=bf16", "train.precision=bf16"))
    # pre-training learns as in fp32 (it did not at all while autocast reused stale bf16 copies of the weights)
    assert trainer.prepare_metrics["pretrain/train_ppl"] < 1.03 * fp32  # stale copies: 1.075x
    summary = trainer.train()
    assert summary["iterations"] > 0 and 0.0 <= summary["eval/train_satisfaction"] <= 1.0
    moved = [not torch.equal(p, r) for p, r in zip(trainer.policy.body.parameters(),
                                                    trainer.task.reference.body.parameters(), strict=True)]
    assert any(moved) and summary["eval/kl_ref"] != 0.0  # the updates moved the actor away from the reference
    assert all(p.dtype == torch.float32 for p in trainer.policy.parameters())


def test_sampled_evaluation_is_repeatable_and_leaves_the_training_stream(tmp_path: Path) -> None:
    trainer = Trainer(_cfg(tmp_path, "name=ev", "text.eval_conversations=8"))
    state = torch.get_rng_state()
    first = trainer.task.evaluate(trainer.policy)
    assert torch.equal(torch.get_rng_state(), state)  # evaluation draws from its own generator
    second = trainer.task.evaluate(trainer.policy)
    assert 0.0 <= first["eval/train_sampled_satisfaction"] <= 1.0
    assert first == second  # the same draws: before / after RL differ only by the policy


def test_sampled_evaluation_plays_eval_samples_per_opening(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    trainer = Trainer(_cfg(tmp_path, "name=ev3", "text.eval_conversations=8", "text.eval_samples=3",
                           "env.kwargs.heldout_fraction=0.3"))
    task, played = trainer.task, []
    play = task.play

    def spy(*args, **kwargs):
        rollout, stats, conversations = play(*args, **kwargs)
        played.append((args[2], len(set(rollout.episode_ids.tolist()))))  # (sampling settings, conversations)
        return rollout, stats, conversations

    monkeypatch.setattr(task, "play", spy)
    task.evaluate(trainer.policy)
    sampled = [n for settings, n in played if settings is None]  # None: the policy's own sampling
    heldout = len(task.eval_examples("heldout"))
    assert heldout == 4 and sampled == [3 * 8, 3 * heldout]
    assert [n for settings, n in played if settings is not None] == [8, heldout]  # greedy: one per opening


def test_evaluation_reports_its_parts(tmp_path: Path) -> None:
    trainer = Trainer(_cfg(tmp_path, "name=parts", "text.eval_conversations=8", "text.eval_samples=2",
                           "env.kwargs.heldout_fraction=0.3"))
    parts: list[str] = []
    trainer.task.evaluate(trainer.policy, parts.append)
    heldout = len(trainer.task.eval_examples("heldout"))
    assert heldout > 0
    assert parts == ["greedy conversations, 8 train", "sampled conversations, 2 per example, 8 train",
                     f"greedy conversations, {heldout} heldout",
                     f"sampled conversations, 2 per example, {heldout} heldout",
                     "held-out perplexity"]


def test_live_progress_with_periodic_evaluation(tmp_path: Path) -> None:
    # evaluations inside the live training bar report on it (rich 13 refuses a second live display)
    trainer = Trainer(_cfg(tmp_path, "name=live", "train.progress=true", "train.eval_every=16",
                           "text.eval_conversations=4"))
    summary = trainer.train()
    evaluated = [r for r in read_metrics(trainer.run_dir) if "eval/train_satisfaction" in r]
    assert len(evaluated) >= 3 and summary["iterations"] > 0  # before, periodic, final


def test_a_failing_user_reward_stops_with_one_line_and_the_run_resumes(tmp_path: Path,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """A NaN from a user's reward: exit code 2, one line naming the reward and the input; the last checkpoint
    stays intact and --resume works once the function is fixed."""
    broken = tmp_path / "broken"
    reward = tmp_path / "my_reward.py"
    reward.write_text(f"""from pathlib import Path


def brevity(prompts, completions, **fields):
    bad = Path({str(broken)!r}).exists()
    return [float("nan") if bad else -0.01 * len(c.split()) for c in completions]
""")
    spec = f"{reward}:brevity"
    assert main(["train", "chatbot", *TINY, f"train.runs_dir={tmp_path}", "name=rw", "train.total_steps=20",
                 f"text.rewards=[{{name: satisfaction}}, {{name: '{spec}', weight: 0.5}}]"]) == 0
    run = tmp_path / "rw"
    records = read_metrics(run)
    assert any(f"rewards/{spec}" in r for r in records) and any("rewards/satisfaction" in r for r in records)
    saved = (run / "checkpoints" / "latest").read_text()
    broken.touch()  # the user's function now returns NaN
    capsys.readouterr()
    assert main(["train", "--resume", str(run), "train.total_steps=60"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "my_reward.py:brevity" in err and "nan" in err and "completion 0" in err
    assert err.startswith("lmpo: error: iteration ")  # where in the run it happened
    assert (run / "checkpoints" / "latest").read_text() == saved  # nothing half-written
    broken.unlink()  # fixed
    assert main(["train", "--resume", str(run), "train.total_steps=60"]) == 0
    assert max(r.get("env_steps", 0) for r in read_metrics(run)) >= 60


def test_evaluation_keeps_satisfaction_apart_from_the_satisfaction_reward(tmp_path: Path) -> None:
    trainer = Trainer(_cfg(tmp_path, "name=sat", "text.eval_conversations=8", "env.kwargs.satisfied_at=0.9",
                           "env.kwargs.neutral_at=0.0"))  # every reply is at least neutral: verdict mean > share
    out = trainer.task.evaluate(trainer.policy)
    assert out["eval/train_rewards/satisfaction"] == pytest.approx(out["eval/train_reward"])
    assert out["eval/train_satisfaction"] < out["eval/train_rewards/satisfaction"]
