"""Answer matching shared by simulated users and reward functions: word normalisation, token F1, and whether a
reply states a value (numbers, money, dates and words written in any of their usual forms).

>>> states_value("It costs 34.99 dollars.", "$34.99")
True
>>> states_value("Expected on 14 Dec.", "December 14")
True
>>> states_value("It costs $43.99.", "$34.99")
False
"""

from __future__ import annotations

import re
import unicodedata
from collections import Counter

_WORD = re.compile(r"\w+", re.UNICODE)
_NUMBER = re.compile(r"\d+(?:,\d{3})*(?:\.\d+)?")
MONTHS = ("january", "february", "march", "april", "may", "june", "july", "august", "september", "october",
          "november", "december")
_MONTH_OF = {m[:3]: i + 1 for i, m in enumerate(MONTHS)} | {m: i + 1 for i, m in enumerate(MONTHS)}
_ISO_DATE = re.compile(r"\b(\d{4})-(\d{1,2})-(\d{1,2})\b")
_SLASH_DATE = re.compile(r"\b(\d{1,2})/(\d{1,2})(?:/\d{2,4})?\b")  # month/day, the shop's locale


def normalize(text: str) -> list[str]:
    """Lower-cased word tokens without accents or punctuation (SQuAD-style answer normalisation)."""
    text = unicodedata.normalize("NFKD", text.lower())
    text = "".join(c for c in text if not unicodedata.combining(c))
    return _WORD.findall(text)


def word_count(text: str) -> int:
    """Words as a reader counts them (whitespace-separated)."""
    return len(text.split())


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


def numbers_in(text: str) -> list[float]:
    """Every number written in ``text`` ("1,299.00" is 1299.0)."""
    return [float(m.replace(",", "")) for m in _NUMBER.findall(text)]


def dates_in(text: str) -> set[tuple[int, int]]:
    """Every (month, day) written in ``text``: "December 14", "14 Dec", "2026-12-14", "12/14"."""
    low = text.lower()
    found = {(int(m), int(d)) for _, m, d in _ISO_DATE.findall(low)}
    low = _ISO_DATE.sub(" ", low)
    found |= {(int(m), int(d)) for m, d in _SLASH_DATE.findall(low)}
    words = _WORD.findall(low)
    for i, w in enumerate(words):
        month = _MONTH_OF.get(w)
        if month is None:
            continue
        for j in (i - 2, i - 1, i + 1, i + 2):  # "14 december", "the 14th of december", "december the 14th"
            if 0 <= j < len(words) and (day := re.match(r"(\d{1,2})(?:st|nd|rd|th)?$", words[j])):
                found.add((month, int(day.group(1))))
    return found


def as_date(value: str) -> tuple[int, int] | None:
    """The (month, day) that ``value`` is, when it is a date and nothing else."""
    dates = dates_in(value)
    return next(iter(dates)) if len(dates) == 1 and len(normalize(value)) <= 3 else None


def states_value(reply: str, value: str) -> bool:
    """Whether ``reply`` states ``value``: the same date, the same number(s), or the value's words in order.

    A number matches by value, with the unit words written beside it in the value ("$34.99" ~ "34.99 dollars";
    "8 days" needs "days": "8 years" is another answer); a date by month and day in any common form; words after
    normalisation, as a contiguous run ("teal" in "It is teal.").
    """
    date = as_date(value)
    if date is not None:
        return date in dates_in(reply)
    wanted = numbers_in(value)
    if wanted:  # the number(s) by value, and the unit words with them ("8 days" is not "8 years")
        units = [w for w in normalize(value) if not w.isdigit()]
        said = set(normalize(reply))
        return all(n in numbers_in(reply) for n in wanted) and all(u in said for u in units)
    target, words = normalize(value), normalize(reply)
    if not target:
        return False
    return any(words[i:i + len(target)] == target for i in range(len(words) - len(target) + 1))
