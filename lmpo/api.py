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


def served_model(run_dir: str | Path, quantize: str | None = None) -> Any:
    """A text run's latest checkpoint as ``lmpo serve`` serves it (``quantize="int8"``: int8 linear layers), on
    the CPU; its version is the checkpoint's name."""
    from lmpo.config import ConfigError
    from lmpo.serve.engine import ServedModel
    from lmpo.serve.runner import quantize_int8

    task, policy, ckpt_name = load_run(run_dir, device="cpu")
    if getattr(task, "tokenizer", None) is None:
        raise ConfigError(f"{run_dir} is not a text run: lmpo serve serves language models")
    from lmpo.policies.lora import has_lora

    if has_lora(policy):  # LoRA adapters merged into the weights: the same function, no extra matmuls per token
        policy.body.model = policy.body.model.merge_and_unload()
    if quantize == "int8":
        policy = quantize_int8(policy)
    cfg, env = task.cfg, task.env
    return ServedModel(policy, task.tokenizer, task.chat, name=cfg.name, version=ckpt_name,
                       max_context=task.t.max_prompt_tokens,
                       max_positions=_positions(cfg, policy),
                       tool=env.tool if env.tool_call_start is not None else None, tool_call_start=env.tool_call_start)


def _positions(cfg: Any, policy: Any) -> int | None:
    """The positions a served model has for prompt and reply: lmpo's transformer's ``max_len``, a Hugging Face
    model's ``max_position_embeddings`` (GPT-2: ``n_positions``); None for recurrent models, which have no limit."""
    if cfg.policy.kind == "transformer":
        return int(cfg.policy.max_len)
    if cfg.policy.kind == "hf":
        config = policy.body.model.config
        limit = getattr(config, "max_position_embeddings", None) or getattr(config, "n_positions", None)
        return None if limit is None else int(limit)
    return None


def newer_checkpoint(run_dir: str | Path, quantize: str | None, version: str) -> Any:
    """The run's latest checkpoint as a served model if it is not ``version``, else None (``lmpo serve --watch``
    polls it with the version it serves, as ``functools.partial(newer_checkpoint, run_dir, quantize)``)."""
    from lmpo.train.checkpoint import latest_checkpoint

    latest = latest_checkpoint(Path(run_dir) / "checkpoints")
    if latest is None or latest.name == version:
        return None
    return served_model(run_dir, quantize)
