"""``lmpo train-rm``: a reward model trained on preference pairs with the Bradley-Terry loss.

``P(chosen > rejected) = sigmoid(r(chosen) - r(rejected))`` (Bradley & Terry 1952; the reward model of Ouyang et al.
2022), so the loss of a pair is ``-log sigmoid(r_c - r_r)``. The pairs come from a JSONL file or from a dialogue
corpus (``lmpo.data.preferences``); the held-out pairs' accuracy (the share the model orders right) is logged after
every epoch. The model is one of lmpo's language models with a scalar head (from scratch, or started from a run's
pre-trained reference), a pre-trained run's mutual-information score (``score: mmi``, no head), or a Hugging Face
``AutoModelForSequenceClassification``. The result loads as the reward ``{name: model, path: <run>}``.
"""

from __future__ import annotations

import math
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
import yaml
from pydantic import Field, ValidationError

from lmpo.config import (
    MAX_BATCH,
    MAX_TOKENS,
    ConfigError,
    PolicyConfig,
    Section,
    apply_overrides,
    format_error,
    read_yaml,
)
from lmpo.data.corpus import load_chatterbot, load_jsonl, split_dialogues
from lmpo.data.preferences import Pair, corpus_pairs, load_pairs, split_pairs
from lmpo.data.tokenizer import load_tokenizer, train_tokenizer
from lmpo.rewards.model import SPEC, WEIGHTS, AnyRewardModel, HFRewardModel, LMRewardModel, MMIRewardModel
from lmpo.train.checkpoint import load_weights_checked, write_atomic
from lmpo.train.logging import MetricsLogger, read_metrics
from lmpo.train.pretrain import Position, StateSaver, bucketed_order, optimizer_step
from lmpo.train.progress import TrainingProgress
from lmpo.train.rundir import RunLock, claim_run_dir
from lmpo.train.runtime import TrainingDiverged

HF_DIR = "hf"
STATE_DIR = "state"
EVAL_TRAIN = 500  # training pairs whose accuracy is measured (an even sample: an mmi score costs K + 1 passes)
CONFIG = "rm_config.yaml"  # the resolved config of a reward-model run (config.yaml is a policy run's)


class RMData(Section):
    pairs: str | None = Field(None, description="JSONL preference pairs ({prompt, chosen, rejected}, strings or chat "
                              "messages); None: pairs built from the dialogue corpus.")
    heldout_path: str | None = Field(None, description="Held-out pairs (None: heldout_fraction of the pairs, by a "
                                     "hash of the context's last user line).")
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="Share of contexts held out.")
    corpus_jsonl: str | None = Field(None, description="Corpus pairs: your chat-messages JSONL dialogues instead of "
                                     "the chatterbot corpus.")
    categories: list[str] | None = Field(None, description="Corpus pairs: chatterbot-corpus categories (None: all).")
    negatives: int = Field(1, ge=1, le=64, description="Corpus pairs: rejected replies (from other conversations) "
                           "per real reply.")


class RMModel(PolicyConfig):
    kind: Literal["mlp", "gru", "lstm", "transformer", "hf"] = Field(
        "transformer", description="gru, lstm, transformer or hf (an AutoModelForSequenceClassification).")
    init: str | None = Field(None, description="An lmpo text run directory: its tokenizer and pre-trained reference "
                             "start the model (its policy settings replace these).")
    vocab_size: int = Field(2048, ge=262, le=1 << 18, description="BPE vocabulary of a tokenizer trained here.")
    max_len: int = Field(256, ge=8, le=MAX_TOKENS, description="Longest conversation scored (its last tokens).")
    score: Literal["head", "mmi"] = Field("head", description="head: a linear head on the last token's hidden state; "
                                          "mmi: log p(reply | context) - log p(reply) under the init run's language "
                                          "model, p(reply) averaged over marginal_contexts user lines (needs init).")
    marginal_contexts: int = Field(16, ge=1, le=1024, description="score mmi: user lines of the training pairs "
                                   "(drawn with the seed) whose mean likelihood of a reply stands for p(reply).")


