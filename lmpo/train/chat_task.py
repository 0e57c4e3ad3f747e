"""The dialogue task: tokenizer, pre-training, conversations with the simulated user, evaluation."""

from __future__ import annotations

import copy
import pickle
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from lmpo.config import Config
from lmpo.core import AdaptiveKLController, FixedKLController, Rollout
from lmpo.data import (
    Dialogue,
    Turn,
    add_chat_tokens,
    decode_reply,
    dialogue_texts,
    encode_dialogue,
    load_chatterbot,
    load_jsonl,
    load_tokenizer,
    split_dialogues,
    train_tokenizer,
)
from lmpo.envs.chatbot import ChatbotBatch, Conversation
from lmpo.policies import GPT, GPTConfig, LMPolicy, RecurrentLM, SamplingConfig
from lmpo.policies.base import load_weights, save_weights
from lmpo.rewards import SimulatedUser
from lmpo.train.pretrain import PretrainConfig, perplexity, pretrain
from lmpo.train.text import ChatbotCollector, generate_replies


def distinct_2(replies: list[str]) -> float:
    """Distinct bigrams over all bigrams of the replies (Li et al. 2016): 1 is maximally varied."""
    bigrams = [tuple(w[i:i + 2]) for w in (r.split() for r in replies) for i in range(len(w) - 1)]
    return len(set(bigrams)) / len(bigrams) if bigrams else 0.0


