"""Crash-safe checkpoints: a checkpoint directory appears whole or not at all.

Layout: ``<run>/checkpoints/iter_000042/{policy.safetensors, state.pt}`` (and ``dcp/``, FSDP's shards of the
weights and optimiser, under ``train.fsdp``) and ``<run>/checkpoints/latest`` naming the newest. Files are written
into a hidden temporary directory, fsynced, and the directory is renamed into place (atomic on POSIX); ``latest`` is
replaced atomically afterwards. A crash at any point leaves the previous checkpoint intact and at most a ``.tmp-*``
directory, which only the writer removes (on its next start): readers never touch the files of a run that may be
live, and retry when rotation removes the checkpoint they were reading.
"""

from __future__ import annotations

import io
import os
import pickle
import shutil
import signal
import time
import zipfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from torch import Tensor, nn

from lmpo.config import ConfigError
from lmpo.policies.base import load_weights, save_weights

DCP_DIR = "dcp"  # a checkpoint's torch.distributed.checkpoint directory (train.fsdp)
READ_RETRIES = 5  # a reader's attempts when the writer's rotation removes the checkpoint it was reading

# Fault injection for the crash tests: kill this process half-way through the N-th checkpoint write.
_KILL_DURING_SAVE = int(os.environ.get("LMPO_FAULT_KILL_DURING_CHECKPOINT", "0"))
_saves = 0


