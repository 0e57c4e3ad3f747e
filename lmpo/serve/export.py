"""``lmpo feedback export``: the feedback store as training data.

``pairs``: for every context (the same request messages), each two replies whose ratings differ, the better one
chosen, in TRL's preference format that ``lmpo train-rm`` reads (``data.pairs``). ``ratings``: every rated reply with
its ratings and their mean value (thumbs as +-1, scores 1..5 as -1..1).
"""

from __future__ import annotations

import itertools
import json
from collections.abc import Iterator
from typing import Any

from lmpo.serve.store import FeedbackStore, RatedReply


def _by_context(rated: list[RatedReply]) -> dict[str, dict[str, list[float]]]:
    """Values of each distinct reply, per context (the request's messages)."""
    groups: dict[str, dict[str, list[float]]] = {}
    for r in rated:
        key = json.dumps(r.messages, sort_keys=True)
        groups.setdefault(key, {}).setdefault(r.reply, []).append(r.value)
    return groups


def preference_pairs(store: FeedbackStore) -> Iterator[dict[str, Any]]:
    """``{"prompt", "chosen", "rejected"}`` for every two replies to one context with different mean ratings."""
    for key, replies in _by_context(store.rated_replies()).items():
        prompt = json.loads(key)
        means = {reply: sum(v) / len(v) for reply, v in replies.items()}
        for a, b in itertools.combinations(sorted(means), 2):
            if means[a] == means[b]:
                continue
            chosen, rejected = (a, b) if means[a] > means[b] else (b, a)
            yield {"prompt": prompt, "chosen": [{"role": "assistant", "content": chosen}],
                   "rejected": [{"role": "assistant", "content": rejected}]}


def rated_replies(store: FeedbackStore) -> Iterator[dict[str, Any]]:
    """Every rated reply: ``{"messages", "reply", "value", "thumbs", "scores", "comments", "version"}``."""
    for r in store.rated_replies():
        yield {"messages": r.messages, "reply": r.reply, "value": r.value, "thumbs": r.thumbs, "scores": r.scores,
               "comments": r.comments, "version": r.version}
