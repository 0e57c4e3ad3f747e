"""The text-environment protocol: what every conversation environment of lmpo (Chatbot-v0, Support-v0, ...) offers.

A *conversation* is one episode: ``reset(example)`` gives the opening turn(s); ``step(reply)`` takes the bot's reply
and gives what comes next (a user line, a tool result, or nothing at the end) with an ``info`` dict that reward
functions read (the user's verdict, the values asked, the lookups made). Conversations know nothing of rewards or
policies, and work in text: the trainer keeps the token ids (the tokens a policy generated are the tokens it is
trained on; the tokens of the turns an environment adds are context).

A *text environment* is the family of conversations behind a Gymnasium id: its settings (``env.kwargs``, validated
by its own pydantic model), the examples of each split, the dialogues a model is pre-trained on, and a factory of
conversations. ``register_text_env`` registers both faces under one id: the batched one here and a token-level
Gymnasium one (``TokenTextEnv``).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Protocol

import gymnasium as gym
import numpy as np

from lmpo.config import Section
from lmpo.data.chat import chat_format
from lmpo.data.corpus import Dialogue, Turn
from lmpo.data.tokenizer import decode_reply

Example = dict[str, Any]
MAX_TOOL_CALLS = 4  # tool calls a bot may make in one turn before it must answer (lmpo chat, lmpo serve)


class EnvSettings(Section):
    """Base of a text environment's settings (``env.kwargs``), held to every config section's rules: unknown keys
    are errors, numbers are finite, within float32 and not booleans."""


@dataclass
class TextStep:
    """What a conversation says after a reply."""

    turns: list[Turn]  # added by the environment (user line, tool result); empty when the episode ends
    done: bool
    info: dict[str, Any] = field(default_factory=dict)


class Conversation(Protocol):
    """One episode of a text environment."""

    def reset(self, example: Example) -> list[Turn]:
        """Start from ``example``; the opening turn(s)."""
        ...

    def step(self, reply: str) -> TextStep:
        """The bot says ``reply``; what comes next."""
        ...


class TextEnvironment(Protocol):
    """A family of conversations: settings, examples per split, pre-training dialogues, a conversation factory."""

    Settings: ClassVar[type[EnvSettings]]
    eval_splits: ClassVar[tuple[str, ...]]  # the splits evaluated, "train" (RL's own examples) first
    default_rewards: ClassVar[tuple[dict[str, Any], ...]]  # text.rewards when a recipe names none
    # what every tool call starts with, after spaces (None: no tools): a server streams a reply once it is not one
    tool_call_start: ClassVar[str | None]

    def __init__(self, settings: Any, seed: int = 0, run_dir: Path | None = None) -> None: ...

    def examples(self, split: str) -> list[Example]:
        """The examples of ``split`` ("train" is what RL plays)."""
        ...

    def pretraining(self, split: str) -> list[Dialogue]:
        """Dialogues to pre-train on ("train") and to measure perplexity on ("heldout")."""
        ...

    def tokenizer_texts(self) -> list[str]:
        """Texts a tokenizer is trained on (every kind of turn the conversations contain)."""
        ...

    def conversation(self) -> Conversation:
        """A new episode."""
        ...

    def tool(self, reply: str) -> Turn | None:
        """The tool's turn when ``reply`` calls one (a lookup), else None: for a person talking to the bot."""
        ...

    def save(self, run_dir: Path) -> None:
        """Store what conversations read (e.g. the knowledge base) in the run, so the run is self-contained."""
        ...


_REGISTRY: dict[str, type[TextEnvironment]] = {}


def register_text_env(env_id: str, family: type[TextEnvironment], token_env: str) -> None:
    """Register ``env_id``: its family for the trainer and its token-level Gymnasium face (``token_env`` is the
    entry point) for ``gymnasium.make``."""
    _REGISTRY[env_id] = family
    if env_id not in gym.registry:
        gym.register(id=env_id, entry_point=token_env)


def registered_text_envs() -> dict[str, type[TextEnvironment]]:
    """Every registered text environment by id."""
    return dict(_REGISTRY)


def text_env(env_id: str) -> type[TextEnvironment] | None:
    """The family registered as ``env_id`` (None for other Gymnasium environments)."""
    return _REGISTRY.get(env_id)


class TokenTextEnv(gym.Env[np.ndarray, np.int64]):
    """The Gymnasium face of a text environment: one token per ``step`` (``Discrete(vocab)``); the observation is
    the conversation's token ids so far in lmpo's chat format, right-padded to ``max_len``. A reply ends at
    ``<eos>`` or after ``max_reply_tokens``; its reward is ``reward(info)`` of the step it causes."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, family: TextEnvironment, tokenizer: Any, reward: Callable[[dict[str, Any]], float],
                 split: str = "train", max_reply_tokens: int = 32, max_len: int = 256) -> None:
        self.family, self.tokenizer, self.reward = family, tokenizer, reward
        self.data = family.examples(split)
        self.max_reply_tokens, self.max_len = max_reply_tokens, max_len
        self.pad_id, self.eos_id = int(tokenizer.pad_token_id), int(tokenizer.eos_token_id)
        self.chat = chat_format(tokenizer)
        self.history: list[Turn] = []
        vocab = len(tokenizer)
        self.action_space = gym.spaces.Discrete(vocab)
        self.observation_space = gym.spaces.Box(0, vocab - 1, shape=(max_len,), dtype=np.int64)
        self.ids: list[int] = []
        self.reply: list[int] = []
        self.conv: Conversation | None = None
        self.done = True

    def _obs(self) -> np.ndarray:
        ids = (self.ids + self.reply)[-self.max_len:]
        out = np.full(self.max_len, self.pad_id, dtype=np.int64)
        out[: len(ids)] = ids
        return out

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a conversation from an example drawn with the environment's generator (or ``options["index"]``)."""
        super().reset(seed=seed)
        index = (options or {}).get("index")
        if index is None:
            index = int(self.np_random.integers(len(self.data)))
        self.conv = self.family.conversation()
        opening = self.conv.reset(self.data[index])
        self.ids, self.reply, self.done = self.chat.opening(opening), [], False
        self.history = list(opening)
        return self._obs(), {"turns": [t.content for t in opening]}

    def step(self, action: np.int64) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Append one token; at the end of a reply the conversation answers and the reward is paid."""
        if self.conv is None or self.done:
            raise RuntimeError("call reset() first")
        self.reply.append(int(action))
        info: dict[str, Any] = {}
        reward, terminated = 0.0, False
        if int(action) == self.eos_id or len(self.reply) >= self.max_reply_tokens:
            text = decode_reply(self.tokenizer, self.reply)
            out = self.conv.step(text)
            reward, terminated = float(self.reward(out.info)), out.done
            info = {"reply": text, **out.info}
            # token in, token out: the sampled ids stay as they are; an unfinished reply is closed with <eos>
            self.ids += self.reply + self.chat.continuation(self.history, self.reply, [] if out.done else out.turns)
            self.history += [Turn("assistant", text), *([] if out.done else out.turns)]
            self.reply = []
            self.done = terminated
        truncated = not terminated and len(self.ids) + len(self.reply) >= self.max_len
        self.done = self.done or truncated
        return self._obs(), reward, terminated, truncated, info
