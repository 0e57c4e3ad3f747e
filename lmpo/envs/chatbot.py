"""``lmpo/Chatbot-v0``: chit-chat from a dialogue corpus, with a simulated user who judges every reply.

The user opens with a conversation's first line; after each bot reply it is satisfied (1.0), neutral (0.5) or
unsatisfied (0.0) by the reply's best token F1 against the corpus's replies to its line. While satisfied and its
conversation goes on with a line the corpus answers, it says its next line, up to ``max_turns`` replies; anything
else ends the episode. (The seed's chatterbot example: a task where imitating the corpus is already optimal.)
"""

from __future__ import annotations

import json
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from enum import Enum
from pathlib import Path
from typing import Any, ClassVar

from pydantic import Field, model_validator

from lmpo.data.corpus import CorpusError, Dialogue, Turn, load_chatterbot, load_jsonl, split_dialogues
from lmpo.data.matching import normalize, token_f1
from lmpo.data.tokenizer import dialogue_texts, train_tokenizer
from lmpo.envs.text import EnvSettings, Example, TextStep, TokenTextEnv

SAVED_CORPUS = "dialogues.jsonl"


class Verdict(float, Enum):
    """The user's judgement of a reply; its value is what the ``satisfaction`` reward pays."""

    SATISFIED = 1.0
    NEUTRAL = 0.5
    UNSATISFIED = 0.0


class SimulatedUser:
    """Judges replies against the corpus's acceptable replies to each user line: ``>= satisfied_at`` best token F1
    is satisfied, ``>= neutral_at`` neutral, else unsatisfied."""

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


@dataclass
class ChatbotConversation:
    """One simulated conversation following a corpus dialogue."""

    user: SimulatedUser
    max_turns: int
    dialogue: Dialogue = ()
    history: list[Turn] = field(default_factory=list)
    turn: int = 0  # replies given so far
    done: bool = False

    def reset(self, example: Example) -> list[Turn]:
        """The dialogue's first line."""
        self.dialogue, self.turn, self.done = example["dialogue"], 0, False
        self.history = [self.dialogue[0]]
        return [self.dialogue[0]]

    def step(self, reply: str) -> TextStep:
        """The user judges ``reply`` and says its next line if satisfied and the dialogue goes on."""
        if self.done:
            raise RuntimeError("the conversation is over")
        verdict = self.user.judge(self.history[-1].content, reply)
        self.history.append(Turn("assistant", reply))
        self.turn += 1
        next_index = 2 * self.turn  # the user's next line in the corpus dialogue
        # the user goes on only with a line its dialogue answers: a closing user line (odd-length dialogues) has
        # no acceptable reply, and every reply to it would be judged unsatisfied
        info = {"verdict": float(verdict.value)}
        if verdict is Verdict.SATISFIED and self.turn < self.max_turns and next_index + 1 < len(self.dialogue):
            self.history.append(self.dialogue[next_index])
            return TextStep([self.dialogue[next_index]], False, info)
        self.done = True
        return TextStep([], True, info)


class ChatbotSettings(EnvSettings):
    categories: list[str] | None = Field(None, description="chatterbot-corpus categories (None: all).")
    jsonl: str | None = Field(None, description="Your own dialogues (chat-messages JSONL) instead of the corpus.")
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="Share of opening lines held out from training "
                                    "(every conversation with a held-out opening is held out).")
    satisfied_at: float = Field(0.6, ge=0, le=1, description="Token F1 at which the user is satisfied.")
    neutral_at: float = Field(0.3, ge=0, le=1, description="Token F1 at which the user is neutral.")
    max_turns: int = Field(3, ge=1, description="Most bot replies per conversation.")

    @model_validator(mode="after")
    def _thresholds(self) -> ChatbotSettings:
        if self.neutral_at > self.satisfied_at:
            raise ValueError("neutral_at must not exceed satisfied_at")
        return self


class Chatbot:
    """Chit-chat from the chatterbot-corpus (or a user's JSONL dialogues), split by opening line."""

    Settings: ClassVar[type[EnvSettings]] = ChatbotSettings
    eval_splits: ClassVar[tuple[str, ...]] = ("train", "heldout")
    default_rewards: ClassVar[tuple[dict[str, Any], ...]] = ({"name": "satisfaction"},)
    tool_call_start: ClassVar[str | None] = None  # no tools

    def __init__(self, settings: Any, seed: int = 0, run_dir: Path | None = None,
                 dialogues: Sequence[Dialogue] | None = None) -> None:
        self.settings: ChatbotSettings = settings
        saved = run_dir / SAVED_CORPUS if run_dir is not None else None
        if dialogues is None:
            if saved is not None and saved.is_file():
                dialogues = load_jsonl(saved)
            else:
                dialogues = load_jsonl(settings.jsonl) if settings.jsonl else load_chatterbot(settings.categories)
        # the corpus repeats conversations across files (2,026 of which 899 distinct): a repeat teaches nothing new
        self.dialogues = list(dict.fromkeys(dialogues))
        self.train, self.heldout = split_dialogues(self.dialogues, settings.heldout_fraction)
        if not self.train:
            source = settings.jsonl or "the chatterbot corpus"
            raise CorpusError(f"{source}: no training conversations (no dialogues, or env.kwargs.heldout_fraction too "
                              "large for them)")
        self.user = SimulatedUser(self.dialogues, settings.satisfied_at, settings.neutral_at)

    def examples(self, split: str) -> list[Example]:
        """One example per dialogue of the split."""
        return [{"dialogue": d} for d in self.pretraining(split)]

    def pretraining(self, split: str) -> list[Dialogue]:
        """The corpus dialogues of ``split`` ("train" or "heldout")."""
        return {"train": self.train, "heldout": self.heldout}[split]

    def tokenizer_texts(self) -> list[str]:
        """Every utterance of the training dialogues."""
        return list(dialogue_texts(self.train))

    def conversation(self) -> ChatbotConversation:
        """A new conversation with the simulated user."""
        return ChatbotConversation(self.user, self.settings.max_turns)

    def tool(self, reply: str) -> Turn | None:
        """Chit-chat has no tools."""
        return None

    def save(self, run_dir: Path) -> None:
        """The corpus as ``dialogues.jsonl`` (the user judges against it): the run needs no corpus file to load."""
        lines = [json.dumps({"messages": [{"role": t.role, "content": t.content} for t in d]}) for d in self.dialogues]
        (run_dir / SAVED_CORPUS).write_text("\n".join(lines) + "\n", encoding="utf-8")


class ChatbotEnv(TokenTextEnv):
    """The Gymnasium face: one token per step; the reward is the user's verdict at the end of each reply."""

    def __init__(self, tokenizer: Any = None, dialogues: Sequence[Dialogue] | None = None, max_turns: int = 3,
                 max_reply_tokens: int = 32, max_len: int = 256, satisfied_at: float = 0.6,
                 neutral_at: float = 0.3, vocab_size: int = 2048) -> None:
        settings = ChatbotSettings(heldout_fraction=0.0, max_turns=max_turns, satisfied_at=satisfied_at,
                                   neutral_at=neutral_at)
        family = Chatbot(settings, dialogues=dialogues)
        tokenizer = tokenizer or train_tokenizer(family.tokenizer_texts(), vocab_size)
        super().__init__(family, tokenizer, lambda info: float(info.get("verdict") or 0.0), "train",
                         max_reply_tokens, max_len)
