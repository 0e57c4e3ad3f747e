"""Learning tests: each algorithm actually improves a policy, with fixed seeds and thresholds that a broken
algorithm (wrong sign, wrong advantages, no trust region) fails."""

from pathlib import Path

import pytest

from lmpo.config import load_config
from lmpo.train import Trainer
from lmpo.train.logging import read_metrics

CONFIGS = Path(__file__).resolve().parents[2] / "configs"


def _train(tmp_path: Path, recipe: str, *overrides: str) -> tuple[Trainer, list[dict]]:
    cfg = load_config(CONFIGS / recipe, [f"train.runs_dir={tmp_path}", "train.progress=false", *overrides])
    trainer = Trainer(cfg)
    trainer.train()
    return trainer, read_metrics(trainer.run_dir)


@pytest.mark.parametrize(("recipe", "steps"), [
    ("cartpole-reinforce.yaml", 60_000),
    ("cartpole-ppo.yaml", 40_000),
    ("cartpole-trpo.yaml", 50_000),
])
def test_cartpole_reaches_195(tmp_path: Path, recipe: str, steps: int) -> None:
    _, records = _train(tmp_path, recipe, f"train.total_steps={steps}", "train.eval_every=5000")
    evals = [r["eval/mean_return"] for r in records if "eval/mean_return" in r]
    assert len(evals) >= steps // 5000
    assert max(evals) >= 195, f"{recipe}: best evaluation return {max(evals):.1f} < 195 ({evals})"
    if "trpo" in recipe:
        # every accepted TRPO update stays inside (1.5x) the trust region
        max_kl = 0.01
        kls = [r["trpo/kl"] for r in records if "trpo/kl" in r]
        assert kls and max(kls) <= 1.5 * max_kl
        assert sum(r["trpo/accepted"] for r in records if "trpo/accepted" in r) > len(kls) / 2


def test_ppo_improves_pendulum_by_500(tmp_path: Path) -> None:
    cfg = load_config(CONFIGS / "pendulum-ppo.yaml",
                      [f"train.runs_dir={tmp_path}", "train.progress=false", "train.total_steps=100000",
                       "train.eval_every=0"])
    trainer = Trainer(cfg)
    initial = trainer.evaluate()["eval/mean_return"]
    final = trainer.train()["eval/mean_return"]
    assert final - initial >= 500, f"Pendulum: initial {initial:.1f}, final {final:.1f}"
