"""The classic recurrent dialogue model: embedding -> GRU or LSTM -> projection to the vocabulary."""

from __future__ import annotations

from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.rnn import pack_padded_sequence, pad_packed_sequence

from lmpo.policies.lm import kept_positions


def _cell(lstm: bool, gx: Tensor, h: Tensor, c: Tensor, w_hh: Tensor, b_hh: Tensor) -> tuple[Tensor, Tensor]:
    """One step of ``nn.GRU`` / ``nn.LSTM``'s recurrence from the input's projection ``gx``; returns
    ``(h, c)`` (``c`` passes through for a GRU). Under autocast the matmuls run in bfloat16 and the states
    stay float32."""
    gh = F.linear(h, w_hh, b_hh)
    if lstm:
        i, f, g, o = (gx + gh).chunk(4, 1)
        c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
        return torch.sigmoid(o) * torch.tanh(c), c
    xr, xz, xn = gx.chunk(3, 1)
    hr, hz, hn = gh.chunk(3, 1)
    z = torch.sigmoid(xz + hz)
    new = torch.tanh(xn + torch.sigmoid(xr + hr) * hn)
    return new + z * (h - new), c  # (1 - z) * new + z * h


def _layer(rnn: nn.GRU | nn.LSTM, layer: int) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(w_ih, b_ih, w_hh, b_hh)`` of one layer."""
    return tuple(getattr(rnn, f"{name}_l{layer}") for name in ("weight_ih", "bias_ih", "weight_hh", "bias_hh"))


def _run_packed(rnn: nn.GRU | nn.LSTM, x: Tensor, mask: Tensor) -> tuple[Tensor, Any]:
    """``rnn`` over the real tokens of each row of ``x (B, L, E)`` (contiguous, pads on either side), from a
    zero state; returns outputs ``(B, L, H)`` (zeros on pads) and the state after each row's last token.

    The recurrence runs over time-major packed tokens, rows sorted by length so that step ``t`` runs the
    first ``batch_sizes[t]`` rows. ``nn.GRU``'s own packed path slices its input per step, and autograd
    turns each slice's gradient into a zero-filled copy of the whole sequence: 2.5x slower forward +
    backward at the dialogue job's sizes. Here the input projection is one matmul split per step (its
    gradient: one concatenation). Same parameters and, in float32, bitwise the same result as ``nn.GRU``.
    """
    b, length, _ = x.shape
    lengths = mask.sum(1)
    lead = mask.int().argmax(1)  # index of each row's first real token
    order = torch.argsort(lengths, descending=True, stable=True)
    active = lengths[order].unsqueeze(0) > torch.arange(length, device=x.device).unsqueeze(1)  # (L, B) sorted
    batch_sizes = [n for n in active.sum(1).tolist() if n]
    if not batch_sizes:
        raise ValueError("no real tokens to run the recurrence over")
    steps, sorted_rows = active.nonzero(as_tuple=True)  # time-major: step t, then rows
    rows = order[sorted_rows]
    cols = lead[rows] + steps
    data = x[rows, cols]  # (N, E)
    lstm = isinstance(rnn, nn.LSTM)
    finals, cells = [], []
    for layer in range(rnn.num_layers):
        w_ih, b_ih, w_hh, b_hh = _layer(rnn, layer)
        gx = F.linear(data, w_ih, b_ih).split(batch_sizes)
        h = c = x.new_zeros(b, rnn.hidden_size)
        outs = []
        for t, n in enumerate(batch_sizes):
            h_new, c_new = _cell(lstm, gx[t], h[:n], c[:n], w_hh, b_hh)
            outs.append(h_new)
            h = h_new if n == b else torch.cat([h_new, h[n:]])  # finished rows keep their last state
            c = c_new if n == b else torch.cat([c_new, c[n:]])
        data = torch.cat(outs)
        finals.append(h)
        cells.append(c)
    inverse = torch.empty_like(order)
    inverse[order] = torch.arange(b, device=x.device)
    out = x.new_zeros(b, length, rnn.hidden_size).index_put((rows, cols), data)
    state = torch.stack(finals)[:, inverse]  # (layers, B, H) in the input's row order
    return out, ((state, torch.stack(cells)[:, inverse]) if lstm else state)


def _run_cached(rnn: nn.GRU | nn.LSTM, x: Tensor, state: Any) -> tuple[Tensor, Any]:
    """``rnn`` over every position of ``x (B, L, E)`` from ``state`` (decoding), with ``_run_packed``'s cell."""
    lstm = isinstance(rnn, nn.LSTM)
    h0, c0 = state if lstm else (state, state)
    finals, cells = [], []
    data = x
    for layer in range(rnn.num_layers):
        w_ih, b_ih, w_hh, b_hh = _layer(rnn, layer)
        gx = F.linear(data, w_ih, b_ih)
        h, c = h0[layer], c0[layer]
        outs = []
        for t in range(x.shape[1]):
            h, c = _cell(lstm, gx[:, t], h, c, w_hh, b_hh)
            outs.append(h)
        data = torch.stack(outs, 1)
        finals.append(h)
        cells.append(c)
    state = torch.stack(finals)
    return data, ((state, torch.stack(cells)) if lstm else state)


