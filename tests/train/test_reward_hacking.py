"""Reward hacking is visible and the KL penalty bounds it: a reward that pays for length alone, with and without
the penalty. Without it the replies drift far from the reference (KL, the reference's perplexity of the replies);
with it they stay close."""

from pathlib import Path

import pytest

from lmpo.cli import main
from lmpo.train.logging import read_metrics

ROOT = Path(__file__).resolve().parents[2]


def _train(tmp_path: Path, name: str, reward: Path, kl_coef: float) -> dict[str, float]:
    assert main(["train", "configs/prompts-example.yaml", "train.progress=false", "text.eval_samples=2",
                 f"train.runs_dir={tmp_path}", f"name={name}", "train.total_steps=3200", f"text.kl.coef={kl_coef}",
                 f"text.rewards=[{{name: '{reward}:length'}}]"]) == 0
    records = read_metrics(tmp_path / name)
    return {k: v for k, v in records[-1].items() if k.startswith("eval/heldout_")} | {
        "before_" + k: v for k, v in records[0].items() if k.startswith("eval/heldout_")}


def test_the_kl_penalty_bounds_the_drift_of_a_hackable_reward(tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)
    reward = tmp_path / "hackable.py"
    reward.write_text("def length(prompts, completions, **fields):\n"
                      "    return [len(c.split()) / 10 for c in completions]\n")
    free = _train(tmp_path, "free", reward, 0.0)
    bound = _train(tmp_path, "bound", reward, 0.5)
    # without the penalty the length reward is exploited: longer replies, far from the reference
    assert free["eval/heldout_sampled_reply_tokens"] > free["before_eval/heldout_sampled_reply_tokens"] + 4
    assert free["eval/heldout_kl_ref"] > 0.1
    # the penalty bounds the drift: a fraction of the KL and of the rise in the reference's perplexity
    assert bound["eval/heldout_kl_ref"] < 0.3 * free["eval/heldout_kl_ref"]
    rise = {run: r["eval/heldout_sampled_ref_ppl"] / r["before_eval/heldout_sampled_ref_ppl"]
            for run, r in (("free", free), ("bound", bound))}
    assert rise["bound"] < rise["free"], rise
