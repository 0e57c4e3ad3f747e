"""``lmpo.load``: a trained policy (and its tokenizer, for text runs) from a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch


def load_run(run_dir: str | Path, device: str | None = None, overrides: list[str] | None = None
             ) -> tuple[Any, Any, str]:
    """``(task, policy, checkpoint name)`` of a run's latest checkpoint, the policy in eval mode on
    ``device`` (default: the run's ``train.device``); ``overrides`` (``seed=7``) change the run's config.
    Reading has no side effects: safe beside the run's trainer, which may be writing checkpoints meanwhile."""
    from lmpo.config import ConfigError
    from lmpo.train.checkpoint import read_latest
    from lmpo.train.tasks import make_task
    from lmpo.train.trainer import read_run_config, resolve_device

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir, overrides)
    wanted = device or cfg.train.device
    if device is None and wanted.startswith("cuda") and not torch.cuda.is_available():
        wanted = "cpu"  # a GPU run, moved to a machine without one
    dev = resolve_device(wanted)
    task = make_task(cfg, run_dir, dev, writer=False)
    policy = task.build_policy()
    found = read_latest(run_dir / "checkpoints", policy)
    if found is None:
        raise ConfigError(f"no checkpoint in {run_dir}/checkpoints")
    return task, policy.to(dev).eval(), found.name


def load(run_dir: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """``(policy, tokenizer)`` of the run's latest checkpoint, in eval mode; the tokenizer is None for
    control runs. A text run's policy generates with ``lmpo.policies.generate``."""
    task, policy, _ = load_run(run_dir, device)
    return policy, getattr(task, "tokenizer", None)
