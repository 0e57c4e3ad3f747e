"""The lmpo command: train, eval, plot, and exit code 2 with one line for every user mistake."""

import subprocess
import sys
from pathlib import Path

import pytest

from lmpo.cli import main

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def _run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "lmpo.cli", *args], capture_output=True, text=True, timeout=120)


@pytest.mark.parametrize("args", [
    ["train", "configs/does-not-exist.yaml"],
    ["train", str(CONFIGS / "cartpole-ppo.yaml"), "algo.clip_rnage=0.1"],
    ["train", str(CONFIGS / "cartpole-ppo.yaml"), "algo.epochs=many"],
    ["train", str(CONFIGS / "cartpole-ppo.yaml"), "env.id=CartPole-v99"],
    ["train", str(CONFIGS / "cartpole-ppo.yaml"), "algo.name=a2c"],
    ["train", str(CONFIGS / "cartpole-ppo.yaml"), "train.device=cuda:7"],
    ["eval", "/no/such/run"],
    ["plot", "/no/such/run"],
    ["train", "--resume", "/no/such/run"],
])
def test_user_errors_exit_2_with_one_line(args: list[str]) -> None:
    out = _run(*args)
    assert out.returncode == 2, out.stderr
    lines = [ln for ln in out.stderr.splitlines() if ln.strip()]
    assert len(lines) == 1 and lines[0].startswith("lmpo: error:"), out.stderr
    assert "Traceback" not in out.stderr


def test_train_eval_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = ["train", str(CONFIGS / "cartpole-ppo.yaml"), f"train.runs_dir={tmp_path}", "train.total_steps=1024",
            "train.eval_every=512", "train.eval_episodes=2", "train.progress=false"]
    assert main(args) == 0
    run = tmp_path / "cartpole-ppo"
    assert (run / "config.yaml").is_file() and (run / "metrics.jsonl").is_file()
    assert list((run / "tb").glob("events.out.tfevents.*"))
    assert (run / "checkpoints" / "latest").is_file()
    # a second run with the same name does not overwrite the first
    assert main(args) == 0
    assert (tmp_path / "cartpole-ppo-1" / "config.yaml").is_file()
    assert main(["eval", str(run), "--episodes", "3"]) == 0
    assert "episodes 3" in capsys.readouterr().out
    assert main(["plot", str(run)]) == 0
    png = run / "curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_tensorboard_has_the_metrics(tmp_path: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    assert main(["train", str(CONFIGS / "cartpole-trpo.yaml"), f"train.runs_dir={tmp_path}",
                 "train.total_steps=2048", "train.eval_every=1024", "train.eval_episodes=1",
                 "train.progress=false"]) == 0
    acc = EventAccumulator(str(tmp_path / "cartpole-trpo" / "tb"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    for tag in ["charts/episode_return", "losses/policy", "losses/value", "losses/entropy", "trpo/kl",
                "charts/explained_variance", "charts/sps", "eval/mean_return", "trpo/line_search_steps"]:
        assert tag in tags, tag


def test_config_slot_may_hold_an_override(tmp_path: Path) -> None:
    import argparse

    from lmpo.cli import DEFAULT_RECIPE, _config_and_overrides

    def parse(config, *overrides):
        return _config_and_overrides(argparse.Namespace(config=config, overrides=list(overrides)))

    assert parse(None) == (DEFAULT_RECIPE, [])
    assert parse("algo.lr=1e-4", "seed=2") == (DEFAULT_RECIPE, ["algo.lr=1e-4", "seed=2"])
    assert parse("configs/cartpole-ppo.yaml", "seed=2") == (Path("configs/cartpole-ppo.yaml"), ["seed=2"])
    assert DEFAULT_RECIPE.is_file() and DEFAULT_RECIPE.name == "chatbot.yaml"
