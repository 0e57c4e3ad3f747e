"""Language-model policies: generation log-probs equal evaluate's, cached = uncached decoding, the
sampling transform, and REINFORCE / TRPO / PPO updates on language-model rollouts."""

import math

import pytest
import torch
from torch import Tensor

from lmpo.algorithms import PPO, TRPO, Reinforce
from lmpo.config import AdvantageConfig, PPOConfig, ReinforceConfig, TRPOConfig
from lmpo.core import estimate_advantages
from lmpo.policies import Policy
from lmpo.policies.generation import generate, to_rollout
from lmpo.policies.gpt import GPT, GPTConfig, rotary, rotate
from lmpo.policies.lm import LMPolicy
from lmpo.policies.recurrent import RecurrentLM
from lmpo.policies.sampling import SamplingConfig, outside_nucleus, sampling_logprobs
from lmpo.train.runtime import autocast

V, PAD, EOS = 40, 0, 2
BODIES = {
    "gru": lambda: RecurrentLM(V, "gru", embed=16, hidden=32),
    "lstm": lambda: RecurrentLM(V, "lstm", embed=16, hidden=32),
    "transformer": lambda: GPT(GPTConfig(V, n_layer=2, n_head=2, d_model=32, max_len=64)),
    "transformer-rotary": lambda: GPT(GPTConfig(V, n_layer=2, n_head=2, d_model=32, max_len=64, positions="rotary")),
}
FULL = SamplingConfig(temperature=0.8, top_k=15, top_p=0.9, epsilon=0.05, min_new_tokens=2, max_new_tokens=10)
PROMPTS = torch.tensor([[0, 0, 1, 5, 6], [0, 1, 7, 8, 9], [1, 3, 4, 5, 6], [0, 0, 0, 1, 9]])


def _policy(kind: str, sampling: SamplingConfig = FULL) -> LMPolicy:
    torch.manual_seed(0)
    return LMPolicy(BODIES[kind](), PAD, EOS, sampling)


@pytest.mark.parametrize("kind", list(BODIES))
@pytest.mark.parametrize("sampling", [FULL, SamplingConfig(max_new_tokens=10)])
def test_generation_logprobs_equal_evaluate(kind: str, sampling: SamplingConfig) -> None:
    pol = _policy(kind, sampling)
    pol.train()  # dropout must not change scores: generation and evaluation both run without it
    gen = generate(pol, PROMPTS)
    ev = pol.evaluate(PROMPTS, gen.tokens)
    assert torch.allclose(ev.log_probs, gen.logprobs, atol=1e-5)
    assert torch.allclose(ev.values, gen.values, atol=1e-5)
    # replies: real tokens then pad; an <eos> ends a reply and is part of it; nothing before min_new_tokens
    for row, m in zip(gen.tokens, gen.mask):
        n = int(m.sum())
        assert (row[n:] == PAD).all() and (row[:n] != PAD).all()
        assert n == sampling.max_new_tokens or row[n - 1] == EOS
        assert EOS not in row[: sampling.min_new_tokens].tolist() or sampling.min_new_tokens == 0


@pytest.mark.parametrize("kind", list(BODIES))
def test_cached_greedy_equals_uncached(kind: str) -> None:
    pol = _policy(kind)
    greedy = SamplingConfig(temperature=0.0, max_new_tokens=12, min_new_tokens=0)
    a = generate(pol, PROMPTS, greedy)
    b = generate(pol, PROMPTS, greedy, use_cache=False)
    assert torch.equal(a.tokens, b.tokens)
    assert torch.allclose(a.logprobs, b.logprobs, atol=1e-5)
    same = SamplingConfig(temperature=0.0, max_new_tokens=FULL.max_new_tokens, min_new_tokens=FULL.min_new_tokens)
    assert torch.equal(pol.sample(PROMPTS, deterministic=True).actions, generate(pol, PROMPTS, same).tokens)


