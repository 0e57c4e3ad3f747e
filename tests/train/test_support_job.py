"""The Support-v0 job end to end on a tiny configuration: a self-contained run directory that can be moved, a user's
reward file kept with it, the evaluation table's splits, and the chat's tool lines."""

import shutil
from pathlib import Path

import pytest
import torch

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
    assert (run / "rewards" / "1-short.py").read_text() == reward.read_text()
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


def test_ppo_learns_to_look_up_on_entities_it_never_saw(tmp_path: Path) -> None:
    """A small knowledge base (600 items, 8 statuses): the pre-trained model answers from stale memory (greedy) and
    looks up in about a third of its samples; PPO against the customer's satisfaction makes it look up and answer,
    and that carries over to held-out items (measured with one thread, seeds 0, 1, 2: 0.08 -> 1.00, 0.08 -> 0.67,
    0.13 -> 1.00; seed 0 with two threads: 0.12 -> 0.97). A broken algorithm (wrong sign, no update) stays near the
    baseline. The pre-trained model must copy well enough for lookups to pay: with 600 transcripts, with 30 epochs,
    or with rotary positions at this width (64), RL stopped looking up for seed 1 or 2 (docs/benchmarks.md)."""
    import csv

    from lmpo.config import load_config
    from lmpo.train import Trainer

    statuses = ["ready", "late", "lost", "packed", "held", "sent", "returned", "paid"]
    kb = tmp_path / "items.csv"
    with kb.open("w", newline="") as f:
        writer = csv.writer(f, lineterminator="\n")
        writer.writerow(["name", "status"])
        writer.writerows([f"item {i}", statuses[(5 * i + i // 8) % len(statuses)]] for i in range(1, 601))
    cfg = load_config(Path(lmpo.__file__).parent / "configs" / "support.yaml", [
        f"train.runs_dir={tmp_path}", "train.progress=false", f"env.kwargs.knowledge_base={kb}",
        "env.kwargs.transcripts=800", "env.kwargs.train_goals=200", "env.kwargs.eval_goals=60",
        "env.kwargs.max_questions=1", "env.kwargs.agents={memory: 0.5, lookup_concise: 0.45, deflect: 0.05}",
        "policy.n_layer=2", "policy.d_model=64", "policy.positions=learned", "text.vocab_size=400",
        "text.pretrain.epochs=40", "text.sampling.max_new_tokens=16", "text.eval_samples=1", "train.total_steps=4000",
        "algo.lr=0.0005", "algo.epochs=2"])
    summary = Trainer(cfg).train()
    before, after = summary["before"], summary
    assert before["eval/heldout_satisfaction"] <= 0.3 and before["eval/heldout_turn_lookups"] < 0.1
    assert after["eval/heldout_satisfaction"] >= before["eval/heldout_satisfaction"] + 0.5, (before, after)
    assert after["eval/heldout_turn_lookups"] >= 0.9  # the strategy it learnt: look the fact up


@pytest.mark.parametrize("recipe", ["support-reinforce", "support-trpo", "support-gru"])
def test_every_support_recipe_trains(tmp_path: Path, recipe: str) -> None:
    from lmpo.config import load_config
    from lmpo.train import Trainer

    small = [o for o in TINY if not o.startswith("policy.")]
    # PPO's shared body also moves with the value loss: vf_coef 0 so that a moved body means a policy gradient
    gru = ["policy.embed=16", "policy.hidden=32", "algo.vf_coef=0"]
    small += gru if recipe == "support-gru" else ["policy.d_model=32"]
    cfg = load_config(Path(lmpo.__file__).parent / "configs" / f"{recipe}.yaml",
                      [*small, f"train.runs_dir={tmp_path}", "text.eval_conversations=2",
                       # a reward that differs between replies even before any is satisfied: a signal to follow
                       "text.rewards=[{name: satisfaction}, {name: length_penalty, max_words: 2, per_word: 0.1}]"])
    trainer = Trainer(cfg)
    before = [p.detach().clone() for p in trainer.policy.body.parameters()]
    summary = trainer.train()
    assert summary["iterations"] > 0 and 0.0 <= summary["eval/heldout_satisfaction"] <= 1.0
    moved = [not torch.equal(a, b) for a, b in zip(before, trainer.policy.body.parameters(), strict=True)]
    assert any(moved)  # the actor itself was updated, not only the value head


@pytest.mark.parametrize(("override", "message"), [
    ("policy.kind=hf", "policy.path: no such model directory: ./models/tiny-gtp"),
    ("env.kwargs.knowledge_base=KB", "KB:1: missing 'name' column"),
    ("env.kwargs.knowledge_base=JSONL", "JSONL:2: not valid JSON"),
])
def test_a_users_bad_file_ends_with_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                              capsys: pytest.CaptureFixture[str], override: str, message: str) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "models").mkdir()
    (tmp_path / "kb.csv").write_text("title,price\nLamp,$3\n")
    (tmp_path / "kb.jsonl").write_text('{"name": "Lamp", "price": "$3"}\n{"name": "Mug", price: 2}\n')
    override = override.replace("KB", str(tmp_path / "kb.csv")).replace("JSONL", str(tmp_path / "kb.jsonl"))
    message = message.replace("KB", str(tmp_path / "kb.csv")).replace("JSONL", str(tmp_path / "kb.jsonl"))
    assert main(["train", "support", *TINY, "policy.path=./models/tiny-gtp", override]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and message in err, err
