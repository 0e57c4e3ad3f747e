"""Language-model policies: a causal LM body plus a value head, behind the same ``Policy`` protocol.

Layout of a language-model rollout: ``obs`` are prompts ``(B, P)`` left-padded with the pad id,
``actions`` are replies ``(B, T)`` right-padded with it; the pad id is never sampled, so both masks follow
from the ids. The value of response position ``t`` is read from the hidden state that predicts token ``t``.
"""

from __future__ import annotations

import contextlib
import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.checkpoint import checkpoint

from lmpo.policies.base import Evaluation, ForwardEvaluation, PolicyStep, unpack
from lmpo.policies.sampling import SamplingConfig, entropy_of, kl_of, sampling_logprobs


class LMBody(Protocol):
    """A causal LM with a cache: GRU/LSTM, the small GPT, or a Hugging Face model."""

    hidden_size: int
    vocab_size: int

    def __call__(self, ids: Tensor, mask: Tensor, cache: Any = None,
                 keep: int | Tensor = 0) -> tuple[Tensor, Tensor, Any]:
        """``ids (B, L)`` new tokens, ``mask (B, L_past + L)`` real tokens (contiguous, left and right
        padding allowed); returns logits, ``hidden (B, L, H)`` and the cache. Logits are ``(B, L, V)``;
        ``(B, keep, V)`` of the last ``keep`` positions when ``keep > 0`` (decoding needs one); ``(N, V)`` of
        the ``N`` positions a boolean ``keep (B, L)`` marks, row by row (scoring: real reply tokens only)."""
        ...


def kept_positions(h: Tensor, keep: int | Tensor) -> Tensor:
    """The positions of ``h (B, L, ...)`` whose logits an ``LMBody`` computes (see ``LMBody.__call__``)."""
    if isinstance(keep, Tensor):
        return h[keep]
    return h[:, -keep:] if keep else h


PASSES = ("decode", "score")  # what may be compiled: passes without gradients (generation...), and with (updates)


@functools.cache
def _compiled(fn: Callable[..., Any]) -> Callable[..., Any]:
    return torch.compile(fn, dynamic=True)


def block_runner(compile_passes: frozenset[str], fn: Callable[..., Any]) -> Callable[..., Any]:
    """``fn`` (a transformer block's computation, taking the block as its first argument), or its ``torch.compile``d
    twin when compilation was asked for this kind of pass. One compiled function serves every block of every model
    (modules are arguments, not constants), compiled on first use with dynamic shapes."""
    kind = "score" if torch.is_grad_enabled() else "decode"
    return _compiled(fn) if kind in compile_passes else fn


