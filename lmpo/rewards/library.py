"""Field-standard rewards, registered by name: answer matching, text-similarity metrics, sentiment and text shape.

Rewards that compare against a reference read it from a per-example field named by their ``column`` setting; an
example whose value is None (it has no reference) scores 0, and a column missing from the batch is a ValueError
that lists the fields there are. sacrebleu and rouge-score come with ``pip install 'lmpo[metrics]'``,
vaderSentiment with ``lmpo[sentiment]``; they are imported when a reward needs them, and a missing one is reported
when the config naming the reward is read (``WeightedReward.from_specs`` runs each reward's ``checks``).
"""

from __future__ import annotations

import functools
import importlib
import math
import numbers
import re
import string
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

from lmpo.data.matching import normalize, word_count
from lmpo.rewards.registry import RewardError, register_reward

F = TypeVar("F", bound=Callable[..., Any])
Check = Callable[[str, dict[str, Any]], object]  # check(reward name, settings); raises a one-line RewardError


def add_check(fn: F, check: Check) -> F:
    """Append ``check`` to the checks ``WeightedReward.from_specs`` runs on ``fn``."""
    fn.checks = (*getattr(fn, "checks", ()), check)  # type: ignore[attr-defined]
    return fn


@dataclass(frozen=True)
class Extra:
    """An optional dependency: the module a reward imports, and the package and lmpo extra that install it."""

    module: str
    package: str
    extra: str

    def load(self, reward: str) -> Any:
        """The imported module, or a one-line RewardError saying which extra to install."""
        try:
            return importlib.import_module(self.module)
        except ImportError as exc:  # chained: a broken install shows its own error in the traceback
            raise RewardError(f"reward {reward!r} needs {self.package}: pip install 'lmpo[{self.extra}]'") from exc


SACREBLEU = Extra("sacrebleu", "sacrebleu", "metrics")
ROUGE = Extra("rouge_score.rouge_scorer", "rouge-score", "metrics")
VADER = Extra("vaderSentiment.vaderSentiment", "vaderSentiment", "sentiment")


def requires(extra: Extra) -> Callable[[F], F]:
    """Mark a reward as importing ``extra``'s module, so building it from a config checks the module is there."""
    return lambda fn: add_check(fn, lambda name, _settings: extra.load(name))


def checks_settings(fn: F) -> F:
    """Have building the reward call it on an empty batch with the config's settings, so a bad setting (a pattern
    that does not compile, a target of 0) is a config error; for rewards that read no field."""

    def check(name: str, settings: dict[str, Any]) -> None:
        try:
            fn(prompts=[], completions=[], **settings)
        except (TypeError, ValueError) as exc:
            raise RewardError(f"reward {name!r}: {exc}") from None

    return add_check(fn, check)


# ------------------------------------------------------------------------------------------ references
def _column(fields: Mapping[str, Sequence[Any]], column: str) -> Sequence[Any]:
    """The batch's ``column``, or a ValueError naming it and the fields there are."""
    if column not in fields:
        there = ", ".join(sorted(fields)) or "none"
        raise ValueError(f"no field {column!r} in the batch (fields: {there}); set the reward's column setting")
    return fields[column]


def _references(value: Any) -> list[str]:
    """One example's acceptable references: a string, a list of them, or None (no reference)."""
    if value is None:
        return []
    if isinstance(value, str) or not isinstance(value, Sequence):
        return [str(value)]
    return [str(v) for v in value]


def _against_references(
    completions: list[str], values: Sequence[Any], score: Callable[[str, list[str]], float]
) -> list[float]:
    """``score(completion, references)`` per example; 0 where an example has no reference."""
    return [score(c, refs) if (refs := _references(v)) else 0.0 for c, v in zip(completions, values)]


# ------------------------------------------------------------------------------------------ answers
@register_reward("exact_match")
def exact_match(prompts: list[str], completions: list[str], *, column: str = "answer", **fields: Any) -> list[float]:
    """1.0 when the completion, stripped, equals the reference (or one of a list of them), stripped; else 0.

    >>> exact_match(["q"] * 4, [" Paris\\n", "paris", "4", "x"], answer=["Paris", "Paris", ["four", "4"], None])
    [1.0, 0.0, 1.0, 0.0]
    """
    return _against_references(
        completions, _column(fields, column), lambda c, refs: float(c.strip() in {r.strip() for r in refs})
    )


def normalize_answer(text: str) -> str:
    """SQuAD v1.1's normalisation (Rajpurkar et al. 2016): lower case, no punctuation, no a/an/the, single spaces.

    >>> normalize_answer("The  Eiffel-Tower!")
    'eiffeltower'
    """
    text = "".join(ch for ch in text.lower() if ch not in string.punctuation)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", text).split())


