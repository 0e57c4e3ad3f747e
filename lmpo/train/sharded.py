"""FSDP2 (``torch.distributed.fsdp.fully_shard``) for Hugging Face policies under ``torchrun`` (``train.fsdp``).

During the update each process holds a 1/N shard of every weight, gradient and Adam moment; a block's full weights
exist only while it runs (all-gathered before, freed after; gradients reduce-scattered). Collection, evaluation and
the export run on gathered weights (``Gathered``): generation makes hundreds of small forward passes, a different
number on every process, which per-block all-gathers would make both slow and a deadlock. So the peak is the full
weights during collection (plus the reference's) and, during the update, the shards plus one block's and the root
unit's (embeddings and heads) whole weights, against weights, gradients and both moments in full on every process
under DDP.

Checkpoints are ``torch.distributed.checkpoint`` (DCP) directories written by every process (``iter_N/dcp``), which
load on any number of processes (one without torchrun included); rank 0 also writes the gathered weights as
``policy.safetensors`` for readers (``lmpo serve``, ``lmpo.load``).
"""

from __future__ import annotations

import contextlib
import warnings
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import torch
import torch.distributed.checkpoint as dcp
from torch import Tensor, nn
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    StateDictOptions,
    get_model_state_dict,
    get_state_dict,
    set_state_dict,
)
from torch.distributed.fsdp import FSDPModule, fully_shard

from lmpo.config import ConfigError
from lmpo.core.parallel import world_size
from lmpo.policies.hf import HFCausalLM
from lmpo.policies.lm import LMPolicy


def shard(policy: LMPolicy, device: torch.device) -> None:
    """Shard ``policy`` in place across the processes: each transformer block (the model's ``_no_split_modules``)
    is one FSDP unit, the rest (embeddings, final norm, head, value head) the root's. Every process must hold the
    same weights (``distributed.broadcast_weights``)."""
    from torch.distributed.device_mesh import init_device_mesh

    body = policy.body
    if not isinstance(body, HFCausalLM):
        raise ConfigError("train.fsdp is for hf policies (policy.kind 'hf')")
    # lmpo's own GPT-2 path calls a block's submodules, not the block, so the block's FSDP hooks would not run
    body.native = False
    names = set(getattr(body.model, "_no_split_modules", None) or [])
    blocks = [m for m in body.model.modules() if type(m).__name__ in names]
    if not blocks:
        raise ConfigError(f"train.fsdp: {type(body.model).__name__} names no blocks to shard (_no_split_modules)")
    mesh = init_device_mesh(device.type, (world_size(),))
    for block in blocks:
        fully_shard(block, mesh=mesh)
    fully_shard(policy, mesh=mesh)
    # the root is the first unit to run forward, and generation calls the body, not the policy: name it now
    # (FSDP's own lazy initialisation, which is private by name)
    policy._get_fsdp_state()._lazy_init()  # type: ignore[operator]


class Gathered:
    """Switches a sharded policy between its two states: gathered (full weights on every process, forward passes
    without collectives: collection, evaluation, the export) and sharded (the update). Every process must make the
    same switches in the same order: gathering is a collective."""

    def __init__(self, policy: nn.Module) -> None:
        self.units = [m for m in policy.modules() if isinstance(m, FSDPModule)]
        self.root = policy
        self.gathered = False
        for unit in self.units:  # FSDP reshards a unit whose state_dict() is taken: so does this switch
            unit.register_state_dict_pre_hook(self._resharded)

    def _resharded(self, *_: Any) -> None:
        self.gathered = False

    def gather(self) -> None:
        """All-gather every unit's weights and keep them until ``scatter``."""
        if self.gathered or not self.units:
            return
        for unit in self.units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        self.gathered = True

    def scatter(self) -> None:
        """Free the gathered weights: each block's are gathered again as it runs (the root keeps its own between
        forward and backward, FSDP's default)."""
        if not self.gathered:
            return
        for unit in self.units:
            unit.reshard()
            unit.set_reshard_after_forward(unit is not self.root, recurse=False)
        self.gathered = False


def full_weights(policy: nn.Module) -> dict[str, Tensor] | None:
    """The whole policy's weights on rank 0's CPU (None on the others): a collective."""
    options = StateDictOptions(full_state_dict=True, cpu_offload=True)
    weights: dict[str, Tensor] = get_model_state_dict(policy, options=options)  # type: ignore[assignment]
    return weights if torch.distributed.get_rank() == 0 else None


@contextlib.contextmanager
def _alone() -> Iterator[bool]:
    """Whether DCP works in one process (a resume without torchrun), which it warns of every time: expected here."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled")
        yield world_size() == 1


def save(path: Path, policy: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Every process writes its shards of the weights and of Adam's state into the DCP directory ``path``."""
    model_state, optim_state = get_state_dict(policy, optimizer)
    with _alone() as alone:
        dcp.save({"model": model_state, "optim": optim_state}, checkpoint_id=path, no_dist=alone)


def load(path: Path, policy: nn.Module, optimizer: torch.optim.Optimizer) -> None:
    """Load what ``save`` wrote, resharded to this run's processes (any number, one without torchrun included); a
    damaged directory is a ``ConfigError``."""
    model_state, optim_state = get_state_dict(policy, optimizer)
    state: dict[str, Any] = {"model": model_state, "optim": optim_state}
    try:
        with _alone() as alone:
            dcp.load(state, checkpoint_id=path, no_dist=alone)
    except (Exception, CheckpointException) as e:  # DCP's own is a BaseException
        first = (str(e).splitlines() or [""])[0][:160]
        raise ConfigError(f"{path} is damaged ({type(e).__name__}: {first})") from None
    set_state_dict(policy, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"])