class RMTrain(Section):
    epochs: int = Field(4, ge=0, description="Passes over the training pairs (0: the model as built is evaluated "
                        "and saved, as for an mmi score taken as it is).")
    lr: float = Field(1e-3, gt=0, description="AdamW learning rate (one-cycle schedule).")
    weight_decay: float = Field(0.01, ge=0, description="AdamW weight decay.")
    batch_size: int = Field(32, ge=1, le=MAX_BATCH, description="Pairs per step.")
    max_grad_norm: float = Field(1.0, gt=0, description="Clip the global gradient norm.")
    checkpoint_every_s: float = Field(60.0, gt=0, description="Seconds between saves of the training state.")
    runs_dir: str = Field("runs", description="Parent directory of run directories.")
    threads: int | None = Field(1, ge=1, description="torch CPU threads (None: torch's default).")
    progress: bool = Field(True, description="Show a live progress bar.")


class RMConfig(Section):
    name: str = Field("rm", description="Run name: <runs_dir>/<name>/.")
    seed: int = Field(0, ge=0, le=2**32 - 1, description="Seed of the pairs' order, the negatives and torch.")
    data: RMData = Field(default_factory=RMData)
    model: RMModel = Field(default_factory=RMModel)
    train: RMTrain = Field(default_factory=RMTrain)


def load_rm_config(path: str | Path | None, overrides: list[str] | None = None) -> RMConfig:
    """A ``train-rm`` recipe with dotted overrides; one-line ``ConfigError`` on any mistake."""
    data = apply_overrides(read_yaml(path) if path is not None else {}, overrides or [])
    try:
        cfg = RMConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(f"invalid config: {format_error(e)}") from None
    if cfg.model.kind == "mlp" and cfg.model.init is None:  # an init run's policy settings replace these
        raise ConfigError("model.kind: a reward model is a language model (gru, lstm, transformer or hf)")
    if cfg.model.kind == "hf" and not cfg.model.path:
        raise ConfigError("model.kind 'hf' needs model.path (an AutoModelForSequenceClassification directory)")
    if cfg.model.score == "mmi" and cfg.model.kind == "hf":
        raise ConfigError("model.score 'mmi' reads one of lmpo's language models (model.init), not an hf classifier")
    if cfg.model.score == "mmi" and cfg.model.init is None:
        raise ConfigError("model.score 'mmi' reads a pre-trained lmpo language model: set model.init to a text run "
                          "(lmpo pretrain ...)")
    return cfg


def preference_pairs(cfg: RMData, seed: int) -> tuple[list[Pair], list[Pair]]:
    """Train and held-out pairs."""
    if cfg.pairs is None:  # each split's rejected replies come from its own conversations: a reply the model has
        # seen chosen in training never turns up rejected in evaluation (nor the reverse), so remembering which replies
        # were chosen does not pass for judging whether a reply answers its line
        dialogues = load_jsonl(cfg.corpus_jsonl) if cfg.corpus_jsonl else load_chatterbot(cfg.categories)
        train, held = split_dialogues(list(dict.fromkeys(dialogues)), cfg.heldout_fraction)
        return corpus_pairs(train, cfg.negatives, seed), corpus_pairs(held, cfg.negatives, seed) if held else []
    pairs = load_pairs(cfg.pairs)
    if cfg.heldout_path is not None:
        return pairs, load_pairs(cfg.heldout_path)
    return split_pairs(pairs, cfg.heldout_fraction)