@pytest.mark.parametrize("kind", list(BODIES))
def test_padded_rows_score_as_alone(kind: str) -> None:
    # evaluate computes logits at real reply tokens only (packed): each row of a batch whose replies have
    # different lengths must score exactly as that row alone, and pads must score nothing
    pol = _policy(kind, SamplingConfig(temperature=0.8, top_k=15, min_new_tokens=2, max_new_tokens=10))
    torch.manual_seed(1)
    replies = torch.randint(3, V, (len(PROMPTS), 10))
    lengths = torch.tensor([10, 3, 7, 1])
    replies[torch.arange(10) >= lengths.unsqueeze(1)] = PAD
    ev = pol.evaluate(PROMPTS, replies)
    for b, n in enumerate(lengths.tolist()):
        alone = pol.evaluate(PROMPTS[b:b + 1], replies[b:b + 1, :n])
        assert torch.allclose(ev.log_probs[b, :n], alone.log_probs[0], atol=1e-5)
        assert torch.allclose(ev.entropy[b, :n], alone.entropy[0], atol=1e-5)
        assert torch.allclose(ev.dist[b, :n], alone.dist[0], atol=1e-5)
        assert (ev.log_probs[b, n:] == 0).all() and (ev.entropy[b, n:] == 0).all() and (ev.dist[b, n:] == 0).all()
    assert ev.params.shape[0] == int(lengths.sum())  # one distribution per real token, none for pads


@pytest.mark.parametrize("kind", list(BODIES))
def test_columns_of_padding_in_every_row_are_not_computed(kind: str) -> None:
    # a minibatch of a rollout is padded to the rollout's longest prompt and reply: the body sees only the columns
    # some row uses, and the scores are those of the unpadded batch, shaped as the padded one
    pol = _policy(kind)
    torch.manual_seed(2)
    replies = torch.randint(3, V, (len(PROMPTS), 6))
    replies[1:, 4:] = PAD
    prompts = torch.cat([torch.full((len(PROMPTS), 3), PAD), PROMPTS], dim=1)  # 3 more columns of left padding
    wider = torch.cat([replies, torch.full((len(PROMPTS), 5), PAD)], dim=1)  # 5 more columns of right padding
    seen: list[tuple[int, ...]] = []
    pol.body.register_forward_pre_hook(lambda module, args: seen.append(tuple(args[0].shape)))
    ev, plain = pol.evaluate(prompts, wider), pol.evaluate(PROMPTS, replies)
    assert seen[0] == seen[1] == (len(PROMPTS), PROMPTS.shape[1] + replies.shape[1] - 1)
    assert ev.log_probs.shape == ev.values.shape == wider.shape
    torch.testing.assert_close(ev.log_probs[:, :6], plain.log_probs, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ev.values[:, :6], plain.values)
    assert (ev.log_probs[:, 6:] == 0).all() and (ev.values[:, 6:] == 0).all()
    values = pol(prompts, wider, value_only=True)
    assert values.shape == wider.shape and torch.equal(values, ev.values)


def test_reported_entropy_is_exact_on_small_batches_and_an_even_sample_of_large_ones() -> None:
    pol = _policy("gru")
    torch.manual_seed(2)
    replies = torch.randint(3, V, (len(PROMPTS), 10))
    replies[1, 4:] = PAD
    real = replies != PAD  # 34 steps
    sampled = pol.evaluate(PROMPTS, replies).reported_entropy(real, sample=5)  # steps 0, 8, 16, 25, 33 in row order
    ev = pol.evaluate(PROMPTS, replies)
    exact = ev.entropy[real].mean()
    assert torch.allclose(sampled, ev.entropy[real][torch.tensor([0, 8, 16, 25, 33])].mean(), atol=1e-6)
    assert not torch.allclose(sampled, exact, atol=1e-6) and not sampled.requires_grad
    assert torch.allclose(pol.evaluate(PROMPTS, replies).reported_entropy(real), exact, atol=1e-6)  # 34 <= 256
    # computed already (an entropy bonus): the log uses every step
    assert torch.allclose(ev.reported_entropy(real, sample=5), exact, atol=1e-6)
    # only the steps the mask keeps; padding the mask marks is not a step
    some = real.clone()
    some[0] = False
    for fresh in (False, True):
        scored = pol.evaluate(PROMPTS, replies) if fresh else ev
        assert torch.allclose(scored.reported_entropy(some), ev.entropy[some].mean(), atol=1e-6)
        assert torch.allclose(scored.reported_entropy(torch.ones_like(real)), exact, atol=1e-6)


