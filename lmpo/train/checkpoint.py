"""Crash-safe checkpoints: a checkpoint directory appears whole or not at all.

Layout: ``<run>/checkpoints/iter_000042/{policy.safetensors, state.pt}`` and ``<run>/checkpoints/latest``
naming the newest. Files are written into a hidden temporary directory, fsynced, and the directory is
renamed into place (atomic on POSIX); ``latest`` is replaced atomically afterwards. A crash at any point
leaves the previous checkpoint intact and at most a ``.tmp-*`` directory, removed on the next start.
"""

from __future__ import annotations

import io
import os
import shutil
import signal
from pathlib import Path
from typing import Any

import torch
from torch import nn

from lmpo.policies.base import load_weights, save_weights

# Fault injection for the crash tests: kill this process half-way through the N-th checkpoint write.
_KILL_DURING_SAVE = int(os.environ.get("LMPO_FAULT_KILL_DURING_CHECKPOINT", "0"))
_saves = 0


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write(path: Path, data: bytes) -> None:
    with open(path, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())


def save_checkpoint(ckpt_dir: Path, iteration: int, model: nn.Module, state: dict[str, Any], keep: int) -> Path:
    """Write ``model`` weights (safetensors) and ``state`` (optimiser, RNG, envs) atomically."""
    global _saves
    _saves += 1
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    name = f"iter_{iteration:07d}"
    tmp = ckpt_dir / f".tmp-{name}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    save_weights(model, tmp / "policy.safetensors")
    _fsync_path(tmp / "policy.safetensors")
    if _saves == _KILL_DURING_SAVE:
        os.kill(os.getpid(), signal.SIGKILL)
    buf = io.BytesIO()
    torch.save(state, buf)
    _write(tmp / "state.pt", buf.getvalue())
    _fsync_path(tmp)
    final = ckpt_dir / name
    if final.exists():  # never remove the old copy before the new one is in place
        stale = ckpt_dir / f".tmp-stale-{name}"
        os.rename(final, stale)
        os.rename(tmp, final)
        shutil.rmtree(stale)
    else:
        os.rename(tmp, final)
    _write(ckpt_dir / ".latest.tmp", name.encode())
    os.replace(ckpt_dir / ".latest.tmp", ckpt_dir / "latest")
    _fsync_path(ckpt_dir)
    for old in sorted(ckpt_dir.glob("iter_*"))[:-keep]:  # zero-padded names sort by iteration
        shutil.rmtree(old, ignore_errors=True)
    return final


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The newest complete checkpoint, removing leftovers of interrupted writes; None if there is none."""
    if not ckpt_dir.is_dir():
        return None
    for tmp in ckpt_dir.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)
    pointer = ckpt_dir / "latest"
    if not pointer.is_file():
        return None
    path = ckpt_dir / pointer.read_text().strip()
    return path if (path / "policy.safetensors").is_file() and (path / "state.pt").is_file() else None


def load_checkpoint(path: Path, model: nn.Module) -> dict[str, Any]:
    """Load weights into ``model`` and return the saved training state."""
    load_weights(model, path / "policy.safetensors")
    # the saved RNG and optimiser state may come from another device (a GPU run loaded on a CPU machine)
    state: dict[str, Any] = torch.load(path / "state.pt", weights_only=False, map_location="cpu")
    return state
