"""Batched generation with a cache (KV for transformers, hidden state for recurrent models).

Every step samples from ``sampling_logprobs`` and records the log-probability of the sampled token under
that very distribution, with the value of the state it was sampled in.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import Tensor

from lmpo.core import Rollout
from lmpo.policies.attention import RowKV
from lmpo.policies.sampling import SamplingConfig, sample_categorical, sampling_logprobs

if TYPE_CHECKING:  # lm.py imports this module
    from lmpo.policies.lm import LMPolicy


@dataclass
class Generation:
    """Replies ``(B, T)`` right-padded with the pad id, and per-token records."""

    tokens: Tensor  # (B, T) sampled ids, pad after the end
    mask: Tensor  # (B, T) 1.0 for generated tokens (the stopping <eos> included)
    logprobs: Tensor  # (B, T) log-prob under the distribution sampled from
    values: Tensor  # (B, T) value of the state each token was sampled in


def left_pad(rows: list[list[int]], pad_id: int, device: torch.device | str = "cpu") -> Tensor:
    """``(B, max_len)`` prompts with each row's ids at the right end (what ``generate`` takes)."""
    width = max(map(len, rows))
    out = torch.full((len(rows), width), pad_id, dtype=torch.long)
    for i, r in enumerate(rows):
        out[i, width - len(r):] = torch.tensor(r, dtype=torch.long)
    return out.to(device)


def regroupable(cache: Any) -> bool:
    """Whether rows can leave and join a batch decoding with ``cache``: lmpo's KV caches and recurrent states
    (transformers' own cache, which models with linear-attention or recurrent layers keep, cannot)."""
    return isinstance(cache, RowKV | Tensor) or (isinstance(cache, tuple) and all(isinstance(c, Tensor)
                                                                                     for c in cache))


def cache_stack(parts: Sequence[tuple[Any, int, int, Tensor | None]]) -> Any:
    """Batches' caches as one, in one copy: of each ``(cache, start, end, rows)``, positions ``start:end`` of
    ``rows`` (None: all), right-aligned at the longest span (a recurrent state has no positions). Finished rows
    leave a batch this way, and so do columns that have become padding for every row left."""
    first = parts[0][0]
    if isinstance(first, RowKV):
        return first.stack(parts)
    if isinstance(first, Tensor):  # (layers, B, H)
        return torch.cat([c if rows is None else c[:, rows] for c, _, _, rows in parts], 1)
    picked = [c if rows is None else tuple(x[:, rows] for x in c) for c, _, _, rows in parts]
    return tuple(torch.cat(states, 1) for states in zip(*picked, strict=True))  # an LSTM's (h, c)


def cache_row(cache: Any, index: int, mask: Tensor) -> Any | None:
    """Row ``index``'s cache over its real tokens (``mask (L,)``), to go on from later; None where a cache cannot
    (a recurrent state, transformers' own cache, a cache with sliding windows)."""
    return cache.row(index, mask.nonzero().squeeze(1)) if isinstance(cache, RowKV) else None


SYNC_EVERY = 8  # decoding steps between looks at which rows are done on a GPU (each look waits for it)