def test_stop_callback_ends_rows() -> None:
    pol = _policy("gru", SamplingConfig(max_new_tokens=10, min_new_tokens=0))
    gen = generate(pol, PROMPTS, stop=lambda toks: len(toks) >= 3)
    assert (gen.mask.sum(1) <= 3).all()


def test_protocol() -> None:
    assert isinstance(_policy("gru"), Policy)


def test_sampling_transform() -> None:
    logits = torch.tensor([[0.0, 3.0, 1.0, 2.0, 0.5, -1.0]])  # pad 0, eos 2
    p = sampling_logprobs(logits, 0, SamplingConfig(min_new_tokens=1), PAD, EOS).exp()
    assert p[0, PAD] == 0 and p[0, EOS] == 0 and math.isclose(float(p.sum()), 1.0, rel_tol=1e-6)
    p = sampling_logprobs(logits, 5, SamplingConfig(top_k=2, min_new_tokens=1), PAD, EOS).exp()
    assert (p[0] > 0).nonzero().flatten().tolist() == [1, 3]
    # top-p 0.7: token 1 alone has p ~ 0.6 < 0.7, so the next most likely (token 3) is kept too
    full = sampling_logprobs(logits, 5, SamplingConfig(min_new_tokens=0), PAD, EOS).exp()
    assert full[0, 1] < 0.7
    p = sampling_logprobs(logits, 5, SamplingConfig(top_p=0.7, min_new_tokens=0), PAD, EOS).exp()
    assert (p[0] > 0).nonzero().flatten().tolist() == [1, 3]
    p = sampling_logprobs(logits, 5, SamplingConfig(top_k=1, epsilon=0.1, min_new_tokens=0), PAD, EOS).exp()
    allowed = 5  # everything but pad
    assert math.isclose(float(p[0, 1]), 0.9 + 0.1 / allowed, rel_tol=1e-5)
    assert math.isclose(float(p[0, 4]), 0.1 / allowed, rel_tol=1e-5) and p[0, PAD] == 0
    t = sampling_logprobs(logits, 5, SamplingConfig(temperature=0.5, min_new_tokens=0), PAD, EOS)
    ref = torch.log_softmax(torch.cat([torch.tensor([-math.inf]), logits[0, 1:] / 0.5]), -1)
    assert torch.allclose(t[0], ref)


def test_samples_follow_the_recorded_distribution() -> None:
    pol = _policy("gru", SamplingConfig(temperature=0.7, top_k=6, epsilon=0.1, max_new_tokens=1, min_new_tokens=0))
    prompts = PROMPTS[2:3].expand(20_000, -1)
    gen = generate(pol, prompts)
    logp = pol.evaluate(prompts[:1], gen.tokens[:1]).dist[0, 0]  # (V,) the sampling distribution
    freq = torch.bincount(gen.tokens[:, 0], minlength=V).float() / len(gen.tokens)
    assert torch.allclose(freq, logp.exp(), atol=0.012)


def _lm_rollout(pol: LMPolicy, k: int = 2):
    prompts = PROMPTS.repeat_interleave(k, 0)
    gen = generate(pol, prompts)
    rewards = ((gen.tokens % 2 == 1) & (gen.mask > 0)).sum(1) / gen.mask.sum(1)  # share of odd token ids
    assert rewards.std() > 0
    ro = to_rollout(prompts, gen, rewards, torch.arange(len(PROMPTS)).repeat_interleave(k))
    return ro


@pytest.mark.parametrize("kind", list(BODIES))
@pytest.mark.parametrize("algo", ["reinforce", "trpo", "ppo"])
@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_algorithms_update_language_models(kind: str, algo: str, precision: str) -> None:
    # TRPO needs a smooth policy (see tests/policies/test_hf.py): no top-k / top-p
    pol = _policy(kind, SamplingConfig(temperature=0.8, epsilon=0.05, min_new_tokens=2, max_new_tokens=10)
                  if algo == "trpo" else FULL)
    with autocast(precision, torch.device("cpu"), weights_change=True):  # as the trainer updates
        metrics, changed = _update(pol, algo)
    assert all(math.isfinite(v) for v in metrics.values()), metrics
    assert any(changed) and all(p.dtype == torch.float32 for p in pol.parameters())
    if algo == "trpo":  # > 0: the line search saw the weights it tried (not stale bf16 copies of the old ones)
        assert 0.0 < metrics["trpo/kl"] <= 0.01 + 1e-6, metrics