class ChatTask:
    """``lmpo/Chatbot-v0`` with a language-model policy."""

    def __init__(self, cfg: Config, run_dir: Path, device: torch.device) -> None:
        assert cfg.text is not None
        self.cfg, self.t, self.run_dir, self.device = cfg, cfg.text, run_dir, device
        dialogues = load_jsonl(self.t.jsonl) if self.t.jsonl else load_chatterbot(self.t.categories)
        # the corpus repeats conversations across files (2,026 of which 899 distinct): a repeat teaches
        # nothing new and would make every epoch and evaluation longer
        dialogues = list(dict.fromkeys(dialogues))
        self.train, self.heldout = split_dialogues(dialogues, self.t.heldout_fraction)
        if not self.train:
            raise ValueError("no training conversations (heldout_fraction too large for this corpus?)")
        self.tokenizer = self._tokenizer()
        u = self.t.user
        self.user = SimulatedUser(dialogues, u.satisfied_at, u.neutral_at)
        k = self.t.kl
        self.kl = AdaptiveKLController(k.coef, k.target, k.horizon) if k.target else FixedKLController(k.coef)
        self.sampling = SamplingConfig(**self.t.sampling.model_dump())
        self.reference: LMPolicy | None = None
        self.collector: ChatbotCollector | None = None
        self.steps = 0

    def _tokenizer(self) -> Any:
        """A given tokenizer, the run's own (resume), an hf model's own with the chat tokens added, or one
        trained here on the training conversations."""
        saved = self.run_dir / "tokenizer"
        if self.t.tokenizer:
            return load_tokenizer(self.t.tokenizer)
        if saved.is_dir():
            return load_tokenizer(saved)
        if self.cfg.policy.kind == "hf":
            from transformers import AutoTokenizer

            tok = AutoTokenizer.from_pretrained(str(self.cfg.policy.path))
            add_chat_tokens(tok)
        else:
            tok = train_tokenizer(dialogue_texts(self.train), self.t.vocab_size, show_progress=self.cfg.train.progress)
        tok.save_pretrained(saved)
        return tok

    # ------------------------------------------------------------------------------------- policy
    def build_policy(self) -> LMPolicy:
        """The language model of ``cfg.policy`` over this task's tokenizer, with a value head."""
        p, tok = self.cfg.policy, self.tokenizer
        if p.kind in ("gru", "lstm"):
            body: Any = RecurrentLM(len(tok), p.kind, p.embed, p.hidden, dropout=p.dropout)
        elif p.kind == "transformer":
            body = GPT(GPTConfig(len(tok), p.n_layer, p.n_head, p.d_model, p.max_len, p.dropout))
        else:
            from lmpo.policies.hf import load_hf_body

            body = load_hf_body(str(p.path), len(tok))
        return LMPolicy(body, int(tok.pad_token_id), int(tok.eos_token_id), self.sampling)

    def _encoded(self, dialogues: list[Dialogue]) -> list[Any]:
        return [encode_dialogue(self.tokenizer, d) for d in dialogues]

    def prepare(self, policy: LMPolicy, resumed: bool) -> dict[str, float]:
        """Pre-train (once per run; a resumed run reloads the saved reference) and freeze the reference."""
        ref_path = self.run_dir / "reference.safetensors"
        metrics: dict[str, float] = {}
        if resumed and ref_path.is_file():
            ref = self.build_policy()  # a throwaway copy: frozen as it is
            load_weights(ref, ref_path)
        else:
            pt = self.t.pretrain
            if pt.epochs:
                metrics = pretrain(policy, self._encoded(self.train), self._encoded(self.heldout),
                                   PretrainConfig(pt.epochs, pt.lr, pt.batch_size, pt.max_len, seed=self.cfg.seed),
                                   progress=self.cfg.train.progress)
            save_weights(policy, ref_path)
            ref = copy.deepcopy(policy)
        ref.eval()
        ref.requires_grad_(False)
        self.reference = ref.to(self.device)
        self.collector = ChatbotCollector(ChatbotBatch(self.train, self.user, self.t.user.max_turns), self.tokenizer,
                                          self.reference, self.kl, self.t.kl.estimator, self.t.conversations_per_update,
                                          self.t.samples_per_prompt, self.t.max_prompt_tokens, seed=self.cfg.seed)
        return metrics

    # ------------------------------------------------------------------------------------ the loop
    def collect(self, policy: LMPolicy) -> tuple[Rollout, dict[str, float]]:
        """Conversations with the simulated user; the KL coefficient adapts to the measured KL."""
        assert self.collector is not None
        rollout, stats = self.collector.collect(policy)
        self.steps += rollout.batch_size
        self.kl.update(stats.mean_kl, rollout.batch_size)
        return rollout, {"charts/satisfaction": stats.satisfaction, "charts/episode_return": stats.mean_reward,
                         "charts/turns": stats.mean_turns, "charts/kl_ref": stats.mean_kl,
                         "charts/kl_coef": self.kl.value, "charts/reply_tokens": stats.mean_reply_tokens}

    def after_update(self, policy: LMPolicy, rollout: Rollout) -> None:
        """Nothing to do."""

    def _play(self, policy: LMPolicy, dialogues: list[Dialogue], sampling: SamplingConfig | None,
              reference: LMPolicy | None, samples: int = 1) -> tuple[Rollout, Any]:
        """``samples`` conversations per dialogue, from its first line, with the given sampling settings."""
        batch = ChatbotBatch(dialogues, self.user, self.t.user.max_turns)
        col = ChatbotCollector(batch, self.tokenizer, reference, FixedKLController(0.0), self.t.kl.estimator, 0,
                               samples, self.t.max_prompt_tokens)
        return col.collect(policy, indices=list(range(len(dialogues))), settings=sampling)

    @torch.no_grad()
    def converse(self, policy: LMPolicy, dialogue: Dialogue, sampling: SamplingConfig
                 ) -> list[tuple[Turn, str | None]]:
        """Play one conversation; every turn with the user's verdict on bot turns."""
        conv = Conversation(dialogue, self.t.user.max_turns)
        verdicts: list[str | None] = [None]
        while not conv.done:
            _, _, (text,) = generate_replies(policy, self.tokenizer, [conv.history], self.t.max_prompt_tokens,
                                             sampling, self.device)
            verdicts.append(conv.respond(text, self.user).name.lower())
            if not conv.done:
                verdicts.append(None)
        return list(zip(conv.history, verdicts, strict=True))

    @torch.no_grad()
    def evaluate(self, policy: LMPolicy, report: Callable[[str], None] | None = None) -> dict[str, float]:
        """Greedy conversations from training and held-out openings, perplexity, diversity, KL to reference;
        ``report(part)`` as each part starts."""
        n, out = self.t.eval_conversations, {}
        say = report or (lambda part: None)
        greedy = self.sampling.as_greedy()
        openings = {split: d[:n] if n else d for split, d in (("train", self.train), ("heldout", self.heldout))}
        for split, chosen in openings.items():
            if not chosen:
                continue
            say(f"greedy replies to {len(chosen)} {'training' if split == 'train' else 'held-out'} openings")
            rollout, stats = self._play(policy, chosen, greedy, None)
            replies = [decode_reply(self.tokenizer, a[m > 0].tolist())
                       for a, m in zip(rollout.actions, rollout.mask, strict=True)]
            out.update({f"eval/{split}_satisfaction": stats.satisfaction, f"eval/{split}_reward": stats.mean_reward,
                        f"eval/{split}_turns": stats.mean_turns, f"eval/{split}_distinct2": distinct_2(replies),
                        f"eval/{split}_reply_tokens": stats.mean_reply_tokens})
        if self.heldout:
            say("held-out perplexity")
            out["eval/heldout_ppl"] = perplexity(policy, self._encoded(self.heldout), max_len=self.t.pretrain.max_len)
        if self.reference is not None:  # the policy's own sampled replies: what RL optimises, and their KL
            chosen = openings["train"]
            say(f"sampled replies, {self.t.eval_samples} to each of {len(chosen)} training openings")
            devices = [self.device.index or 0] if self.device.type == "cuda" else []
            with torch.random.fork_rng(devices):  # the same draws at every evaluation; training's stream untouched
                torch.manual_seed(self.cfg.seed)
                _, stats = self._play(policy, chosen, None, self.reference, self.t.eval_samples)
            out["eval/train_sampled_satisfaction"] = stats.satisfaction
            out["eval/kl_ref"] = stats.mean_kl
        out["eval/mean_return"] = out["eval/train_reward"]
        return out

    # ---------------------------------------------------------------------------------- checkpoint
    def state(self) -> bytes | None:
        """The collector's random generator and the KL coefficient."""
        assert self.collector is not None
        return pickle.dumps({"rng": self.collector.rng.bit_generator.state, "kl": self.kl.state_dict()})

    def restore(self, state: bytes | None, steps: int) -> None:
        """Continue the conversation stream and the KL schedule."""
        self.steps = steps
        if state is not None:
            saved = pickle.loads(state)
            self.kl.load_state_dict(saved["kl"])
            assert self.collector is not None
            self.collector.rng.bit_generator.state = saved["rng"]
