"""The language-model task: one task for every text environment (Chatbot-v0, Support-v0, ...), chosen by ``env.id``.

It builds the tokenizer and the policy, pre-trains on the environment's dialogues, freezes the reference, plays
conversations through ``ConversationCollector`` (generate -> score -> shape) and evaluates every split the
environment offers, greedy and sampled.
"""

from __future__ import annotations

import copy
import dataclasses
import pickle
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from lmpo.config import Config, ConfigError
from lmpo.core import AdaptiveKLController, FixedKLController, Rollout
from lmpo.data import Dialogue, chat_format, load_tokenizer, prepare_model_tokenizer, train_tokenizer
from lmpo.data.corpus import Turn
from lmpo.envs.text import Example, TextEnvironment, text_env
from lmpo.policies import GPT, GPTConfig, LMPolicy, RecurrentLM, SamplingConfig
from lmpo.policies.base import save_weights
from lmpo.policies.hf import checkpoint_blocks, compile_blocks
from lmpo.policies.lora import AdaptersOff, add_lora, save_lora_export
from lmpo.rewards.registry import WeightedReward
from lmpo.train import distributed
from lmpo.train.checkpoint import load_weights_checked
from lmpo.train.pretrain import PretrainConfig, finished_metrics, perplexity, pretrain
from lmpo.train.text import ConversationCollector, ConversationStats, Gather, Played, Reference

HF_EXPORT = "hf"  # an hf run's save_pretrained export, inside its run directory
PRETRAIN_DIR = "pretrain"  # pre-training's own checkpoint, inside the run directory
SAMPLES_PER_SPLIT = 8  # greedy replies of each split an evaluation logs as samples


def distinct_2(replies: list[str]) -> float:
    """Distinct bigrams over all bigrams of the replies (Li et al. 2016): 1 is maximally varied."""
    bigrams = [tuple(w[i:i + 2]) for w in (r.split() for r in replies) for i in range(len(w) - 1)]
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


def stats_metrics(prefix: str, stats: ConversationStats) -> dict[str, float]:
    """A batch of conversations' statistics as metrics named ``<prefix>satisfaction`` and so on."""
    out = {f"{prefix}reward": stats.mean_reward, f"{prefix}return": stats.mean_return,
           f"{prefix}turns": stats.mean_turns, f"{prefix}reply_tokens": stats.mean_reply_tokens}
    if stats.satisfaction is not None:
        out[f"{prefix}satisfaction"] = stats.satisfaction
    # reward components keep their "rewards/" ("eval/heldout_rewards/satisfaction"): the satisfaction reward is a
    # mean verdict, not the share of satisfied replies that <prefix>satisfaction is
    out.update({f"{prefix}{k}": v for k, v in stats.extra.items()})
    return out


def _gather(pad_id: int) -> Gather:
    """Join every process's rollout, replies (without transcripts) and reference log-probs, rank 0's first."""
    def gather(rollout: Rollout, played: Played, ref: Tensor) -> tuple[Rollout, Played, Tensor]:
        local = dataclasses.replace(rollout, advantages=ref)  # the reference's log-probs ride along, padded alike
        empty = torch.zeros(0)  # the statistics read a reply's reward, parts and info: its tensors stay here
        light = [dataclasses.replace(r, prompt=[], tokens=empty, logprobs=empty, values=empty) for r in played.replies]
        joined, parts = distributed.gather_rollout(local, pad_id, (light, played.turns))
        assert joined.advantages is not None
        replies, turns = [r for p in parts for r in p[0]], [n for p in parts for n in p[1]]
        return dataclasses.replace(joined, advantages=None), Played(replies, turns, []), joined.advantages
    return gather


