"""``lmpo/Chatbot-v0``: a dialogue with a simulated user who judges every reply.

The user opens with a conversation's first line; after each bot reply it is satisfied (reward 1.0),
neutral (0.5) or unsatisfied (0.0). While satisfied and its conversation goes on with a line the corpus
answers, it says its next line, up to ``max_turns`` replies; anything else ends the episode.

Two faces over the same ``Conversation`` logic:

- ``ChatbotEnv``, the Gymnasium face: one token per ``step`` (``Discrete(vocab_size)``); the observation
  is the dialogue's token ids so far in lmpo's chat format, right-padded to ``max_len``;
- ``ChatbotBatch``, the utterance-level face the trainer uses: many conversations, whole replies.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import gymnasium as gym
import numpy as np

from lmpo.data.corpus import Dialogue, Turn, load_chatterbot
from lmpo.data.tokenizer import decode_reply, dialogue_texts, encode_prompt, train_tokenizer
from lmpo.rewards.satisfaction import SimulatedUser, Verdict


@dataclass
class Conversation:
    """One simulated conversation: the corpus dialogue it follows and what has been said."""

    dialogue: Dialogue
    max_turns: int
    history: list[Turn] = field(default_factory=list)
    turn: int = 0  # replies given so far
    done: bool = False

    def __post_init__(self) -> None:
        self.history = [self.dialogue[0]]

    @property
    def user_line(self) -> str:
        """What the user just said (the line the next reply answers)."""
        return self.history[-1].content

    def respond(self, reply: str, user: SimulatedUser) -> Verdict:
        """The bot says ``reply``; the user judges, and says its next line if satisfied and not finished."""
        if self.done:
            raise RuntimeError("the conversation is over")
        verdict = user.judge(self.user_line, reply)
        self.history.append(Turn("assistant", reply))
        self.turn += 1
        next_index = 2 * self.turn  # the user's next line in the corpus dialogue
        # the user goes on only with a line its dialogue answers: a closing user line (odd-length
        # dialogues) has no acceptable reply, and every reply to it would be judged unsatisfied
        if verdict is Verdict.SATISFIED and self.turn < self.max_turns and next_index + 1 < len(self.dialogue):
            self.history.append(self.dialogue[next_index])
        else:
            self.done = True
        return verdict


class ChatbotBatch:
    """Many conversations stepped with whole replies at once (the trainer's face of Chatbot-v0)."""

    def __init__(self, dialogues: Sequence[Dialogue], user: SimulatedUser, max_turns: int = 3) -> None:
        if not dialogues:
            raise ValueError("Chatbot needs at least one dialogue")
        self.dialogues, self.user, self.max_turns = list(dialogues), user, max_turns
        self.conversations: list[Conversation] = []

    def reset(self, n: int, rng: np.random.Generator | None = None, indices: Sequence[int] | None = None
              ) -> list[Conversation]:
        """Start ``n`` conversations: the given dialogue indices, or drawn with ``rng``."""
        if indices is None:
            indices = (rng or np.random.default_rng()).integers(len(self.dialogues), size=n).tolist()
        self.conversations = [Conversation(self.dialogues[i], self.max_turns) for i in indices]
        return self.conversations

    @property
    def active(self) -> list[int]:
        """Indices of the conversations still going on."""
        return [i for i, c in enumerate(self.conversations) if not c.done]

    def step(self, replies: dict[int, str]) -> dict[int, Verdict]:
        """Reply in the given active conversations; returns the user's verdicts."""
        return {i: self.conversations[i].respond(r, self.user) for i, r in replies.items()}


class ChatbotEnv(gym.Env[np.ndarray, np.int64]):
    """The Gymnasium face: one token per step; a reply ends at ``<eos>`` or ``max_reply_tokens``."""

    metadata: dict[str, Any] = {"render_modes": []}

    def __init__(self, tokenizer: Any = None, dialogues: Sequence[Dialogue] | None = None, max_turns: int = 3,
                 max_reply_tokens: int = 32, max_len: int = 256, satisfied_at: float = 0.6,
                 neutral_at: float = 0.3, vocab_size: int = 2048) -> None:
        self.dialogues = list(dialogues) if dialogues is not None else load_chatterbot()
        self.tokenizer = tokenizer or train_tokenizer(dialogue_texts(self.dialogues), vocab_size)
        self.user = SimulatedUser(self.dialogues, satisfied_at, neutral_at)
        self.max_turns, self.max_reply_tokens, self.max_len = max_turns, max_reply_tokens, max_len
        self.pad_id, self.eos_id = int(self.tokenizer.pad_token_id), int(self.tokenizer.eos_token_id)
        vocab = len(self.tokenizer)
        self.action_space = gym.spaces.Discrete(vocab)
        self.observation_space = gym.spaces.Box(0, vocab - 1, shape=(max_len,), dtype=np.int64)
        self.conversation: Conversation | None = None
        self.reply: list[int] = []

    def _ids(self) -> list[int]:
        """The dialogue so far in chat format, with the reply being written."""
        assert self.conversation is not None
        return encode_prompt(self.tokenizer, self.conversation.history) + self.reply

    def _obs(self) -> np.ndarray:
        ids = self._ids()[-self.max_len:]
        out = np.full(self.max_len, self.pad_id, dtype=np.int64)
        out[: len(ids)] = ids
        return out

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None
              ) -> tuple[np.ndarray, dict[str, Any]]:
        """Start a conversation drawn with the environment's generator (or ``options["index"]``)."""
        super().reset(seed=seed)
        index = (options or {}).get("index", int(self.np_random.integers(len(self.dialogues))))
        self.conversation = Conversation(self.dialogues[index], self.max_turns)
        self.reply = []
        return self._obs(), {"user": self.conversation.user_line}

    def step(self, action: np.int64) -> tuple[np.ndarray, float, bool, bool, dict[str, Any]]:
        """Append one token; at the end of a reply the user judges it."""
        if self.conversation is None or self.conversation.done:
            raise RuntimeError("call reset() first")
        self.reply.append(int(action))
        info: dict[str, Any] = {}
        reward, terminated = 0.0, False
        if int(action) == self.eos_id or len(self.reply) >= self.max_reply_tokens:
            text = decode_reply(self.tokenizer, self.reply)
            verdict = self.conversation.respond(text, self.user)
            reward, terminated = float(verdict.value), self.conversation.done
            info = {"reply": text, "verdict": verdict.name.lower()}
            self.reply = []
        truncated = not terminated and len(self._ids()) >= self.max_len
        return self._obs(), reward, terminated, truncated, info
