"""Learned reward models: a scalar score of a reply in its context, and the ``model`` reward that reads one.

Three kinds behind one interface (``encode`` turns into ids, ``forward`` ids into scores):

- ``LMRewardModel``: one of lmpo's language models (GRU, LSTM, transformer) with a scalar head read at the last
  token of the conversation in lmpo's chat format; saved by ``lmpo train-rm`` as ``reward_model.safetensors``
  with ``reward_model.yaml`` and the tokenizer;
- ``MMIRewardModel``: a pre-trained lmpo language model's mutual information between a reply and its context,
  ``log p(reply | context) - log p(reply)`` (the MMI score of Li et al. 2016), with ``p(reply)`` the mean of
  ``p(reply | c)`` over a fixed sample of contexts; it needs no head, so nothing is fitted to the pairs;
- ``HFRewardModel``: any Hugging Face ``AutoModelForSequenceClassification`` with one label, loaded from a
  directory written by ``save_pretrained`` (lmpo's own ``train-rm`` output, or yours).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Protocol

import torch
import yaml
from safetensors.torch import load_file
from torch import Tensor, nn
from torch.nn.utils.rnn import pad_sequence

from lmpo.data.corpus import Turn
from lmpo.data.tokenizer import ASSISTANT, encode_dialogue, encode_prompt, load_tokenizer, token_id
from lmpo.rewards.library import add_check
from lmpo.rewards.registry import RewardError, register_reward

SPEC = "reward_model.yaml"  # what kind of reward model a directory holds, and how to rebuild it
WEIGHTS = "reward_model.safetensors"


class RewardModel(Protocol):
    """Scores replies in their context; higher is better (a Bradley-Terry logit)."""

    max_len: int

    def encode(self, context: Sequence[Turn], reply: Sequence[Turn]) -> list[int]:
        """The ids scored for ``reply`` after ``context`` (the last ``max_len``)."""
        ...

    def __call__(self, ids: list[list[int]]) -> Tensor:
        """``(B,)`` scores of a batch of encoded conversations, differentiable."""
        ...


class LMRewardModel(nn.Module):
    """An lmpo language-model body (the one a ``policy`` section describes) with a linear head on the hidden state
    of the last token."""

    def __init__(self, policy: dict[str, Any], tokenizer: Any, max_len: int = 256) -> None:
        super().__init__()
        self.policy, self.tokenizer, self.max_len = policy, tokenizer, max_len
        self.body = body = build_lm_body(policy, len(tokenizer))
        self.head = nn.Linear(int(body.hidden_size), 1)  # type: ignore[arg-type]
        nn.init.normal_(self.head.weight, std=1.0 / (int(body.hidden_size) + 1) ** 0.5)  # type: ignore[arg-type]
        nn.init.zeros_(self.head.bias)
        self.pad_id = int(tokenizer.pad_token_id)

    def spec(self) -> dict[str, Any]:
        """What ``load_reward_model`` rebuilds it from (``reward_model.yaml``)."""
        return {"format": "lmpo", "policy": self.policy, "max_len": self.max_len}

    def encode(self, context: Sequence[Turn], reply: Sequence[Turn]) -> list[int]:
        """The conversation in lmpo's chat format, ending with the reply's ``<eos>``."""
        return encode_dialogue(self.tokenizer, [*context, *reply]).ids[-self.max_len:]

    def forward(self, ids: list[list[int]]) -> Tensor:
        """Left-padded so that every row's last position is its last token; the head reads it there."""
        width = max(map(len, ids))
        device = self.head.weight.device
        batch = torch.full((len(ids), width), self.pad_id, dtype=torch.long, device=device)
        for i, row in enumerate(ids):
            batch[i, width - len(row):] = torch.tensor(row, device=device)
        _, hidden, _ = self.body(batch, batch != self.pad_id, keep=1)  # hidden (B, L, H)
        return self.head(hidden[:, -1]).squeeze(-1).float()  # (B,)


