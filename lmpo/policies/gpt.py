"""A small GPT-style decoder (after nanoGPT's model.py) with a KV cache and padding-aware attention."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn


@dataclass
class GPTConfig:
    """Sizes of the decoder."""

    vocab_size: int
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    max_len: int = 512
    dropout: float = 0.1


class Block(nn.Module):
    """Pre-norm attention + MLP block."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.n_head, self.dropout = cfg.n_head, cfg.dropout
        self.ln1, self.ln2 = nn.LayerNorm(cfg.d_model), nn.LayerNorm(cfg.d_model)
        self.qkv = nn.Linear(cfg.d_model, 3 * cfg.d_model)
        self.out = nn.Linear(cfg.d_model, cfg.d_model)
        c = cfg.d_model
        self.mlp = nn.Sequential(nn.Linear(c, 4 * c), nn.GELU(), nn.Linear(4 * c, c))

    def forward(self, x: Tensor, allowed: Tensor, past: tuple[Tensor, Tensor] | None
                ) -> tuple[Tensor, tuple[Tensor, Tensor]]:
        b, length, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (t.view(b, length, self.n_head, c // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, L_past + L, D)
        # explicit attention: twice differentiable (TRPO's Fisher products), unlike CPU flash attention
        att = (q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1])  # (B, H, L, L_past + L)
        att = att.masked_fill(~allowed.unsqueeze(1), float("-inf")).softmax(-1)
        y = F.dropout(att, self.dropout, self.training) @ v  # (B, H, L, D)
        x = x + F.dropout(self.out(y.transpose(1, 2).reshape(b, length, c)), self.dropout, self.training)
        x = x + F.dropout(self.mlp(self.ln2(x)), self.dropout, self.training)
        return x, (k, v)


class GPT(nn.Module):
    """Token + position embeddings, ``n_layer`` blocks, final norm, tied output projection."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size, self.hidden_size = cfg.vocab_size, cfg.d_model
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.ln = nn.LayerNorm(cfg.d_model)
        self.apply(self._init)
        for name, p in self.named_parameters():
            if name.endswith("out.weight") or name.endswith("mlp.2.weight"):  # GPT-2's scaled residual init
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * cfg.n_layer))

    @staticmethod
    def _init(m: nn.Module) -> None:
        if isinstance(m, nn.Linear | nn.Embedding):
            nn.init.normal_(m.weight, 0.0, 0.02)
        if isinstance(m, nn.Linear) and m.bias is not None:
            nn.init.zeros_(m.bias)

    def forward(self, ids: Tensor, mask: Tensor, cache: Any = None) -> tuple[Tensor, Tensor, Any]:
        """See ``LMBody``: ``mask (B, L_past + L)`` marks real tokens; positions count real tokens only."""
        length, total = ids.shape[1], mask.shape[1]
        positions = (mask.long().cumsum(1) - 1).clamp_min(0)[:, -length:]  # (B, L)
        if int(positions.max()) >= self.cfg.max_len:
            raise ValueError(f"sequence longer than max_len={self.cfg.max_len}")
        # query i (absolute index total - length + i) sees real keys at or before it, and always itself
        q_index = torch.arange(total - length, total, device=ids.device).unsqueeze(1)  # (L, 1)
        k_index = torch.arange(total, device=ids.device).unsqueeze(0)  # (1, total)
        causal = k_index <= q_index  # (L, total)
        allowed = (causal.unsqueeze(0) & mask.bool().unsqueeze(1)) | (k_index == q_index).unsqueeze(0)  # (B, L, tot)
        x = F.dropout(self.tok(ids) + self.pos(positions), self.cfg.dropout, self.training)  # (B, L, C)
        new_cache = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, allowed, None if cache is None else cache[i])
            new_cache.append(kv)
        h = self.ln(x)
        return F.linear(h, self.tok.weight), h, new_cache
