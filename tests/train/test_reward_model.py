"""``lmpo train-rm``: the Bradley-Terry loss orders held-out pairs; the result is a reward (``{name: model}``) for
lmpo's own language models and for a Hugging Face sequence classifier; a killed run resumes bit-exact."""

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmpo.cli import main
from lmpo.rewards.registry import RewardError, WeightedReward
from lmpo.train.logging import read_metrics

TOPICS = ["the weather", "football", "music", "my order", "a refund", "the train", "pizza", "the museum", "a hotel",
          "the bank", "my phone", "a taxi", "the beach", "a concert", "the library", "chess", "a doctor", "the news",
          "a bicycle", "my garden", "the market", "a movie", "the airport", "my laptop", "a recipe", "the zoo",
          "a holiday", "the gym", "my car", "a painting", "the theatre", "a wedding", "the forest", "my keys"]
TINY = ["model.kind=transformer", "model.n_layer=1", "model.n_head=2", "model.d_model=32", "model.vocab_size=300",
        "model.max_len=64", "model.dropout=0.0", "train.batch_size=16", "train.lr=0.003", "train.progress=false",
        "data.heldout_fraction=0.25"]


def _pairs(path: Path) -> Path:
    """Polite, helpful replies preferred to curt ones, about many topics."""
    rows = [{"prompt": f"Tell me about {t}.", "chosen": f"Thank you for asking! Happy to tell you about {t}.",
             "rejected": f"No. I will not talk about {t}."} for t in TOPICS]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train_rm(tmp_path: Path, name: str, *overrides: str) -> Path:
    pairs = _pairs(tmp_path / "pairs.jsonl")
    assert main(["train-rm", f"data.pairs={pairs}", f"train.runs_dir={tmp_path}", f"name={name}", *TINY,
                 *overrides]) == 0
    return tmp_path / name


def test_bradley_terry_orders_heldout_pairs_and_scores_as_a_reward(tmp_path: Path,
                                                                    capsys: pytest.CaptureFixture[str]) -> None:
    run = _train_rm(tmp_path, "rm", "train.epochs=6")
    records = read_metrics(run)
    assert [r["iteration"] for r in records] == list(range(1, 7))
    assert records[-1]["rm/heldout_accuracy"] >= 0.95 and records[-1]["rm/heldout_loss"] < records[0]["rm/heldout_loss"]
    assert "held-out pairwise accuracy" in capsys.readouterr().out
    reward = WeightedReward.from_specs([{"name": "model", "path": str(run)}])
    prompts = ["Tell me about the stars.", "Tell me about a cake."]  # topics it never saw
    totals, _ = reward(prompts * 2, ["Thank you for asking! Happy to tell you about the stars.",
                                     "Thank you for asking! Happy to tell you about a cake.",
                                     "No. I will not talk about the stars.", "No. I will not talk about a cake."], {})
    assert min(totals[:2]) > max(totals[2:])


def test_hugging_face_sequence_classifiers(tmp_path: Path) -> None:
    from transformers import GPT2Config, GPT2ForSequenceClassification

    from tests.conftest import gpt2_style_tokenizer

    base = tmp_path / "classifier"
    tok = gpt2_style_tokenizer([f"Tell me about {t}. Thank you for asking! No. I will not talk" for t in TOPICS])
    GPT2ForSequenceClassification(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2,
                                             num_labels=1)).save_pretrained(base)
    tok.save_pretrained(base)
    # a save_pretrained sequence classifier is a reward as it is (here untrained)
    WeightedReward.from_specs([{"name": "model", "path": str(base)}])
    run = _train_rm(tmp_path, "hf", "model.kind=hf", f"model.path={base}", "train.epochs=8")
    assert read_metrics(run)[-1]["rm/heldout_accuracy"] >= 0.9
    assert (run / "hf" / "config.json").is_file()
    scores, _ = WeightedReward.from_specs([{"name": "model", "path": str(run)}])(
        ["Tell me about the stars."] * 2, ["Thank you for asking! Happy to tell you about the stars.",
                                           "No. I will not talk about the stars."], {})
    assert scores[0] > scores[1]


def test_a_reward_model_path_that_is_not_one_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(RewardError, match="is not a reward model"):
        WeightedReward.from_specs([{"name": "model", "path": str(tmp_path)}])
    with pytest.raises(RewardError, match="needs a path"):
        WeightedReward.from_specs([{"name": "model"}])


