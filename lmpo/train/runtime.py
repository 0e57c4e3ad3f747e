"""Process-level settings of a training run (the allocator, mixed precision) and its guard against divergence."""

from __future__ import annotations

import contextlib
import ctypes
import math
import platform
from typing import Any

import torch

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameters (malloc.h)


def tune_allocator(keep_bytes: int = 1 << 30) -> bool:
    """Let glibc keep freed blocks below ``keep_bytes`` for reuse instead of returning them to the system.

    By default glibc maps every block over 32 MiB afresh and unmaps it when freed, so each RL step
    page-faults its ``(B, T, vocab)`` log-prob tensors in again (measured: 10-25% of a step on 2 cores).
    Returns whether the setting took (False off glibc, e.g. macOS, where nothing changes).
    """
    if platform.system() != "Linux" or platform.libc_ver()[0] != "glibc":
        return False
    try:
        libc = ctypes.CDLL("libc.so.6")
    except OSError:
        return False
    return bool(libc.mallopt(_M_MMAP_THRESHOLD, keep_bytes)) and bool(libc.mallopt(_M_TRIM_THRESHOLD, 2 * keep_bytes))


def autocast(precision: str, device: torch.device, weights_change: bool = False
             ) -> contextlib.AbstractContextManager[None]:
    """``torch.autocast`` to bfloat16 when ``precision`` is ``'bf16'``, else nothing: parameters, optimiser
    state, log-probabilities and losses stay float32 either way.

    Autocast keeps each weight's bfloat16 copy until the context exits, so a forward after an optimiser
    step inside it would run the old weights: pass ``weights_change=True`` around updates and pre-training
    (no copies are kept; each forward casts its weights once), leave it off for sampling (32 decoding
    steps reuse one copy).
    """
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16, cache_enabled=not weights_change)
    return contextlib.nullcontext()


class TrainingDiverged(RuntimeError):
    """Training produced a non-finite number; the message is one line naming what and where."""


def first_non_finite(values: dict[str, Any]) -> str | None:
    """The first key whose value (a number or tensor) is NaN or infinite, else None. Tensors are checked together,
    one host synchronisation per device, not one per tensor."""
    by_device: dict[torch.device, list[tuple[str, torch.Tensor]]] = {}
    for key, value in values.items():
        if isinstance(value, torch.Tensor) and value.is_floating_point():
            by_device.setdefault(value.device, []).append((key, value))
        elif isinstance(value, float) and not math.isfinite(value):
            return key
    for tensors in by_device.values():
        finite = torch.stack([torch.isfinite(t).all() for _, t in tensors])
        if not bool(finite.all()):
            return tensors[int((~finite).nonzero()[0, 0])][0]
    return None