class MMIRewardModel(nn.Module):
    """``log p(reply | context) - log mean_k p(reply | c_k)`` under an lmpo language model: how much more likely the
    context makes the reply than ``contexts`` (a sample of user lines) do on average. A reply that fits any line
    ("I don't know") scores near 0; one that answers this line scores high."""

    def __init__(self, policy: dict[str, Any], tokenizer: Any, contexts: Sequence[str], max_len: int = 256,
                 batch_rows: int = 256) -> None:
        from lmpo.policies import LMPolicy, SamplingConfig

        super().__init__()
        if not contexts:
            raise ValueError("an MMI reward model needs at least one marginal context")
        self.policy, self.tokenizer, self.max_len, self.contexts = policy, tokenizer, max_len, list(contexts)
        # plain log-probabilities: no ban on an early <eos> (only the pad is never a token)
        self.lm = LMPolicy(build_lm_body(policy, len(tokenizer)), int(tokenizer.pad_token_id),
                           int(tokenizer.eos_token_id), SamplingConfig(min_new_tokens=0, max_new_tokens=max_len))
        self.assistant = token_id(tokenizer, ASSISTANT)
        self.context_ids = [encode_prompt(tokenizer, [Turn("user", c)]) for c in self.contexts]
        self.batch_rows = batch_rows  # rows per forward pass: (K + 1) per scored reply

    def spec(self) -> dict[str, Any]:
        """What ``load_reward_model`` rebuilds it from (``reward_model.yaml``)."""
        return {"format": "lmpo-mmi", "policy": self.policy, "max_len": self.max_len, "contexts": self.contexts}

    def encode(self, context: Sequence[Turn], reply: Sequence[Turn]) -> list[int]:
        """The context in lmpo's chat format up to ``<|assistant|>`` (its last tokens), then the reply's tokens and
        ``<eos>`` (at most the first half of ``max_len``: the context keeps the other half, and the split
        ``forward`` makes survives any cut). Of a reply of several turns the last is scored, the others count as
        context."""
        *before, last = [*context, *reply]
        answer = encode_dialogue(self.tokenizer, [Turn("assistant", last.content)]).ids[2:][: self.max_len // 2]
        return encode_prompt(self.tokenizer, before)[-(self.max_len - len(answer)):] + answer

    def forward(self, ids: list[list[int]]) -> Tensor:
        """Each conversation split after its last ``<|assistant|>``; the reply scored after its own prompt and
        after every marginal context (their last tokens, to fit ``max_len``), in batches of ``batch_rows``."""
        from lmpo.policies.generation import left_pad

        rows: list[tuple[list[int], list[int]]] = []
        for conv in ids:
            start = len(conv) - conv[::-1].index(self.assistant)  # encode always writes it
            reply, room = conv[start:], self.max_len - (len(conv) - start)
            rows += [(p[-room:], reply) for p in (conv[:start], *self.context_ids)]
        device = next(self.lm.parameters()).device
        pad = self.lm.pad_id
        sums = []
        for i in range(0, len(rows), self.batch_rows):
            chunk = rows[i:i + self.batch_rows]
            actions = pad_sequence([torch.tensor(r) for _, r in chunk], batch_first=True, padding_value=pad)
            sums.append(self.lm.evaluate(left_pad([p for p, _ in chunk], pad, device), actions.to(device))
                        .log_probs.sum(1))
        ll = torch.cat(sums).view(len(ids), 1 + len(self.contexts))  # (B, 1 + K)
        marginal = torch.logsumexp(ll[:, 1:], dim=1) - math.log(len(self.contexts))
        return (ll[:, 0] - marginal).float()


class HFRewardModel(nn.Module):
    """A Hugging Face sequence classifier with one label; its own tokenizer (and chat template, if it has one)."""

    def __init__(self, model: nn.Module, tokenizer: Any, max_len: int = 512) -> None:
        super().__init__()
        self.model, self.tokenizer, self.max_len = model, tokenizer, max_len
        if tokenizer.pad_token is None:  # GPT-2-like: the classifier finds each row's last token by the pad id
            tokenizer.pad_token = tokenizer.eos_token
        config: Any = model.config
        config.pad_token_id = tokenizer.pad_token_id

    def encode(self, context: Sequence[Turn], reply: Sequence[Turn]) -> list[int]:
        """With a chat template: the conversation as the template writes it. Without: context and reply as a text
        pair (the classifier's own separator tokens), the context's start cut when too long."""
        tok = self.tokenizer
        turns = [*context, *reply]
        if getattr(tok, "chat_template", None):
            messages = [{"role": t.role, "content": t.content} for t in turns]
            ids = tok.apply_chat_template(messages, tokenize=True)
            return list(ids["input_ids"] if isinstance(ids, dict) else ids)[-self.max_len:]
        text = "\n".join(t.content for t in context) or None
        pair = "\n".join(t.content for t in reply)
        args = (text, pair) if text is not None else (pair,)
        truncation = "only_first" if text is not None else True
        return list(tok(*args, truncation=truncation, max_length=self.max_len)["input_ids"])

    def forward(self, ids: list[list[int]]) -> Tensor:
        """Right-padded with the attention mask."""
        width = max(map(len, ids))
        device = next(self.model.parameters()).device
        batch = torch.full((len(ids), width), int(self.tokenizer.pad_token_id), dtype=torch.long, device=device)
        mask = torch.zeros_like(batch)
        for i, row in enumerate(ids):
            batch[i, :len(row)] = torch.tensor(row, device=device)
            mask[i, :len(row)] = 1
        return self.model(input_ids=batch, attention_mask=mask).logits[:, 0].float()


AnyRewardModel = LMRewardModel | MMIRewardModel | HFRewardModel


def build_lm_body(policy: dict[str, Any], vocab: int) -> nn.Module:
    """The body a ``policy`` section describes (gru, lstm, transformer), over a vocabulary of ``vocab``."""
    from lmpo.config import PolicyConfig
    from lmpo.policies import GPT, GPTConfig, RecurrentLM

    p = PolicyConfig(**policy)
    if p.kind in ("gru", "lstm"):
        return RecurrentLM(vocab, p.kind, p.embed, p.hidden, dropout=p.dropout)
    if p.kind == "transformer":
        return GPT(GPTConfig(vocab, p.n_layer, p.n_head, p.d_model, p.max_len, p.dropout, p.positions))
    raise ValueError(f"policy.kind {p.kind!r} is not one of lmpo's own language models")


def load_reward_model(path: str | Path) -> AnyRewardModel:
    """A reward model from ``lmpo train-rm``'s output directory, or a ``save_pretrained`` sequence classifier."""
    path = Path(path)
    spec_file = path / SPEC
    if spec_file.is_file():
        spec = yaml.safe_load(spec_file.read_text())
        if spec.get("format") == "hf":
            return _hf(path / spec.get("directory", "hf"), int(spec.get("max_len", 512)))
        tokenizer = load_tokenizer(path / "tokenizer")
        model: LMRewardModel | MMIRewardModel
        if spec.get("format") == "lmpo-mmi":
            model = MMIRewardModel(spec["policy"], tokenizer, spec["contexts"], int(spec["max_len"]))
        else:
            model = LMRewardModel(spec["policy"], tokenizer, int(spec["max_len"]))
        model.load_state_dict(load_file(path / WEIGHTS))
        return model.eval()
    if (path / "config.json").is_file():
        return _hf(path)
    raise RewardError(f"{path} is not a reward model (no {SPEC} from lmpo train-rm, and no config.json of a "
                      "Hugging Face sequence classifier)", user=True)


def _hf(path: Path, max_len: int = 512) -> HFRewardModel:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    model = AutoModelForSequenceClassification.from_pretrained(str(path))
    if int(model.config.num_labels) != 1:
        raise RewardError(f"{path}: a reward model has one output (num_labels=1), this classifier has "
                          f"{model.config.num_labels}", user=True)
    return HFRewardModel(model, AutoTokenizer.from_pretrained(str(path)), max_len).eval()


@functools.lru_cache(maxsize=4)
def _cached(path: str, mtime: float) -> AnyRewardModel:
    """One loaded copy per directory (reloaded when its spec or config changes)."""
    return load_reward_model(path)


def _load(path: str) -> AnyRewardModel:
    p = Path(path).expanduser().resolve()
    marker = p / SPEC if (p / SPEC).is_file() else p / "config.json"
    try:
        return _cached(str(p), marker.stat().st_mtime if marker.is_file() else 0.0)
    except RewardError:
        raise
    except Exception as e:  # noqa: BLE001  (damaged files raise whatever their reader raises)
        raise RewardError(f"reward model {path}: cannot be loaded ({type(e).__name__}: {str(e).splitlines()[0]})",
                          user=True) from None


@torch.no_grad()
def score_replies(rm: AnyRewardModel, contexts: Sequence[Sequence[Turn]],
                  replies: Sequence[Sequence[Turn]], batch_size: int = 32) -> list[float]:
    """The reward model's score of each reply after its context, in batches."""
    ids = [rm.encode(c, r) for c, r in zip(contexts, replies, strict=True)]
    return [float(s) for i in range(0, len(ids), batch_size) for s in rm(ids[i:i + batch_size])]


def _check(name: str, settings: dict[str, Any]) -> None:
    if not isinstance(settings.get("path"), str):
        raise RewardError(f"reward {name!r} needs a path (the directory of lmpo train-rm, or a save_pretrained "
                          "sequence classifier)")
    _load(settings["path"])


@functools.partial(add_check, check=_check)  # run by WeightedReward.from_specs: a bad path is a config error
@register_reward("model")
def model(prompts: list[str], completions: list[str], *, path: str, batch_size: int = 32, **_: Any) -> list[float]:
    """A learned reward model's score of each completion answering its prompt (``path``: ``lmpo train-rm``'s
    output directory, or a Hugging Face sequence classifier saved with ``save_pretrained``)."""
    rm = _load(path)
    contexts = [(Turn("user", p),) for p in prompts]
    return score_replies(rm, contexts, [(Turn("assistant", c),) for c in completions], batch_size)

