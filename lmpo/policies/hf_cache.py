"""lmpo's preallocated KV cache behind transformers' ``Cache`` interface, for Hugging Face models that run through
their own forward (every architecture but GPT-2's, and GPT-2 under FSDP).

Each attention layer writes its keys and values in place into a ``StaticKV`` grown by doubling, where transformers'
``DynamicCache`` concatenates the whole cache at every step; and, as with lmpo's own models, finished rows can leave
a batch, new ones join it and leading columns that are padding for every row be cut (``generation.cache_stack``,
``cache_row``). A sliding-window layer keeps every position too: the attention mask, which transformers builds from
the config, applies the window (transformers' own cache keeps only the window: past it, this holds more). Models
whose own cache is anything else (linear attention or recurrent layers, layers that share another's cache, a cache
class of their own) keep it: ``PreallocatedCache.replacing`` says None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer, DynamicSlidingWindowLayer

from lmpo.policies.attention import StaticKV

ROOM = 64  # positions a new cache has for decoding before it first grows


class LayerKV(DynamicLayer):
    """One attention layer's keys and values ``(B, H, length, D)``: a one-layer ``StaticKV`` and how many of its
    positions are written. A ``DynamicLayer`` to transformers (whose abstract methods vary between releases), with
    the methods that decoding calls replaced; beam search's and assisted decoding's (``crop``, ``reorder_cache``) are
    not lmpo's, and would act on the ``keys`` / ``values`` views only."""

    def __init__(self, kv: StaticKV | None = None, length: int = 0) -> None:
        super().__init__()
        self.kv, self.length = kv, length
        if kv is not None:
            self._held()

    def _held(self) -> None:
        """``keys`` / ``values`` as the mixin defines them (views of what is written)."""
        assert self.kv is not None
        self.keys, self.values = self.kv.k[0, :, :, :self.length], self.kv.v[0, :, :, :self.length]
        self.device = self.keys.device
        self.is_initialized = True

    def lazy_initialization(self, key_states: Tensor, value_states: Tensor) -> None:
        """A cache holding the first keys and values (a prompt's), with room for ``ROOM`` more positions."""
        self.kv = StaticKV.holding(key_states.unsqueeze(0), value_states.unsqueeze(0), ROOM)
        self.length = key_states.shape[2]
        self._held()

    def update(self, key_states: Tensor, value_states: Tensor, *args: Any, **kwargs: Any) -> tuple[Tensor, Tensor]:
        """Write ``key_states, value_states (B, H, L, D)`` after what is held; all keys and values so far."""
        if self.kv is None:
            self.lazy_initialization(key_states, value_states)
            return key_states, value_states
        self.keys, self.values = self.kv.write(0, self.length, key_states, value_states)
        self.length += key_states.shape[2]
        return self.keys, self.values

    def get_mask_sizes(self, query: int | Tensor) -> tuple[int, int]:
        """``(kv_length, kv_offset)`` for the attention mask, as a ``DynamicLayer`` says (some releases pass
        the query's ``cache_position``, later ones its length)."""
        return self.length + (query if isinstance(query, int) else query.shape[0]), 0

    def get_seq_length(self) -> int:
        """Positions held."""
        return self.length


class PreallocatedCache(Cache):
    """A ``Cache`` of ``LayerKV`` layers, one per decoder layer: what ``HFCausalLM`` decodes with. ``windowed``: some
    layer attends through a sliding window."""

    def __init__(self, layers: list[LayerKV], windowed: bool = False) -> None:
        super().__init__(layers=list(layers))
        self.windowed = windowed

    @classmethod
    def replacing(cls, own: Any) -> PreallocatedCache | None:
        """An empty cache to decode with in place of ``own``, the cache the model made itself; None where ``own`` is
        not transformers' ``DynamicCache`` of attention layers."""
        kinds = (DynamicLayer, DynamicSlidingWindowLayer)
        if type(own) is not DynamicCache or not own.layers or any(type(layer) not in kinds for layer in own.layers):
            return None
        windowed = any(type(layer) is DynamicSlidingWindowLayer for layer in own.layers)
        return cls([LayerKV() for _ in own.layers], windowed)

    def empty(self) -> PreallocatedCache:
        """A new empty cache of the same layers."""
        return PreallocatedCache([LayerKV() for _ in self.layers], self.windowed)

    def _kv(self, i: int) -> StaticKV:
        """Layer ``i``'s keys and values."""
        layer = self.layers[i]
        if not isinstance(layer, LayerKV) or layer.kv is None:
            raise ValueError("a cache is copied before its first forward wrote it")
        return layer.kv

    @staticmethod
    def stack(parts: Sequence[tuple[PreallocatedCache, int, int, Tensor | None]],
              room: int = ROOM) -> PreallocatedCache:
        """``StaticKV.stack`` of every layer: of each ``(cache, start, end, rows)``, positions ``start:end`` of ``rows``
        (None: all), right-aligned at the longest span, in one copy."""
        width = max(end - start for _, start, end, _ in parts)
        first = parts[0][0]
        return PreallocatedCache([
            LayerKV(StaticKV.stack([(c._kv(i), s, e, r) for c, s, e, r in parts], room), width)
            for i in range(len(first.layers))], first.windowed)

    def row(self, index: int, columns: Tensor) -> PreallocatedCache | None:
        """Row ``index``'s cache at ``columns`` only (``StaticKV.row`` of every layer); None for a windowed one: text
        read on after it would follow a gap of padding (``Engine._read_on``), which a window counts."""
        if self.windowed:
            return None
        return PreallocatedCache([LayerKV(self._kv(i).row(index, columns), len(columns))
                                  for i in range(len(self.layers))])


@torch.no_grad()
def probe(model: Any, cache_name: str, device: torch.device) -> PreallocatedCache | None:
    """What ``PreallocatedCache.replacing`` makes of the cache ``model`` makes itself, seen on a one-token forward."""
    out = model(input_ids=torch.ones(1, 1, dtype=torch.long, device=device), use_cache=True)
    return PreallocatedCache.replacing(getattr(out, cache_name))
