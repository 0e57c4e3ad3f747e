"""Preference pairs for reward models: a context, a chosen and a rejected continuation.

From a JSONL file (TRL's preference format: ``{"prompt", "chosen", "rejected"}``, each a string or a list of chat
messages; without ``prompt``, ``chosen`` and ``rejected`` are whole conversations), or built from a dialogue corpus:
a real reply to a user line against a reply taken from another conversation.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from lmpo.data.corpus import CorpusError, Dialogue, Turn, jsonl_objects, split_dialogues
from lmpo.data.matching import normalize

ROLES = ("user", "assistant", "tool")


@dataclass(frozen=True)
class Pair:
    """``context`` followed by ``chosen`` is preferred to ``context`` followed by ``rejected``."""

    context: tuple[Turn, ...]
    chosen: tuple[Turn, ...]
    rejected: tuple[Turn, ...]


def _turns(value: Any, role: str, where: str, key: str) -> tuple[Turn, ...]:
    """A string as one turn of ``role``, or chat messages as turns (system messages dropped)."""
    if isinstance(value, str):
        if not value.strip():
            raise CorpusError(f"{where}: {key!r} is empty")
        return (Turn(role, value.strip()),)  # type: ignore[arg-type]
    if isinstance(value, list):
        turns = []
        for m in value:
            if not isinstance(m, dict) or m.get("role") not in (*ROLES, "system") or not isinstance(m.get("content"),
                                                                                                   str):
                raise CorpusError(f"{where}: every message of {key!r} needs a role (user, assistant, tool or system) "
                                  "and a string content")
            if m["role"] != "system":
                turns.append(Turn(m["role"], m["content"].strip()))
        if turns:
            return tuple(turns)
    raise CorpusError(f"{where}: {key!r} must be a non-empty string or list of chat messages")


def load_pairs(path: str | Path) -> list[Pair]:
    """Pairs from JSONL; each line's error names the file and line."""
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"preference file not found: {path}")
    pairs = []
    for where, row in jsonl_objects(path):
        if "chosen" not in row or "rejected" not in row:
            raise CorpusError(f"{where}: expected an object with 'chosen' and 'rejected' (and usually 'prompt')")
        context = _turns(row["prompt"], "user", where, "prompt") if "prompt" in row else ()
        chosen = _turns(row["chosen"], "assistant", where, "chosen")
        rejected = _turns(row["rejected"], "assistant", where, "rejected")
        pairs.append(Pair(context, chosen, rejected))
    if not pairs:
        raise CorpusError(f"{path}: no preference pairs")
    return pairs


def corpus_pairs(dialogues: Sequence[Dialogue], negatives: int = 1, seed: int = 0) -> list[Pair]:
    """For every user line a dialogue answers: the dialogue up to that line, its real reply (chosen), and a reply
    from another conversation (rejected) that is not an acceptable reply to the same line anywhere in the corpus,
    ``negatives`` times with different rejected replies."""
    rng = np.random.default_rng(seed)
    answers: dict[str, set[str]] = {}
    turns = []
    for d in dialogues:
        for i in range(0, len(d) - 1, 2):
            answers.setdefault(_key(d[i].content), set()).add(d[i + 1].content)
            turns.append((d[: i + 1], d[i + 1]))
    replies = sorted({reply.content for _, reply in turns})
    if len(replies) < 2:
        raise CorpusError("building preference pairs needs at least two different replies in the corpus")
    pairs = []
    for context, reply in turns:
        acceptable = answers[_key(context[-1].content)]
        if len(acceptable) >= len(replies):
            continue  # every reply of the corpus answers this line: none is a wrong one
        for _ in range(negatives):
            other = replies[int(rng.integers(len(replies)))]
            while other in acceptable:
                other = replies[int(rng.integers(len(replies)))]
            pairs.append(Pair(tuple(context), (reply,), (Turn("assistant", other),)))
    return pairs


def _key(line: str) -> str:
    return " ".join(normalize(line))


def split_pairs(pairs: Sequence[Pair], heldout_fraction: float) -> tuple[list[Pair], list[Pair]]:
    """Train and held-out pairs by a hash of the conversation's opening line, as Chatbot-v0 and the dialogue corpora
    are split: a reward model of a corpus is held out on the same conversations as a dialogue model of it."""
    keys = [(p.context or p.chosen)[:1] for p in pairs]
    train, _ = split_dialogues(keys, heldout_fraction)
    kept = {id(k) for k in train}
    return ([p for p, k in zip(pairs, keys) if id(k) in kept], [p for p, k in zip(pairs, keys) if id(k) not in kept])
