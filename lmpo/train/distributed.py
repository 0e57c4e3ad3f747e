"""Data-parallel training under ``torchrun``, on PyTorch's own engine: the process group, the policy wrapped in
DDP for the algorithms, and the rollouts the processes collected, gathered.

Each process collects its share of the rollout with its own random streams; every process then holds the
whole rollout (gathered), estimates advantages on it, and updates on its share of each minibatch's rows
(``lmpo.core.parallel``); DDP averages the gradients. Only rank 0 writes logs and checkpoints and evaluates.
Without ``torchrun`` (or with one process) nothing here does anything.
"""

from __future__ import annotations

import dataclasses
import os
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

from lmpo.config import ConfigError
from lmpo.core import Rollout
from lmpo.core.parallel import rank, world_size
from lmpo.policies.base import ForwardEvaluation

# how long a collective waits: rank 0 pre-trains and evaluates alone while the others wait at the next one
TIMEOUT = timedelta(hours=6)


def launched() -> bool:
    """Whether this process is one of several that ``torchrun`` started (``WORLD_SIZE`` > 1)."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def init(device: str) -> None:
    """Join ``torchrun``'s process group when launched by it: ``nccl`` when training on CUDA, else ``gloo``.
    The rendezvous (``MASTER_ADDR``, ``--rdzv-endpoint``, ``--nnodes``) is ``torchrun``'s."""
    if not launched() or dist.is_initialized():
        return
    cuda = device.startswith("cuda") or (device == "auto" and torch.cuda.is_available())
    if cuda:
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    # on GPUs nccl for tensors on them, gloo for the small CPU ones (metrics, step counts, pickled objects)
    dist.init_process_group("cpu:gloo,cuda:nccl" if cuda else "gloo", timeout=TIMEOUT)