def recomputed(module: nn.Module, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``fn(*args, **kwargs)`` under ``torch.utils.checkpoint`` (gradient checkpointing of a block): recomputed in
    backward with ``module`` in the mode it had in forward (scoring runs in eval mode, without dropout, and backward
    runs after that mode is gone)."""
    return checkpoint(_in_mode, module, module.training, fn, *args, use_reentrant=False, **kwargs)


def _in_mode(module: nn.Module, training: bool, fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    was = module.training
    if was == training:
        return fn(*args, **kwargs)
    module.train(training)
    try:
        return fn(*args, **kwargs)
    finally:
        module.train(was)


class LMPolicy(ForwardEvaluation, nn.Module):
    """A language model as a policy: actions are tokens, a row is one reply."""

    markov = False
    has_value = True

    def __init__(self, body: nn.Module, pad_id: int, eos_id: int, sampling: SamplingConfig | None = None,
                 stop_ids: Sequence[int] = ()) -> None:
        super().__init__()
        self.body = body
        self.value_head = nn.Linear(int(body.hidden_size), 1)  # type: ignore[arg-type]
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)
        self.pad_id, self.eos_id = pad_id, eos_id
        # every id that ends a reply: eos, and a chat template's end-of-turn tokens (a generation config's eos ids)
        self.stop_ids: tuple[int, ...] = tuple(dict.fromkeys([eos_id, *stop_ids]))
        self.sampling = sampling or SamplingConfig()

    @contextlib.contextmanager
    def _no_dropout(self) -> Iterator[None]:
        """Score and sample without dropout: the ratio of identical parameters must be exactly 1."""
        was = self.body.training
        if not was:  # already (serving, evaluating): no walk over every module, twice, per decoding step
            yield
            return
        self.body.eval()
        try:
            yield
        finally:
            self.body.train(was)

    def _score(self, prompts: Tensor, replies: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """One teacher-forced pass; sampling log-probs ``(N, V)`` of the ``N`` real reply tokens (row by
        row), values ``(B, T)`` and the reply mask ``(B, T)``."""
        t = replies.shape[1]
        if t == 0:
            raise ValueError("no reply tokens to score")
        # a minibatch (or a process's share of one) is padded to its rollout's longest prompt and reply: columns that
        # are padding in every row cost as much as real ones (a sixth of the main job's minibatch cells), and change
        # nothing (positions count real tokens; pads are masked): leave them out
        real = replies != self.pad_id  # (B, T)
        first = int((prompts != self.pad_id).any(0).int().argmax())  # prompts are left-padded
        last = int(real.any(0).cumsum(0).argmax())  # replies right-padded: the last column with a token (0 if none)
        logp, values = self._score_trimmed(prompts[:, first:], replies[:, :last + 1])
        return logp, F.pad(values, (0, t - values.shape[1])), real

    def _score_trimmed(self, prompts: Tensor, replies: Tensor) -> tuple[Tensor, Tensor]:
        """``_score``'s log-probs and values on the columns some row uses."""
        p, t = prompts.shape[1], replies.shape[1]
        # position P - 1 + i predicts reply token i, so the last reply token is never an input. Logits only
        # at real reply tokens: replies are right-padded to the longest, and the projection to the vocabulary
        # with its log-softmax would otherwise cost as much on pads as on tokens (half a batch is pads).
        ids = torch.cat([prompts, replies[:, :-1]], dim=1)  # (B, P + T - 1)
        mask = ids != self.pad_id
        real = replies != self.pad_id  # (B, T)
        keep = torch.cat([real.new_zeros(real.shape[0], p - 1), real], dim=1)  # (B, P + T - 1)
        with self._no_dropout():
            logits, hidden, _ = self.body(ids, mask, keep=keep)  # (N, V)
        steps = torch.arange(t, device=ids.device).expand(ids.shape[0], t)[real]  # (N,) reply position
        logp = sampling_logprobs(logits, steps, self.sampling, self.pad_id, self.stop_ids)
        values = self.value_head(hidden[:, p - 1:]).squeeze(-1).float()  # (B, T), float32 under autocast too
        return logp, values

    # ---------------------------------------------------------------------- the Policy protocol
    def sample(self, obs: Tensor, deterministic: bool = False) -> PolicyStep:
        """Generate replies to left-padded prompts ``(B, P)`` (greedy when ``deterministic``)."""
        from lmpo.policies.generation import generate

        out = generate(self, obs, self.sampling.as_greedy() if deterministic else None)
        return PolicyStep(out.tokens, out.logprobs, out.values, out.mask)

    def forward(self, obs: Tensor, actions: Tensor | None = None, value_only: bool = False) -> Evaluation | Tensor:
        """``evaluate``: log-probs, values and distributions of every reply token of the batch in one pass;
        ``value``: ``V`` at every reply position ``(B, T)`` (the value needs the reply it is read along)."""
        if actions is None:
            raise ValueError("a language-model policy scores replies: pass the actions")
        logp_all, values, mask = self._score(obs, actions)
        if value_only:
            return values * mask
        logp = logp_all.gather(-1, actions[mask].unsqueeze(-1)).squeeze(-1)  # (N,)
        return Evaluation(unpack(logp, mask), values * mask, logp_all, entropy_of, steps=mask)

    def kl(self, old_dist: Tensor, new_dist: Tensor) -> Tensor:
        """``KL(old || new)`` per token over the vocabulary."""
        return kl_of(old_dist, new_dist)

    def actor_parameters(self) -> list[nn.Parameter]:
        """The language model's parameters."""
        return list(self.body.parameters())

    def critic_parameters(self) -> list[nn.Parameter]:
        """The value head (it reads the body's hidden states)."""
        return list(self.value_head.parameters())
