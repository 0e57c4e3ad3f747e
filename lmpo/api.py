"""``lmpo.load``: a trained policy (and its tokenizer, for text runs) from a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_run(run_dir: str | Path, device: str | None = None, overrides: list[str] | None = None
             ) -> tuple[Any, Any, str]:
    """``(task, policy, checkpoint name)`` of a run's latest checkpoint, the policy in eval mode on
    ``device`` (default: the run's ``train.device``); ``overrides`` (``seed=7``) change the run's config."""
    from lmpo.config import ConfigError
    from lmpo.train.checkpoint import latest_checkpoint, load_checkpoint
    from lmpo.train.tasks import make_task
    from lmpo.train.trainer import read_run_config, resolve_device

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir, overrides)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise ConfigError(f"no checkpoint in {run_dir}/checkpoints")
    wanted = device or cfg.train.device
    if device is None and wanted.startswith("cuda") and not torch.cuda.is_available():
        wanted = "cpu"  # a GPU run, moved to a machine without one
    dev = resolve_device(wanted)
    task = make_task(cfg, run_dir, dev)
    policy = task.build_policy()
    load_checkpoint(ckpt, policy)
    return task, policy.to(dev).eval(), ckpt.name


def load(run_dir: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """``(policy, tokenizer)`` of the run's latest checkpoint, in eval mode; the tokenizer is None for
    control runs. A text run's policy generates with ``lmpo.policies.generate``."""
    task, policy, _ = load_run(run_dir, device)
    return policy, getattr(task, "tokenizer", None)