@register_reward("answer_match")
def answer_match(
    prompts: list[str], completions: list[str], *, column: str = "answer", contains: bool = False, **fields: Any
) -> list[float]:
    """1.0 when the normalised completion equals a normalised reference, or with ``contains`` holds one as a run of
    whole words; else 0. A reference that normalises to nothing ("the") matches only an empty completion.

    >>> answer_match(["q"] * 3, ["The Paris.", "It is Paris, France", "Parisian"], answer=["paris", "Paris", "Paris"])
    [1.0, 0.0, 0.0]
    >>> answer_match(["q"] * 3, ["The Paris.", "It is Paris, France", "Parisian"], answer=["paris"] * 3, contains=True)
    [1.0, 1.0, 0.0]
    """

    def score(completion: str, refs: list[str]) -> float:
        said = normalize_answer(completion)
        wanted = [normalize_answer(r) for r in refs]
        return float(any(w == said or (contains and w and f" {w} " in f" {said} ") for w in wanted))

    return _against_references(completions, _column(fields, column), score)


# a number not inside a word or after a point, with an optional sign (a hyphen after a word is not one: "3-5" is 3
# and 5), 1,234-style separators and decimals; no exponents or fractions ("3/4" is 3 and 4)
_NUMBER = re.compile(r"(?<![\w.])[-+]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_GSM8K_MARKER = "####"


def final_number(text: str) -> float | None:
    """The first number after the last ``####`` (GSM8K's answer marker) if there is one, else the last number.

    >>> final_number("3 apples, then 1,234.5 more"), final_number("#### -72 (from 3 steps)"), final_number("none")
    (1234.5, -72.0, None)
    """
    _, marker, after = text.rpartition(_GSM8K_MARKER)
    found = _NUMBER.findall(after)
    if not found:
        return None
    return float((found[0] if marker else found[-1]).replace(",", ""))


@register_reward("numeric_match")
def numeric_match(
    prompts: list[str],
    completions: list[str],
    *,
    column: str = "answer",
    rel_tol: float = 1e-9,
    abs_tol: float = 0.0,
    **fields: Any,
) -> list[float]:
    """1.0 when the completion's final number (``final_number``) is ``math.isclose`` to the reference's (a number,
    or a string read the same way, so GSM8K's worked answer works); no number in the completion -> 0.

    >>> numeric_match(["q"] * 4, ["The answer is 1,234.0", "so 7-3 = 4", "x", "4"], answer=["1234", 4, 4, None])
    [1.0, 1.0, 0.0, 0.0]
    """
    scores = []
    for completion, value in zip(completions, _column(fields, column)):
        if value is None:
            scores.append(0.0)
            continue
        wanted = final_number(value) if isinstance(value, str) else value
        if isinstance(wanted, bool) or not isinstance(wanted, numbers.Real):
            raise ValueError(f"reference {value!r} in column {column!r} holds no number")
        said = final_number(completion)
        scores.append(0.0 if said is None else float(math.isclose(said, wanted, rel_tol=rel_tol, abs_tol=abs_tol)))
    return scores


# ------------------------------------------------------------------------------------------ similarity metrics
@register_reward("bleu")
@requires(SACREBLEU)
def bleu(prompts: list[str], completions: list[str], *, column: str = "references", **fields: Any) -> list[float]:
    """sacrebleu's sentence BLEU (13a tokens, exp smoothing, effective order) against the references, over 100.

    >>> bleu(["q"] * 3, ["the cat sat on the mat"] * 3, references=["the cat sat on the mat", "a dog", None])
    [1.0, 0.0, 0.0]
    """
    sacrebleu = SACREBLEU.load("bleu")
    return _against_references(
        completions, _column(fields, column), lambda c, refs: min(1.0, sacrebleu.sentence_bleu(c, refs).score / 100)
    )


@register_reward("chrf")
@requires(SACREBLEU)
def chrf(prompts: list[str], completions: list[str], *, column: str = "references", **fields: Any) -> list[float]:
    """sacrebleu's sentence chrF (character 6-grams, beta 2; Popović 2015) against the references, over 100.

    >>> chrf(["q"] * 2, ["kitten", "xyz"], references=[["kitten", "cat"], "kitten"])
    [1.0, 0.0]
    """
    sacrebleu = SACREBLEU.load("chrf")
    return _against_references(
        completions, _column(fields, column), lambda c, refs: min(1.0, sacrebleu.sentence_chrf(c, refs).score / 100)
    )


@functools.cache
def _rouge_l_scorer(use_stemmer: bool) -> Any:
    return ROUGE.load("rouge_l").RougeScorer(["rougeL"], use_stemmer=use_stemmer)


@register_reward("rouge_l")
@requires(ROUGE)
def rouge_l(
    prompts: list[str], completions: list[str], *, column: str = "references", use_stemmer: bool = True, **fields: Any
) -> list[float]:
    """ROUGE-L F-measure (longest common word subsequence; Lin 2004) from rouge-score, the best over the references.

    >>> rouge_l(["q"] * 2, ["the cat on the mat", "cats"], references=["the cat sat on the mat", ["dog", "cat"]])
    [0.9090909090909091, 1.0]
    """
    scorer = _rouge_l_scorer(use_stemmer)
    return _against_references(
        completions, _column(fields, column), lambda c, refs: max(scorer.score(r, c)["rougeL"].fmeasure for r in refs)
    )


# ------------------------------------------------------------------------------------------ sentiment and shape
@functools.cache
def _vader() -> Any:
    return VADER.load("sentiment").SentimentIntensityAnalyzer()  # reads its lexicon once


@register_reward("sentiment")
@requires(VADER)
def sentiment(prompts: list[str], completions: list[str], **_: Any) -> list[float]:
    """VADER's compound score of the completion (Hutto & Gilbert 2014): -1 most negative, 0 neutral, 1 most positive.

    >>> sentiment(["q"] * 3, ["I love this, it is wonderful", "terrible, awful", ""])
    [0.836, -0.7269, 0.0]
    """
    analyzer = _vader()
    return [float(analyzer.polarity_scores(c)["compound"]) for c in completions]


@register_reward("length_target")
@checks_settings
def length_target(
    prompts: list[str], completions: list[str], *, target: int, unit: Literal["words", "chars"] = "words", **_: Any
) -> list[float]:
    """Minus the relative distance to ``target`` words (or chars), ``-|length - target| / target``, floored at -1:
    0 at the target, -1 for an empty reply or one twice the target and longer.

    >>> length_target(["q"] * 4, ["one two three four", "one two", "", "w " * 12], target=4)
    [0.0, -0.5, -1.0, -1.0]
    """
    if unit not in ("words", "chars"):
        raise ValueError(f"unit must be 'words' or 'chars', got {unit!r}")
    if target < 1:
        raise ValueError(f"target must be at least 1, got {target!r}")
    measure = word_count if unit == "words" else len
    return [max(-1.0, -abs(measure(c) - target) / target) for c in completions]


@register_reward("distinct_n")
@checks_settings
def distinct_n(prompts: list[str], completions: list[str], *, n: int = 2, **_: Any) -> list[float]:
    """The share of the completion's word n-grams that are distinct (Li et al. 2016's distinct-n, per completion).

    Words are normalised as ``repetition_penalty``'s are. A completion of fewer than ``n`` words has no n-gram and
    scores 0, not 1: an empty reply shows no variety, and rewarding it would teach the policy to say nothing.

    >>> distinct_n(["q"] * 3, ["I am, I am", "a b c d", "fine"])  # 3 bigrams, 2 distinct
    [0.6666666666666666, 1.0, 0.0]
    """
    if n < 1:
        raise ValueError(f"n must be at least 1, got {n!r}")
    scores = []
    for completion in completions:
        words = normalize(completion)
        grams = [tuple(words[i : i + n]) for i in range(len(words) - n + 1)]
        scores.append(len(set(grams)) / len(grams) if grams else 0.0)
    return scores


@register_reward("regex_format")
@checks_settings
def regex_format(
    prompts: list[str],
    completions: list[str],
    *,
    pattern: str,
    mode: Literal["fullmatch", "search"] = "fullmatch",
    **_: Any,
) -> list[float]:
    """1.0 when ``pattern`` (with ``re.DOTALL``: ``.`` crosses lines) matches the whole completion (``fullmatch``) or
    some part of it (``search``); else 0. The completion is not stripped: allow ``\\s*`` for trailing space.

    >>> regex_format(["q"] * 2, ["<think>a\\nb</think> 42", "42"], pattern=r"<think>.*</think> \\d+")
    [1.0, 0.0]
    """
    if mode not in ("fullmatch", "search"):
        raise ValueError(f"mode must be 'fullmatch' or 'search', got {mode!r}")
    try:
        regex = re.compile(pattern, re.DOTALL)
    except re.error as exc:
        raise ValueError(f"pattern {pattern!r} does not compile: {exc}") from None
    matches = regex.fullmatch if mode == "fullmatch" else regex.search
    return [float(matches(c) is not None) for c in completions]