def test_a_killed_train_rm_resumes_bit_exact(tmp_path: Path) -> None:
    common = ["train.epochs=6", "train.checkpoint_every_s=0.01", "model.dropout=0.1"]
    straight = _train_rm(tmp_path, "straight", *common)
    proc = subprocess.Popen([sys.executable, "-m", "lmpo.cli", "train-rm", f"data.pairs={tmp_path / 'pairs.jsonl'}",
                             f"train.runs_dir={tmp_path}", "name=killed", *TINY, *common],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    state = tmp_path / "killed" / "state" / "state.pt"
    while not state.is_file() or torch.load(state, weights_only=True)["epoch"] < 2:
        assert proc.poll() is None, f"train-rm ended before the kill: {proc.stderr.read() if proc.stderr else ''}"
        time.sleep(0.005)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    assert not (tmp_path / "killed" / "reward_model.safetensors").exists()
    assert main(["train-rm", "--resume", str(tmp_path / "killed")]) == 0
    a, b = load_file(straight / "reward_model.safetensors"), load_file(tmp_path / "killed" / "reward_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert [r["rm/heldout_accuracy"] for r in read_metrics(straight)] == [
        r["rm/heldout_accuracy"] for r in read_metrics(tmp_path / "killed")]


def test_builtin_reward_model_recipes_are_valid() -> None:
    from lmpo.train.reward_model import load_rm_config

    recipes = sorted((Path(__file__).resolve().parents[2] / "lmpo" / "configs" / "reward-models").glob("*.yaml"))
    assert recipes
    for recipe in recipes:
        assert load_rm_config(recipe).name == f"{recipe.stem}-rm"


def test_an_mmi_reward_model_scores_the_likelihood_ratio_of_its_pretrained_run(tmp_path: Path,
                                                                                text_run: Path) -> None:
    """``score: mmi`` is ``log p(reply | line) - log mean_k p(reply | line_k)`` under the init run's model, checked
    against a pass written out here; ``train.epochs: 0`` measures and saves it, and Bradley-Terry steps run through
    it too."""
    from lmpo.config import ConfigError
    from lmpo.data.corpus import Turn
    from lmpo.data.tokenizer import encode_dialogue, encode_prompt
    from lmpo.rewards.model import MMIRewardModel, load_reward_model
    from lmpo.train.reward_model import run_train_rm

    common = ["model.score=mmi", f"model.init={text_run}", "model.marginal_contexts=3", "data.categories=[greetings]",
              "data.heldout_fraction=0.3", f"train.runs_dir={tmp_path}", "train.progress=false"]
    assert main(["train-rm", "name=mmi", "train.epochs=0", *common]) == 0
    run = tmp_path / "mmi"
    [record] = read_metrics(run)
    assert record["iteration"] == 0 and 0 <= record["rm/heldout_accuracy"] <= 1
    rm = load_reward_model(run)
    assert isinstance(rm, MMIRewardModel) and len(rm.contexts) == 3
    tok, pad = rm.tokenizer, rm.tokenizer.pad_token_id

    def loglik(prompt: list[int], reply: list[int]) -> torch.Tensor:
        x = torch.tensor([prompt + reply])
        with torch.no_grad():
            logits, _, _ = rm.lm.body(x, torch.ones_like(x, dtype=torch.bool))
        logits[..., pad] = float("-inf")  # the pad is never a token
        logp = torch.log_softmax(logits[0, :-1].float(), -1)
        return sum(logp[len(prompt) - 1 + i, r] for i, r in enumerate(reply))  # type: ignore[return-value]

    lines, replies = ["Hello there", "How are you?"], ["Hi, nice to meet you.", "I am fine, thank you."]
    expected = []
    for line, reply in zip(lines, replies, strict=True):
        ids = encode_dialogue(tok, [Turn("assistant", reply)]).ids[2:]  # the reply's tokens and <eos>
        marginal = torch.stack([loglik(encode_prompt(tok, [Turn("user", c)]), ids) for c in rm.contexts])
        expected.append(float(loglik(encode_prompt(tok, [Turn("user", line)]), ids)
                              - (torch.logsumexp(marginal, 0) - torch.log(torch.tensor(3.0)))))
    scores, _ = WeightedReward.from_specs([{"name": "model", "path": str(run)}])(lines, replies, {})
    assert scores == pytest.approx(expected, abs=1e-4)
    # batches cut inside a conversation's rows score alike; a reply longer than max_len keeps its context
    small = MMIRewardModel(rm.policy, tok, rm.contexts, max_len=24, batch_rows=5)
    small.load_state_dict(rm.state_dict())
    pairs = [([Turn("user", line)], [Turn("assistant", reply)]) for line, reply in zip(lines, replies, strict=True)]
    with torch.no_grad():
        assert torch.allclose(small([small.encode(*p) for p in pairs]), torch.tensor(expected), atol=1e-3)
        long = [Turn("assistant", " ".join(["thank you very much"] * 20))]
        ids = [small.encode([Turn("user", line)], long) for line in lines]
        head = encode_dialogue(tok, long).ids[2:14]  # the reply's first 12 tokens (half of max_len)
        assert ids == [encode_prompt(tok, [Turn("user", line)]) + head for line in lines]
        assert small(ids)[0] != small(ids)[1]
    with pytest.raises(ConfigError, match="keeps no training state"):
        run_train_rm(None, [], str(run))
    # training through the score: one epoch of Bradley-Terry steps moves the language model
    assert main(["train-rm", "name=mmi-trained", "train.epochs=1", "train.lr=0.001", *common]) == 0
    trained = load_file(tmp_path / "mmi-trained" / "reward_model.safetensors")
    start = load_file(run / "reward_model.safetensors")
    assert trained.keys() == start.keys() and any(not torch.equal(trained[k], start[k]) for k in start)


def test_an_mmi_score_needs_a_pretrained_run() -> None:
    from lmpo.config import ConfigError
    from lmpo.train.reward_model import load_rm_config

    with pytest.raises(ConfigError, match="model.score 'mmi' reads a pre-trained lmpo language model"):
        load_rm_config(None, ["model.score=mmi"])