def build_reward_model(cfg: RMConfig, run_dir: Path, train: list[Pair]) -> AnyRewardModel:
    """The model to train: an hf sequence classifier, a run's reference with a new head or as an mmi score (its
    marginal contexts drawn from ``train`` with the seed), or a fresh lmpo LM (its tokenizer trained on the pairs'
    texts); the tokenizer is saved in the run (a resume finds it there)."""
    m = cfg.model
    if m.kind == "hf":
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        try:
            model = AutoModelForSequenceClassification.from_pretrained(str(m.path), num_labels=1)
            hf_tokenizer = AutoTokenizer.from_pretrained(str(m.path))
        except (OSError, ValueError) as e:
            raise ConfigError(f"model.path: {m.path!r} cannot be loaded ({str(e).splitlines()[0]})") from None
        return HFRewardModel(model, hf_tokenizer, m.max_len)
    saved = run_dir / "tokenizer"
    policy = m.model_dump(exclude={"init", "vocab_size", "max_len", "score", "marginal_contexts"})
    tokenizer: Any
    if m.init is not None:
        init = Path(m.init)
        run_cfg = yaml.safe_load((init / "config.yaml").read_text()) if (init / "config.yaml").is_file() else None
        if run_cfg is None or not (init / "reference.safetensors").is_file():
            raise ConfigError(f"model.init: {init} is not a pre-trained lmpo text run (config.yaml and "
                              "reference.safetensors)")
        policy = run_cfg["policy"]
        if policy.get("kind") == "transformer" and m.max_len > int(policy.get("max_len", m.max_len)):
            raise ConfigError(f"model.max_len {m.max_len}: the init run's transformer has {policy['max_len']} "
                              "positions (set model.max_len to at most that)")
        tokenizer = load_tokenizer(saved if saved.is_dir() else init / "tokenizer")
    else:
        texts = [t.content for p in train for t in (*p.context, *p.chosen, *p.rejected)]
        tokenizer = load_tokenizer(saved) if saved.is_dir() else train_tokenizer(texts, m.vocab_size)
    tokenizer.save_pretrained(saved)
    if m.score == "mmi":
        lines = sorted({p.context[-1].content for p in train if p.context and p.context[-1].role == "user"})
        if not lines:
            raise ConfigError("model.score 'mmi': the training pairs have no user line to draw marginal contexts from")
        picked = np.random.default_rng(cfg.seed).permutation(len(lines))[: m.marginal_contexts]
        mmi = MMIRewardModel(policy, tokenizer, [lines[i] for i in sorted(picked)], m.max_len)
        load_weights_checked(mmi.lm, Path(str(m.init)) / "reference.safetensors")
        return mmi
    rm = LMRewardModel(policy, tokenizer, m.max_len)
    if m.init is not None:  # the policy's body (its value head is left out): pre-training's language knowledge
        from lmpo.policies import LMPolicy

        ref = LMPolicy(rm.body, int(tokenizer.pad_token_id), int(tokenizer.eos_token_id))
        load_weights_checked(ref, Path(m.init) / "reference.safetensors")
    return rm


def _accuracy(rm: AnyRewardModel, data: list[tuple[list[int], list[int]]], batch_size: int,
              advance: Callable[[int], None] | None = None) -> tuple[float, float]:
    """Share of pairs ordered right (chosen scored higher), and the mean Bradley-Terry loss; ``advance(pairs)``
    after every batch."""
    if not data:
        return float("nan"), float("nan")
    was = rm.training
    rm.eval()
    right, loss = 0.0, 0.0
    with torch.no_grad():
        for i in range(0, len(data), batch_size):
            chunk = data[i:i + batch_size]
            margin = _margins(rm, chunk)
            right += float((margin > 0).sum())
            loss += float(-F.logsigmoid(margin).sum())
            if advance is not None:
                advance(len(chunk))
    rm.train(was)
    return right / len(data), loss / len(data)


def _margins(rm: AnyRewardModel, chunk: list[tuple[list[int], list[int]]]) -> torch.Tensor:
    """``r(chosen) - r(rejected)`` of each pair, both scored in one batch."""
    scores = rm([c for c, _ in chunk] + [r for _, r in chunk])
    return scores[: len(chunk)] - scores[len(chunk):]


