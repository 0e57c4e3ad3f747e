"""A simulated user built from a dialogue corpus: satisfied, neutral or unsatisfied with a reply.

The user compares the bot's reply with every reply the corpus gives to the same user line (its
*acceptable replies*), keeps the best similarity, and judges with two thresholds:
``>= satisfied_at`` -> satisfied (reward 1.0), ``>= neutral_at`` -> neutral (0.5), else unsatisfied (0.0).
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from enum import Enum

from lmpo.data.corpus import Dialogue

_WORD = re.compile(r"\w+", re.UNICODE)


def normalize(text: str) -> list[str]:
    """Lower-cased word tokens without accents or punctuation (SQuAD-style answer normalisation)."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return _WORD.findall(text)


def token_f1(candidate: str, reference: str) -> float:
    """Harmonic mean of token precision and recall (bag of words, with multiplicity).

    >>> token_f1("the cat sat", "the cat sat")
    1.0
    >>> round(token_f1("a cat", "the cat sat"), 3)
    0.4
    >>> token_f1("", "anything")
    0.0
    """
    c, r = Counter(normalize(candidate)), Counter(normalize(reference))
    overlap = sum((c & r).values())
    if overlap == 0:
        return 0.0
    precision, recall = overlap / sum(c.values()), overlap / sum(r.values())
    return 2 * precision * recall / (precision + recall)


class Verdict(float, Enum):
    """The user's judgement of a reply; its value is the reward."""

    SATISFIED = 1.0
    NEUTRAL = 0.5
    UNSATISFIED = 0.0


class SimulatedUser:
    """Judges replies against the corpus's acceptable replies to each user line."""

    def __init__(self, dialogues: Iterable[Dialogue], satisfied_at: float = 0.6, neutral_at: float = 0.3) -> None:
        if not 0.0 <= neutral_at <= satisfied_at <= 1.0:
            raise ValueError("need 0 <= neutral_at <= satisfied_at <= 1")
        self.satisfied_at, self.neutral_at = satisfied_at, neutral_at
        self.acceptable: dict[str, list[str]] = defaultdict(list)
        for d in dialogues:
            for user, bot in zip(d[0::2], d[1::2]):
                key = self.key(user.content)
                if bot.content not in self.acceptable[key]:
                    self.acceptable[key].append(bot.content)

    @staticmethod
    def key(line: str) -> str:
        """User lines match after normalisation ("What is AI?" and "what is ai" are the same line)."""
        return " ".join(normalize(line))

    def similarity(self, user_line: str, reply: str) -> float:
        """Best token F1 of ``reply`` against the acceptable replies to ``user_line`` (0 if it has none)."""
        return max((token_f1(reply, ref) for ref in self.acceptable.get(self.key(user_line), [])), default=0.0)

    def judge(self, user_line: str, reply: str) -> Verdict:
        """Satisfied, neutral or unsatisfied."""
        s = self.similarity(user_line, reply)
        if s >= self.satisfied_at:
            return Verdict.SATISFIED
        return Verdict.NEUTRAL if s >= self.neutral_at else Verdict.UNSATISFIED

    def __call__(self, prompts: Sequence[str], replies: Sequence[str]) -> list[float]:
        """The ``Reward`` protocol: 1.0 / 0.5 / 0.0 per reply."""
        return [float(self.judge(p, r).value) for p, r in zip(prompts, replies, strict=True)]
