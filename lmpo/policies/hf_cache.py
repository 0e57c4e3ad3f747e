"""lmpo's preallocated KV cache behind transformers' ``Cache`` interface, for Hugging Face models that run through
their own forward (every architecture but GPT-2's, and GPT-2 under FSDP).

Each full-attention layer writes its keys and values in place into a ``StaticKV`` grown by doubling, where
transformers' ``DynamicCache`` concatenates the whole cache at every step; and, as with lmpo's own models, finished
rows can leave a batch, new ones join it and leading columns that are padding for every row be cut
(``generation.cache_stack``, ``cache_row``). Models with other layers (sliding windows, linear attention, layers
that share another's cache) keep transformers' own cache: ``for_config`` says None.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from torch import Tensor
from transformers.cache_utils import Cache, DynamicCache, DynamicLayer

from lmpo.policies.attention import StaticKV

ROOM = 64  # positions a new cache has for decoding before it first grows


class LayerKV(DynamicLayer):
    """One full-attention layer's keys and values ``(B, H, length, D)``: a one-layer ``StaticKV`` and how many of its
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
        """``(kv_length, kv_offset)`` for the attention mask, as a ``DynamicLayer`` says (transformers before 5 pass
        the query's ``cache_position``, later ones its length)."""
        return self.length + (query if isinstance(query, int) else query.shape[0]), 0

    def get_seq_length(self) -> int:
        """Positions held."""
        return self.length


class PreallocatedCache(Cache):
    """A ``Cache`` of ``LayerKV`` layers, one per decoder layer: what ``HFCausalLM`` decodes with."""

    def __init__(self, layers: list[LayerKV]) -> None:
        super().__init__(layers=list(layers))

    @classmethod
    def for_config(cls, config: Any) -> PreallocatedCache | None:
        """An empty cache for a model of ``config``, or None where a layer is not plain full attention (transformers'
        own cache is then used)."""
        own = DynamicCache(config=config)  # transformers' choice of layer kinds, from the config; it holds no tensors
        if not own.layers or any(type(layer) is not DynamicLayer for layer in own.layers):
            return None
        return cls([LayerKV() for _ in own.layers])

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
        layers = len(parts[0][0].layers)
        return PreallocatedCache([
            LayerKV(StaticKV.stack([(c._kv(i), s, e, r) for c, s, e, r in parts], room), width)
            for i in range(layers)])

    def row(self, index: int, columns: Tensor) -> PreallocatedCache:
        """Row ``index``'s cache at ``columns`` only (``StaticKV.row`` of every layer)."""
        return PreallocatedCache([LayerKV(self._kv(i).row(index, columns), len(columns))
                                  for i in range(len(self.layers))])
