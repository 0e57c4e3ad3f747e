"""Built-in rewards, registered by name: the environment's judgements read from fields, and text-shape penalties.

Each takes the per-example fields it needs as keyword arguments and absorbs the others (``**_``);
a field value of None (an example the environment did not judge, e.g. a tool call) scores 0.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from lmpo.data.matching import normalize
from lmpo.rewards.registry import register_reward


def _floats(values: Sequence[float | None]) -> list[float]:
    return [0.0 if v is None else float(v) for v in values]


@register_reward("satisfaction")
def satisfaction(
    prompts: list[str], completions: list[str], *, verdict: Sequence[float | None], **_: Any
) -> list[float]:
    """The simulated user's verdict on each reply (1.0 satisfied, 0.5 neutral, 0.0 unsatisfied; unjudged -> 0).

    >>> satisfaction(["hi"] * 3, ["a", "b", "c"], verdict=[1.0, 0.5, None])
    [1.0, 0.5, 0.0]
    """
    return _floats(verdict)


@register_reward("lookup_cost")
def lookup_cost(
    prompts: list[str], completions: list[str], *, lookups: Sequence[int | None], cost: float = 0.05, **_: Any
) -> list[float]:
    """Minus ``cost`` per knowledge-base lookup, so the policy looks a fact up only when it pays.

    >>> lookup_cost(["q"] * 3, ["a", "b", "c"], lookups=[0, 2, None], cost=0.1)
    [0.0, -0.2, 0.0]
    """
    return [-cost * n if n else 0.0 for n in lookups]


@register_reward("length_penalty")
def length_penalty(
    prompts: list[str], completions: list[str], *, max_words: int = 20, per_word: float = 0.01, **_: Any
) -> list[float]:
    """Minus ``per_word`` for each word past ``max_words``: answer briefly.

    >>> length_penalty(["q", "q"], ["one two three", "one"], max_words=1, per_word=0.5)
    [-1.0, 0.0]
    """
    excess = [max(0, len(c.split()) - max_words) for c in completions]
    return [-per_word * e if e else 0.0 for e in excess]


@register_reward("task_completion")
def task_completion(
    prompts: list[str], completions: list[str], *, completed: Sequence[float | None], **_: Any
) -> list[float]:
    """1.0 on the reply that completes the conversation's goal (the environment marks it), else 0.

    >>> task_completion(["q"] * 3, ["a", "b", "c"], completed=[True, False, None])
    [1.0, 0.0, 0.0]
    """
    return _floats(completed)


@register_reward("answer_accuracy")
def answer_accuracy(
    prompts: list[str], completions: list[str], *, correct: Sequence[float | None], **_: Any
) -> list[float]:
    """The share of the values asked the reply stated correctly (the environment computes it).

    >>> answer_accuracy(["q"] * 3, ["a", "b", "c"], correct=[0.5, 1, None])
    [0.5, 1.0, 0.0]
    """
    return _floats(correct)


@register_reward("repetition_penalty")
def repetition_penalty(prompts: list[str], completions: list[str], *, scale: float = 1.0, **_: Any) -> list[float]:
    """Minus ``scale`` times the share of word bigrams that repeat an earlier one (degenerate loops score near -1).

    >>> repetition_penalty(["q"] * 3, ["I am, I am", "a b a b", "fine"])  # 3 bigrams, 1 repeated
    [-0.3333333333333333, -0.3333333333333333, 0.0]
    """
    scores = []
    for completion in completions:
        words = normalize(completion)
        bigrams = list(zip(words, words[1:]))
        repeated = len(bigrams) - len(set(bigrams))
        scores.append(-scale * repeated / len(bigrams) if repeated else 0.0)
    return scores
