"""The Hugging Face adapter on a tiny random GPT-2 that the test builds, saves and loads back."""

import math
import sys
import warnings
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM, DynamicCache, GPT2Config, GPT2LMHeadModel

from lmpo.algorithms import PPO, TRPO
from lmpo.config import PPOConfig, TRPOConfig
from lmpo.core import estimate_advantages
from lmpo.data import dialogue_texts, encode_prompt, load_chatterbot, train_tokenizer
from lmpo.data.corpus import Turn
from lmpo.policies.generation import cache_row, generate, to_rollout
from lmpo.policies.hf import HFCausalLM, load_hf_policy, save_hf_policy
from lmpo.policies.hf_cache import PreallocatedCache
from lmpo.policies.lm import LMPolicy
from lmpo.policies.sampling import SamplingConfig


@pytest.fixture(scope="module")
def tiny_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GPT-2 with a tokenizer trained on the corpus, saved like any hub checkpoint."""
    path = tmp_path_factory.mktemp("tiny-gpt2")
    tok = train_tokenizer(dialogue_texts(load_chatterbot(["greetings", "ai"])), vocab_size=400)
    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=len(tok), n_positions=128, n_embd=32, n_layer=2, n_head=2,
                     bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    GPT2LMHeadModel(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


@pytest.fixture(scope="module")
def tiny_llama_dir(tiny_dir: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer Llama (rotary positions, no native path) with the same tokenizer."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    tok = AutoTokenizer.from_pretrained(tiny_dir)
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                      num_attention_heads=2, num_key_value_heads=2, max_position_embeddings=128,
                      bos_token_id=tok.bos_token_id, eos_token_id=tok.eos_token_id, pad_token_id=tok.pad_token_id)
    LlamaForCausalLM(cfg).save_pretrained(path)
    tok.save_pretrained(path)
    return path


def _prompts(tok) -> torch.Tensor:
    rows = [encode_prompt(tok, [Turn("user", text)]) for text in ("Hello", "What is AI?", "How are you doing?")]
    width = max(map(len, rows))
    return torch.tensor([[tok.pad_token_id] * (width - len(r)) + r for r in rows])


SAMPLING = SamplingConfig(temperature=0.9, top_k=50, top_p=0.95, epsilon=0.02, min_new_tokens=1, max_new_tokens=8)


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_logprobs_and_cache(arch: str, tiny_dir: Path, tiny_llama_dir: Path) -> None:
    pol, tok = load_hf_policy(tiny_dir if arch == "gpt2" else tiny_llama_dir, SAMPLING)
    assert pol.body.native == (arch == "gpt2")
    prompts = _prompts(tok)
    with warnings.catch_warnings(record=True) as caught:  # the cache passes by its current name (5.24: `cache`)
        warnings.simplefilter("always")
        gen = generate(pol, prompts)
    assert not [w for w in caught if "past_key_values" in str(w.message)]
    ev = pol.evaluate(prompts, gen.tokens)
    assert torch.allclose(ev.log_probs, gen.logprobs, atol=1e-5)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=10, min_new_tokens=0)
    assert torch.equal(generate(pol, prompts, greedy).tokens, generate(pol, prompts, greedy, use_cache=False).tokens)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # train.precision bf16: rounding moves log-probs, no more
        half = pol.evaluate(prompts, gen.tokens).log_probs
        decoded = generate(pol, prompts, greedy).logprobs
    # a token at the edge of top-k / top-p may leave (or join) the kept set under bf16 rounding: it keeps only its
    # epsilon share, log(0.02 / vocab) ~ -9.9; every other token moves by rounding only
    close = torch.isclose(half, ev.log_probs, rtol=0.03, atol=0.01)
    edge = torch.minimum(half, ev.log_probs) < math.log(SAMPLING.epsilon / len(tok)) + 0.1
    assert bool((close | edge).all()) and float(close.float().mean()) > 0.9
    assert bool(torch.isfinite(decoded).all())


@pytest.mark.parametrize("algo", ["ppo", "trpo"])
def test_update_and_save_pretrained_round_trip(tiny_dir: Path, tmp_path: Path, algo: str) -> None:
    # TRPO's trust region needs a smooth policy: top-k / top-p make the sampled distribution jump when a
    # token crosses the cut-off (KL then grows linearly, not quadratically), so TRPO samples without them
    sampling = SAMPLING if algo == "ppo" else SamplingConfig(temperature=0.9, epsilon=0.02, max_new_tokens=8)
    pol, tok = load_hf_policy(tiny_dir, sampling, attn_implementation="eager")
    prompts = _prompts(tok).repeat_interleave(2, 0)
    gen = generate(pol, prompts)
    rewards = ((gen.tokens % 2 == 1) & (gen.mask > 0)).sum(1) / gen.mask.sum(1)  # share of odd token ids
    assert rewards.std() > 0
    ro = estimate_advantages(to_rollout(prompts, gen, rewards), "gae", 1.0, 0.95, whiten=True)
    a = PPO(PPOConfig(epochs=2, batch_size=3), pol) if algo == "ppo" else TRPO(TRPOConfig(vf_iters=1), pol)
    before = [p.detach().clone() for p in pol.actor_parameters()]
    metrics = a.update(pol, ro, 0.0)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert any(not torch.equal(b, p) for b, p in zip(before, pol.actor_parameters()))
    save_hf_policy(pol, tok, tmp_path / "trained")
    reloaded = AutoModelForCausalLM.from_pretrained(tmp_path / "trained")
    trained = dict(pol.body.model.named_parameters())
    for name, p in reloaded.named_parameters():
        assert torch.equal(p, trained[name]), name
    assert (tmp_path / "trained" / "value_head.safetensors").is_file()


def test_native_gpt2_forward_equals_transformers(tiny_dir: Path) -> None:
    pol, tok = load_hf_policy(tiny_dir, SAMPLING)
    body = pol.body
    assert body.native
    prompts = _prompts(tok)
    mask = prompts != tok.pad_token_id
    with torch.no_grad():
        ours, hidden, _ = body(prompts, mask)
        body.native = False
        ref, ref_hidden, _ = body(prompts, mask)
    real = mask.unsqueeze(-1)
    assert torch.allclose(ours * real, ref * real, atol=1e-5)
    assert torch.allclose(hidden * real, ref_hidden * real, atol=1e-5)


def _random_model(arch: str) -> torch.nn.Module:
    """A random two-layer model of ``arch``, vocabulary 64, whose <eos> (id 2) is likely from some states only."""
    import transformers

    common = {"vocab_size": 64, "bos_token_id": 1, "eos_token_id": 2, "pad_token_id": 0}
    sizes = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
             "num_key_value_heads": 2, "max_position_embeddings": 128}
    extra: dict[str, object] = {
        "mistral": {"sliding_window": 4},  # every layer attends to the last 4 positions only
        "minimax": {"head_dim": 8, "num_local_experts": 2, "num_experts_per_tok": 1},  # linear attention in layer 0
    }.get(arch, {})
    torch.manual_seed(0)
    if arch == "gpt2":
        model = GPT2LMHeadModel(GPT2Config(n_embd=32, n_layer=2, n_head=2, n_positions=128, **common))
    else:
        name = {"llama": "Llama", "mistral": "Mistral", "minimax": "MiniMax"}[arch]
        config = getattr(transformers, f"{name}Config")(**common, **sizes, **extra)
        model = getattr(transformers, f"{name}ForCausalLM")(config)
    with torch.no_grad():
        model.get_input_embeddings().weight[2] *= 8
        model.get_output_embeddings().weight[2] *= 8
    return model.eval()


@pytest.mark.parametrize("arch", ["gpt2", "llama", "mistral", "minimax"])
def test_hf_models_decode_with_a_preallocated_cache_that_finished_rows_leave(arch: str) -> None:
    """Models that run through transformers' forward (GPT-2's too under FSDP) decode with lmpo's cache: written in
    place, finished rows leave the batch, and the replies are those decoded without a cache, sliding windows
    included. A model with linear-attention layers keeps transformers' own cache, which rows cannot leave, and
    decodes the same replies."""
    body = HFCausalLM(_random_model(arch))
    body.native = False  # GPT-2 as under FSDP
    policy = LMPolicy(body, 0, 2, SamplingConfig(temperature=1.0, max_new_tokens=20))
    lengths = torch.randint(2, 9, (16,))
    prompts = torch.randint(3, 64, (16, 8)).masked_fill(torch.arange(8) < 8 - lengths.unsqueeze(1), 0)
    sizes: list[int] = []
    caches: list[object] = []

    def seen(module: torch.nn.Module, args: tuple, out: tuple) -> None:
        sizes.append(args[0].shape[0])
        caches.append(out[2])

    hook = body.register_forward_hook(seen)
    torch.manual_seed(1)
    left = generate(policy, prompts)
    hook.remove()
    torch.manual_seed(1)
    whole = generate(policy, prompts, use_cache=False)
    assert len(set(whole.mask.sum(1).tolist())) > 3  # replies of many lengths
    assert torch.equal(left.tokens, whole.tokens)
    torch.testing.assert_close(left.logprobs, whole.logprobs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(left.values, whole.values, rtol=1e-4, atol=1e-5)
    own = arch == "minimax"
    assert body.preallocate == (not own)
    assert all(isinstance(c, DynamicCache if own else PreallocatedCache) for c in caches)
    assert (min(sizes) == 16) == own  # finished rows left the batch, except from transformers' cache
    if not own:  # between the steps where rows left, every step wrote into the same buffers
        buffers = {(c.layers[0].kv.k.data_ptr(), s) for c, s in zip(caches, sizes, strict=True)}
        assert len(buffers) == len(set(sizes))  # one buffer per batch size (a freed one's address may come back)
        # a row's cache to go on from later (lmpo serve, after a lookup): not from a windowed one, which would count
        # the padding between what it read and what it reads next
        row = cache_row(caches[0], 0, prompts[0] != 0)
        assert (row is None) == (arch == "mistral")
    if arch == "mistral":  # the window acts: without it the same weights decode other log-probabilities
        body.model.config.sliding_window = None
        torch.manual_seed(1)
        assert not torch.allclose(generate(policy, prompts, use_cache=False).logprobs, whole.logprobs)


def test_where_lmpos_cache_cannot_load_a_model_decodes_with_its_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """With transformers before 4.56, ``hf_cache`` cannot import: the model keeps its own cache, and decodes the
    same replies."""
    monkeypatch.setitem(sys.modules, "lmpo.policies.hf_cache", None)  # importing it raises ImportError
    body = HFCausalLM(_random_model("llama"))
    policy = LMPolicy(body, 0, 2, SamplingConfig(temperature=1.0, max_new_tokens=12))
    prompts = torch.randint(3, 64, (4, 6))
    torch.manual_seed(1)
    own = generate(policy, prompts)
    assert body.preallocate is False
    torch.manual_seed(1)
    assert torch.equal(own.tokens, generate(policy, prompts, use_cache=False).tokens)


def test_a_tokenizer_without_pad_gets_its_own(tmp_path: Path) -> None:
    from tests.conftest import gpt2_style_tokenizer

    tok = gpt2_style_tokenizer(dialogue_texts(load_chatterbot(["greetings"])))
    GPT2LMHeadModel(GPT2Config(vocab_size=len(tok), n_positions=64, n_embd=32, n_layer=1, n_head=2)).save_pretrained(
        tmp_path)
    tok.save_pretrained(tmp_path)
    pol, loaded = load_hf_policy(tmp_path, SamplingConfig(max_new_tokens=6))
    assert loaded.pad_token == "<pad>" and pol.pad_id != pol.eos_id  # a pad equal to eos would hide every eos
    assert pol.body.vocab_size == len(tok) + 1 == len(loaded)
