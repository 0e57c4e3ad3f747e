"""The reward registry: loading by name, module and file; weighted sums by hand; checked outputs; the builtins."""

import doctest
import math
import sys
import textwrap
from pathlib import Path
from typing import Any

import pytest

import lmpo.rewards.builtin as builtin
import lmpo.rewards.registry as registry
from lmpo.rewards.registry import REWARDS, RewardError, WeightedReward, load_reward, register_reward

BUILTINS = ["answer_accuracy", "length_penalty", "lookup_cost", "repetition_penalty", "satisfaction", "task_completion"]

USER_REWARDS = """
import math
from dataclasses import dataclass  # a dataclass needs its module in sys.modules while the file runs

import numpy as np


@dataclass
class Bonus:
    amount: float


def chars(prompts, completions, bonus=0.0, **fields):
    return [len(c) + Bonus(bonus).amount for c in completions]


def trl_style(completions, **kwargs):
    return [float(kwargs["threshold"] < len(c)) for c in completions]


def nan_at_1(prompts, completions, **fields):
    return [0.0, math.nan, 0.0]


def inf_at_2(prompts, completions, **fields):
    return np.array([0.0, 1.0, np.inf])


def boom(prompts, completions, **fields):
    return 1 / 0


def too_short(prompts, completions, **fields):
    return [1.0]


def none_at_0(prompts, completions, **fields):
    return [None, 1.0, 1.0]


def scalar(prompts, completions, **fields):
    return 1.0


THRESHOLD = 0.5
"""


def write(path: Path, source: str) -> Path:
    path.write_text(textwrap.dedent(source))
    return path


@pytest.fixture
def user_file(tmp_path: Path) -> str:
    return str(write(tmp_path / "my_rewards.py", USER_REWARDS))


def test_doctests() -> None:
    assert doctest.testmod(builtin).failed == 0


def test_builtins_registered_on_import() -> None:
    assert set(BUILTINS) <= set(REWARDS)
    assert load_reward("satisfaction") is builtin.satisfaction


def test_unknown_name_lists_registered() -> None:
    with pytest.raises(RewardError) as err:
        load_reward("satisfation")
    message = str(err.value)
    assert "'satisfation'" in message and "did you mean 'satisfaction'" in message
    assert all(name in message for name in BUILTINS)
    assert "\n" not in message and not err.value.user