def _update(pol: LMPolicy, algo: str) -> tuple[dict[str, float], list[bool]]:
    """One update of ``algo`` on a fresh rollout; its metrics and which parameters changed."""
    ro = _lm_rollout(pol)
    if algo == "reinforce":
        ro = estimate_advantages(ro, "returns", 1.0, baseline="loo", whiten=False)
        a = Reinforce(ReinforceConfig(lr=1e-2, advantage=AdvantageConfig(estimator="returns", baseline="loo")), pol)
    elif algo == "trpo":
        ro = estimate_advantages(ro, "gae", 1.0, 0.95, whiten=True)
        a = TRPO(TRPOConfig(vf_iters=2, vf_batch_size=4), pol)
    else:
        ro = estimate_advantages(ro, "gae", 1.0, 0.95, whiten=True)
        a = PPO(PPOConfig(epochs=2, batch_size=4), pol)
    before = [p.detach().clone() for p in pol.parameters()]
    metrics = a.update(pol, ro, 0.0)
    return metrics, [not torch.equal(b, p) for b, p in zip(before, pol.parameters())]


def test_inverse_cdf_sampler_matches_probabilities_and_skips_zeros() -> None:
    from lmpo.policies.sampling import sample_categorical

    g = torch.Generator().manual_seed(0)
    logits = torch.randn(1, 12, generator=g)
    logits[0, [0, 5, 11]] = float("-inf")  # zero probability, first, middle and last
    logp = torch.log_softmax(logits, -1)
    draws = sample_categorical(logp.expand(100_000, -1))
    freq = torch.bincount(draws, minlength=12).float() / len(draws)
    assert freq[[0, 5, 11]].sum() == 0
    assert torch.allclose(freq, logp[0].exp(), atol=0.006)


def test_inverse_cdf_sampler_uniform_at_the_total_takes_the_last_possible_token(monkeypatch) -> None:
    from lmpo.policies.sampling import sample_categorical

    logits = torch.zeros(3, 6)
    logits[:, 4:] = float("-inf")  # the last two tokens are impossible
    monkeypatch.setattr(torch, "rand", lambda *shape, **kw: torch.ones(*shape, **kw))  # u == the cdf's total
    assert sample_categorical(torch.log_softmax(logits, -1)).tolist() == [3, 3, 3]


def test_trpo_with_subsampled_fisher_products_stays_in_the_trust_region() -> None:
    pol = _policy("gru", SamplingConfig(temperature=0.8, epsilon=0.05, min_new_tokens=2, max_new_tokens=10))
    ro = estimate_advantages(_lm_rollout(pol, k=4), "gae", 1.0, 0.95, whiten=True)
    before = [p.detach().clone() for p in pol.actor_parameters()]
    metrics = TRPO(TRPOConfig(vf_iters=1, vf_batch_size=4, fvp_fraction=0.5), pol).update(pol, ro, 0.0)
    assert metrics["trpo/accepted"] == 1.0 and 0 < metrics["trpo/kl"] <= 0.01 + 1e-6, metrics
    assert any(not torch.equal(b, p) for b, p in zip(before, pol.actor_parameters()))


@pytest.mark.parametrize("kind", list(BODIES))
def test_bf16_autocast_scores_like_fp32(kind: str) -> None:
    pol = _policy(kind, SamplingConfig(temperature=0.8, min_new_tokens=2, max_new_tokens=10))
    torch.manual_seed(1)
    gen = generate(pol, PROMPTS)
    full = pol.evaluate(PROMPTS, gen.tokens).log_probs
    with torch.autocast("cpu", dtype=torch.bfloat16):
        half = pol.evaluate(PROMPTS, gen.tokens)
        cached = generate(pol, PROMPTS, SamplingConfig(temperature=0.0, max_new_tokens=10))
    # bfloat16 keeps 8 bits of mantissa: log-probs move by rounding only, and stay float32 tensors
    assert half.log_probs.dtype == torch.float32 and half.values.dtype == torch.float32
    assert torch.allclose(half.log_probs, full, rtol=0.03, atol=0.01)
    assert cached.logprobs.dtype == torch.float32 and bool(torch.isfinite(cached.logprobs).all())


