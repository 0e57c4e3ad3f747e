"""The classic recurrent dialogue model: embedding -> GRU or LSTM -> projection to the vocabulary."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lmpo.policies.lm import kept_positions


def _shift_rows(x: Tensor, shift: Tensor) -> Tensor:
    """Roll every row of ``x (B, L, ...)`` left by ``shift[b]`` (right for negative shifts)."""
    length = x.shape[1]
    idx = (torch.arange(length, device=x.device).unsqueeze(0) + shift.unsqueeze(1)) % length  # (B, L)
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x))


class RecurrentLM(nn.Module):
    """Embedding 256, one recurrent layer of 512 (GRU or LSTM), dropout 0.1, linear projection to the vocab.

    Left padding would feed pads through the recurrence, so a sequence is right-aligned and packed: the
    state after each row's last real token is exactly the state after its real tokens.
    """

    def __init__(self, vocab_size: int, cell: Literal["gru", "lstm"] = "gru", embed: int = 256,
                 hidden: int = 512, layers: int = 1, dropout: float = 0.1) -> None:
        super().__init__()
        self.vocab_size, self.hidden_size, self.cell = vocab_size, hidden, cell
        self.embed = nn.Embedding(vocab_size, embed)
        rnn = nn.GRU if cell == "gru" else nn.LSTM
        self.rnn = rnn(embed, hidden, num_layers=layers, batch_first=True)
        self.proj = nn.Linear(hidden, vocab_size)
        self.dropout = dropout

    def forward(self, ids: Tensor, mask: Tensor, cache: Any = None,
                keep: int | Tensor = 0) -> tuple[Tensor, Tensor, Any]:
        """See ``LMBody``; without a cache the real tokens of each row may sit between left and right pads."""
        x = F.dropout(self.embed(ids), self.dropout, self.training)  # (B, L, E)
        if cache is not None:  # continue every row from its state (generation step)
            out, cache = self.rnn(x, cache)
        else:
            new_mask = mask[:, -ids.shape[1]:]
            lengths = new_mask.sum(1)
            lead = new_mask.int().argmax(1)  # index of the first real token
            packed = pack_padded_sequence(_shift_rows(x, lead), lengths.cpu(), batch_first=True, enforce_sorted=False)
            out, cache = self.rnn(packed)
            out, _ = pad_packed_sequence(out, batch_first=True, total_length=ids.shape[1])
            out = _shift_rows(out, -lead)  # back to the input's positions (zeros on pads)
        h = F.dropout(out, self.dropout, self.training)  # (B, L, H)
        return self.proj(kept_positions(h, keep)), h, cache