def test_register_rejects_duplicates_and_colons(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(registry, "REWARDS", dict(REWARDS))
    register_reward("constant")(lambda prompts, completions, **_: [1.0] * len(completions))
    assert registry.load_reward("constant")(prompts=["p"], completions=["c"]) == [1.0]
    with pytest.raises(ValueError, match="already registered"):
        register_reward("constant")(lambda prompts, completions, **_: [])
    with pytest.raises(ValueError, match="':'"):
        register_reward("a:b")


def test_user_function_from_file(user_file: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert load_reward(f"{user_file}:chars")(prompts=["p"], completions=["abc"], bonus=1.0) == [4.0]
    monkeypatch.chdir(tmp_path)  # a path relative to the current directory
    reward = WeightedReward.from_specs([{"name": "my_rewards.py:chars", "weight": 2.0, "bonus": 1.0}])
    assert reward.components[0].user
    assert reward(["p", "q"], ["abc", ""], {"verdict": [1.0, None]}) == (
        [8.0, 2.0],
        {"my_rewards.py:chars": [4.0, 1.0]},
    )


def test_user_function_from_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write(tmp_path / "lmpo_test_user_rewards.py", USER_REWARDS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "lmpo_test_user_rewards", raising=False)  # undone after the test
    # TRL's style: only completions, a setting read from **kwargs
    reward = WeightedReward.from_specs([{"name": "lmpo_test_user_rewards:trl_style", "threshold": 2}])
    assert reward(["p", "q"], ["abc", "ab"], {}) == ([1.0, 0.0], {"lmpo_test_user_rewards:trl_style": [1.0, 0.0]})


@pytest.mark.parametrize(
    ("source", "spec", "expected"),
    [
        (None, "missing.py:f", "no file 'missing.py'"),
        ("x = 1 / 0\n", "broken.py:f", "importing broken.py raised ZeroDivisionError: division by zero"),
        ("def f(:\n", "broken.py:f", "importing broken.py raised SyntaxError: "),
        ("def g(): pass\n", "broken.py:f", "broken.py has no attribute 'f'"),
        ("f = 0.5\n", "broken.py:f", "broken.py:f is a float, not a function"),
        (None, "lmpo_no_such_module:f", "importing 'lmpo_no_such_module' raised ModuleNotFoundError"),
    ],
)
def test_load_failures_are_one_line_user_errors(
    source: str | None, spec: str, expected: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    if source is not None:
        write(tmp_path / "broken.py", source)
    with pytest.raises(RewardError) as err:
        load_reward(spec)
    assert f"reward {spec!r}" in str(err.value) and expected in str(err.value)
    assert "\n" not in str(err.value) and err.value.user


def test_weighted_sum_by_hand() -> None:
    reward = WeightedReward.from_specs(
        [
            {"name": "satisfaction"},  # weight defaults to 1.0
            {"name": "lookup_cost", "weight": 2.0},  # cost defaults to 0.05
            {"name": "length_penalty", "weight": 0.5, "max_words": 2, "per_word": 0.1},
        ]
    )
    assert reward.names == ["satisfaction", "lookup_cost", "length_penalty"]
    fields: dict[str, list[Any]] = {"verdict": [1.0, 0.5, None], "lookups": [0, 1, 3], "correct": [1.0, None, 0.0]}
    totals, raw = reward(["p0", "p1", "p2"], ["yes", "a b c d", "x"], fields)
    assert raw["satisfaction"] == [1.0, 0.5, 0.0]
    assert raw["lookup_cost"] == pytest.approx([0.0, -0.05, -0.15])
    assert raw["length_penalty"] == pytest.approx([0.0, -0.2, 0.0])  # 4 words, 2 past max_words
    # 1*1.0 + 2*0 + 0.5*0; 1*0.5 + 2*(-0.05) + 0.5*(-0.2); 1*0 + 2*(-0.15) + 0.5*0
    assert totals == pytest.approx([1.0, 0.3, -0.3])


def test_settings_are_bound_per_component() -> None:
    reward = WeightedReward.from_specs([{"name": "lookup_cost", "cost": 0.5, "weight": 0.0}])
    totals, raw = reward(["p"], ["c"], {"lookups": [2]})
    assert raw == {"lookup_cost": [-1.0]} and totals == [0.0]  # weight 0: logged, not counted


def _bad(user_file: str, function: str, completions: list[str]) -> RewardError:
    reward = WeightedReward.from_specs([{"name": f"{user_file}:{function}"}])
    prompts = [f"prompt {i}" for i in range(len(completions))]
    with pytest.raises(RewardError) as err:
        reward(prompts, completions, {})
    assert err.value.user and "\n" not in str(err.value)
    assert str(err.value).startswith(f"reward '{user_file}:{function}' ")
    return err.value


def test_nan_names_reward_and_input(user_file: str) -> None:
    long = "word " * 100
    message = str(_bad(user_file, "nan_at_1", ["a", long, "c"]))
    assert "returned nan for completion 1: prompt 'prompt 1' completion 'word word" in message
    assert "...'" in message and len(message) < len(user_file) + 250  # the long completion is shortened


def test_inf_from_numpy_array(user_file: str) -> None:
    message = str(_bad(user_file, "inf_at_2", ["a", "b", "c"]))
    assert "returned inf for completion 2: prompt 'prompt 2' completion 'c'" in message


def test_exception_wrong_length_and_non_numbers(user_file: str) -> None:
    message = str(_bad(user_file, "boom", ["a", "b"]))
    assert (
        "raised ZeroDivisionError: division by zero (on a batch of 2 completions; first prompt 'prompt 0')" in message
    )
    assert "returned 1 scores for 3 completions" in str(_bad(user_file, "too_short", ["a", "b", "c"]))
    assert "returned None (NoneType, not a number) for completion 0" in str(_bad(user_file, "none_at_0", ["a"] * 3))
    assert "returned float, expected a list of 1 numbers" in str(_bad(user_file, "scalar", ["a"]))


def test_builtin_errors_are_not_user_errors() -> None:
    reward = WeightedReward.from_specs([{"name": "satisfaction"}])
    with pytest.raises(RewardError, match=r"reward 'satisfaction' returned nan for completion 1: prompt 'q'") as err:
        reward(["p", "q"], ["a", "b"], {"verdict": [1.0, math.nan]})
    assert not err.value.user
    with pytest.raises(RewardError, match=r"reward 'satisfaction' raised TypeError: .*'verdict'"):
        reward(["p"], ["a"], {})  # the environment gave no verdicts


def test_config_mistakes() -> None:
    with pytest.raises(
        RewardError, match=r"reward 'length_penalty' has no setting 'max_word' \(its settings: max_words"
    ):
        WeightedReward.from_specs([{"name": "length_penalty", "max_word": 5}])
    with pytest.raises(RewardError, match="listed twice"):
        WeightedReward.from_specs([{"name": "satisfaction"}, {"name": "satisfaction", "weight": 2.0}])
    with pytest.raises(RewardError, match="weight must be a finite number"):
        WeightedReward.from_specs([{"name": "satisfaction", "weight": math.inf}])
    with pytest.raises(RewardError, match="has no name"):
        WeightedReward.from_specs([{"weight": 1.0}])
    reward = WeightedReward.from_specs([{"name": "lookup_cost", "cost": 0.1}])
    with pytest.raises(RewardError, match=r"reward 'lookup_cost': setting or argument 'cost' is also a field"):
        reward(["p"], ["c"], {"lookups": [1], "cost": [0.2]})
    with pytest.raises(RewardError, match="'lookups' has 2 values for 1 completions"):
        reward(["p"], ["c"], {"lookups": [1, 2]})


@pytest.mark.parametrize(
    ("name", "field", "values", "expected"),
    [
        ("satisfaction", "verdict", [1.0, 0.5, 0.0, None], [1.0, 0.5, 0.0, 0.0]),
        ("task_completion", "completed", [True, 0.0, None, 1], [1.0, 0.0, 0.0, 1.0]),
        ("answer_accuracy", "correct", [0.25, None, 1.0, 0], [0.25, 0.0, 1.0, 0.0]),
        ("lookup_cost", "lookups", [0, 1, None, 4], [0.0, -0.05, 0.0, -0.2]),
    ],
)
def test_field_builtins(name: str, field: str, values: list, expected: list[float]) -> None:
    scores = REWARDS[name](prompts=["p"] * 4, completions=["c"] * 4, **{field: values}, other=[None] * 4)
    assert scores == pytest.approx(expected) and all(type(s) is float for s in scores)


def test_text_builtins_by_hand() -> None:
    completions = ["the cat the cat the cat", "", "one two three four five"]
    # 5 bigrams (the cat, cat the, the cat, cat the, the cat): 3 repeat an earlier one
    assert REWARDS["repetition_penalty"](["p"] * 3, completions, scale=2.0) == pytest.approx([-1.2, 0.0, 0.0])
    assert REWARDS["length_penalty"](["p"] * 3, completions, max_words=3) == pytest.approx([-0.03, 0.0, -0.02])
    assert REWARDS["length_penalty"](["p"], ["w " * 25]) == pytest.approx([-0.05])  # defaults: 20 words, 0.01
