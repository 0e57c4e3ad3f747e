"""Data parallelism as the algorithms see it, in one process (the identity) and as two processes would share a batch
(rank and world size stood in for: the collectives themselves run in tests/train/test_distributed.py)."""

import pytest
import torch

from lmpo.core import parallel
from tests.conftest import make_policy, make_rollout


def test_one_process_keeps_everything() -> None:
    ro = make_rollout(make_policy())
    w = torch.rand(ro.batch_size, 6)
    mine, (w2,) = parallel.share(ro, w)
    assert mine is ro and w2 is w
    assert [c.tolist() for c in parallel.minibatch_rows(torch.arange(9), 4)] == [[0, 1, 2, 3], [4, 5, 6, 7], [8]]


@pytest.mark.parametrize("rank", [0, 1])
def test_two_processes_share_rows_and_weights_that_add_up(monkeypatch: pytest.MonkeyPatch, rank: int) -> None:
    monkeypatch.setattr(parallel, "world_size", lambda: 2)
    monkeypatch.setattr(parallel, "rank", lambda: rank)
    ro = make_rollout(make_policy(), b=5)
    w = ro.mask / ro.mask.sum()
    mine, (w2,) = parallel.share(ro, w)
    rows = torch.arange(rank, 5, 2)
    assert torch.equal(mine.obs, ro.obs[rows]) and torch.equal(w2, 2 * w[rows])
    # a last minibatch too small to give each process a row joins the one before
    assert [c.tolist() for c in parallel.minibatch_rows(torch.arange(9), 4)] == [[0, 1, 2, 3], [4, 5, 6, 7, 8]]
    with pytest.raises(ValueError, match="every process needs a row"):
        parallel.my_rows(torch.arange(1))
