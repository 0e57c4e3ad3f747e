"""Collect rollouts of conversation in any text environment, one row per bot reply.

Steps 1-3 of the loop for text, as three calls: **generate** (play the conversations to their end, generating a
reply for every conversation still going on, batched), **score** (the reward functions on every reply, with the
example's columns and the environment's ``info``), **shape** (every token pays ``kl_coef * KL(pi || pi_ref)`` to the
frozen reference). Token in, token out: a conversation's context is kept as token ids; the ids a policy generated
are appended as they are (never decoded and re-encoded), the turns the environment adds are encoded and appended as
context. A conversation's replies are linked: a reply's last token bootstraps from the value of the next reply's
first state.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedTokenizerBase

from lmpo.core import FixedKLController, Rollout, kl_estimate, kl_penalized_rewards
from lmpo.core.kl import KLEstimator
from lmpo.data.chat import ChatFormat, chat_format
from lmpo.data.corpus import Turn
from lmpo.data.tokenizer import decode_reply
from lmpo.envs.text import Example, TextEnvironment
from lmpo.policies.generation import Generation, generate, left_pad, to_rollout
from lmpo.policies.lm import LMPolicy
from lmpo.policies.lora import AdaptersOff
from lmpo.policies.sampling import SamplingConfig

Reference = LMPolicy | AdaptersOff  # the frozen policy of the KL penalty: a copy, or a LoRA policy's adapters off
Gather = Callable[[Rollout, "Played", Tensor], tuple[Rollout, "Played", Tensor]]
Scorer = Callable[[list[str], list[str], dict[str, list[Any]]], tuple[list[float], dict[str, list[float]]]]


@dataclass
class Reply:
    """One bot reply of a conversation: what it was generated from, what was sampled, what followed."""

    prompt: list[int]  # the context ids it was generated from (the last max_prompt_tokens)
    tokens: Tensor  # (n,) sampled ids
    logprobs: Tensor  # (n,)
    values: Tensor  # (n,)
    user: str  # the user line it answers
    text: str
    info: dict[str, Any]
    example: int  # index of its conversation's example
    reward: float = 0.0
    components: dict[str, float] = field(default_factory=dict)


@dataclass
class Played:
    """Conversations played to their end: the replies in conversation-then-turn order and the transcripts."""

    replies: list[Reply]
    turns: list[int]  # replies per conversation
    transcripts: list[list[tuple[Turn, dict[str, Any]]]]  # every turn, with the info of bot turns


@dataclass
class ConversationStats:
    """What happened in a batch of conversations (means over replies unless said otherwise)."""

    satisfaction: float | None  # share of judged replies the user was satisfied with (None: no user judges)
    mean_reward: float  # mean total reward per reply
    mean_return: float  # mean total reward per conversation (what RL maximises, with gamma 1)
    mean_turns: float  # judged replies per conversation (every reply where no user judges)
    mean_kl: float  # mean per-token KL to the reference
    mean_reply_tokens: float
    extra: dict[str, float]  # environment-specific means (completion, accuracy, lookups, words), reward parts, and
    # ref_ppl: the reference's perplexity of the replies (with a reference), a sign of reward hacking when it grows


class ConversationCollector:
    """Plays ``conversations x samples_per_prompt`` conversations per rollout in a text environment."""

    def __init__(self, family: TextEnvironment, examples: Sequence[Example], tokenizer: PreTrainedTokenizerBase,
                 score: Scorer, reference: Reference | None, kl: FixedKLController, kl_estimator: KLEstimator = "k1",
                 conversations: int = 16, samples_per_prompt: int = 4, max_prompt_tokens: int = 96,
                 seed: int = 0, chat: ChatFormat | None = None) -> None:
        if not examples:
            raise ValueError("a text environment needs at least one example")
        self.family, self.examples, self.tokenizer, self.score = family, list(examples), tokenizer, score
        self.chat = chat or chat_format(tokenizer)  # how turns become ids: lmpo's format or the model's template
        self.reference, self.kl, self.kl_estimator = reference, kl, kl_estimator
        self.conversations, self.k, self.max_prompt_tokens = conversations, samples_per_prompt, max_prompt_tokens
        self.rng = np.random.default_rng(seed)

    # ---------------------------------------------------------------------------- step 1. generate
    @torch.no_grad()
    def play(self, policy: LMPolicy, indices: Sequence[int], settings: SamplingConfig | None = None) -> Played:
        """Play one conversation per example index to its end, sampling with ``settings`` (default: the policy's)."""
        convs = [self.family.conversation() for _ in indices]
        openings = [c.reset(self.examples[i]) for c, i in zip(convs, indices, strict=True)]
        ids = [self.chat.opening(o) for o in openings]
        user = [next((t.content for t in reversed(o) if t.role == "user"), "") for o in openings]
        transcripts: list[list[tuple[Turn, dict[str, Any]]]] = [[(t, {}) for t in o] for o in openings]
        replies: list[list[Reply]] = [[] for _ in indices]
        active = list(range(len(indices)))
        device = next(policy.parameters()).device
        while active:
            prompts = [ids[c][-self.max_prompt_tokens:] for c in active]
            gen = generate(policy, left_pad(prompts, policy.pad_id, device), settings)
            still = []
            for row, c in enumerate(active):
                n = int(gen.mask[row].sum())
                tokens = gen.tokens[row, :n]
                text = decode_reply(self.tokenizer, tokens.tolist())
                out = convs[c].step(text)
                replies[c].append(Reply(prompts[row], tokens, gen.logprobs[row, :n], gen.values[row, :n], user[c], text,
                                        out.info, indices[c]))
                transcripts[c].append((Turn("assistant", text), out.info))
                if not out.done:
                    # token in, token out: the sampled ids as they are, then the reply's closing (its <eos> if it was
                    # cut at max_new_tokens) and the turns the environment adds
                    history = [t for t, _ in transcripts[c][:-1]]  # the conversation before this reply
                    ids[c] += tokens.tolist() + self.chat.continuation(history, tokens.tolist(), out.turns)
                    transcripts[c] += [(t, {}) for t in out.turns]
                    user[c] = next((t.content for t in reversed(out.turns) if t.role == "user"), user[c])
                    still.append(c)
            active = still
        return Played([r for rs in replies for r in rs], [len(rs) for rs in replies], transcripts)

    # ------------------------------------------------------------------------------- step 2. score
    def score_replies(self, replies: list[Reply]) -> None:
        """The reward functions on every reply: the example's columns (but its private ``_`` ones) and the
        environment's info as fields."""
        keys = sorted({k for r in replies for k in r.info}
                      | {k for r in replies for k in self.examples[r.example] if not k.startswith("_")})
        fields = {k: [r.info.get(k, self.examples[r.example].get(k)) for r in replies] for k in keys}
        totals, parts = self.score([r.user for r in replies], [r.text for r in replies], fields)
        for i, r in enumerate(replies):
            r.reward = float(totals[i])
            r.components = {name: float(v[i]) for name, v in parts.items()}

    # --------------------------------------------------------------------------------- the three steps
    @torch.no_grad()
    def collect(self, policy: LMPolicy, indices: Sequence[int] | None = None, settings: SamplingConfig | None = None,
                gather: Gather | None = None) -> tuple[Rollout, ConversationStats, Played]:
        """generate -> score -> shape; rows are replies in conversation-then-turn order. ``gather`` joins what every
        process collected (under torchrun) before the statistics are taken."""
        if indices is None:
            indices = self.rng.integers(len(self.examples), size=self.conversations).tolist()
        played = self.play(policy, [i for i in indices for _ in range(self.k)], settings)  # step 1. generate
        self.score_replies(played.replies)  # step 2. score
        rollout = self._pack(policy.pad_id, played.replies, played.turns)
        ref = self.shape(rollout)  # step 3. shape
        if gather is not None:
            rollout, played, ref = gather(rollout, played, ref)
        return rollout, self._stats(played, rollout, ref), played

    def shape(self, rollout: Rollout) -> Tensor:
        """Subtract the per-token KL penalty from the rewards; returns the reference's log-probs (one pass of the
        reference serves the penalty and the statistics; without a reference the KL is 0)."""
        ref = rollout.logprobs
        if self.reference is not None:
            ref = self.reference.evaluate(rollout.obs, rollout.actions).log_probs
        rollout.rewards = kl_penalized_rewards(rollout.rewards, rollout.logprobs, ref, rollout.mask, self.kl.value,
                                               self.kl_estimator)
        return ref

    def _stats(self, played: Played, rollout: Rollout, ref: Tensor) -> ConversationStats:
        replies = played.replies
        kl = kl_estimate(rollout.logprobs, ref, self.kl_estimator) * rollout.mask
        n_tokens = float(rollout.mask.sum())
        verdicts = [float(r.info["verdict"]) for r in replies if r.info.get("verdict") is not None]
        extra = {f"rewards/{name}": float(np.mean([r.components[name] for r in replies]))
                 for name in replies[0].components}
        for key in ("correct", "completed", "words", "turn_lookups"):
            values = [float(r.info[key]) for r in replies if r.info.get(key) is not None]
            if values:
                extra[key] = float(np.mean(values))
        if "completed" in extra:  # per conversation: the goal reached by the end
            extra["completed"] = float(np.sum([r.info.get("completed") or 0.0 for r in replies]) / len(played.turns))
        if self.reference is not None:  # exp of the mean negative log-likelihood per reply token under the reference
            extra["ref_ppl"] = math.exp(min(-float((ref * rollout.mask).sum()) / max(n_tokens, 1.0), 700.0))
        return ConversationStats(
            satisfaction=float(np.mean([v == 1.0 for v in verdicts])) if verdicts else None,
            mean_reward=float(np.mean([r.reward for r in replies])),
            mean_return=float(np.sum([r.reward for r in replies]) / len(played.turns)),
            mean_turns=(len(verdicts) if verdicts else len(replies)) / len(played.turns),
            mean_kl=float(kl.sum()) / max(n_tokens, 1.0),
            mean_reply_tokens=n_tokens / len(replies), extra=extra)

    def _pack(self, pad_id: int, rows: list[Reply], turns: list[int]) -> Rollout:
        """Pad the replies into one rollout, a conversation's replies one episode; a reply the conversation
        continues after bootstraps (for GAE) from the next reply's first value, the last reply from 0."""
        values = pad_sequence([r.values for r in rows], batch_first=True)
        actions = pad_sequence([r.tokens for r in rows], batch_first=True, padding_value=pad_id)
        logprobs = pad_sequence([r.logprobs for r in rows], batch_first=True)
        gen = Generation(actions, (actions != pad_id).float(), logprobs, values)
        boot = torch.zeros(len(rows))
        start = 0
        for n in turns:
            boot[start:start + n - 1] = values[start + 1:start + n, 0]
            start += n
        episodes = torch.repeat_interleave(torch.arange(len(turns)), torch.tensor(turns))
        device = values.device
        boot = boot.to(device)
        episodes = episodes.to(device)
        rewards = torch.tensor([r.reward for r in rows], device=device)
        return to_rollout(left_pad([r.prompt for r in rows], pad_id, device), gen, rewards, episodes // self.k,
                          bootstrap=boot, episode_ids=episodes)