def test_kv_cache_is_made_in_the_autocast_dtype() -> None:
    # a float32 cache under bf16 autocast is converted at every layer of every decoding step
    from lmpo.policies.attention import StaticKV

    x = torch.zeros(2, 3)
    assert StaticKV(1, 2, 1, 4, 8, x).k.dtype == torch.float32
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert StaticKV(1, 2, 1, 4, 8, x).k.dtype == torch.bfloat16


def test_rotary_attention_depends_on_distance_not_place() -> None:
    """RoPE: a query at i and a key at j score the same as at i + s and j + s, so a copy learnt at one place in a
    conversation works at every other."""
    torch.manual_seed(0)
    q, k = torch.randn(1, 2, 1, 16), torch.randn(1, 2, 1, 16)

    def score(i: int, j: int) -> Tensor:
        return (rotate(q, rotary(torch.tensor([[i]]), 16)) * rotate(k, rotary(torch.tensor([[j]]), 16))).sum(-1)

    assert torch.allclose(score(7, 3), score(107, 103), atol=1e-4)
    assert not torch.allclose(score(7, 3), score(7, 5), atol=1e-2)
    with pytest.raises(ValueError, match="even head size"):
        GPT(GPTConfig(V, n_layer=1, n_head=4, d_model=12, positions="rotary"))


@pytest.mark.parametrize("scale", [8.0, 0.5])  # peaked: the nucleus is among the first tokens; flat: it is not
@pytest.mark.parametrize("top_p", [0.5, 0.9, 0.99])
def test_top_p_keeps_the_nucleus_of_a_full_sort(scale: float, top_p: float) -> None:
    torch.manual_seed(0)
    x = torch.randn(16, 500) * scale
    order = torch.argsort(x, dim=-1, descending=True)
    probs = torch.softmax(x, -1).gather(-1, order)
    nucleus = torch.zeros_like(x, dtype=torch.bool).scatter(-1, order, (probs.cumsum(-1) - probs) < top_p)
    assert torch.equal(outside_nucleus(x, top_p), ~nucleus)


@pytest.mark.parametrize("kind", ["transformer", "gru"])
def test_finished_rows_leave_the_batch_and_the_replies_stay_the_same(kind: str) -> None:
    torch.manual_seed(0)
    body = GPT(GPTConfig(64, 2, 2, 32, 128, 0.0, "rotary")) if kind == "transformer" else RecurrentLM(64, "gru", 16, 32)
    with torch.no_grad():  # make <eos> (id 2) likely from some states and not others: replies of many lengths
        (body.tok if kind == "transformer" else body.embed).weight[2] *= 8
        if kind == "gru":
            body.proj.bias[2] += 2.0
    policy = LMPolicy(body, 0, 2, SamplingConfig(temperature=1.0, max_new_tokens=24))
    lengths = torch.randint(2, 9, (16,))
    prompts = torch.randint(3, 64, (16, 8)).masked_fill(torch.arange(8) < 8 - lengths.unsqueeze(1), 0)
    sizes: list[int] = []
    body.register_forward_pre_hook(lambda module, args: sizes.append(args[0].shape[0]))
    torch.manual_seed(1)
    left = generate(policy, prompts)
    assert min(sizes) < 16  # finished rows left the batch
    torch.manual_seed(1)
    whole = generate(policy, prompts, use_cache=False)  # every row to the end, nothing leaves
    assert len(set(left.mask.sum(1).tolist())) > 3  # replies of many lengths
    assert torch.equal(left.tokens, whole.tokens)
    torch.testing.assert_close(left.logprobs, whole.logprobs, rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(left.values, whole.values, rtol=1e-4, atol=1e-5)
