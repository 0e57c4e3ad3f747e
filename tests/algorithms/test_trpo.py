"""TRPO: conjugate gradient, the Fisher-vector product, and the trust region of the line search."""

import math

import torch
from torch.nn.utils import parameters_to_vector, vector_to_parameters

from lmpo.algorithms import TRPO, conjugate_gradient
from lmpo.config import TRPOConfig
from lmpo.core import masked_mean
from tests.conftest import make_policy, make_rollout


def test_conjugate_gradient_solves_spd_system() -> None:
    g = torch.Generator().manual_seed(0)
    m = torch.randn(12, 12, generator=g, dtype=torch.float64)
    a = m @ m.T + 12 * torch.eye(12, dtype=torch.float64)
    b = torch.randn(12, generator=g, dtype=torch.float64)
    x = conjugate_gradient(lambda v: a @ v, b, iters=12)
    assert torch.allclose(x, torch.linalg.solve(a, b), atol=1e-6)  # CG stops at |r|^2 < 1e-10


def test_fisher_vector_product_equals_kl_hessian() -> None:
    # the double-backprop FVP must equal the explicit Hessian of the mean KL at the old parameters
    pol = make_policy("discrete", critic="separate")
    ro = make_rollout(pol, b=2, t=3).flatten()
    params = pol.actor_parameters()
    theta0 = parameters_to_vector(params).detach().clone()
    with torch.no_grad():
        old = pol.evaluate(ro.obs, ro.actions).dist

    def mean_kl(theta: torch.Tensor) -> torch.Tensor:
        vector_to_parameters(theta, params)
        return masked_mean(pol.kl(old, pol.evaluate(ro.obs, ro.actions).dist), ro.mask)

    # explicit Hessian through torch.func on a functional version of the actor
    from torch.func import functional_call, hessian

    names = [n for n, p in pol.named_parameters() if any(p is q for q in params)]
    shapes = [p.shape for p in params]

    def kl_of(theta: torch.Tensor) -> torch.Tensor:
        chunks = theta.split([s.numel() for s in shapes])
        state = {n: c.reshape(s) for n, c, s in zip(names, chunks, shapes)}
        dist = functional_call(pol, state, (ro.obs, ro.actions), strict=False).dist  # MLPPolicy.forward: Evaluation
        return masked_mean(pol.kl(old, dist), ro.mask)

    h = hessian(kl_of)(theta0)
    v = torch.randn_like(theta0)
    kl = mean_kl(theta0)
    grads = torch.autograd.grad(kl, params, create_graph=True)
    flat = torch.cat([g.reshape(-1) for g in grads])
    fvp = torch.cat([g.reshape(-1) for g in torch.autograd.grad(flat @ v, params)])
    assert torch.allclose(fvp, h @ v, atol=1e-5)


def test_update_respects_trust_region_and_improves_surrogate() -> None:
    for kind in ("discrete", "continuous"):
        pol = make_policy(kind)
        ro = make_rollout(pol, b=8, t=8).flatten()
        cfg = TRPOConfig(max_kl=0.005, vf_iters=2, vf_batch_size=16)
        algo = TRPO(cfg, pol)
        before = [p.detach().clone() for p in pol.parameters()]
        with torch.no_grad():
            old = pol.evaluate(ro.obs, ro.actions)
        m = algo.update(pol, ro, 0.0)
        assert all(math.isfinite(v) for v in m.values())
        assert m["trpo/accepted"] == 1.0
        with torch.no_grad():
            new = pol.evaluate(ro.obs, ro.actions)
            kl = float(masked_mean(pol.kl(old.dist, new.dist), ro.mask))
            surr = float(masked_mean((new.log_probs - ro.logprobs).exp() * ro.advantages, ro.mask))
        assert 0 < kl <= cfg.max_kl and math.isclose(kl, m["trpo/kl"], rel_tol=1e-4)
        assert surr > float(masked_mean(ro.advantages, ro.mask)) and m["trpo/improvement"] > 0
        assert all(not torch.equal(a, b) for a, b in zip(before, pol.parameters()))


def test_line_search_rejects_and_restores() -> None:
    # zero advantages: no step can improve the surrogate, so the old parameters must be restored exactly
    pol = make_policy("discrete")
    ro = make_rollout(pol).flatten()
    ro.advantages = torch.zeros_like(ro.logprobs)
    algo = TRPO(TRPOConfig(vf_iters=1), pol)
    before = [p.detach().clone() for p in pol.actor_parameters()]
    m = algo.update(pol, ro, 0.0)
    assert m["trpo/accepted"] == 0.0 and m["trpo/kl"] == 0.0
    assert all(torch.equal(a, b) for a, b in zip(before, pol.actor_parameters()))
