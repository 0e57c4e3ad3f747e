"""Supervised pre-training of a dialogue model: next-token loss on the bot's side of each conversation.

Its result starts RL and, frozen, is the reference the KL penalty keeps the policy close to. Given a directory,
pre-training saves its state there and a later call continues it bit-exact, so a killed run loses minutes, not hours.
"""

from __future__ import annotations

import io
import json
import math
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from lmpo.config import ConfigError
from lmpo.data.tokenizer import EncodedDialogue
from lmpo.policies.lm import LMPolicy
from lmpo.train.checkpoint import write_atomic
from lmpo.train.progress import TrainingProgress
from lmpo.train.runtime import TrainingDiverged, first_non_finite


@dataclass
class PretrainConfig:
    """Settings of supervised pre-training."""

    epochs: int = 10
    lr: float = 2e-3
    batch_size: int = 32
    max_len: int = 128
    weight_decay: float = 0.01
    max_grad_norm: float = 1.0
    seed: int = 0


def training_windows(dialogue: EncodedDialogue, max_len: int) -> list[EncodedDialogue]:
    """A dialogue that fits in ``max_len`` tokens is one example; a longer one gives one example per bot
    turn, so that every reply is learnt from its own start after the line it answers (cutting a long
    dialogue's first tokens would drop the request a long reply answers and that reply's opening).

    Each such example trains only its turn: as much of the conversation before it as fits (at least
    ``max_len // 4`` tokens of it), then the turn, its tail cut if the turn alone is too long.
    """
    if len(dialogue.ids) <= max_len:
        return [dialogue]
    out, mask, i = [], dialogue.loss_mask, 0
    while i < len(mask):
        if not mask[i]:
            i += 1
            continue
        end = i
        while end < len(mask) and mask[end]:
            end += 1
        context = min(i, max(max_len - (end - i), max_len // 4))
        start = i - context
        stop = min(end, start + max_len)
        out.append(EncodedDialogue(dialogue.ids[start:stop], [0] * context + [1] * (stop - i)))
        i = end
    return out


def _batches(data: Sequence[EncodedDialogue], batch_size: int, pad_id: int,
             order: Sequence[int]) -> Iterator[tuple[Tensor, Tensor]]:
    """Right-padded ``ids (B, L)`` and ``loss_mask (B, L)`` of the examples in ``order``."""
    for start in range(0, len(order), batch_size):
        rows = [data[i] for i in order[start:start + batch_size]]
        width = max(len(r.ids) for r in rows)
        ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
        mask = torch.zeros(len(rows), width)
        for j, r in enumerate(rows):
            ids[j, :len(r.ids)] = torch.tensor(r.ids)
            mask[j, :len(r.ids)] = torch.tensor(r.loss_mask, dtype=torch.float)
        yield ids, mask


def bucketed_order(rng: np.random.Generator, lengths: Sequence[int], batch_size: int, pool: int = 50) -> list[int]:
    """A shuffled order in which each batch holds examples of similar length: shuffle, sort by length within pools
    of ``pool`` batches, then shuffle the batches. A batch runs as long as its longest example, so mixing short
    and long ones wastes about half the work of a recurrent model (measured: 2x the tokens per second)."""
    order = rng.permutation(len(lengths))
    size = pool * batch_size
    batches = []
    for start in range(0, len(order), size):
        chunk = sorted(order[start:start + size].tolist(), key=lambda i: lengths[i])
        batches += [chunk[i:i + batch_size] for i in range(0, len(chunk), batch_size)]
    return [i for b in rng.permutation(len(batches)).tolist() for i in batches[b]]


def _windows(data: Sequence[EncodedDialogue], max_len: int) -> list[EncodedDialogue]:
    """Every dialogue's training examples, in order."""
    return [w for d in data for w in training_windows(d, max_len)]


def _nll(policy: LMPolicy, ids: Tensor, loss_mask: Tensor) -> tuple[Tensor, Tensor]:
    """Summed negative log-likelihood of the trained tokens, and their count. Logits are computed only where a
    trained token is predicted: context (user lines, tool results, padding) costs no output projection."""
    predicts = torch.zeros_like(ids, dtype=torch.bool)
    predicts[:, :-1] = loss_mask[:, 1:] > 0  # token t+1 is predicted at position t
    logits, _, _ = policy.body(ids, ids != policy.pad_id, keep=predicts)  # (N, V)
    targets = ids[:, 1:][predicts[:, :-1]]
    return F.cross_entropy(logits, targets, reduction="sum"), predicts.sum().float()  # not bf16: counts pass 256


@torch.no_grad()
def perplexity(policy: LMPolicy, data: Sequence[EncodedDialogue], batch_size: int = 64, max_len: int = 128) -> float:
    """``exp`` of the mean NLL per bot token (dropout off)."""
    was = policy.training
    policy.eval()
    total, count = 0.0, 0.0
    windows = _windows(data, max_len)
    for ids, mask in _batches(windows, batch_size, policy.pad_id, range(len(windows))):
        nll, n = _nll(policy, ids, mask)
        total, count = total + float(nll), count + float(n)
    policy.train(was)
    mean = total / max(count, 1.0)
    return math.exp(mean) if mean < 709.0 else math.inf  # exp overflows a double past ~709.78


STATE_FILE = "state.pt"
METRICS_FILE = "metrics.json"
_RESTART = "delete it to restart pre-training"


def finished_metrics(checkpoint_dir: Path) -> dict[str, float] | None:
    """The metrics of the pre-training that saved into ``checkpoint_dir`` once it finished (None until then): what
    ``pretrain`` returned, for a run that resumes after it."""
    path = checkpoint_dir / METRICS_FILE
    if not ((checkpoint_dir / STATE_FILE).is_file() and path.is_file()):
        return None
    try:
        return {k: float(v) for k, v in json.loads(path.read_text()).items()}
    except Exception as e:
        raise ConfigError(f"{path} is damaged ({_first_line(e)}); {_RESTART}") from None


def _first_line(e: BaseException) -> str:
    """``Type: first line of the message``, for a one-line ``ConfigError``."""
    lines = str(e).splitlines()
    return f"{type(e).__name__}: {lines[0]}" if lines else type(e).__name__


@dataclass
class Position:
    """Where pre-training stands: ``step`` batches of ``epoch`` done, the last one's ``loss``, and ``epoch_rng`` the
    order generator's state before that epoch's order was drawn (a resumed run draws the same order from it)."""

    epoch: int
    step: int
    epoch_rng: Mapping[str, Any]
    loss: float


class StateSaver:
    """A supervised training's state in ``directory`` (pre-training, reward-model training): ``state.pt`` (weights,
    optimiser, schedule, position, torch RNGs), replaced whole at every save, and ``metrics.json`` once finished.
    ``settings`` are saved with the state: a state from other settings or other data would not continue the same
    run."""

    def __init__(self, directory: Path, settings: dict[str, Any], what: str = "pre-training") -> None:
        self.dir = directory
        self.settings, self.what = settings, what
        self.restart = f"delete it to restart {what}"
        self.saved_at = time.monotonic()

    def exists(self) -> bool:
        """Whether a state was saved."""
        return (self.dir / STATE_FILE).is_file()

    def due(self, every_s: float) -> bool:
        """Whether ``every_s`` seconds have passed since the last save."""
        return time.monotonic() - self.saved_at >= every_s

    def save(self, at: Position, policy: torch.nn.Module, opt: torch.optim.Optimizer,
             sched: torch.optim.lr_scheduler.LRScheduler) -> None:
        """Write the state at ``at`` (weights copied: parameters may be views of one shared buffer)."""
        weights = {k: v.detach().to("cpu", copy=True) for k, v in policy.state_dict().items()}
        bad = first_non_finite(weights)
        if bad is not None:  # a finite loss, then a step to inf: never saved, never resumed from
            raise TrainingDiverged(f"{self.what} step {at.step} of epoch {at.epoch + 1}: parameter {bad} is not "
                                   f"finite (NaN or inf); {self.what} stopped, no model was written")
        state = {"settings": self.settings, "epoch": at.epoch, "step": at.step, "epoch_rng": dict(at.epoch_rng),
                 "loss": at.loss, "weights": weights, "optimizer": opt.state_dict(), "scheduler": sched.state_dict(),
                 "torch_rng": torch.get_rng_state(),
                 "cuda_rng": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else []}
        buf = io.BytesIO()
        torch.save(state, buf)
        self.dir.mkdir(parents=True, exist_ok=True)
        write_atomic(self.dir / STATE_FILE, buf.getvalue())
        self.saved_at = time.monotonic()  # the interval runs from the end of a save: saving takes at most its share

    def restore(self, policy: torch.nn.Module, opt: torch.optim.Optimizer, sched: torch.optim.lr_scheduler.LRScheduler,
                rng: np.random.Generator) -> Position:
        """Load the saved weights, optimiser, schedule and RNGs; ``rng`` is set back to the saved epoch's start."""
        path = self.dir / STATE_FILE
        try:  # the file is replaced whole, so a failure here is a disk's or a person's doing
            state = torch.load(path, map_location="cpu", weights_only=True)
            at = Position(state["epoch"], state["step"], state["epoch_rng"], state["loss"])
            settings, weights = state["settings"], state["weights"]
        except Exception as e:
            raise ConfigError(f"{path} is damaged ({_first_line(e)}); {self.restart}") from None
        if settings != self.settings:
            raise ConfigError(f"{path} was saved by a {self.what} with other settings or data; {self.restart}")
        try:
            policy.load_state_dict(weights)
        except RuntimeError as e:
            raise ConfigError(f"{path} holds another model's weights ({_first_line(e)}); {self.restart}") from None
        opt.load_state_dict(state["optimizer"])
        sched.load_state_dict(state["scheduler"])
        torch.set_rng_state(state["torch_rng"])
        if state["cuda_rng"] and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state["cuda_rng"])
        rng.bit_generator.state = at.epoch_rng
        return at

    def finish(self, metrics: dict[str, float]) -> None:
        """Mark the run finished by saving its metrics (after its last state)."""
        write_atomic(self.dir / METRICS_FILE, json.dumps(metrics).encode())


def optimizer_step(loss: Tensor, params: list[torch.nn.Parameter], opt: torch.optim.Optimizer,
                   sched: torch.optim.lr_scheduler.LRScheduler, max_grad_norm: float) -> float:
    """One step of a supervised training (pre-training, reward models): backward, global-norm clipping, the
    optimiser's and the schedule's step; returns the loss."""
    opt.zero_grad(set_to_none=True)
    loss.backward()
    torch.nn.utils.clip_grad_norm_(params, max_grad_norm)
    opt.step()
    sched.step()
    return float(loss.detach())


def pretrain(policy: LMPolicy, train: Sequence[EncodedDialogue], heldout: Sequence[EncodedDialogue],
             cfg: PretrainConfig, progress: bool = True, checkpoint_dir: Path | None = None,
             save_every_s: float = 60.0) -> dict[str, float]:
    """AdamW on the body for ``cfg.epochs``; returns final train loss and train/held-out perplexity.

    With ``checkpoint_dir``, the state is saved there (``state.pt``) every ``save_every_s`` seconds and at the end,
    and a call that finds it continues from it, bit-exact with an uninterrupted run (on the same hardware); once
    finished, the metrics are saved too (``metrics.json``) and a later call loads the weights and RNG states and
    returns them without training. Saves go by time, not steps: a step takes milliseconds for a small GRU on a CPU
    and seconds for a large model, and an interval in seconds bounds both the work a crash loses and the share of
    time spent saving (the default GRU's state, weights and Adam's two moments, is some tens of MB, written in well
    under a second: about 1% of a minute). Raise ``save_every_s`` for a model whose state takes longer to write.
    """
    rng = np.random.default_rng(cfg.seed)
    examples = _windows(train, cfg.max_len)
    lengths = [len(e.ids) for e in examples]
    params = policy.actor_parameters()
    opt = torch.optim.AdamW(params, lr=cfg.lr, weight_decay=cfg.weight_decay)
    steps_per_epoch = math.ceil(len(examples) / cfg.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, cfg.lr, total_steps=cfg.epochs * steps_per_epoch)
    policy.train()
    saver = None if checkpoint_dir is None else StateSaver(checkpoint_dir, {"config": asdict(cfg),
                                                                             "examples": len(examples)})
    fresh = Position(0, 0, {}, 0.0)  # its epoch_rng is never saved: a save follows a step
    at = saver.restore(policy, opt, sched, rng) if saver and saver.exists() else fresh
    done = finished_metrics(checkpoint_dir) if checkpoint_dir is not None else None
    if done is not None:
        return done
    start = at
    with TrainingProgress(cfg.epochs * steps_per_epoch, at.epoch * steps_per_epoch + at.step, enabled=progress,
                          label="pretrain") as bar:
        for epoch in range(start.epoch, cfg.epochs):
            epoch_rng = rng.bit_generator.state
            order = bucketed_order(rng, lengths, cfg.batch_size)
            skip = start.step if epoch == start.epoch else 0  # batches done before the interruption
            batches = _batches(examples, cfg.batch_size, policy.pad_id, order[skip * cfg.batch_size:])
            for step, (ids, mask) in enumerate(batches, skip + 1):
                nll, n = _nll(policy, ids, mask)
                loss = optimizer_step(nll / n.clamp_min(1.0), params, opt, sched, cfg.max_grad_norm)
                at = Position(epoch, step, epoch_rng, loss)
                if not math.isfinite(at.loss):
                    raise TrainingDiverged(f"pre-training step {step} of epoch {epoch + 1}: the loss is not finite "
                                           "(NaN or inf); pre-training stopped, no reference model was written")
                bar.update(epoch * steps_per_epoch + step, None, None, info=f"loss {at.loss:.3f}")
                if saver and saver.due(save_every_s):
                    saver.save(at, policy, opt, sched)
    metrics = {"pretrain/loss": at.loss, "pretrain/train_ppl": perplexity(policy, train, max_len=cfg.max_len),
               "pretrain/heldout_ppl": perplexity(policy, heldout, max_len=cfg.max_len) if heldout else float("nan")}
    if saver:
        saver.save(at, policy, opt, sched)
        saver.finish(metrics)
    return metrics
