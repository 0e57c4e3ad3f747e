"""``lmpo plot`` on synthetic runs: which panels, axis labels and curves a text and a control run get."""

import json
from pathlib import Path
from typing import Any

import pytest

from lmpo.config import ConfigError
from lmpo.plot import plot_run, run_figure

SPLITS = ["train", "heldout", "heldout_phrasings"]


def _eval(value: float) -> dict[str, float]:
    out = {}
    for split in SPLITS:
        for metric in ("reward", "sampled_reward", "satisfaction", "sampled_satisfaction", "completed",
                       "sampled_completed", "kl_ref"):
            out[f"eval/{split}_{metric}"] = value
    return {**out, "eval/heldout_ppl": 2.0, "eval/mean_return": value}


def _update(i: int) -> dict[str, Any]:
    return {"iteration": i, "env_steps": 64 * i, "time": 1.0 * i,
            "charts/episode_return": 0.1 * i, "charts/satisfaction": 0.15 * i, "rewards/satisfaction": 0.15 * i,
            "rewards/lookup_cost": -0.01 * i, "charts/completed": 0.05 * i, "charts/correct": 0.1 * i,
            "charts/kl_ref": 0.02 * i, "charts/kl_coef": 0.05, "charts/approx_kl": 0.01,
            "charts/reply_tokens": 16.0 - i, "charts/words": 8.0 - i / 2, "charts/turn_lookups": 0.2 * i,
            "charts/turns": 1.0 + 0.1 * i, "losses/policy": -0.01 * i, "losses/value": 0.5 / i,
            "losses/entropy": 3.0 - 0.1 * i, "charts/sps": 100.0}


def _write(run: Path, config: str, records: list[dict[str, Any]]) -> Path:
    run.mkdir()
    (run / "config.yaml").write_text(config)
    (run / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run


@pytest.fixture
def text_run(tmp_path: Path) -> Path:
    first = {"iteration": 0, "pretrain/loss": 0.37, "pretrain/train_ppl": 1.42, "pretrain/heldout_ppl": 1.93,
             **_eval(0.1)}
    updates = [_update(i) for i in range(1, 6)]
    updates[2].update(_eval(0.4))  # a mid-run evaluation, logged with its update
    final = {"iteration": 5, "final": True, **_eval(0.6)}
    return _write(tmp_path / "support", "env:\n  id: lmpo/Support-v0\ntext: {}\n", [first, *updates, final])


def _panels(run: Path) -> dict[str, tuple[str, str, list[str]]]:
    """Title -> (x label, y label, line labels) of every axes of the run's figure."""
    fig = run_figure(run)
    return {ax.get_title(): (ax.get_xlabel(), ax.get_ylabel(), [ln.get_label() for ln in ax.get_lines()])
            for ax in fig.axes}


def test_text_run_panels(text_run: Path) -> None:
    panels = _panels(text_run)
    assert list(panels) == [
        "reward", "satisfaction and success", "KL (to reference, per update)", "KL coefficient", "reply length",
        "turns and lookups", "evaluation: reward (x=0: before RL)", "evaluation: satisfaction (x=0: before RL)",
        "evaluation: task completion (x=0: before RL)", "policy and value loss", "entropy"]
    assert {x for x, _, _ in panels.values()} == {"replies"}
    assert all(y for _, y, _ in panels.values())
    assert panels["reward"][1:] == ("mean reward per reply", ["episode_return", "lookup_cost", "satisfaction"])
    assert panels["satisfaction and success"][2] == ["satisfaction", "completed", "correct"]
    assert panels["KL (to reference, per update)"][1:] == ("KL per token", ["kl_ref", "approx_kl"])
    assert panels["reply length"][2] == ["words", "reply_tokens"]
    assert panels["evaluation: satisfaction (x=0: before RL)"][2] == [
        "train_satisfaction", "heldout_satisfaction", "heldout_phrasings_satisfaction",
        "train_sampled_satisfaction", "heldout_sampled_satisfaction", "heldout_phrasings_sampled_satisfaction"]
    assert panels["policy and value loss"][2] == ["policy", "value"]


def test_text_run_evaluations_and_pretraining(text_run: Path) -> None:
    fig = run_figure(text_run)
    ax = next(a for a in fig.axes if a.get_title().startswith("evaluation: satisfaction"))
    heldout = next(ln for ln in ax.get_lines() if ln.get_label() == "heldout_satisfaction")
    # before RL at 0, the mid-run evaluation at its update, the final one at the last update
    assert list(heldout.get_xdata()) == [0.0, 192.0, 320.0]
    assert list(heldout.get_ydata()) == [0.1, 0.4, 0.6]
    assert fig.get_suptitle() == "support\npre-training: loss 0.37, train ppl 1.42, held-out ppl 1.93"


def test_text_run_skips_missing_panels(tmp_path: Path) -> None:
    updates = [{"iteration": i, "env_steps": 8 * i, "charts/episode_return": 0.5, "losses/policy": 0.1}
               for i in (1, 2)]
    run = _write(tmp_path / "bare", "text:\n  reply_words: 10\n", updates)
    panels = _panels(run)
    assert list(panels) == ["reward", "policy and value loss"]
    assert run_figure(run).get_suptitle() == "bare"


def test_plot_run_writes_png(text_run: Path, tmp_path: Path) -> None:
    out = plot_run(text_run)
    assert out == text_run / "curves.png"
    assert out.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert plot_run(text_run, tmp_path / "x.png").is_file()


def test_control_run_keeps_its_panels(tmp_path: Path) -> None:
    updates = [_update(i) for i in range(1, 4)]
    updates[1]["eval/mean_return"] = 3.0
    run = _write(tmp_path / "cartpole", "env:\n  id: CartPole-v1\ntext: null\n",
                 [{"iteration": 0, "eval/mean_return": 1.0}, *updates])
    panels = _panels(run)
    assert list(panels) == ["return", "policy loss", "value loss", "KL", "entropy", "steps per second"]
    assert {x for x, _, _ in panels.values()} == {"environment steps"}
    assert panels["return"][2] == ["episode_return", "mean_return"]
    assert panels["KL"][2] == ["approx_kl"]


def test_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no metrics.jsonl"):
        plot_run(tmp_path)
    run = _write(tmp_path / "new", "text: {}\n", [{"iteration": 0, "pretrain/loss": 1.0}])
    with pytest.raises(ConfigError, match="has no updates yet"):
        plot_run(run)