@torch.no_grad()
def generate(policy: LMPolicy, prompts: Tensor, settings: SamplingConfig | None = None,
             stop: Callable[[list[int]], bool] | None = None, use_cache: bool = True) -> Generation:
    """Sample replies to left-padded ``prompts (B, P)`` from an ``LMPolicy``.

    A row ends at ``<eos>`` (or another of the policy's ``stop_ids``), when ``stop(tokens_so_far)`` says so
    (stop strings), or after ``max_new_tokens``. ``use_cache=False`` re-runs the whole sequence every step (for tests).

    At every step on the CPU, every ``SYNC_EVERY`` on a GPU (a look waits for it), it checks which rows are done: when
    all are it stops, and when a quarter of the batch is, those rows leave it (with their cache, and the columns that
    are padding for every row left), so the rest decode in a smaller batch. The random draws are those of the whole
    batch, so the replies do not depend on when rows leave.
    """
    cfg = settings or policy.sampling
    b = prompts.shape[0]
    device = prompts.device
    ids, mask = prompts, prompts != policy.pad_id
    tokens = torch.full((b, cfg.max_new_tokens), policy.pad_id, dtype=torch.long, device=device)
    logprobs = torch.zeros(b, cfg.max_new_tokens, device=device)
    values = torch.zeros(b, cfg.max_new_tokens, device=device)
    done = torch.zeros(b, dtype=torch.bool, device=device)
    stop_ids = torch.tensor(policy.stop_ids, device=device)
    rows = torch.arange(b, device=device)  # (n,) the original row of each row still in the batch
    every = 1 if device.type == "cpu" else SYNC_EVERY
    with policy._no_dropout():
        logits, hidden, cache = policy.body(ids, mask, keep=1)
        leave = use_cache and regroupable(cache)
        for t in range(cfg.max_new_tokens):
            logp = sampling_logprobs(logits[:, -1], t, cfg, policy.pad_id, policy.stop_ids)  # (n, V)
            if cfg.greedy:
                tok = logp.argmax(-1)
            else:  # the whole batch's uniforms, every step: the same draws whichever rows are left
                tok = sample_categorical(logp, torch.rand(b, 1, device=device)[rows])
            tok = tok.masked_fill(done[rows], policy.pad_id)
            tokens[rows, t] = tok
            logprobs[rows, t] = logp.gather(-1, tok.unsqueeze(-1)).squeeze(-1).masked_fill(done[rows], 0.0).float()
            values[rows, t] = policy.value_head(hidden[:, -1]).squeeze(-1).masked_fill(done[rows], 0.0).float()
            done[rows] |= (tok == policy.eos_id) if len(policy.stop_ids) == 1 else torch.isin(tok, stop_ids)
            if stop is not None:
                for i in torch.nonzero(~done).flatten().tolist():
                    done[i] = stop(tokens[i, : t + 1].tolist())
            if t == cfg.max_new_tokens - 1:
                break
            mask = torch.cat([mask, (tok != policy.pad_id).unsqueeze(1)], dim=1)  # pad is never sampled
            if (t + 1) % every == 0 or stop is not None:
                finished = int(done[rows].sum())
                if finished == rows.numel():
                    break
                if leave and finished >= max(1, rows.numel() // 4):
                    keep = (~done[rows]).nonzero().squeeze(1)
                    first = int(mask[keep].any(0).int().argmax()) if isinstance(cache, RowKV) else 0
                    cache = cache_stack([(cache, first, mask.shape[1] - 1, keep)])
                    rows, tok, mask = rows[keep], tok[keep], mask[keep, first:]
            if use_cache:
                logits, hidden, cache = policy.body(tok.unsqueeze(1), mask, cache)
            else:
                ids = torch.cat([ids, tok.unsqueeze(1)], dim=1)
                logits, hidden, _ = policy.body(ids, mask, keep=1)
    reply_mask = (tokens != policy.pad_id).float()
    return Generation(tokens, reply_mask, logprobs * reply_mask, values * reply_mask)


def to_rollout(prompts: Tensor, gen: Generation, rewards: Tensor, group_ids: Tensor | None = None,
               bootstrap: Tensor | None = None, episode_ids: Tensor | None = None) -> Rollout:
    """A ``Rollout`` of one reply per row: the reward ``(B,)`` on the reply's last token, which ends it.

    Inside a reply ``V(s_t+1)`` is the next token's value; after the last token the recursion is cut and
    bootstraps from ``bootstrap (B,)``: 0 when the episode ended (the default), the value of the next
    reply's first state when the conversation goes on (``episode_ids`` link a conversation's replies, so
    Monte-Carlo returns run on through them instead).
    """
    mask = gen.mask
    last = (mask.sum(1).long() - 1).clamp_min(0)  # (B,) index of each reply's last token
    rows = torch.arange(mask.shape[0], device=mask.device)
    per_token = torch.zeros_like(mask)
    per_token[rows, last] = rewards.to(mask.dtype)
    dones = torch.zeros_like(mask)
    dones[rows, last] = 1.0
    next_values = torch.cat([gen.values[:, 1:], torch.zeros_like(gen.values[:, :1])], dim=1) * (1 - dones)
    if bootstrap is not None:
        next_values[rows, last] = bootstrap.to(next_values.dtype)
    next_values = next_values * mask
    return Rollout(obs=prompts, actions=gen.tokens, logprobs=gen.logprobs, rewards=per_token, mask=mask,
                   dones=dones, values=gen.values, next_values=next_values, group_ids=group_ids,
                   episode_ids=episode_ids)
