"""The Support-v0 job end to end on a tiny configuration: a self-contained run directory that can be moved, a user's
reward file kept with it, the evaluation table's splits, and the chat's tool lines."""

import shutil
from pathlib import Path

import pytest

import lmpo
from lmpo.cli import chat_loop, main
from lmpo.data import Turn
from lmpo.train.logging import read_metrics

TINY = ["env.kwargs.products=40", "env.kwargs.orders=40", "env.kwargs.transcripts=60", "env.kwargs.train_goals=10",
        "env.kwargs.eval_goals=4", "policy.n_layer=1", "policy.d_model=32", "text.vocab_size=400",
        "text.pretrain.epochs=1", "text.sampling.max_new_tokens=12", "text.conversations_per_update=2",
        "text.samples_per_prompt=2", "text.eval_samples=1", "train.total_steps=16", "train.progress=false"]


def test_a_finished_run_is_self_contained(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                          capsys: pytest.CaptureFixture[str]) -> None:
    reward = tmp_path / "short.py"
    reward.write_text("def short(prompts, completions, **fields):\n    return [-0.01 * len(c) for c in completions]\n")
    assert main(["train", "support", *TINY, f"train.runs_dir={tmp_path / 'runs'}", "name=s",
                 f"text.rewards=[{{name: satisfaction}}, {{name: '{reward}:short'}}]"]) == 0
    out = capsys.readouterr().out
    for section in ("training examples", "held-out", "held-out, held-out phrasings", "lookups per answer",
                    "task completion (greedy)", "sample conversation"):
        assert section in out
    run = tmp_path / "runs" / "s"
    assert (run / "knowledge_base.json").is_file() and (run / "tokenizer").is_dir()
    assert (run / "rewards" / "short.py").read_text() == reward.read_text()
    assert any(f"rewards/{reward}:short" in r for r in read_metrics(run))
    # moved to another place, where neither the reward file nor the working directory of training exist
    moved = tmp_path / "elsewhere" / "s"
    shutil.copytree(run, moved)
    shutil.rmtree(tmp_path / "runs")
    reward.unlink()
    monkeypatch.chdir(tmp_path / "elsewhere")
    assert main(["eval", str(moved), "--conversations", "3"]) == 0
    assert "held-out, held-out phrasings" in capsys.readouterr().out
    policy, tokenizer = lmpo.load(moved)
    assert not policy.training and "<|tool|>" in tokenizer.get_vocab()


def test_chat_shows_the_tools_answers(capsys: pytest.CaptureFixture[str]) -> None:
    def bot(history):
        return [Turn("assistant", "[lookup: order 4821]"), Turn("tool", "order 4821 | status: shipped"),
                Turn("assistant", "It has shipped.")]

    lines = iter(["Where is order 4821?", "/quit"])
    assert chat_loop(bot, lambda prompt: next(lines)) == 0
    out = capsys.readouterr().out
    assert "bot: [lookup: order 4821]\ntool: order 4821 | status: shipped\nbot: It has shipped.\n" in out
