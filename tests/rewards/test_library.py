"""The field-standard rewards: hand-computed scores, references that are missing, and extras that are not installed."""

import doctest
import sys
from typing import Any

import pytest

import lmpo.rewards.library as library
from lmpo.rewards.registry import REWARDS, RewardError, WeightedReward

LIBRARY = ["answer_match", "bleu", "chrf", "distinct_n", "exact_match", "length_target", "numeric_match",
           "regex_format", "rouge_l", "sentiment"]
COLUMN_REWARDS = {"exact_match": "answer", "answer_match": "answer", "numeric_match": "answer",
                  "bleu": "references", "chrf": "references", "rouge_l": "references"}


def score(name: str, completions: list[str], **kwargs: Any) -> list[float]:
    return REWARDS[name](prompts=["p"] * len(completions), completions=completions, **kwargs)


def test_doctests() -> None:
    result = doctest.testmod(library)
    assert result.failed == 0 and result.attempted >= len(LIBRARY)


def test_registered_on_import() -> None:
    assert set(LIBRARY) <= set(REWARDS)
    assert REWARDS["bleu"] is library.bleu


def test_exact_match() -> None:
    completions = ["  42\n", "42.0", "Paris", "x", "4"]
    answers = ["42", "42", ["paris", " Paris "], None, 4]  # a list of acceptable answers; a number is its str
    assert score("exact_match", completions, answer=answers) == [1.0, 0.0, 1.0, 0.0, 1.0]
    assert score("exact_match", ["b"], gold=["b"], column="gold") == [1.0]


@pytest.mark.parametrize(
    ("completion", "reference", "contains", "expected"),
    [
        ("The Eiffel Tower!", "eiffel tower", False, 1.0),  # articles, case, punctuation
        ("an  apple,", "apple", False, 1.0),
        ("Paris, France", "Paris", False, 0.0),
        ("It is in Paris, France.", "paris", True, 1.0),  # a whole-word span
        ("It is in Paris, France.", "paris france", True, 1.0),
        ("Parisian food", "paris", True, 0.0),  # not inside a word
        ("France, Paris", "paris france", True, 0.0),  # the words in order
        ("anything", "the", True, 0.0),  # normalises to nothing: never contained...
        ("A.", "the", False, 1.0),  # ...but equal to an empty completion (SQuAD's rule)
        ("no", ["yes", "No."], False, 1.0),
    ],
)
def test_answer_match(completion: str, reference: Any, contains: bool, expected: float) -> None:
    assert score("answer_match", [completion], answer=[reference], contains=contains) == [expected]


@pytest.mark.parametrize(
    ("completion", "reference", "expected"),
    [
        ("The answer is 1,234.0", "1234", 1.0),
        ("The answer is 1,234.0", 1234, 1.0),
        ("It was -3.5 degrees.", "-3.5", 1.0),
        ("from 3-5", "5", 1.0),  # a hyphen after a number is not a minus sign
        ("2 + 2 = 4, not 5", "4", 0.0),  # the last number counts
        ("#### 72\nThen 5 more", "72", 1.0),  # the number after GSM8K's marker counts
        ("So she has 72.", "She sold 48/2 = 24 in May.\n#### 72", 1.0),  # GSM8K's worked answer as the reference
        ("no number here", "7", 0.0),
        ("x7 is not a number", "7", 0.0),
        ("7", None, 0.0),
    ],
)
def test_numeric_match(completion: str, reference: Any, expected: float) -> None:
    assert score("numeric_match", [completion], answer=[reference]) == [expected]


def test_numeric_match_tolerance_and_bad_reference() -> None:
    assert score("numeric_match", ["pi is 3.14"], answer=["3.14159"]) == [0.0]
    assert score("numeric_match", ["pi is 3.14"], answer=["3.14159"], rel_tol=1e-3) == [1.0]
    assert score("numeric_match", ["0.01"], answer=[0], abs_tol=0.05) == [1.0]
    with pytest.raises(ValueError, match="reference 'seven' in column 'answer' holds no number"):
        score("numeric_match", ["7"], answer=["seven"])


