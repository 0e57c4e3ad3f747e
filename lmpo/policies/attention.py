"""Causal self-attention pieces shared by lmpo's decoders: the padding-aware mask, the attention itself
(twice differentiable when gradients are on, PyTorch's fused kernel when decoding) and a preallocated
KV cache."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch
import torch.nn.functional as F
from torch import Tensor


def token_positions(mask: Tensor, length: int) -> Tensor:
    """``(B, L)`` position of each of the last ``length`` tokens, counting real tokens only (``mask (B, total)``),
    so a left-padded prompt starts at position 0; padding gets position 0."""
    return (mask.long().cumsum(1) - 1).clamp_min(0)[:, -length:]


def compute_dtype(x: Tensor) -> torch.dtype:
    """The dtype ``x``'s matmuls produce: autocast's (e.g. bfloat16) when it is on for ``x``'s device, else
    ``x``'s own; caches and masks are made in it, so autocast never converts them again at every layer."""
    device = x.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


def attention_bias(mask: Tensor, length: int, dtype: torch.dtype = torch.float32) -> Tensor:
    """``(B, 1, L, total)`` additive mask for the last ``length`` queries: 0 where a query may attend, -inf
    elsewhere (computed once per forward, shared by every layer and head).

    ``mask (B, total)`` marks real tokens. A query sees the real keys at or before it, and always itself
    (so a padding query has one key and no NaN; its output is never used).
    """
    total = mask.shape[1]
    q_index = torch.arange(total - length, total, device=mask.device).unsqueeze(1)  # (L, 1)
    k_index = torch.arange(total, device=mask.device).unsqueeze(0)  # (1, total)
    allowed = ((k_index <= q_index).unsqueeze(0) & mask.bool().unsqueeze(1)) | (k_index == q_index).unsqueeze(0)
    bias = torch.zeros(allowed.shape, device=mask.device, dtype=dtype).masked_fill_(~allowed, float("-inf"))
    return bias.unsqueeze(1)


def attend(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, dropout: float) -> Tensor:
    """Scaled dot-product attention ``(B, H, L, D)`` with the additive ``bias`` of ``attention_bias``.

    With gradients on it is written out (TRPO differentiates it twice; fused CPU kernels cannot); without,
    it is ``F.scaled_dot_product_attention``.
    """
    if torch.is_grad_enabled():
        att = ((q @ k.transpose(-2, -1)) / math.sqrt(k.shape[-1]) + bias).softmax(-1, dtype=torch.float32)
        return F.dropout(att.to(v.dtype), dropout, dropout > 0) @ v
    return F.scaled_dot_product_attention(q, k, v, attn_mask=bias, dropout_p=dropout)


@runtime_checkable
class RowKV(Protocol):
    """A KV cache that rows can leave and join, and whose leading columns can be cut: ``StaticKV``, and
    ``hf_cache.PreallocatedCache`` for Hugging Face models that lmpo does not run itself."""

    @staticmethod
    def stack(parts: Sequence[tuple[Any, int, int, Tensor | None]], room: int = 64) -> Any:
        """The parts' rows in turn as one cache (see ``StaticKV.stack``)."""

    def row(self, index: int, columns: Tensor) -> Any:
        """Row ``index``'s cache at ``columns`` only (None where it cannot be gone on from)."""


class StaticKV:
    """Preallocated keys and values per layer, grown by doubling: a decoding step writes in place instead of
    concatenating the whole cache (transformers' ``DynamicCache`` copies it all at every step)."""

    def __init__(self, layers: int, batch: int, heads: int, head_dim: int, capacity: int, like: Tensor) -> None:
        shape = (layers, batch, heads, capacity, head_dim)
        dtype = compute_dtype(like)
        self.k, self.v = like.new_empty(shape, dtype=dtype), like.new_empty(shape, dtype=dtype)

    @classmethod
    def holding(cls, k: Tensor, v: Tensor, room: int = 64) -> StaticKV:
        """A cache of exactly ``k, v (layers, B, H, L, D)``, with room for ``room`` more positions (one copy; the
        room is written before it is read)."""
        out = cls.__new__(cls)
        shape = (*k.shape[:3], k.shape[3] + room, k.shape[4])
        out.k, out.v = k.new_empty(shape), v.new_empty(shape)
        out.k[:, :, :, :k.shape[3]] = k
        out.v[:, :, :, :v.shape[3]] = v
        return out

    @staticmethod
    def stack(parts: Sequence[tuple[StaticKV, int, int, Tensor | None]], room: int = 64) -> StaticKV:
        """One cache of the parts' rows in turn: of each ``(cache, start, end, rows)``, positions ``start:end`` of
        ``rows`` (None: all), right-aligned at the longest span, in one copy. A shorter span is left-padded with
        zeros, which attention masks out and positions (counted over real tokens) never see."""
        first = parts[0][0]
        n = max(end - start for _, start, end, _ in parts)
        count = [c.k.shape[1] if rows is None else len(rows) for c, _, _, rows in parts]
        out = StaticKV.__new__(StaticKV)
        shape = (first.k.shape[0], sum(count), first.k.shape[2], n + room, first.k.shape[4])
        out.k, out.v = first.k.new_empty(shape), first.v.new_empty(shape)
        row = 0
        for (cache, start, end, rows), b in zip(parts, count, strict=True):
            at, length = slice(row, row + b), end - start
            for dst, src in ((out.k, cache.k), (out.v, cache.v)):
                dst[:, at, :, :n - length] = 0  # finite pads: a masked-out NaN would still poison the weighted sum
                dst[:, at, :, n - length:n] = src[:, :, :, start:end] if rows is None else \
                    src[:, :, :, start:end].index_select(1, rows)  # (faster than indexing with rows)
            row = at.stop
        return out

    def row(self, index: int, columns: Tensor) -> StaticKV:
        """Row ``index``'s cache at ``columns`` only (its real tokens: a reply that goes on after a tool call keeps
        what it has read)."""
        out = StaticKV.__new__(StaticKV)
        out.k, out.v = self.k[:, index:index + 1, :, columns], self.v[:, index:index + 1, :, columns]  # (copies)
        return out

    def write(self, layer: int, start: int, k: Tensor, v: Tensor) -> tuple[Tensor, Tensor]:
        """Store ``k, v (B, H, L, D)`` at ``start`` and return all keys and values up to ``start + L``."""
        end = start + k.shape[2]
        if end > self.k.shape[3]:
            grow = max(end, 2 * self.k.shape[3]) - self.k.shape[3]
            pad = (0, 0, 0, grow)
            self.k, self.v = F.pad(self.k, pad), F.pad(self.v, pad)
        self.k[layer, :, :, start:end] = k
        self.v[layer, :, :, start:end] = v
        return self.k[layer, :, :, :end], self.v[layer, :, :, :end]
