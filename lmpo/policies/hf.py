"""Any Hugging Face ``AutoModelForCausalLM`` as an lmpo language-model body, with its tokenizer.

Loads from a local directory or a hub id (``from_pretrained``); saves with ``save_pretrained`` so that
``AutoModelForCausalLM.from_pretrained(dir)`` loads the trained weights. The value head lives beside it.
"""

from __future__ import annotations

import inspect
from functools import partial
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lmpo.data.tokenizer import add_pad_token
from lmpo.policies.attention import StaticKV, attend, attention_bias, compute_dtype, token_positions
from lmpo.policies.base import save_weights
from lmpo.policies.lm import PASSES, LMPolicy, block_runner, kept_positions, recomputed
from lmpo.policies.sampling import SamplingConfig


def _native_gpt2(model: nn.Module) -> bool:
    """GPT-2-architecture models whose attention lmpo computes itself (plain scaled dot-product)."""
    cfg: Any = model.config
    return (cfg.model_type == "gpt2" and not getattr(cfg, "scale_attn_by_inverse_layer_idx", False)
            and not getattr(cfg, "reorder_and_upcast_attn", False) and not getattr(cfg, "add_cross_attention", False)
            and getattr(cfg, "scale_attn_weights", True))


class HFCausalLM(nn.Module):
    """Adapter from ``(ids, mask, cache)`` to a transformers causal LM; positions count real tokens only.

    GPT-2-architecture models run through ``_gpt2_forward``: the model's own modules (embeddings, layer
    norms, projections, MLPs, head) with lmpo's attention and ``StaticKV`` cache — the same function of
    the same parameters, about 1.5x faster to decode on CPU, and twice differentiable (TRPO). Its MLP
    computes GPT-2's tanh GELU with PyTorch's fused kernel (equal to float rounding). Other models decode with
    ``hf_cache.PreallocatedCache`` where their own cache is a ``DynamicCache`` of attention layers (sliding windows
    included; transformers 4.56 or later), else with their own.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model
        config: Any = model.config
        self.vocab_size = int(model.get_input_embeddings().weight.shape[0])  # type: ignore[operator]
        self.hidden_size = int(config.hidden_size)
        self.native = _native_gpt2(model)
        # transformers 5.24 renamed the cache argument and output field `past_key_values` -> `cache` (the old
        # name warns, and goes in 5.40); earlier releases know only the old name
        self._cache_name = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
        # GPT-2's "gelu_new" is the tanh GELU written as seven elementwise ops; PyTorch's kernel is one
        tanh_gelu = getattr(config, "activation_function", None) in ("gelu_new", "gelu_pytorch_tanh")
        self._gelu: Any = partial(F.gelu, approximate="tanh") if tanh_gelu else None
        # decode with lmpo's cache in place of transformers' own (None: not yet known; ``_new_cache`` finds out)
        self.preallocate: bool | None = None
        self._empty_cache: Any = None
        self.checkpointing = False  # recompute each block's activations in backward (``checkpoint_blocks``)
        self.compile_passes: frozenset[str] = frozenset()  # passes whose blocks run compiled (``compile_blocks``)

    def forward(self, ids: Tensor, mask: Tensor, cache: Any = None,
                keep: int | Tensor = 0) -> tuple[Tensor, Tensor, Any]:
        """See ``LMBody``."""
        if self.native:
            return self._gpt2_forward(ids, mask, cache, keep)
        positions = token_positions(mask, ids.shape[1])
        last = keep
        if isinstance(keep, Tensor):  # the model's head on the columns from the first kept one, then select
            last = keep.shape[1] - int(keep.any(0).int().argmax())
        scoring = cache is None and torch.is_grad_enabled()  # a training pass: no cache to keep
        if cache is None and not scoring and self.preallocate is not False:
            cache = self._new_cache(ids.device)
        out = self.model(input_ids=ids, attention_mask=mask.long(), position_ids=positions, use_cache=not scoring,
                         output_hidden_states=True, **{self._cache_name: cache},
                         **({"logits_to_keep": last} if last else {}))
        logits = out.logits[keep[:, -int(last):]] if isinstance(keep, Tensor) else out.logits
        return logits.float(), out.hidden_states[-1], getattr(out, self._cache_name)

    def _new_cache(self, device: torch.device) -> Any:
        """An empty ``hf_cache.PreallocatedCache`` to decode with; None where the model keeps its own cache, or the
        installed transformers predates 4.56 (the layered ``Cache`` with sliding-window layers that lmpo's plugs
        into)."""
        if self.preallocate is None:
            try:
                from lmpo.policies.hf_cache import probe
            except ImportError:
                self.preallocate = False
                return None
            self._empty_cache = probe(self.model, self._cache_name, device)
            self.preallocate = self._empty_cache is not None
        return self._empty_cache.empty() if self.preallocate else None

    def _gpt2_forward(self, ids: Tensor, mask: Tensor, cache: StaticKV | None,
                      keep: int | Tensor) -> tuple[Tensor, Tensor, Any]:
        model: Any = self.model
        tr = model.transformer
        b, length = ids.shape
        total = mask.shape[1]
        past = total - length
        heads = int(model.config.n_head)
        head_dim = self.hidden_size // heads
        positions = token_positions(mask, length)  # (B, L)
        x = tr.drop(tr.wte(ids) + tr.wpe(positions))  # (B, L, C)
        bias = attention_bias(mask, length, compute_dtype(x))  # (B, 1, L, total)
        if cache is None and not torch.is_grad_enabled():  # decoding starts: room for 64 more tokens
            cache = StaticKV(len(tr.h), b, heads, head_dim, total + 64, x)
        run = block_runner(self.compile_passes, HFCausalLM._gpt2_block)
        for i, block in enumerate(tr.h):
            if self.checkpointing and cache is None and torch.is_grad_enabled():
                x = recomputed(block, run, self, block, x, bias, i, past, None, heads)
            else:
                x = run(self, block, x, bias, i, past, cache, heads)
        h = tr.ln_f(x)
        return model.lm_head(kept_positions(h, keep)).float(), h, cache

    def _gpt2_block(self, block: Any, x: Tensor, bias: Tensor, i: int, past: int, cache: StaticKV | None,
                    heads: int) -> Tensor:
        """GPT-2 block ``i`` on ``x (B, L, C)`` with lmpo's attention and cache."""
        b, length, _ = x.shape
        q, k, v = block.attn.c_attn(block.ln_1(x)).split(self.hidden_size, dim=2)
        q, k, v = (t.view(b, length, heads, -1).transpose(1, 2) for t in (q, k, v))  # (B, H, L, D)
        if cache is not None:
            k, v = cache.write(i, past, k, v)  # (B, H, total, D)
        drop = block.attn.attn_dropout
        y = attend(q, k, v, bias, drop.p if drop.training else 0.0)  # (B, H, L, D)
        y = y.transpose(1, 2).reshape(b, length, self.hidden_size)
        x = x + block.attn.resid_dropout(block.attn.c_proj(y))
        mlp = block.mlp
        return x + mlp.dropout(mlp.c_proj((self._gelu or mlp.act)(mlp.c_fc(block.ln_2(x)))))


