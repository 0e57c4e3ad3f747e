"""Prompts-v0 end to end: your own prompts and reward function, with the group baselines (RLOO, GRPO, Dr. GRPO)
under each of REINFORCE, PPO (without a value) and TRPO. Each must turn the pre-trained model's refusals into help
on held-out prompts; a broken baseline, sign or aggregation does not."""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lmpo.cli import main
from lmpo.train.logging import read_metrics

ROOT = Path(__file__).resolve().parents[2]
BASE = ["train.progress=false", "text.eval_samples=2"]


@pytest.mark.parametrize(("name", "overrides"), [
    ("rloo", ["algo.advantage.baseline=loo"]),
    ("grpo", ["algo.loss_aggregation=sequence_mean"]),
    ("dr-grpo-ppo", ["algo={name: ppo, lr: 0.001, epochs: 2, batch_size: 32, advantage: {estimator: returns, "
                     "gamma: 1.0, baseline: group, group_std: false, whiten: false}}",
                     "algo.loss_aggregation=token_sum"]),
    ("grpo-trpo", ["algo={name: trpo, max_kl: 0.05, advantage: {estimator: returns, gamma: 1.0, baseline: group, "
                   "whiten: false}}"]),
])
def test_group_baselines_learn_to_help_on_heldout_prompts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                          name: str, overrides: list[str]) -> None:
    monkeypatch.chdir(ROOT)  # the recipe names examples/ relative to the repository
    assert main(["train", "configs/prompts-example.yaml", *BASE, f"train.runs_dir={tmp_path}", f"name={name}",
                 "train.total_steps=4800", *overrides]) == 0
    run = tmp_path / name
    records = read_metrics(run)
    before, after = records[0], records[-1]
    for split in ("train", "heldout"):  # the pre-trained model mostly refuses (reward 0); help scores 1 or 1.5
        assert after[f"eval/{split}_sampled_reward"] - before[f"eval/{split}_sampled_reward"] >= 0.4, (name, split)
        assert after[f"eval/{split}_reward"] >= 0.9, (name, split)
    assert "eval/heldout_sampled_ref_ppl" in after and "eval/heldout_sampled_distinct2" in after
    # group baselines train no value: the value head is still its zero initialisation
    latest = (run / "checkpoints" / "latest").read_text().strip()
    weights = load_file(run / "checkpoints" / latest / "policy.safetensors")
    assert all(torch.count_nonzero(v) == 0 for k, v in weights.items() if k.startswith("value_head."))


def test_the_sentiment_recipe_makes_replies_more_positive(tmp_path: Path) -> None:
    """configs/sentiment.yaml, shortened: corpus user lines as prompts, VADER's compound as the reward."""
    pytest.importorskip("vaderSentiment")  # the sentiment extra; installed by `make test`
    assert main(["train", "sentiment", *BASE, f"train.runs_dir={tmp_path}", "name=s", "text.pretrain.epochs=3",
                 "train.total_steps=2560", "algo.lr=0.0003", "text.eval_conversations=60"]) == 0
    records = read_metrics(tmp_path / "s")
    before, after = records[0], records[-1]
    # 120 sampled replies: a policy that does not learn moves the mean compound by about 0.03 (one standard error)
    assert after["eval/heldout_sampled_reward"] - before["eval/heldout_sampled_reward"] >= 0.1
    assert after["eval/heldout_sampled_ref_ppl"] < 2 * before["eval/heldout_sampled_ref_ppl"]
    assert "rewards/sentiment" in records[1]
