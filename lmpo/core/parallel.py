"""Data parallelism as the algorithms see it: every process holds the whole batch, works on its share of the
rows, and the processes average what they computed.

A share's loss is ``world_size`` times its part of the whole batch's loss (its rows, weighted as in the whole
batch), so the mean over processes, which DDP takes of gradients and ``all_mean`` of anything else, is the
whole batch's. In one process every function here is the identity: the same code runs on a laptop and under
``torchrun``, and the result does not depend on the number of processes (up to float rounding).
"""

from __future__ import annotations

import torch
import torch.distributed as dist
from torch import Tensor

from lmpo.core.rollout import Rollout


def world_size() -> int:
    """Processes in the default group (1 without ``torch.distributed``)."""
    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def rank() -> int:
    """This process's rank (0 without ``torch.distributed``)."""
    return dist.get_rank() if dist.is_available() and dist.is_initialized() else 0


def all_mean(x: Tensor) -> Tensor:
    """The mean of ``x`` over processes, without gradient (``x`` itself in one process)."""
    world = world_size()
    if world == 1:
        return x
    out = x.detach().clone()
    dist.all_reduce(out)
    return out.div_(world)


def my_rows(rows: Tensor) -> Tensor:
    """This process's part of the row indices ``rows``: every ``world_size``-th, from its rank (all of them in one
    process); every process gets at least one."""
    world = world_size()
    if world == 1:
        return rows
    if rows.numel() < world:
        raise ValueError(f"a batch of {rows.numel()} rows cannot be shared by {world} processes: every process "
                         "needs a row (use larger minibatches or fewer processes)")
    return rows[rank()::world]


def minibatch_rows(order: Tensor, size: int) -> list[Tensor]:
    """``order`` (row indices) in minibatches of ``size``; under several processes a last one too small to give
    every process a row joins the one before (in one process nothing changes)."""
    chunks = list(order.split(size))
    if len(chunks) > 1 and chunks[-1].numel() < world_size():
        chunks[-2:] = [torch.cat(chunks[-2:])]
    return chunks


def share(batch: Rollout, *weights: Tensor) -> tuple[Rollout, list[Tensor]]:
    """This process's rows of ``batch`` (``my_rows``) and of per-row ``weights`` ``(B, ...)``, the weights scaled
    by ``world_size``: a weighted sum over the share, averaged over processes, is the weighted sum over the whole
    batch."""
    world = world_size()
    if world == 1:
        return batch, list(weights)
    rows = my_rows(torch.arange(batch.batch_size, device=batch.mask.device))
    return batch.select(rows), [w[rows] * world for w in weights]
