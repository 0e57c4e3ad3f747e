"""PPO: parameters change, the clip removes the gradient where it should, KL early stop works."""

import math

import torch

from lmpo.algorithms import PPO
from lmpo.config import PPOConfig
from tests.conftest import make_policy, make_rollout


def test_update_changes_parameters_and_metrics_finite() -> None:
    for kind in ("discrete", "continuous"):
        pol = make_policy(kind)
        ro = make_rollout(pol).flatten()
        algo = PPO(PPOConfig(epochs=3, batch_size=8, ent_coef=0.01, clip_range_vf=0.2), pol)
        before = [p.detach().clone() for p in pol.parameters()]
        m = algo.update(pol, ro, 0.0)
        assert all(math.isfinite(v) for v in m.values())
        assert m["charts/minibatch_steps"] == 3 * 3
        assert all(not torch.equal(a, b) for a, b in zip(before, pol.parameters()))


def _ratio_rollout(pol, ratio: float, sign: float):
    ro = make_rollout(pol).flatten()
    with torch.no_grad():
        logp = pol.evaluate(ro.obs, ro.actions).log_probs
    ro.logprobs = logp - math.log(ratio)  # pi / pi_old = ratio everywhere
    ro.advantages = torch.full_like(logp, sign)
    return ro


def test_clip_stops_gradient_outside_trust_region() -> None:
    # ratio 1.5 > 1 + 0.2 with A > 0: min(rA, clip(r)A) = 1.2 A is constant, so the actor gets no gradient
    pol = make_policy("discrete", critic="separate")
    ro = _ratio_rollout(pol, 1.5, +1.0)
    algo = PPO(PPOConfig(epochs=1, batch_size=1000, vf_coef=0.0, max_grad_norm=None), pol)
    before = [p.detach().clone() for p in pol.actor_parameters()]
    m = algo.update(pol, ro, 0.0)
    assert m["charts/clipfrac"] == 1.0
    assert all(torch.equal(a, b) for a, b in zip(before, pol.actor_parameters()))
    # with A < 0 the same ratio is on the pessimistic, unclipped side: the actor moves
    ro = _ratio_rollout(pol, 1.5, -1.0)
    algo.update(pol, ro, 0.0)
    assert any(not torch.equal(a, b) for a, b in zip(before, pol.actor_parameters()))


def test_target_kl_stops_early() -> None:
    pol = make_policy("discrete")
    ro = make_rollout(pol, b=8, t=8).flatten()
    algo = PPO(PPOConfig(epochs=10, batch_size=16, lr=0.05, target_kl=1e-4), pol)
    m = algo.update(pol, ro, 0.0)
    assert m["charts/early_stop"] == 1.0
    assert m["charts/minibatch_steps"] < 10 * 4


def test_linear_annealing() -> None:
    pol = make_policy("discrete")
    ro = make_rollout(pol).flatten()
    algo = PPO(PPOConfig(lr=1e-3, anneal_lr=True, anneal_clip=True, clip_range=0.2, epochs=1), pol)
    m = algo.update(pol, ro, 0.75)
    assert math.isclose(m["charts/lr"], 2.5e-4) and math.isclose(m["charts/clip_range"], 0.05)


def test_single_clamp_form_equals_textbook_clipped_objective() -> None:
    from lmpo.algorithms.ppo import _clip_bounds

    g = torch.Generator().manual_seed(0)
    adv = torch.randn(1000, generator=g)
    adv[:10] = 0.0
    for eps in (0.1, 0.2, 0.3):
        ratio = (torch.rand(1000, generator=g) * 2).requires_grad_(True)
        textbook = -torch.min(ratio * adv, ratio.clamp(1 - eps, 1 + eps) * adv)
        (g1,) = torch.autograd.grad(textbook.sum(), ratio)
        lo, hi = _clip_bounds(adv, eps)
        ours = -adv * ratio.clamp(lo, hi)
        (g2,) = torch.autograd.grad(ours.sum(), ratio)
        assert torch.allclose(ours, textbook) and torch.allclose(g1, g2)