def _fsync_path(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Replace ``path`` by ``data`` so that a crash at any moment leaves the old file or the new one, whole: write a
    temporary file beside it, fsync it, rename it over ``path`` (atomic on POSIX), fsync the directory."""
    tmp = path.with_name(f".{path.name}.tmp")
    _write(tmp, data)
    os.replace(tmp, path)
    _fsync_path(path.parent)


def _write(path: Path, data: bytes) -> None:
    try:
        with open(path, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
    except OSError as e:  # a full disk: say which file (a failed write() names none)
        raise OSError(e.errno, e.strerror, str(path)) from None


def staging_dir(ckpt_dir: Path, iteration: int) -> Path:
    """The empty hidden directory where checkpoint ``iteration`` is written before it is renamed into place; other
    processes may write their parts there (FSDP's shards) before ``save_checkpoint(..., staged=<it>)``."""
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    tmp = ckpt_dir / f".tmp-iter_{iteration:07d}"
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir()
    return tmp


def save_checkpoint(ckpt_dir: Path, iteration: int, model: nn.Module | dict[str, Tensor], state: dict[str, Any],
                    keep: int, staged: Path | None = None) -> Path:
    """Write ``model``'s weights (or a state dict; safetensors) and ``state`` (optimiser, RNG, envs) atomically,
    with what was written beforehand in ``staged`` (this checkpoint's ``staging_dir``)."""
    global _saves
    _saves += 1
    name = f"iter_{iteration:07d}"
    tmp = staged or staging_dir(ckpt_dir, iteration)
    save_weights(model, tmp / "policy.safetensors")
    _fsync_path(tmp / "policy.safetensors")
    if _saves == _KILL_DURING_SAVE:
        os.kill(os.getpid(), signal.SIGKILL)
    buf = io.BytesIO()
    torch.save(state, buf)
    _write(tmp / "state.pt", buf.getvalue())
    if (tmp / DCP_DIR).is_dir():  # DCP fsyncs its files, not the directory's entries
        _fsync_path(tmp / DCP_DIR)
    _fsync_path(tmp)
    final = ckpt_dir / name
    if final.exists():  # never remove the old copy before the new one is in place
        stale = ckpt_dir / f".tmp-stale-{name}"
        os.rename(final, stale)
        os.rename(tmp, final)
        shutil.rmtree(stale)
    else:
        os.rename(tmp, final)
    write_atomic(ckpt_dir / "latest", name.encode())
    for old in sorted(ckpt_dir.glob("iter_*"))[:-keep]:  # zero-padded names sort by iteration
        shutil.rmtree(old, ignore_errors=True)
    return final


def remove_temporary(ckpt_dir: Path) -> None:
    """Remove leftovers of interrupted writes: for the run's writer only (a reader would kill a live save). A
    checkpoint moved aside to be replaced (``.tmp-stale-*``) whose replacement never landed is put back."""
    for stale in ckpt_dir.glob(".tmp-stale-*"):
        final = ckpt_dir / stale.name.removeprefix(".tmp-stale-")
        if not final.exists():
            os.rename(stale, final)
    for tmp in ckpt_dir.glob(".tmp-*"):
        shutil.rmtree(tmp, ignore_errors=True)


def _complete(path: Path) -> bool:
    shards = path / DCP_DIR
    return ((path / "policy.safetensors").is_file() and (path / "state.pt").is_file()
            and (not shards.is_dir() or (shards / ".metadata").is_file()))


def latest_checkpoint(ckpt_dir: Path) -> Path | None:
    """The checkpoint ``latest`` names; None when the run has none. A crash between a run's first checkpoint
    and its first ``latest`` leaves no pointer: the newest complete checkpoint then. A pointer to nothing is
    damage, said in one line (silently starting over would throw the run away)."""
    if not ckpt_dir.is_dir():
        return None
    pointer = ckpt_dir / "latest"
    try:
        name = pointer.read_text().strip()
    except FileNotFoundError:
        done = [p for p in sorted(ckpt_dir.glob("iter_*")) if _complete(p)]
        return done[-1] if done else None
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigError(f"{pointer} cannot be read ({e})") from None
    path = ckpt_dir / name
    if not name.startswith("iter_") or "/" in name or not _complete(path):
        raise ConfigError(f"{pointer} names {name[:40]!r}, which is not a complete checkpoint in {ckpt_dir}")
    return path


def load_weights_checked(model: nn.Module, weights: Path) -> None:
    """``load_weights``, with a damaged file, weights that do not fit ``model`` and non-finite weights each a
    ``ConfigError`` naming the file."""
    try:
        load_weights(model, weights)
    except FileNotFoundError:
        if weights.is_file():  # safetensors says "no such file" when it may not read one
            raise ConfigError(f"cannot read {weights}: permission denied") from None
        raise  # rotation removed it while a reader was reading: read_latest retries
    except SafetensorError as e:
        raise ConfigError(f"{weights} is damaged ({e})") from None
    except RuntimeError as e:  # missing, unexpected or differently shaped tensors
        first = str(e).splitlines()[1].strip() if len(str(e).splitlines()) > 1 else str(e)
        raise ConfigError(f"{weights} does not match the run's config.yaml ({first.rstrip('.')}); was config.yaml "
                          "edited?") from None
    bad = [k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()]
    if bad:
        raise ConfigError(f"{weights} holds non-finite weights (NaN or inf in {bad[0]}"
                          f"{f' and {len(bad) - 1} more' if len(bad) > 1 else ''}); the run diverged")


def load_checkpoint(path: Path, model: nn.Module) -> dict[str, Any]:
    """Load weights into ``model`` (``load_weights_checked``) and return the saved training state (a pickle: for
    the run's writer; readers load only the weights)."""
    load_weights_checked(model, path / "policy.safetensors")
    state_file = path / "state.pt"
    # the saved RNG and optimiser state may come from another device (a GPU run loaded on a CPU machine)
    try:
        saved: dict[str, Any] = torch.load(state_file, weights_only=False, map_location="cpu")
    except (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile) as e:
        # ValueError: a flipped byte can make a string field undecodable
        raise ConfigError(f"{state_file} is damaged ({str(e).splitlines()[0]})") from None
    return saved


def read_latest(ckpt_dir: Path, model: nn.Module) -> Path | None:
    """Load the latest checkpoint's weights into ``model``, for readers of a run that may be training: when the
    writer's rotation removes the checkpoint between finding and reading it, find the new one and retry. Returns
    the checkpoint read (None when there is none)."""
    attempt = 0
    while True:
        attempt, path = attempt + 1, None
        try:
            path = latest_checkpoint(ckpt_dir)
            if path is not None:
                load_weights_checked(model, path / "policy.safetensors")  # never state.pt: unpickling can run code
            return path
        except (FileNotFoundError, ConfigError):
            if attempt == READ_RETRIES or path is not None and _complete(path) and _names(ckpt_dir, path):
                raise  # not rotation: the checkpoint is still there, and still the latest
            time.sleep(0.05 * attempt)


def _names(ckpt_dir: Path, path: Path) -> bool:
    """Whether ``latest`` (still) names ``path``."""
    try:
        return (ckpt_dir / "latest").read_text().strip() == path.name
    except OSError:
        return False