class TextTask:
    """A text environment with a language-model policy. A reader's task (``writer=False``: ``lmpo.load``, eval,
    chat) writes nothing into the run directory and needs the run's tokenizer there."""

    def __init__(self, cfg: Config, run_dir: Path, device: torch.device, writer: bool = True) -> None:
        assert cfg.text is not None
        family = text_env(cfg.env.id)
        assert family is not None, cfg.env.id
        self.cfg, self.t, self.run_dir, self.device, self.writer = cfg, cfg.text, run_dir, device, writer
        self.env: TextEnvironment = family(family.Settings(**cfg.env.kwargs), cfg.seed, run_dir)
        self.tokenizer = self._tokenizer()
        self.chat = chat_format(self.tokenizer, self._generation_eos_ids())  # lmpo's format or the model's template
        self.rewards = WeightedReward.from_specs(*self._reward_specs())
        k = self.t.kl
        self.kl = AdaptiveKLController(k.coef, k.target, k.horizon) if k.target else FixedKLController(k.coef)
        self.sampling = SamplingConfig(**self.t.sampling.model_dump())
        self.reference: Reference | None = None
        self.collector: ConversationCollector | None = None
        self.eval_seed = cfg.seed  # the sampled evaluation's draws (lmpo eval --seed); the examples stay the run's
        self._samples: list[dict[str, Any]] = []
        self.steps = 0

    def _reward_specs(self) -> tuple[list[dict[str, Any]], dict[str, str]]:
        """``text.rewards`` (or the environment's default), and where to load a user's reward from: the run writer
        copies the file into ``<run>/rewards``, and everyone else (a reader, the other processes under torchrun)
        loads that copy, under the configured name (the metrics' keys are the same everywhere)."""
        specs = [dict(s) for s in (self.env.default_rewards if self.t.rewards is None else self.t.rewards)]
        saved, sources = self.run_dir / "rewards", {}
        for i, spec in enumerate(specs):
            path, sep, fn = str(spec["name"]).rpartition(":")
            if not sep or not path.endswith(".py"):
                continue
            copy = saved / f"{i}-{Path(path).name}"  # numbered: two files may share a name
            if Path(path).is_file() and self.writer:
                saved.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, copy)
            elif copy.is_file():
                sources[spec["name"]] = f"{copy}:{fn}"
        return specs, sources

    def _tokenizer(self) -> Any:
        """A given tokenizer, the run's own (resume, a finished run), an hf model's own with the chat tokens added,
        or one trained here on the environment's texts."""
        saved = self.run_dir / "tokenizer"
        if saved.is_dir():
            try:
                return load_tokenizer(saved)
            except Exception as e:  # noqa: BLE001  (tokenizers and transformers raise bare Exceptions, KeyErrors)
                raise ConfigError(f"{saved} is damaged ({str(e).splitlines()[0]})") from None
        if not self.writer or (self.run_dir / "reference.safetensors").is_file():
            raise ConfigError(f"{saved} is missing: the run's weights need the tokenizer they were trained with")
        if self.t.tokenizer:
            try:
                tok = load_tokenizer(self.t.tokenizer)
            except (OSError, ValueError) as e:
                raise ConfigError(f"text.tokenizer: {str(e).splitlines()[0]}") from None
        elif self.cfg.policy.kind == "hf":
            from transformers import AutoTokenizer

            tok = self._from_policy_path(AutoTokenizer.from_pretrained)
            added = prepare_model_tokenizer(tok)  # its own chat template as it is; lmpo's chat tokens where it has none
            if added and self.cfg.policy.lora is not None:
                raise ConfigError(f"policy.lora: {self.cfg.policy.path} has no chat template or pad token, so lmpo "
                                  f"adds {', '.join(added)}, whose embeddings LoRA would leave untrained: fine-tune "
                                  "it with lmpo first (text.pretrain, no lora) and point policy.path at that run's hf/")
        else:
            tok = train_tokenizer(self.env.tokenizer_texts(), self.t.vocab_size, show_progress=self.cfg.train.progress)
        tok.save_pretrained(saved)
        return tok

    def _generation_eos_ids(self) -> list[int]:
        """An hf model's generation config's eos ids (a chat model's end-of-turn token among them), if it has one."""
        if self.cfg.policy.kind != "hf":
            return []
        from transformers import GenerationConfig

        export = self.run_dir / HF_EXPORT
        path = export if (export / "config.json").is_file() else Path(str(self.cfg.policy.path)).expanduser()
        try:
            eos = GenerationConfig.from_pretrained(str(path)).eos_token_id
        except (OSError, ValueError):  # no generation_config.json (or a hub id, not looked up for this)
            return []
        return [] if eos is None else [eos] if isinstance(eos, int) else list(eos)

    # ------------------------------------------------------------------------------------- policy
    def build_policy(self) -> LMPolicy:
        """The language model of ``cfg.policy`` over this task's tokenizer, with a value head."""
        p, tok = self.cfg.policy, self.tokenizer
        if p.kind in ("gru", "lstm"):
            body: Any = RecurrentLM(len(tok), p.kind, p.embed, p.hidden, dropout=p.dropout)
        elif p.kind == "transformer":
            body = GPT(GPTConfig(len(tok), p.n_layer, p.n_head, p.d_model, p.max_len, p.dropout, p.positions))
        else:
            body = self._hf_body()
            if p.lora is not None:
                body = add_lora(body, p.lora.r, p.lora.alpha, p.lora.target_modules)
        try:
            if p.gradient_checkpointing:
                checkpoint_blocks(body)
            if p.compile:
                compile_blocks(body, list(p.compile))
        except ValueError as e:  # a model whose blocks cannot be found (checkpointing) or run by lmpo (compile)
            raise ConfigError(f"policy: {e}") from None
        return LMPolicy(body, int(tok.pad_token_id), self.chat.eos_ids[0], self.sampling, stop_ids=self.chat.eos_ids)

    def _from_policy_path(self, load: Callable[[str], Any]) -> Any:
        """``load(policy.path)`` (a local directory or a hub id), its failures as one line. A path that names a
        local place (``./``, ``/``, ``~`` or an existing parent directory) but no directory is a mistake, not a hub
        id."""
        path = str(self.cfg.policy.path)
        local = Path(path).expanduser()
        if not local.is_dir() and (path.startswith((".", "/", "~")) or local.parent.is_dir() and local.parent.name):
            raise ConfigError(f"policy.path: no such model directory: {path}")
        try:
            return load(path)
        except (OSError, ValueError) as e:
            raise ConfigError(f"policy.path: {path!r} is not a local model directory and could not be loaded as a "
                              f"hub id ({str(e).splitlines()[0]})") from None

    def _hf_body(self) -> Any:
        """The hf model: the run's own export once it has one (a finished run needs no base model), else
        ``policy.path``."""
        from lmpo.policies.hf import load_hf_body

        export = self.run_dir / HF_EXPORT
        if (export / "config.json").is_file():
            return load_hf_body(export, len(self.tokenizer))
        return self._from_policy_path(lambda path: load_hf_body(path, len(self.tokenizer)))

    def finish(self, policy: LMPolicy, weights: dict[str, Tensor] | None = None) -> None:
        """An hf run's ``save_pretrained`` export (model, tokenizer and value head) in ``<run>/hf`` (of ``weights``,
        the policy's gathered from its FSDP shards, when given)."""
        if self.cfg.policy.kind == "hf" and self.cfg.policy.lora is not None:
            if weights is not None:  # peft saves and merges a whole model: an unsharded copy of the sharded one
                policy = self.build_policy()
                policy.load_state_dict(weights, assign=True)  # the gathered tensors themselves: no copy
            save_lora_export(policy, self.tokenizer, self.run_dir / HF_EXPORT)
        elif self.cfg.policy.kind == "hf":
            from lmpo.policies.hf import save_hf_policy

            save_hf_policy(policy, self.tokenizer, self.run_dir / HF_EXPORT, weights)

    def _encoded(self, dialogues: list[Dialogue]) -> list[Any]:
        return [self.chat.dialogue(d) for d in dialogues]

    def _collector(self, examples: list[Example], reference: Reference | None, kl: FixedKLController,
                   samples: int, seed: int = 0, conversations: int | None = None) -> ConversationCollector:
        return ConversationCollector(self.env, examples, self.tokenizer, self.rewards, reference, kl,
                                     self.t.kl.estimator, conversations or self.t.conversations_per_update, samples,
                                     self.t.max_prompt_tokens, seed=seed, chat=self.chat)

    def prepare(self, policy: LMPolicy, resumed: bool) -> dict[str, float]:
        """Pre-train (once per run, resumable; a run resumed from an RL checkpoint, or read, reloads the saved
        reference) and freeze the reference."""
        metrics: dict[str, float] = {}
        if resumed or not self.writer:  # the policy comes from a checkpoint
            metrics = finished_metrics(self.run_dir / PRETRAIN_DIR) or {}  # `lmpo pretrain`, then `train --resume`
        else:
            self.env.save(self.run_dir)
            pt = self.t.pretrain
            if pt.epochs:  # resumable: a run killed while pre-training continues where it was
                metrics = pretrain(policy, self._encoded(self.env.pretraining("train")),
                                   self._encoded(self.env.pretraining("heldout")),
                                   PretrainConfig(pt.epochs, pt.lr, pt.batch_size, pt.max_len, seed=self.cfg.seed),
                                   progress=self.cfg.train.progress, checkpoint_dir=self.run_dir / PRETRAIN_DIR,
                                   save_every_s=pt.checkpoint_every_s)
        self.reference = self._reference(policy, resumed)
        # under torchrun each process plays its share of the conversations, with its own stream of examples
        self.collector = self._collector(self.env.examples("train"), self.reference, self.kl, self.t.samples_per_prompt,
                                         seed=distributed.rank_seed(self.cfg.seed),
                                         conversations=distributed.split(self.t.conversations_per_update,
                                                                         "text.conversations_per_update"))
        return metrics

    def _reference(self, policy: LMPolicy, resumed: bool) -> Reference:
        """The frozen reference: a LoRA policy's own network with its adapters off; else a copy of the policy as RL
        starts, saved beside the run (a resumed run, or a reader, loads it)."""
        if self.cfg.policy.lora is not None:
            return AdaptersOff(policy)
        ref_path = self.run_dir / "reference.safetensors"
        if resumed or not self.writer:
            if not ref_path.is_file():
                raise ConfigError(f"{ref_path} is missing: the run's reference model is not there")
            ref = self.build_policy()  # a throwaway copy: frozen as it is
            load_weights_checked(ref, ref_path)
        else:
            save_weights(policy, ref_path)
            ref = copy.deepcopy(policy)
        ref.eval()
        ref.requires_grad_(False)
        return ref.to(self.device)

    # ------------------------------------------------------------------------------------ the loop
    def collect(self, policy: LMPolicy) -> tuple[Rollout, dict[str, float]]:
        """Conversations in the environment; the KL coefficient adapts to the measured KL."""
        assert self.collector is not None
        gather = _gather(policy.pad_id) if distributed.world_size() > 1 else None
        rollout, stats, _ = self.collector.collect(policy, gather=gather)  # every process's replies, under torchrun
        self.steps += rollout.batch_size
        self.kl.update(stats.mean_kl, rollout.batch_size)
        metrics = {"charts/episode_return": stats.mean_return, "charts/reward_per_reply": stats.mean_reward,
                   "charts/turns": stats.mean_turns, "charts/kl_ref": stats.mean_kl, "charts/kl_coef": self.kl.value,
                   "charts/reply_tokens": stats.mean_reply_tokens}
        metrics.update({k if k.startswith("rewards/") else f"charts/{k}": v for k, v in stats.extra.items()})
        if stats.satisfaction is not None:
            metrics["charts/satisfaction"] = stats.satisfaction
        return rollout, metrics

    def after_update(self, policy: LMPolicy, rollout: Rollout) -> None:
        """Nothing to do."""

    def play(self, policy: LMPolicy, examples: list[Example], sampling: SamplingConfig | None,
             reference: Reference | None = None, samples: int = 1) -> tuple[Rollout, ConversationStats, Played]:
        """``samples`` conversations per example with the given sampling settings (None: the policy's own)."""
        col = self._collector(examples, reference, FixedKLController(0.0), samples)
        return col.collect(policy, list(range(len(examples))), sampling)

    @torch.no_grad()
    def converse(self, policy: LMPolicy, example: Example, sampling: SamplingConfig
                 ) -> list[tuple[Turn, dict[str, Any]]]:
        """Play one conversation; every turn, with the environment's info on bot turns."""
        return self.play(policy, [example], sampling)[2].transcripts[0]

    def eval_examples(self, split: str) -> list[Example]:
        """The first ``text.eval_conversations`` examples of a split (all when 0)."""
        n = self.t.eval_conversations
        data = self.env.examples(split)
        return data[:n] if n else data

    @torch.no_grad()
    def evaluate(self, policy: LMPolicy, report: Callable[[str], None] | None = None) -> dict[str, float]:
        """Per split: greedy conversations (reward, satisfaction and the environment's measures, length, diversity),
        sampled ones (the same, with the signs of reward hacking: KL to the reference and the reference's perplexity
        of the replies); held-out perplexity. ``report(part)`` as each part starts."""
        out: dict[str, float] = {}
        self._samples = []
        say = report or (lambda part: None)
        greedy = self.sampling.as_greedy()
        for split in self.env.eval_splits:
            examples = self.eval_examples(split)
            if not examples:
                continue
            say(f"greedy conversations, {len(examples)} {split}")
            _, stats, played = self.play(policy, examples, greedy)
            self._samples += [{"split": split, "prompt": r.user, "completion": r.text, "reward": r.reward,
                               **r.components} for r in played.replies[:SAMPLES_PER_SPLIT]]
            out.update(stats_metrics(f"eval/{split}_", stats))
            out[f"eval/{split}_distinct2"] = distinct_2([r.text for r in played.replies])
            say(f"sampled conversations, {self.t.eval_samples} per example, {len(examples)} {split}")
            devices = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices):  # the same draws at every evaluation; training's stream untouched
                torch.manual_seed(self.eval_seed)
                _, stats, played = self.play(policy, examples, None, self.reference, self.t.eval_samples)
            out.update({k: v for k, v in stats_metrics(f"eval/{split}_sampled_", stats).items()
                        if not k.endswith("_turns")})
            out[f"eval/{split}_sampled_distinct2"] = distinct_2([r.text for r in played.replies])
            if self.reference is not None:
                out[f"eval/{split}_kl_ref"] = stats.mean_kl
        heldout = self.env.pretraining("heldout")
        if heldout:
            say("held-out perplexity")
            out["eval/heldout_ppl"] = perplexity(policy, self._encoded(heldout), max_len=self.t.pretrain.max_len)
        if "eval/train_kl_ref" in out:
            out["eval/kl_ref"] = out["eval/train_kl_ref"]
        out["eval/mean_return"] = out["eval/train_return"]
        return out

    def samples(self) -> list[dict[str, Any]]:
        """The last evaluation's first greedy replies of each split: prompt, completion, reward and its parts."""
        return list(self._samples)

    # ---------------------------------------------------------------------------------- checkpoint
    def state(self) -> bytes | None:
        """The collector's random generator and the KL coefficient."""
        assert self.collector is not None
        return pickle.dumps({"rng": self.collector.rng.bit_generator.state, "kl": self.kl.state_dict()})

    def restore(self, state: bytes | None, steps: int, reseed: int | None = None) -> None:
        """Continue the conversation stream and the KL schedule; with ``reseed``, the KL schedule (the same on every
        process) and a new stream of examples seeded ``reseed``."""
        self.steps = steps
        assert self.collector is not None
        if state is not None:
            saved = pickle.loads(state)
            self.kl.load_state_dict(saved["kl"])
            if reseed is None:
                self.collector.rng.bit_generator.state = saved["rng"]
        if reseed is not None:
            self.collector.rng = np.random.default_rng(distributed.rank_seed(reseed))