def _shift_rows(x: Tensor, shift: Tensor) -> Tensor:
    """Roll every row of ``x (B, L, ...)`` left by ``shift[b]`` (right for negative shifts)."""
    length = x.shape[1]
    idx = (torch.arange(length, device=x.device).unsqueeze(0) + shift.unsqueeze(1)) % length  # (B, L)
    return x.gather(1, idx.view(*idx.shape, *([1] * (x.dim() - 2))).expand_as(x))


def _run_torch(rnn: nn.GRU | nn.LSTM, x: Tensor, mask: Tensor, state: Any) -> tuple[Tensor, Any]:
    """``_run_packed`` (``state`` None) or ``_run_cached`` with PyTorch's own kernels (cuDNN on CUDA)."""
    if state is not None:
        return rnn(x, state)
    lengths, lead = mask.sum(1), mask.int().argmax(1)
    packed = pack_padded_sequence(_shift_rows(x, lead), lengths.cpu(), batch_first=True, enforce_sorted=False)
    out, state = rnn(packed)
    out, _ = pad_packed_sequence(out, batch_first=True, total_length=x.shape[1])
    return _shift_rows(out, -lead), state  # back to the input's positions (zeros on pads)


class RecurrentLM(nn.Module):
    """Embedding 256, one recurrent layer of 512 (GRU or LSTM), dropout 0.1, linear projection to the vocab.

    The recurrence runs over each row's real tokens only (packed), so pads on either side change nothing
    and the state returned is the one after each row's last real token. The parameters are ``nn.GRU``'s /
    ``nn.LSTM``'s (``self.rnn``). ``torch_kernels`` picks who runs the recurrence: PyTorch's kernels
    (``True``), lmpo's (``False``, see ``_run_packed``), or ``None``: PyTorch's fused cuDNN kernels on CUDA,
    lmpo's elsewhere (on CPU, 2.2x faster than ``nn.GRU``'s packed path to score and differentiate).
    """

    torch_kernels: bool | None = None

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
        new_mask = mask[:, -ids.shape[1]:]
        if x.is_cuda if self.torch_kernels is None else self.torch_kernels:
            out, cache = _run_torch(self.rnn, x, new_mask, cache)
        elif cache is not None:  # continue every row from its state (generation step)
            out, cache = _run_cached(self.rnn, x, cache)
        else:
            out, cache = _run_packed(self.rnn, x, new_mask)
        h = F.dropout(out, self.dropout, self.training)  # (B, L, H)
        return self.proj(kept_positions(h, keep)), h, cache