def train_reward_model(cfg: RMConfig, run_dir: Path, resume: bool = False) -> dict[str, float]:
    """Train, log an evaluation per epoch, save the model in ``run_dir``; a resumed run continues from its state."""
    if cfg.train.threads is not None:
        torch.set_num_threads(cfg.train.threads)
    torch.manual_seed(cfg.seed)
    train, heldout = preference_pairs(cfg.data, cfg.seed)
    if not train:
        raise ConfigError("no training pairs (data.heldout_fraction too large for the data?)")
    rm = build_reward_model(cfg, run_dir, train)
    encoded = [(rm.encode(p.context, p.chosen), rm.encode(p.context, p.rejected)) for p in train]
    held = [(rm.encode(p.context, p.chosen), rm.encode(p.context, p.rejected)) for p in heldout]
    t = cfg.train
    if t.epochs == 0:  # nothing to fit: the model as built (an mmi score, or a start to compare with) is measured
        return _measure_only(rm, run_dir, encoded, held, t.batch_size, t.progress)
    rng = np.random.default_rng(cfg.seed)
    params = [p for p in rm.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=t.lr, weight_decay=t.weight_decay)
    steps_per_epoch = math.ceil(len(encoded) / t.batch_size)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, t.lr, total_steps=t.epochs * steps_per_epoch)
    # what the state depends on (not where runs go, the threads, the progress bar or how often it is saved)
    settings = cfg.model_dump(mode="json", exclude={"train": {"runs_dir", "threads", "progress", "checkpoint_every_s"}})
    saver = StateSaver(run_dir / STATE_DIR, {"config": settings, "pairs": len(encoded)}, "reward-model training")
    at = saver.restore(rm, opt, sched, rng) if resume and saver.exists() else Position(0, 0, {}, 0.0)
    done = at.epoch + (at.step == steps_per_epoch)  # epochs finished
    logger = MetricsLogger(run_dir, done if resume else None, done * steps_per_epoch, ["tensorboard"])
    lengths = [len(c) + len(r) for c, r in encoded]
    summary: dict[str, float] = {}
    rm.train()
    try:
        with TrainingProgress(t.epochs * steps_per_epoch, at.epoch * steps_per_epoch + at.step, enabled=t.progress,
                              label="train-rm") as bar:
            for epoch in range(at.epoch, t.epochs):
                epoch_rng = rng.bit_generator.state
                order = bucketed_order(rng, lengths, t.batch_size)  # drawn again for a saved epoch: the stream goes on
                skip = at.step if epoch == at.epoch else 0
                if skip == steps_per_epoch:
                    continue  # finished, evaluated and logged before the interruption
                for step in range(skip + 1, steps_per_epoch + 1):
                    chunk = [encoded[i] for i in order[(step - 1) * t.batch_size: step * t.batch_size]]
                    loss = -F.logsigmoid(_margins(rm, chunk)).mean()  # Bradley-Terry
                    at = Position(epoch, step, epoch_rng, optimizer_step(loss, params, opt, sched, t.max_grad_norm))
                    if not math.isfinite(at.loss):
                        raise TrainingDiverged(f"train-rm step {step} of epoch {epoch + 1}: the loss is not finite")
                    bar.update(epoch * steps_per_epoch + step, None, None, info=f"loss {at.loss:.3f}")
                    if step < steps_per_epoch and saver.due(t.checkpoint_every_s):  # an epoch's last step is saved
                        saver.save(at, rm, opt, sched)  # after its evaluation is logged: a resume takes it as done
                summary = _evaluate(rm, encoded, held, t.batch_size, at.loss)
                logger.log((epoch + 1) * steps_per_epoch, {"iteration": epoch + 1,
                                                           "env_steps": (epoch + 1) * steps_per_epoch, **summary})
                bar.update((epoch + 1) * steps_per_epoch, None, summary["rm/heldout_accuracy"])
                saver.save(at, rm, opt, sched)
    finally:
        logger.close()
    _save(rm, run_dir)
    return summary or {k: v for k, v in read_metrics(run_dir)[-1].items() if k.startswith("rm/")}