def checkpoint_blocks(body: nn.Module) -> None:
    """Gradient checkpointing: a training pass keeps only each block's input and recomputes the block in backward
    (activation memory of one block instead of all, for about a third more compute). lmpo's transformer and GPT-2's
    native path check themselves; another Hugging Face model's blocks (its ``_no_split_modules``) are wrapped."""
    from lmpo.policies.gpt import GPT

    if not isinstance(body, GPT | HFCausalLM):
        raise ValueError("gradient checkpointing is for transformer and hf policies")
    body.checkpointing = True
    if isinstance(body, GPT) or body.native:
        return
    names = set(getattr(body.model, "_no_split_modules", None) or [])
    blocks = [m for m in body.model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ValueError(f"gradient checkpointing: {type(body.model).__name__} names no blocks (_no_split_modules)")
    for block in blocks:
        block.forward = partial(_checkpointed, block, block.forward)


def compile_blocks(body: nn.Module, passes: list[str]) -> None:
    """``torch.compile`` of each transformer block for the given ``passes`` (``lmpo.policies.lm.PASSES``): decoding
    steps and/or scoring passes; the others run eagerly. For lmpo's transformer and GPT-2-architecture hf models
    (whose blocks lmpo runs itself)."""
    from lmpo.policies.gpt import GPT

    if not (isinstance(body, GPT) or isinstance(body, HFCausalLM) and body.native):
        raise ValueError("compiling blocks is for lmpo's transformer and GPT-2-architecture hf models")
    unknown = set(passes) - set(PASSES)
    if unknown:
        raise ValueError(f"unknown passes to compile: {sorted(unknown)} (known: {', '.join(PASSES)})")
    body.compile_passes = frozenset(passes)


def _checkpointed(block: nn.Module, forward: Any, *args: Any, **kwargs: Any) -> Any:
    """``forward`` recomputed in backward in a pass that builds a graph, plainly otherwise."""
    return recomputed(block, forward, *args, **kwargs) if torch.is_grad_enabled() else forward(*args, **kwargs)


def load_hf_body(name_or_path: str | Path, vocab_size: int | None = None, **kwargs: Any) -> HFCausalLM:
    """``AutoModelForCausalLM.from_pretrained`` as an lmpo body; embeddings resized to ``vocab_size`` only when the
    tokenizer has more tokens than the model has rows (it gained some; the pretrained rows stay as they are): a
    model whose rows are padded beyond its tokenizer keeps them."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(str(name_or_path), **kwargs)
    if vocab_size is not None and vocab_size > model.get_input_embeddings().weight.shape[0]:  # type: ignore[index]
        model.resize_token_embeddings(vocab_size)
    return HFCausalLM(model)


def load_hf_policy(name_or_path: str | Path, sampling: SamplingConfig | None = None,
                   attn_implementation: str | None = None, dtype: torch.dtype | None = None
                   ) -> tuple[LMPolicy, Any]:
    """``(policy, tokenizer)`` from a local directory or hub id.

    ``attn_implementation="eager"`` is needed for TRPO (its Fisher products differentiate attention
    twice, which fused kernels do not support). A tokenizer without a pad token, or whose pad is its eos,
    gets a ``<pad>`` token of its own (and the model an embedding row for it): a pad equal to eos would
    mask every reply's closing eos out of training.
    """
    from transformers import AutoTokenizer

    kwargs: dict[str, Any] = {}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if dtype is not None:
        kwargs["dtype"] = dtype
    tokenizer = AutoTokenizer.from_pretrained(str(name_or_path))
    add_pad_token(tokenizer)
    body = load_hf_body(name_or_path, len(tokenizer), **kwargs)
    policy = LMPolicy(body, int(tokenizer.pad_token_id), int(tokenizer.eos_token_id), sampling)
    return policy, tokenizer


def save_hf_policy(policy: LMPolicy, tokenizer: Any, path: str | Path, weights: dict[str, Tensor] | None = None
                   ) -> None:
    """``save_pretrained`` of the model and tokenizer, plus ``value_head.safetensors`` beside them; of ``weights``
    (the policy's state dict) when given: a sharded policy does not hold its weights whole."""
    body = policy.body
    if not isinstance(body, HFCausalLM):
        raise TypeError("save_hf_policy needs a policy built by load_hf_policy")
    path = Path(path)
    if weights is None:
        weights = policy.state_dict()
    model = {k.removeprefix("body.model."): v for k, v in weights.items() if k.startswith("body.model.")}
    body.model.save_pretrained(path, state_dict=model)  # type: ignore[operator]
    tokenizer.save_pretrained(path)
    save_weights({k.removeprefix("value_head."): v for k, v in weights.items() if k.startswith("value_head.")},
                 path / "value_head.safetensors")
