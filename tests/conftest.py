"""Shared fixtures: small policies and rollouts built inside the tests."""

from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch

from lmpo.core import Rollout, estimate_advantages
from lmpo.policies import MLPPolicy

DISCRETE = (gym.spaces.Box(-1, 1, (4,), np.float32), gym.spaces.Discrete(3))
CONTINUOUS = (gym.spaces.Box(-1, 1, (3,), np.float32), gym.spaces.Box(-2, 2, (2,), np.float32))


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def make_policy(kind: str = "discrete", critic: str = "separate", **kw) -> MLPPolicy:
    obs_space, act_space = DISCRETE if kind == "discrete" else CONTINUOUS
    return MLPPolicy(obs_space, act_space, [16, 16], critic=critic, **kw)


def make_rollout(policy: MLPPolicy, b: int = 4, t: int = 6) -> Rollout:
    """A random rollout actually sampled from ``policy``, with advantages computed."""
    obs = torch.randn(b, t, policy.obs_dim)
    step = policy.sample(obs.reshape(b * t, -1))
    actions = step.actions.reshape(b, t, *step.actions.shape[1:])
    values = step.values.reshape(b, t) if step.values is not None else None
    dones = torch.zeros(b, t)
    dones[:, -1] = 1.0
    rewards = torch.randn(b, t) + (actions.float().reshape(b, t, -1)[..., 0] > 0).float()
    ro = Rollout(obs=obs, actions=actions, logprobs=step.log_probs.reshape(b, t), rewards=rewards,
                 mask=torch.ones(b, t), dones=dones, values=values,
                 next_values=None if values is None else torch.cat([values[:, 1:], torch.zeros(b, 1)], 1))
    est = "gae" if values is not None else "returns"
    return estimate_advantages(ro, est, 0.99, 0.95, "value" if values is not None else "mean", whiten=True)


def gpt2_style_tokenizer(texts, vocab_size: int = 400):
    """A byte-level BPE shaped like GPT-2's: one ``<|endoftext|>`` for bos and eos, no pad, no chat tokens
    (a pretrained model's tokenizer, without the download)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(texts, trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=["<|endoftext|>"],
                                                       initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                                       show_progress=False))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|endoftext|>", eos_token="<|endoftext|>")


# a tiny dialogue run: a GRU pre-trained for one epoch on one corpus category (seconds)
TINY_TEXT = ["env.id=lmpo/Chatbot-v0", "policy.kind=gru", "policy.embed=32", "policy.hidden=64",
             "env.kwargs.categories=[greetings]", "text.vocab_size=300", "text.pretrain.epochs=1",
             "text.sampling.max_new_tokens=8", "env.kwargs.max_turns=2", "train.progress=false", "seed=5"]


@pytest.fixture(scope="session")
def text_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pre-trained (no RL) tiny dialogue run: a checkpoint and a reference. Shared: tests only read it."""
    from lmpo.cli import main

    runs = tmp_path_factory.mktemp("runs")
    assert main(["pretrain", "chatbot", *TINY_TEXT, f"train.runs_dir={runs}", "name=tiny"]) == 0
    return runs / "tiny"


def chatml_gpt2(path: Path, width: int, layers: int, heads: int, vocab_size: int) -> None:
    """A random GPT-2 with a ChatML tokenizer (eos <|im_end|>, a pad of its own) trained on the chatterbot corpus and
    the example prompt set, saved in ``path`` like a hub checkpoint."""
    from transformers import GPT2Config, GPT2LMHeadModel

    from lmpo.data import load_chatterbot
    from tests.data.test_chat import CHATML

    texts = [t.content for d in load_chatterbot(["greetings", "emotion"]) for t in d]
    texts += (Path(__file__).resolve().parents[1] / "examples" / "prompts.jsonl").read_text().splitlines()
    tok = gpt2_style_tokenizer(texts + ["user assistant"] * 50, vocab_size=vocab_size)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>", "<|im_end|>"], "pad_token": "<pad>"})
    tok.eos_token = "<|im_end|>"
    tok.chat_template = CHATML
    torch.manual_seed(0)
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=256, n_embd=width, n_layer=layers, n_head=heads,
                               bos_token_id=tok.eos_token_id, eos_token_id=tok.eos_token_id,
                               pad_token_id=tok.pad_token_id)).save_pretrained(path)
    tok.save_pretrained(path)
