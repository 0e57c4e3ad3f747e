"""``lmpo.load``: a trained policy (and its tokenizer, for text runs) from a run directory."""

from __future__ import annotations

from pathlib import Path
from typing import Any


def load(run_dir: str | Path, device: str = "cpu") -> tuple[Any, Any]:
    """``(policy, tokenizer)`` of the run's latest checkpoint, in eval mode; the tokenizer is None for
    control runs. A text run's policy generates with ``lmpo.policies.generate``."""
    import torch

    from lmpo.config import ConfigError
    from lmpo.train.checkpoint import latest_checkpoint, load_checkpoint
    from lmpo.train.tasks import make_task
    from lmpo.train.trainer import read_run_config

    run_dir = Path(run_dir)
    cfg = read_run_config(run_dir)
    ckpt = latest_checkpoint(run_dir / "checkpoints")
    if ckpt is None:
        raise ConfigError(f"no checkpoint in {run_dir}/checkpoints")
    task = make_task(cfg, run_dir, torch.device(device))
    policy = task.build_policy()
    load_checkpoint(ckpt, policy)
    return policy.to(device).eval(), getattr(task, "tokenizer", None)