def _evaluate(rm: AnyRewardModel, train: list[tuple[list[int], list[int]]],
              held: list[tuple[list[int], list[int]]], batch_size: int, last_loss: float,
              advance: Callable[[int], None] | None = None) -> dict[str, float]:
    train_acc, _ = _accuracy(rm, _sample(train), batch_size, advance)
    held_acc, held_loss = _accuracy(rm, held, batch_size, advance)
    return {"rm/loss": last_loss, "rm/train_accuracy": train_acc, "rm/heldout_accuracy": held_acc,
            "rm/heldout_loss": held_loss}


def _sample(pairs: list[tuple[list[int], list[int]]]) -> list[tuple[list[int], list[int]]]:
    """At most ``EVAL_TRAIN`` pairs evenly spread over ``pairs`` (every conversation's, not the first ones')."""
    return pairs[:: max(1, -(-len(pairs) // EVAL_TRAIN))][:EVAL_TRAIN]


def _measure_only(rm: AnyRewardModel, run_dir: Path, train: list[tuple[list[int], list[int]]],
                  held: list[tuple[list[int], list[int]]], batch_size: int, progress: bool) -> dict[str, float]:
    """``train.epochs: 0``: the accuracies of the model as built, logged as iteration 0; the model saved."""
    pairs = len(_sample(train)) + len(held)
    with TrainingProgress(pairs, 0, enabled=progress, label="train-rm: measuring") as bar:
        done = [0]

        def advance(n: int) -> None:
            done[0] += n
            bar.update(done[0], None, None, info=f"{done[0]}/{pairs} pairs")

        summary = _evaluate(rm, train, held, batch_size, math.nan, advance)
    del summary["rm/loss"]  # no step taken
    logger = MetricsLogger(run_dir, None, 0, ["tensorboard"])
    try:
        logger.log(0, {"iteration": 0, "env_steps": 0, **summary})
    finally:
        logger.close()
    _save(rm, run_dir)
    return summary


def _save(rm: AnyRewardModel, run_dir: Path) -> None:
    """The model in the form ``load_reward_model`` reads."""
    if isinstance(rm, HFRewardModel):
        rm.model.save_pretrained(run_dir / HF_DIR)  # type: ignore[operator]
        rm.tokenizer.save_pretrained(run_dir / HF_DIR)
        spec: dict[str, Any] = {"format": "hf", "directory": HF_DIR, "max_len": rm.max_len}
    else:
        from safetensors.torch import save_file

        save_file({k: v.detach().contiguous().cpu() for k, v in rm.state_dict().items()}, str(run_dir / WEIGHTS))
        spec = rm.spec()
    write_atomic(run_dir / SPEC, yaml.safe_dump(spec, sort_keys=False).encode())


def run_train_rm(config: str | Path | None, overrides: list[str], resume: str | None = None
                 ) -> tuple[Path, dict[str, float]]:
    """``lmpo train-rm``: claim a run directory (or reopen ``resume``), hold its lock, train. A fresh run that fails
    before it saved any state leaves no directory behind."""
    if resume is not None:
        run_dir = Path(resume)
        if not (run_dir / CONFIG).is_file():
            raise ConfigError(f"not a reward-model run (no {CONFIG}): {run_dir}")
        cfg = load_rm_config(run_dir / CONFIG, overrides)
        if cfg.train.epochs == 0:  # it would measure and save an untrained model over what the run had trained
            raise ConfigError("train.epochs 0 measures a model as built and keeps no training state: start a new run "
                              "instead of resuming one")
    else:
        cfg = load_rm_config(config, overrides)
        run_dir = claim_run_dir(cfg.train.runs_dir, cfg.name)
    lock = RunLock(run_dir)
    try:
        write_atomic(run_dir / CONFIG, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False).encode())
        return run_dir, train_reward_model(cfg, run_dir, resume is not None)
    except BaseException:
        if resume is None and not (run_dir / STATE_DIR / "state.pt").is_file():
            lock.release()
            shutil.rmtree(run_dir, ignore_errors=True)
        raise
    finally:
        lock.release()