def test_bleu_by_hand() -> None:
    # 6 tokens each, brevity penalty 1; n-gram precisions 5/6, 3/5, 2/4, 1/3: BLEU = (1/12)^(1/4)
    hypothesis, reference = "the cat sat on the mat", "the cat sat on a mat"
    assert score("bleu", [hypothesis], references=[reference]) == pytest.approx([(1 / 12) ** 0.25])
    assert score("bleu", [hypothesis], references=[[reference, hypothesis]]) == [1.0]  # an identical reference
    assert score("bleu", [hypothesis, "qq zz", ""], references=[hypothesis, reference, reference]) == [1.0, 0.0, 0.0]


def test_chrf() -> None:
    assert score("chrf", ["the cat", "abc", "abc"], references=["the cat", "xyz", []]) == [1.0, 0.0, 0.0]
    assert 0.0 < score("chrf", ["the cats"], references=["the cat"])[0] < 1.0


def test_rouge_l_by_hand() -> None:
    # LCS 5 of 5 hypothesis and 6 reference words: F = 2 * 1 * 5/6 / (1 + 5/6) = 10/11
    completions = ["the cat on the mat"]
    assert score("rouge_l", completions, references=["the cat sat on the mat"]) == pytest.approx([10 / 11])
    assert score("rouge_l", completions, references=[["dog", "the cat on the mat"]]) == [1.0]  # the best reference
    assert score("rouge_l", ["cats"], references=["cat"]) == [1.0]  # Porter stemming by default
    assert score("rouge_l", ["cats"], references=["cat"], use_stemmer=False) == [0.0]


def test_sentiment() -> None:
    positive, negative, neutral = score("sentiment", ["I love this, it is wonderful", "terrible, awful", "a table"])
    assert positive > 0.5 and negative < -0.5 and neutral == 0.0


def test_length_target() -> None:
    completions = ["one two three four", "one two three four five six", "", "w " * 20]
    assert score("length_target", completions, target=4) == [0.0, -0.5, -1.0, -1.0]
    assert score("length_target", ["abcd", "ab"], target=4, unit="chars") == [0.0, -0.5]


def test_distinct_n() -> None:
    # unigrams of "the cat the dog": 3 distinct of 4; bigrams: 3 distinct of 3
    assert score("distinct_n", ["the cat the dog"], n=1) == [0.75]
    assert score("distinct_n", ["the cat the dog"]) == [1.0]
    # too short for an n-gram scores 0: saying nothing is not variety
    assert score("distinct_n", ["", "one", "one two"]) == [0.0, 0.0, 1.0]
    assert score("distinct_n", ["go go go go"]) == [pytest.approx(1 / 3)]


def test_regex_format() -> None:
    completions = ["<answer>4</answer>", "so <answer>4</answer>", "<answer>\n4\n</answer>"]
    pattern = r"<answer>.*</answer>"
    assert score("regex_format", completions, pattern=pattern) == [1.0, 0.0, 1.0]  # DOTALL: "." crosses lines
    assert score("regex_format", completions, pattern=pattern, mode="search") == [1.0, 1.0, 1.0]
    with pytest.raises(ValueError, match=r"pattern '\(' does not compile: missing \)"):
        score("regex_format", ["x"], pattern="(")


@pytest.mark.parametrize(
    ("spec", "expected"),
    [
        ({"name": "regex_format", "pattern": "(unclosed"}, r"reward 'regex_format': pattern '\(unclosed' does not "),
        ({"name": "regex_format", "pattern": "x", "mode": "match"}, "mode must be 'fullmatch' or 'search'"),
        ({"name": "regex_format"}, "missing 1 required keyword-only argument: 'pattern'"),
        ({"name": "length_target"}, "missing 1 required keyword-only argument: 'target'"),
        ({"name": "length_target", "target": 0}, "target must be at least 1, got 0"),
        ({"name": "length_target", "target": 5, "unit": "tokens"}, "unit must be 'words' or 'chars', got 'tokens'"),
        ({"name": "distinct_n", "n": 0}, "n must be at least 1, got 0"),
    ],
)
def test_bad_settings_fail_when_built(spec: dict[str, Any], expected: str) -> None:
    with pytest.raises(RewardError, match=expected) as err:
        WeightedReward.from_specs([spec])
    assert "\n" not in str(err.value)


