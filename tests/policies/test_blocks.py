"""What can be done to a transformer's blocks: gradient checkpointing (the same gradients, and TRPO's second
derivatives, with each block run again in backward) for lmpo's transformer, GPT-2's native path and another Hugging
Face model; torch.compile for decoding and scoring (the same replies, log-probs and gradients)."""

import copy
from pathlib import Path

import pytest
import torch

from lmpo.algorithms.trpo import flat_grad
from lmpo.config import ConfigError, load_config
from lmpo.policies import GPT, GPTConfig, LMPolicy
from lmpo.policies.generation import generate
from lmpo.policies.hf import checkpoint_blocks, compile_blocks, load_hf_policy
from lmpo.policies.recurrent import RecurrentLM
from lmpo.policies.sampling import SamplingConfig
from tests.policies.test_hf import _prompts, tiny_dir, tiny_llama_dir  # noqa: F401  (fixtures)


def _policies(kind: str, tiny: Path, llama: Path) -> tuple[LMPolicy, torch.Tensor]:
    if kind == "transformer":
        torch.manual_seed(0)
        body = GPT(GPTConfig(300, 2, 2, 32, 64, 0.0, "rotary"))
        policy = LMPolicy(body, 0, 1, SamplingConfig(max_new_tokens=6))
        return policy, torch.randint(2, 300, (3, 5))
    policy, tok = load_hf_policy(tiny if kind == "gpt2" else llama, SamplingConfig(max_new_tokens=6),
                                 attn_implementation="eager")
    return policy, _prompts(tok)


def _block_module(policy: LMPolicy, kind: str) -> torch.nn.Module:
    """A module early in the block (a recompute stops once it has what backward needs: a late one may not rerun)."""
    body = policy.body
    if kind == "transformer":
        return body.blocks[0].qkv
    if kind == "gpt2":
        return body.model.transformer.h[0].attn.c_attn
    return body.model.model.layers[0].self_attn.q_proj


@pytest.mark.parametrize("kind", ["transformer", "gpt2", "llama"])
def test_checkpointing_gives_the_same_gradients_and_recomputes_blocks(kind: str, tiny_dir: Path,  # noqa: F811
                                                                      tiny_llama_dir: Path) -> None:  # noqa: F811
    plain, prompts = _policies(kind, tiny_dir, tiny_llama_dir)
    ckpt = copy.deepcopy(plain)
    checkpoint_blocks(ckpt.body)
    torch.manual_seed(1)
    gen = generate(plain, prompts)
    runs = {"plain": 0, "ckpt": 0}
    for name, policy in (("plain", plain), ("ckpt", ckpt)):
        _block_module(policy, kind).register_forward_hook(lambda *a, n=name: runs.__setitem__(n, runs[n] + 1))
    grads = []
    for policy in (plain, ckpt):
        params = [p for p in policy.parameters() if p.requires_grad]
        ev = policy.evaluate(prompts, gen.tokens)
        loss = -(ev.log_probs * gen.mask).sum() + ev.values.square().sum()
        g = flat_grad(loss, params, create_graph=True)
        v = torch.ones_like(g)
        grads.append((g.detach(), flat_grad(g @ v, params)))  # a Hessian-vector product, as TRPO's Fisher products
    torch.testing.assert_close(grads[1][0], grads[0][0], rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(grads[1][1], grads[0][1], rtol=1e-3, atol=1e-5)
    assert runs["ckpt"] > runs["plain"]  # each block ran again in backward
    with torch.no_grad():  # decoding is not checkpointed: the same replies
        torch.manual_seed(2)
        a = generate(plain, prompts)
        torch.manual_seed(2)
        b = generate(ckpt, prompts)
    assert torch.equal(a.tokens, b.tokens)


def test_recurrent_bodies_are_refused() -> None:
    with pytest.raises(ValueError, match="transformer and hf"):
        checkpoint_blocks(RecurrentLM(50, "gru", 8, 16))


def test_compiled_blocks_decode_and_score_as_eager_ones() -> None:
    from torch._dynamo.utils import counters

    eager, prompts = _policies("transformer", Path(), Path())
    compiled = copy.deepcopy(eager)
    compile_blocks(compiled.body, ["decode", "score"])
    counters.clear()
    replies = []
    for policy in (eager, compiled):
        torch.manual_seed(3)
        replies.append(generate(policy, prompts))
    assert torch.equal(replies[0].tokens, replies[1].tokens)
    torch.testing.assert_close(replies[1].logprobs, replies[0].logprobs, rtol=1e-4, atol=1e-5)
    grads = []
    for policy in (eager, compiled):
        ev = policy.evaluate(prompts, replies[0].tokens)
        (ev.log_probs.sum() + ev.values.sum()).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in policy.parameters() if p.grad is not None]))
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-4, atol=1e-5)
    assert counters["stats"]["unique_graphs"] >= 2  # a decoding graph and a scoring one were compiled
    with pytest.raises(ValueError, match="unknown passes"):
        compile_blocks(compiled.body, ["everything"])


def test_block_options_are_checked() -> None:
    with pytest.raises(ConfigError, match="transformer and hf"):
        load_config(None, ["env.id=lmpo/Chatbot-v0", "policy.kind=gru", "policy.compile=[decode]"])
    with pytest.raises(ConfigError, match="not twice differentiable"):
        load_config(None, ["env.id=lmpo/Chatbot-v0", "policy.kind=transformer", "algo.name=trpo",
                           "policy.compile=[score]"])
    with pytest.raises(ConfigError, match="transformer and hf"):
        load_config(None, ["env.id=lmpo/Chatbot-v0", "policy.kind=gru", "policy.gradient_checkpointing=true"])
    cfg = load_config(None, ["env.id=lmpo/Chatbot-v0", "policy.kind=transformer", "policy.compile=[decode, score]"])
    assert cfg.policy.compile == ["decode", "score"]
