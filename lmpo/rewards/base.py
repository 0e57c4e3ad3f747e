"""The ``Reward`` protocol: a callable from (context, reply) pairs to scores."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol


class Reward(Protocol):
    """Scores a batch of replies, each given the user line it answers."""

    def __call__(self, prompts: Sequence[str], replies: Sequence[str]) -> list[float]:
        """One score per reply."""
        ...