@pytest.mark.parametrize("name", sorted(COLUMN_REWARDS))
def test_missing_column_names_it_and_the_fields(name: str) -> None:
    with pytest.raises(ValueError, match=rf"no field '{COLUMN_REWARDS[name]}' in the batch \(fields: gold, verdict\)"):
        score(name, ["a"], gold=["a"], verdict=[1.0])
    reward = WeightedReward.from_specs([{"name": name, "column": "label"}])
    with pytest.raises(RewardError, match=r"raised ValueError: no field 'label' in the batch \(fields: none\)"):
        reward(["p"], ["a"], {})


@pytest.mark.parametrize("name", sorted(COLUMN_REWARDS))
def test_none_reference_scores_zero(name: str) -> None:
    completions = ["the answer is 4", "the answer is 4"]
    scores = score(name, completions, **{COLUMN_REWARDS[name]: [None, "the answer is 4"]})
    assert scores == [0.0, 1.0]


@pytest.mark.parametrize(
    ("name", "module", "expected"),
    [
        ("bleu", "sacrebleu", "reward 'bleu' needs sacrebleu: pip install 'lmpo[metrics]'"),
        ("chrf", "sacrebleu", "reward 'chrf' needs sacrebleu: pip install 'lmpo[metrics]'"),
        ("rouge_l", "rouge_score.rouge_scorer", "reward 'rouge_l' needs rouge-score: pip install 'lmpo[metrics]'"),
        ("sentiment", "vaderSentiment.vaderSentiment",
         "reward 'sentiment' needs vaderSentiment: pip install 'lmpo[sentiment]'"),
    ],
)
def test_missing_extra_fails_when_built(name: str, module: str, expected: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # as if not installed: importing it raises ImportError
    with pytest.raises(RewardError) as err:
        WeightedReward.from_specs([{"name": "exact_match"}, {"name": name}])
    assert str(err.value) == expected


def test_missing_extra_when_called_directly(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "sacrebleu", None)
    with pytest.raises(RewardError, match=r"^reward 'bleu' needs sacrebleu: pip install 'lmpo\[metrics\]'$"):
        score("bleu", ["a"], references=["a"])


@pytest.mark.parametrize(
    ("spec", "completions", "fields", "expected"),
    [
        ({"name": "exact_match", "column": "gold"}, ["yes", "no"], {"gold": ["yes", "No"]}, [1.0, 0.0]),
        ({"name": "answer_match", "contains": True}, ["Yes!", "no"], {"answer": ["yes", ["maybe"]]}, [1.0, 0.0]),
        ({"name": "numeric_match", "abs_tol": 0.5}, ["1.4", "2.6"], {"answer": ["1", 2]}, [1.0, 0.0]),
        ({"name": "bleu"}, ["yes", "no"], {"references": ["yes", None]}, [1.0, 0.0]),
        ({"name": "chrf", "column": "gold"}, ["yes", "no"], {"gold": ["yes", "yes"]}, [1.0, 0.0]),
        ({"name": "rouge_l", "use_stemmer": False}, ["yes", "no"], {"references": [["no", "yes"], "yes"]}, [1.0, 0.0]),
        ({"name": "sentiment"}, ["great", "bad"], {"answer": [None, None]}, [0.6249, -0.5423]),
        ({"name": "length_target", "target": 2, "unit": "chars"}, ["yes", "no"], {}, [-0.5, 0.0]),
        ({"name": "distinct_n", "n": 1}, ["yes yes", "no"], {}, [0.5, 1.0]),
        ({"name": "regex_format", "pattern": "y.*", "mode": "search"}, ["a yes", "no"], {}, [1.0, 0.0]),
    ],
)
def test_through_weighted_reward(
    spec: dict[str, Any], completions: list[str], fields: dict[str, list[Any]], expected: list[float]
) -> None:
    reward = WeightedReward.from_specs([{**spec, "weight": 2.0}])
    totals, raw = reward(["p", "q"], completions, fields)
    assert raw == {spec["name"]: pytest.approx(expected)}
    assert totals == pytest.approx([2 * e for e in expected])


def test_unknown_setting_is_rejected() -> None:
    with pytest.raises(RewardError, match=r"reward 'bleu' has no setting 'colum' \(its settings: column\)"):
        WeightedReward.from_specs([{"name": "bleu", "colum": "refs"}])
