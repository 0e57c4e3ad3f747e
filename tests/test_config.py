"""Config validation: every mistake is a one-line ConfigError naming the key."""

from pathlib import Path

import pytest

from lmpo.config import Config, ConfigError, load_config

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


@pytest.mark.parametrize("recipe", sorted(p.name for p in CONFIGS.glob("*.yaml")))
def test_recipes_are_valid(recipe: str) -> None:
    cfg = load_config(CONFIGS / recipe)
    assert isinstance(cfg, Config) and cfg.name == recipe.removesuffix(".yaml")


@pytest.mark.parametrize(("override", "expected"), [
    ("algo.lrr=1", "algo.lrr: unknown key"),
    ("algo.lr=abc", "algo.lr: Input should be a valid number"),
    ("algo.lr=-1", "algo.lr: Input should be greater than 0"),
    ("env.id=NoSuchEnv-v0", "env.id: unknown environment 'NoSuchEnv-v0'"),
    ("algo.name=dqn", "algo.name: unknown algorithm 'dqn'"),
    ("policy.critic=none", "needs a value function"),
    ("rollout.mode=sideways", "rollout.mode: Input should be 'steps' or 'episodes'"),
    ("nope", "not of the form key.sub=value"),
    ("train.precision=bf16", "train.precision bf16 is for language-model policies"),
    ("train.precision=fp16", "train.precision: Input should be 'fp32' or 'bf16'"),
])
def test_bad_overrides(override: str, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        load_config(CONFIGS / "cartpole-ppo.yaml", [override])
    assert expected in str(err.value)
    assert "\n" not in str(err.value)


def test_overrides_are_typed() -> None:
    cfg = load_config(CONFIGS / "cartpole-ppo.yaml",
                      ["algo.lr=3e-4", "policy.hidden_sizes=[32,32]", "algo.target_kl=null", "seed=7"])
    assert cfg.algo.lr == 3e-4 and cfg.policy.hidden_sizes == [32, 32] and cfg.seed == 7
    assert cfg.algo.name == "ppo" and cfg.algo.target_kl is None


def test_switching_algorithm_by_override() -> None:
    cfg = load_config(None, ["algo.name=trpo", "algo.max_kl=0.02"])
    assert cfg.algo.name == "trpo" and cfg.algo.max_kl == 0.02


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="config file not found"):
        load_config(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("env: [unclosed\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(bad)
    bad.write_text("- a list\n")
    with pytest.raises(ConfigError, match="mapping"):
        load_config(bad)


def test_configuration_reference_is_up_to_date() -> None:
    from lmpo.config import reference_markdown

    doc = CONFIGS.parent / "docs" / "configuration.md"
    assert doc.read_text() == reference_markdown(), (
        "docs/configuration.md is stale: python -c 'from lmpo.config import reference_markdown as r; "
        "open(\"docs/configuration.md\", \"w\").write(r())'")
