"""A small GPT-style decoder (after nanoGPT's model.py) with a KV cache and padding-aware attention."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmpo.policies.attention import StaticKV, attend, attention_bias, compute_dtype, token_positions
from lmpo.policies.lm import block_runner, kept_positions, recomputed


@dataclass
class GPTConfig:
    """Sizes of the decoder."""

    vocab_size: int
    n_layer: int = 4
    n_head: int = 4
    d_model: int = 256
    max_len: int = 512
    dropout: float = 0.1
    positions: str = "learned"  # "learned": a position embedding; "rotary": RoPE on queries and keys


def rotary(positions: Tensor, head_dim: int, base: float = 10_000.0) -> tuple[Tensor, Tensor]:
    """RoPE's ``(cos, sin)``, each ``(B, 1, L, head_dim / 2)``, for ``positions (B, L)`` (Su et al., 2021): attention
    then depends on how far apart two tokens are, not where they are, so a copy learnt at one place works at every
    other."""
    inv = base ** -(torch.arange(0, head_dim, 2, device=positions.device, dtype=torch.float32) / head_dim)
    angles = positions[:, None, :, None].float() * inv  # (B, 1, L, D/2)
    return angles.cos(), angles.sin()


def rotate(x: Tensor, rot: tuple[Tensor, Tensor]) -> Tensor:
    """``x (B, H, L, D)`` with each pair of features turned by its position's angle."""
    cos, sin = (t.to(x.dtype) for t in rot)
    x1, x2 = x[..., 0::2], x[..., 1::2]
    return torch.stack((x1 * cos - x2 * sin, x1 * sin + x2 * cos), dim=-1).flatten(-2)


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

    def forward(self, x: Tensor, bias: Tensor, layer: int, past: int, cache: StaticKV | None,
                rot: tuple[Tensor, Tensor] | None = None) -> Tensor:
        b, length, c = x.shape
        q, k, v = self.qkv(self.ln1(x)).split(c, dim=2)
        q, k, v = (t.view(b, length, self.n_head, c // self.n_head).transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
        if rot is not None:  # cached keys were turned when written
            q, k = rotate(q, rot), rotate(k, rot)
        if cache is not None:
            k, v = cache.write(layer, past, k, v)  # (B, H, past + L, D)
        y = attend(q, k, v, bias, self.dropout if self.training else 0.0)  # (B, H, L, D)
        x = x + F.dropout(self.out(y.transpose(1, 2).reshape(b, length, c)), self.dropout, self.training)
        return x + F.dropout(self.mlp(self.ln2(x)), self.dropout, self.training)


def _call(block: nn.Module, *args: Any) -> Tensor:
    """``block(*args)``: what ``block_runner`` compiles for lmpo's blocks."""
    return block(*args)


class GPT(nn.Module):
    """Token + position embeddings (or rotary positions), ``n_layer`` blocks, final norm, tied output projection."""

    def __init__(self, cfg: GPTConfig) -> None:
        super().__init__()
        self.cfg = cfg
        self.vocab_size, self.hidden_size = cfg.vocab_size, cfg.d_model
        self.tok = nn.Embedding(cfg.vocab_size, cfg.d_model)
        if cfg.positions not in ("learned", "rotary"):
            raise ValueError(f"positions must be 'learned' or 'rotary', not {cfg.positions!r}")
        if cfg.positions == "rotary" and (cfg.d_model // cfg.n_head) % 2:
            raise ValueError(f"rotary positions need an even head size (d_model / n_head = "
                             f"{cfg.d_model // cfg.n_head})")
        if cfg.positions == "learned":
            self.pos = nn.Embedding(cfg.max_len, cfg.d_model)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.n_layer))
        self.checkpointing = False  # recompute each block's activations in backward (``checkpoint_blocks``)
        self.compile_passes: frozenset[str] = frozenset()  # passes whose blocks run compiled (``compile_blocks``)
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

    def forward(self, ids: Tensor, mask: Tensor, cache: Any = None,
                keep: int | Tensor = 0) -> tuple[Tensor, Tensor, Any]:
        """See ``LMBody``: ``mask (B, L_past + L)`` marks real tokens; positions count real tokens only."""
        (b, length), total = ids.shape, mask.shape[1]
        positions = token_positions(mask, length)  # (B, L)
        if int(positions.max()) >= self.cfg.max_len:
            raise ValueError(f"sequence longer than max_len={self.cfg.max_len}")
        x = self.tok(ids)  # (B, L, C)
        rot = None
        if self.cfg.positions == "learned":
            x = x + self.pos(positions)
        else:
            rot = rotary(positions, self.cfg.d_model // self.cfg.n_head)
        x = F.dropout(x, self.cfg.dropout, self.training)
        bias = attention_bias(mask, length, compute_dtype(x))  # (B, 1, L, total)
        if cache is None and not torch.is_grad_enabled():  # decoding starts: room for 64 more tokens
            head_dim = self.cfg.d_model // self.cfg.n_head
            cache = StaticKV(self.cfg.n_layer, b, self.cfg.n_head, head_dim, total + 64, x)
        run = block_runner(self.compile_passes, _call)
        for i, block in enumerate(self.blocks):
            if self.checkpointing and cache is None and torch.is_grad_enabled():
                x = recomputed(block, run, block, x, bias, i, 0, None, rot)
            else:
                x = run(block, x, bias, i, total - length, cache, rot)
        h = self.ln(x)
        return F.linear(kept_positions(h, keep), self.tok.weight), h, cache
