"""Supervised pre-training of a dialogue model: next-token loss on the bot's side of each conversation.

Its result starts RL and, frozen, is the reference the KL penalty keeps the policy close to.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lmpo.data.tokenizer import EncodedDialogue
from lmpo.policies.lm import LMPolicy
from lmpo.train.progress import TrainingProgress


@dataclass
class PretrainConfig:
    """Settings of supervised pre-training."""

    epochs: int = 10
    lr: float = 2e-3
    batch_size: int = 32
    max_len: int = 128
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0


def training_windows(dialogue: EncodedDialogue, max_len: int) -> list[EncodedDialogue]:
    """A dialogue that fits in ``max_len`` tokens is one example; a longer one gives one example per bot
    turn, so that every reply is learnt from its own start after the line it answers (cutting a long
    dialogue's first tokens would drop the request a long reply answers and that reply's opening).

    Each such example trains only its turn: as much of the conversation before it as fits (at least
    ``max_len // 4`` tokens of it), then the turn, its tail cut if the turn alone is too long.
    """
    if len(dialogue.ids) <= max_len:
        return [dialogue]
    out, mask, i = [], dialogue.loss_mask, 0
    while i < len(mask):
        if not mask[i]:
            i += 1
            continue
        end = i
        while end < len(mask) and mask[end]:
            end += 1
        context = min(i, max(max_len - (end - i), max_len // 4))
        start = i - context
        stop = min(end, start + max_len)
        out.append(EncodedDialogue(dialogue.ids[start:stop], [0] * context + [1] * (stop - i)))
        i = end
    return out


def _batches(data: Sequence[EncodedDialogue], batch_size: int, pad_id: int,
             order: Sequence[int]) -> Iterator[tuple[Tensor, Tensor]]:
    """Right-padded ``ids (B, L)`` and ``loss_mask (B, L)`` of the examples in ``order``."""
    for start in range(0, len(order), batch_size):
        rows = [data[i] for i in order[start:start + batch_size]]
        width = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width)
        for j, r in enumerate(rows):
            ids[j, :len(r.ids)] = torch.tensor(r.ids)
            mask[j, :len(r.ids)] = torch.tensor(r.loss_mask, dtype=torch.float)
        yield ids, mask


def bucketed_order(rng: np.random.Generator, lengths: Sequence[int], batch_size: int, pool: int = 50) -> list[int]:
    """A shuffled order in which each batch holds examples of similar length: shuffle, sort by length within pools
    of ``pool`` batches, then shuffle the batches. A batch runs as long as its longest example, so mixing short
    and long ones wastes about half the work of a recurrent model (measured: 2x the tokens per second)."""
    order = rng.permutation(len(lengths))
    size = pool * batch_size
    batches = []
    for start in range(0, len(order), size):
        chunk = sorted(order[start:start + size].tolist(), key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [i for b in rng.permutation(len(batches)).tolist() for i in batches[b]]


def _windows(data: Sequence[EncodedDialogue], max_len: int) -> list[EncodedDialogue]:
    """Every dialogue's training examples, in order."""
    return [w for d in data for w in training_windows(d, max_len)]


def _nll(policy: LMPolicy, ids: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Summed negative log-likelihood of the trained tokens, and their count. Logits are computed only where a
    trained token is predicted: context (user lines, tool results, padding) costs no output projection."""
    predicts = torch.zeros_like(ids, dtype=torch.bool)
    predicts[:, :-1] = loss_mask[:, 1:] > 0  # token t+1 is predicted at position t
    logits, _, _ = policy.body(ids, ids != policy.pad_id, keep=predicts)  # (N, V)
    targets = ids[:, 1:][predicts[:, :-1]]
    return F.cross_entropy(logits, targets, reduction="sum"), predicts.sum().float()  # not bf16: counts pass 256


@torch.no_grad()
def perplexity(policy: LMPolicy, data: Sequence[EncodedDialogue], batch_size: int = 64, max_len: int = 128) -> float:
    """``exp`` of the mean NLL per bot token (dropout off)."""
    was = policy.training
    policy.eval()
    total, count = 0.0, 0.0
    windows = _windows(data, max_len)
    for ids, mask in _batches(windows, batch_size, policy.pad_id, range(len(windows))):
        nll, n = _nll(policy, ids, mask)
        total, count = total + float(nll), count + float(n)
    policy.train(was)
    return math.exp(total / max(count, 1.0))


def pretrain(policy: LMPolicy, train: Sequence[EncodedDialogue], heldout: Sequence[EncodedDialogue],
             cfg: PretrainConfig, progress: bool = True) -> dict[str, float]:
    """AdamW on the body for ``cfg.epochs``; returns final train loss and train/held-out perplexity."""
    rng = np.random.default_rng(cfg.seed)
    examples = _windows(train, cfg.max_len)
    params = policy.actor_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    policy.train()
    loss = torch.zeros(())
    with TrainingProgress(cfg.epochs * steps_per_epoch, 0, enabled=progress, label="pretrain") as bar:
        done = 0
        for _ in range(cfg.epochs):
            order = bucketed_order(rng, [len(e.ids) for e in examples], cfg.batch_size)
            for ids, mask in _batches(examples, cfg.batch_size, policy.pad_id, order):
                nll, n = _nll(policy, ids, mask)
                loss = nll / n.clamp_min(1.0)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, cfg.max_grad_norm)
                opt.step()
                sched.step()
                done += 1
                bar.update(done, None, None, info=f"loss {float(loss.detach()):.3f}")
    return {"pretrain/loss": float(loss.detach()), "pretrain/train_ppl": perplexity(policy, train, max_len=cfg.max_len),
            "pretrain/heldout_ppl": perplexity(policy, heldout, max_len=cfg.max_len) if heldout else float("nan")}
