"""The recurrent body's own recurrence computes exactly what ``nn.GRU`` / ``nn.LSTM`` compute, gradients too;
so does its PyTorch-kernels path (the one CUDA takes)."""

import pytest
import torch

from lmpo.policies.recurrent import RecurrentLM

V, PAD = 30, 0


def _batch() -> tuple[torch.Tensor, torch.Tensor]:
    """Rows of different lengths with pads on the left, on the right, or both, and one row without pads."""
    torch.manual_seed(0)
    ids = torch.randint(1, V, (4, 9))
    mask = torch.zeros(4, 9, dtype=torch.bool)
    for row, (start, stop) in enumerate([(0, 9), (3, 9), (0, 4), (2, 7)]):
        mask[row, start:stop] = True
    return ids.masked_fill(~mask, PAD), mask


@pytest.mark.parametrize("cell", ["gru", "lstm"])
@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("torch_kernels", [False, True])
def test_recurrence_equals_torch_rnn(cell: str, layers: int, torch_kernels: bool) -> None:
    torch.manual_seed(0)
    body = RecurrentLM(V, cell, embed=8, hidden=16, layers=layers, dropout=0.0)  # type: ignore[arg-type]
    body.torch_kernels = torch_kernels
    ids, mask = _batch()
    _, out, state = body(ids, mask)
    (out.square().sum() + sum(s.sum() for s in (state if cell == "lstm" else (state,)))).backward()
    ours = {n: p.grad.clone() for n, p in body.named_parameters() if p.grad is not None}
    body.zero_grad()
    loss = torch.zeros(())
    for row in range(len(ids)):  # nn.GRU / nn.LSTM on each row's real tokens alone
        x = body.embed(ids[row, mask[row]]).unsqueeze(0)
        ref, ref_state = body.rnn(x)
        assert torch.allclose(out[row, mask[row]], ref[0], atol=1e-6)
        assert (out[row, ~mask[row]] == 0).all()
        for mine, theirs in zip(state if cell == "lstm" else (state,), ref_state if cell == "lstm" else (ref_state,),
                                strict=True):
            assert torch.allclose(mine[:, row], theirs[:, 0], atol=1e-6)
        loss = loss + ref.square().sum() + sum(s.sum() for s in (ref_state if cell == "lstm" else (ref_state,)))
    loss.backward()
    for name, p in body.named_parameters():
        if name.startswith("rnn") or name.startswith("embed"):
            assert torch.allclose(ours[name], p.grad, atol=1e-5), name
    # decoding from the state continues exactly as one pass over the longer sequence would
    nxt = torch.randint(1, V, (4, 2))
    _, cont, _ = body(nxt, torch.ones(4, 2, dtype=torch.bool), cache=state)
    for row in range(len(ids)):
        full, _ = body.rnn(body.embed(torch.cat([ids[row, mask[row]], nxt[row]])).unsqueeze(0))
        assert torch.allclose(cont[row], full[0, -2:], atol=1e-6)


def test_empty_batch_is_refused() -> None:
    body = RecurrentLM(V, "gru", embed=8, hidden=16)
    with pytest.raises(ValueError, match="no real tokens"):
        body(torch.zeros(2, 3, dtype=torch.long), torch.zeros(2, 3, dtype=torch.bool))
