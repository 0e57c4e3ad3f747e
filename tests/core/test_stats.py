"""Masked statistics against plain computations on the unpadded entries."""

import pytest
import torch

from lmpo.core import Rollout, explained_variance, loss_weights, masked_mean, masked_var, masked_whiten


def test_masked_stats_equal_unpadded() -> None:
    torch.manual_seed(0)
    x = torch.randn(4, 9)
    mask = (torch.rand(4, 9) < 0.6).float()
    real = x[mask.bool()]
    assert torch.allclose(masked_mean(x, mask), real.mean())
    assert torch.allclose(masked_var(x, mask), real.var())
    w = masked_whiten(x, mask)
    assert torch.allclose(w[mask.bool()], (real - real.mean()) / (real.std() + 1e-8), atol=1e-6)
    assert (w[mask == 0] == 0).all()
    # padding with huge values changes nothing
    y = x + (1 - mask) * 1e6
    assert torch.allclose(masked_mean(y, mask), masked_mean(x, mask))


def test_explained_variance() -> None:
    t = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    m = torch.ones_like(t)
    assert explained_variance(t, t, m) == 1.0
    assert abs(explained_variance(torch.full_like(t, 2.5), t, m)) < 1e-6


def test_rollout_flatten_and_select() -> None:
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    obs = torch.arange(6.0).reshape(2, 3, 1)
    ro = Rollout(obs=obs, actions=torch.arange(6).reshape(2, 3), logprobs=torch.zeros(2, 3),
                 rewards=torch.ones(2, 3), mask=mask, dones=torch.zeros(2, 3), group_ids=torch.tensor([0, 0]))
    flat = ro.flatten()
    assert flat.batch_size == 3 and flat.num_steps == 3
    assert flat.obs.flatten().tolist() == [0.0, 1.0, 3.0]
    assert flat.actions.flatten().tolist() == [0, 1, 3]
    assert flat.group_ids is None
    sub = ro.select(torch.tensor([1]))
    assert sub.actions.tolist() == [[3, 4, 5]] and sub.group_ids is not None and sub.group_ids.tolist() == [0]


def test_loss_weights_by_hand() -> None:
    # two replies: 3 tokens of loss 1 and 1 token of loss 5
    x = torch.tensor([[1.0, 1.0, 1.0], [5.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    agg = {how: float((x * loss_weights(mask, how)).sum()) for how in ("token_mean", "sequence_mean", "token_sum")}
    assert agg["token_mean"] == pytest.approx(8 / 4)  # every token alike
    assert agg["sequence_mean"] == pytest.approx((1 + 5) / 2)  # each reply's mean, then their mean
    assert agg["token_sum"] == pytest.approx((3 + 5) / 2)  # each reply's sum, then their mean
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        loss_weights(mask, "nonsense")  # type: ignore[arg-type]
