"""TRPO (Schulman et al. 2015): the natural-gradient step that keeps mean KL(pi_old || pi) <= max_kl.

1. ``g`` = gradient of the importance-weighted surrogate ``L = E[pi(a|s) / pi_old(a|s) * A]``.
2. Solve ``F x = g`` by conjugate gradient, with Fisher-vector products ``F v`` computed by double
   backprop through the analytic mean KL (plus damping), optionally on a random share of the rows.
3. Scale ``x`` so that the quadratic model of the KL equals ``max_kl``: ``beta = sqrt(2 max_kl / x^T F x)``.
4. Backtracking line search: shrink the step until the surrogate improves and the true KL <= max_kl;
   if no step qualifies, keep the old parameters.
5. Fit the value function separately by minibatch regression on the returns.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn.utils import parameters_to_vector

from lmpo.algorithms.base import FlatAdam, value_error
from lmpo.config import TRPOConfig
from lmpo.core import Rollout, loss_weights, masked_mean
from lmpo.policies.base import Evaluation, Policy


def conjugate_gradient(fvp: Callable[[Tensor], Tensor], b: Tensor, iters: int, tol: float = 1e-10) -> Tensor:
    """Approximately solve ``A x = b`` for symmetric positive-definite ``A`` given only ``v -> A v``."""
    x = torch.zeros_like(b)
    r = b.clone()  # residual b - A x
    p = b.clone()  # search direction
    rr = r @ r
    for _ in range(iters):
        ap = fvp(p)
        alpha = rr / (p @ ap)
        x += alpha * p
        r -= alpha * ap
        rr_new = r @ r
        if rr_new < tol:
            break
        p = r + (rr_new / rr) * p
        rr = rr_new
    return x


def flat_grad(y: Tensor, params: list[nn.Parameter], **kwargs: Any) -> Tensor:
    """Gradient of scalar ``y`` w.r.t. ``params`` as one flat vector."""
    grads = torch.autograd.grad(y, params, **kwargs)
    return torch.cat([g.reshape(-1) for g in grads])


@torch.no_grad()
def _assign(vector: Tensor, params: list[nn.Parameter]) -> None:
    """Copy a flat vector into ``params`` in place (their storage, and anything viewing it, is kept)."""
    offset = 0
    for p in params:
        p.copy_(vector[offset:offset + p.numel()].view_as(p))
        offset += p.numel()


class TRPO:
    """Trust-region policy step, then separate value regression."""

    def __init__(self, cfg: TRPOConfig, policy: Policy) -> None:
        self.cfg = cfg
        self.actor = policy.actor_parameters()
        self.critic = policy.critic_parameters() if cfg.advantage.needs_value else []
        self.optimizer = FlatAdam(self.critic, cfg.lr, cfg.adam_eps) if self.critic else None

    def update(self, policy: Policy, rollout: Rollout, progress: float) -> dict[str, float]:
        """One trust-region policy step and ``vf_iters`` epochs of value regression."""
        cfg, m, adv = self.cfg, rollout.mask, rollout.advantages
        assert adv is not None and rollout.returns is not None
        ev = policy.evaluate(rollout.obs, rollout.actions)
        old_dist = ev.dist.detach()  # pi_old: the policy before this update
        w = loss_weights(m, cfg.loss_aggregation)

        def surrogate_and_kl(ev: Evaluation) -> tuple[Tensor, Tensor]:
            ratio = (ev.log_probs - rollout.logprobs).exp()
            return (ratio * adv * w).sum(), masked_mean(policy.kl(old_dist, ev.dist), m)

        # step 1. policy gradient of the surrogate (KL from the same forward pass; it is 0 with zero gradient
        # here, but its Hessian is the Fisher matrix)
        surr, kl = surrogate_and_kl(ev)
        g = flat_grad(surr, self.actor, retain_graph=True)
        # step 2. Fisher-vector products: F v = d/dtheta (grad KL . v), + damping v; on a random share of
        # the rows when fvp_fraction < 1 (the Fisher matrix is an average over states: a subsample estimates it)
        if cfg.fvp_fraction < 1.0:
            n = max(1, round(cfg.fvp_fraction * rollout.batch_size))
            rows = torch.randperm(rollout.batch_size, device=m.device)[:n]
            sub = rollout.select(rows)
            kl = masked_mean(policy.kl(old_dist[rows], policy.evaluate(sub.obs, sub.actions).dist), sub.mask)
        grad_kl = flat_grad(kl, self.actor, create_graph=True)

        def fvp(v: Tensor) -> Tensor:
            return flat_grad(grad_kl @ v, self.actor, retain_graph=True) + cfg.cg_damping * v

        step_dir = conjugate_gradient(fvp, g, cfg.cg_iters)
        # step 3. scale to the trust region: 0.5 beta^2 x^T F x = max_kl
        shs = 0.5 * (step_dir @ fvp(step_dir))
        full_step = step_dir * torch.sqrt(cfg.max_kl / shs.clamp_min(1e-12))
        expected = g @ full_step
        # step 4. backtracking line search: accept only if the surrogate improves and KL <= max_kl
        old_params = parameters_to_vector(self.actor).detach().clone()
        accepted, steps, new_kl, improvement = False, 0, torch.zeros(()), torch.zeros(())
        with torch.no_grad():
            frac = 1.0
            for steps in range(1, cfg.backtrack_iters + 1):  # noqa: B007  (steps is reported below)
                _assign(old_params + frac * full_step, self.actor)
                new_surr, new_kl = surrogate_and_kl(policy.evaluate(rollout.obs, rollout.actions))
                improvement = new_surr - surr.detach()
                if new_kl <= cfg.max_kl and improvement > 0:
                    accepted = True
                    break
                frac *= cfg.backtrack_coef
            if not accepted:
                _assign(old_params, self.actor)
                new_kl, improvement = torch.zeros(()), torch.zeros(())
        metrics = {
            "losses/policy": -float(surr.detach()), "losses/entropy": float(ev.reported_entropy(m)),
            "trpo/kl": float(new_kl), "trpo/accepted": float(accepted), "trpo/line_search_steps": float(steps),
            "trpo/step_fraction": frac if accepted else 0.0, "trpo/improvement": float(improvement),
            "trpo/expected_improvement": float(expected),
        }
        metrics["charts/approx_kl"] = metrics["trpo/kl"]
        # step 5. value function regression (its own parameters, so the trust region is untouched)
        if self.optimizer is not None:
            metrics.update(self._fit_value(policy, rollout, progress))
        return metrics

    def _fit_value(self, policy: Policy, rollout: Rollout, progress: float) -> dict[str, float]:
        """``vf_iters`` epochs of shuffled minibatch regression of ``V(s)`` on the returns."""
        assert self.optimizer is not None and rollout.returns is not None
        lr = self.optimizer.set_lr(self.cfg.lr, progress, self.cfg.anneal_lr)
        total, n = torch.zeros(()), 0
        for _ in range(self.cfg.vf_iters):
            for rows in torch.randperm(rollout.batch_size).split(self.cfg.vf_batch_size):
                # only what the regression reads (indexing the whole rollout costs as much as a forward pass)
                obs, returns, mask = rollout.obs[rows], rollout.returns[rows], rollout.mask[rows]
                loss = masked_mean(value_error(policy.value(obs, rollout.actions[rows]), returns), mask)
                self.optimizer.step(loss, self.cfg.max_grad_norm)
                total, n = total + loss.detach(), n + 1
        return {"losses/value": float(total) / max(n, 1), "charts/lr": lr}

    def state_dict(self) -> dict[str, Any]:
        """Value-function optimiser state."""
        return {"optimizer": None if self.optimizer is None else self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the value-function optimiser."""
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