def close() -> None:
    """Leave the process group (at the end of ``lmpo train``)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def local_device(device: torch.device) -> torch.device:
    """Under ``torchrun`` each process trains on the GPU of its ``LOCAL_RANK``; a fixed ``cuda:N`` is refused
    (every process would share it)."""
    if device.type != "cuda" or world_size() == 1:
        return device
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if device.index not in (None, local):
        raise ConfigError(f"train.device: {device} under torchrun: use 'cuda' or 'auto' (each process takes the GPU "
                          "of its LOCAL_RANK)")
    return torch.device("cuda", local)


def threads(wanted: int) -> int:
    """torch threads for this process: ``wanted``, but under ``torchrun`` no more than its share of the machine's
    cores (two processes of the main job's 2 threads on 2 cores would fight over them)."""
    local = int(os.environ.get("LOCAL_WORLD_SIZE", "1"))
    if world_size() == 1 or local == 1:
        return wanted
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    return max(1, min(wanted, cores // local))


def rank_seed(seed: int) -> int:
    """Rank 0's seed is the run's (one process trains exactly as without ``torchrun``); the others' differ."""
    return seed + 1_000_003 * rank()


def barrier() -> None:
    """Wait for every process (nothing in one process)."""
    if world_size() > 1:
        dist.barrier()


def all_gather(obj: Any) -> list[Any]:
    """Every process's ``obj`` (picklable), in rank order."""
    if world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    dist.all_gather_object(out, obj)
    return out


def gather_to_lead(obj: Any) -> list[Any] | None:
    """Every process's ``obj`` (picklable) on rank 0, in rank order; None on the others."""
    if world_size() == 1:
        return [obj]
    out: list[Any] | None = [None] * world_size() if rank() == 0 else None
    dist.gather_object(obj, out, dst=0)
    return out


def broadcast(obj: Any) -> Any:
    """Rank 0's ``obj`` on every process."""
    if world_size() == 1:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def mean_metrics(metrics: dict[str, float]) -> dict[str, float]:
    """Each metric averaged over processes, in one collective: an algorithm's share-wise numbers become the
    whole batch's (``lmpo.core.parallel``), those every process computed alike stay as they are."""
    if world_size() == 1:
        return metrics
    keys = sorted(metrics)
    values = torch.tensor([metrics[k] for k in keys], dtype=torch.float64)
    dist.all_reduce(values)
    return dict(zip(keys, (values / world_size()).tolist(), strict=True))


def _pad(t: Tensor, length: int, value: float, left: bool) -> Tensor:
    """``t (B, T, ...)`` padded along T to ``length`` with ``value``, on the left or the right."""
    extra = length - t.shape[1]
    if extra == 0:
        return t
    pad = t.new_full((t.shape[0], extra, *t.shape[2:]), value)
    return torch.cat([pad, t] if left else [t, pad], dim=1)


def concat_rollouts(parts: list[Rollout], pad_id: int | None = None) -> Rollout:
    """One rollout of ``parts``' rows in order, time padded to the longest with mask 0. A language model's
    (``pad_id`` given) prompts are left-padded and replies right-padded with the pad id; control rows are
    right-padded with zeros. Group and episode ids are offset to stay distinct."""
    out: dict[str, Any] = {}
    for f in dataclasses.fields(Rollout):
        values = [getattr(p, f.name) for p in parts]
        if values[0] is None:
            out[f.name] = None
        elif f.name in ("group_ids", "episode_ids"):
            offset, ids = 0, []
            for v in values:
                ids.append(v + offset)
                offset += int(v.max()) + 1 if v.numel() else 0
            out[f.name] = torch.cat(ids)
        else:
            text = pad_id is not None and f.name in ("obs", "actions")
            fill = float(pad_id) if text and pad_id is not None else 0.0
            length = max(v.shape[1] for v in values)
            out[f.name] = torch.cat([_pad(v, length, fill, left=text and f.name == "obs") for v in values])
    return Rollout(**out)


def gather_rollout(rollout: Rollout, pad_id: int | None = None, extra: Any = None) -> tuple[Rollout, list[Any]]:
    """Every process's rollout as one, rank 0's rows first (``concat_rollouts``), on this process's device, and
    every process's ``extra`` (picklable; what the statistics need), in rank order: one collective for both."""
    if world_size() == 1:
        return rollout, [extra]
    device = rollout.mask.device
    parts = all_gather((rollout._map(lambda t: t.cpu()), extra))
    return concat_rollouts([p[0] for p in parts], pad_id)._map(lambda t: t.to(device)), [p[1] for p in parts]


class DataParallel(ForwardEvaluation):
    """The policy as the algorithms see it under ``torchrun``: called (``evaluate``, ``value``) through DDP's
    forward, whose hooks average gradients across processes as backward runs; every other attribute is the policy's.

    DDP manages only ``trained``, the parameters the algorithm's optimiser steps from backward passes: it would
    otherwise wait for gradients that never come (TRPO's actor moves by conjugate gradient, a critic-free
    advantage leaves the value head alone). Buffers are not synchronised after the start: every process updates
    them (observation statistics) from the same gathered rollout.
    """

    def __init__(self, policy: nn.Module, device: torch.device, trained: list[nn.Parameter]) -> None:
        self.module = policy
        self.ddp: nn.Module = policy
        keep = {id(p) for p in trained}
        ignored = [n for n, p in policy.named_parameters() if id(p) not in keep]
        ignored += [n for n, _ in policy.named_buffers()]
        if keep:  # (DDP's documented way to leave parameters out, though its name is private)
            DistributedDataParallel._set_params_and_buffers_to_ignore_for_model(policy, ignored)
            self.ddp = DistributedDataParallel(policy, device_ids=[device.index] if device.type == "cuda" else None)

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        return self.ddp(*args, **kwargs)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.module, name)


def data_parallel(policy: nn.Module, device: torch.device, trained: list[nn.Parameter]) -> Any:
    """The policy for the algorithms: under ``torchrun`` with rank 0's weights and buffers on every process
    (``broadcast_weights``) and wrapped (``DataParallel``); else itself."""
    if world_size() == 1:
        return policy
    broadcast_weights(policy)
    return DataParallel(policy, device, trained)


def broadcast_weights(module: nn.Module) -> None:
    """Rank 0's parameters and buffers on every process (the others did not pre-train)."""
    if world_size() == 1:
        return
    with torch.no_grad():
        for t in [*module.parameters(), *module.buffers()]:
            dist.broadcast(t.data, src=0)


def split(total: int, what: str) -> int:
    """This process's share of a global count (environments, conversations), which must divide evenly."""
    world = world_size()
    if total % world:
        raise ConfigError(f"{what}={total} cannot be shared by {world} processes: make it a multiple of {world}")
    return total // world

