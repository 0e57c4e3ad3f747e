"""Collect rollouts of dialogue: conversations with the simulated user, one row per bot reply.

Step 1 (collect), 2 (reward) and 3 (shape) of the loop for text: replies are generated in batches for
every conversation still going on, the user judges them (reward on the reply's last token), and every
token pays ``kl_coef * KL(pi || pi_ref)`` to the frozen reference. A conversation's replies are linked:
the last token of a reply bootstraps from the value of the next reply's first state.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor
from torch.nn.utils.rnn import pad_sequence
from transformers import PreTrainedTokenizerBase

from lmpo.core import FixedKLController, Rollout, kl_estimate, kl_penalized_rewards
from lmpo.core.kl import KLEstimator
from lmpo.data.corpus import Turn
from lmpo.data.tokenizer import decode_reply, encode_prompt
from lmpo.envs.chatbot import ChatbotBatch
from lmpo.policies.generation import Generation, generate, to_rollout
from lmpo.policies.lm import LMPolicy
from lmpo.policies.sampling import SamplingConfig


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> Tensor:
    """``(B, max_len)`` with each row's ids at the right end."""
    width = max(map(len, rows))
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, width - len(r):] = torch.tensor(r)
    return out.to(device)


@torch.no_grad()
def generate_replies(policy: LMPolicy, tokenizer: PreTrainedTokenizerBase, histories: Sequence[Sequence[Turn]],
                     max_prompt_tokens: int | None = None, settings: SamplingConfig | None = None,
                     device: torch.device | str = "cpu") -> tuple[list[list[int]], Generation, list[str]]:
    """The next bot reply to each dialogue history, in lmpo's chat format: the prompts' ids, the generation
    (``settings`` or the policy's own) and the replies' texts."""
    prompts = [encode_prompt(tokenizer, h, max_prompt_tokens) for h in histories]
    gen = generate(policy, left_pad(prompts, policy.pad_id, device), settings)
    texts = [decode_reply(tokenizer, gen.tokens[row, gen.mask[row] > 0].tolist()) for row in range(len(prompts))]
    return prompts, gen, texts


@dataclass
class ChatStats:
    """What happened in a batch of conversations."""

    satisfaction: float  # share of replies the user was satisfied with
    mean_reward: float  # mean verdict value per reply
    mean_turns: float  # replies per conversation
    mean_kl: float  # mean per-token KL to the reference
    mean_reply_tokens: float


class ChatbotCollector:
    """Runs ``conversations x samples_per_prompt`` simulated conversations per rollout."""

    def __init__(self, batch: ChatbotBatch, tokenizer: PreTrainedTokenizerBase, reference: LMPolicy | None,
                 kl: FixedKLController, kl_estimator: KLEstimator = "k1", conversations: int = 16,
                 samples_per_prompt: int = 4, max_prompt_tokens: int = 96, seed: int = 0) -> None:
        self.batch, self.tokenizer, self.reference, self.kl = batch, tokenizer, reference, kl
        self.kl_estimator = kl_estimator
        self.conversations, self.k, self.max_prompt_tokens = conversations, samples_per_prompt, max_prompt_tokens
        self.rng = np.random.default_rng(seed)

    @torch.no_grad()
    def collect(self, policy: LMPolicy, indices: list[int] | None = None, settings: SamplingConfig | None = None
                ) -> tuple[Rollout, ChatStats]:
        """Play the conversations to their end, sampling with ``settings`` (default: the policy's own); rows
        are replies in conversation-then-turn order."""
        if indices is None:
            indices = self.rng.integers(len(self.batch.dialogues), size=self.conversations).tolist()
        convs = self.batch.reset(len(indices) * self.k, indices=[i for i in indices for _ in range(self.k)])
        replies: dict[int, list[dict]] = {c: [] for c in range(len(convs))}
        while self.batch.active:
            active = self.batch.active
            prompt_ids, gen, texts = generate_replies(policy, self.tokenizer, [convs[c].history for c in active],
                                                      self.max_prompt_tokens, settings)
            for row, c in enumerate(active):
                n = int(gen.mask[row].sum())
                replies[c].append({"prompt": prompt_ids[row], "tokens": gen.tokens[row, :n],
                                   "logprobs": gen.logprobs[row, :n], "values": gen.values[row, :n]})
            for c, verdict in self.batch.step(dict(zip(active, texts, strict=True))).items():
                replies[c][-1]["reward"] = float(verdict.value)
        rows = [r for c in range(len(convs)) for r in replies[c]]
        rollout = self._pack(policy.pad_id, rows, [len(replies[c]) for c in range(len(convs))])
        # step 3. shape: one pass of the reference serves the penalty and the statistics
        ref = rollout.logprobs  # without a reference the KL is 0
        if self.reference is not None:
            ref = self.reference.evaluate(rollout.obs, rollout.actions).log_probs
        rollout.rewards = kl_penalized_rewards(rollout.rewards, rollout.logprobs, ref, rollout.mask, self.kl.value,
                                               self.kl_estimator)
        kl = kl_estimate(rollout.logprobs, ref, self.kl_estimator) * rollout.mask
        n_tokens = float(rollout.mask.sum())
        rewards = [r["reward"] for r in rows]
        stats = ChatStats(float(np.mean([x == 1.0 for x in rewards])), float(np.mean(rewards)),
                          len(rows) / len(convs), float(kl.sum()) / max(n_tokens, 1.0), n_tokens / len(rows))
        return rollout, stats

    def _pack(self, pad_id: int, rows: list[dict], turns: list[int]) -> Rollout:
        """Pad the replies into one rollout, a conversation's replies one episode; a reply the conversation
        continues after bootstraps (for GAE) from the next reply's first value, the last reply from 0."""
        values = pad_sequence([r["values"] for r in rows], batch_first=True)
        actions = pad_sequence([r["tokens"] for r in rows], batch_first=True, padding_value=pad_id)
        logprobs = pad_sequence([r["logprobs"] for r in rows], batch_first=True)
        gen = Generation(actions, (actions != pad_id).float(), logprobs, values)
        boot = torch.zeros(len(rows))
        start = 0
        for n in turns:
            boot[start:start + n - 1] = values[start + 1:start + n, 0]
            start += n
        episodes = torch.repeat_interleave(torch.arange(len(turns)), torch.tensor(turns))
        return to_rollout(left_pad([r["prompt"] for r in rows], pad_id), gen, torch.tensor([r["reward"] for r in rows]),
                          episodes // self.k, bootstrap=boot, episode_ids=episodes)
