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

from lmpo.algorithms.base import Shuffler, make_optimizer, value_error
from lmpo.config import TRPOConfig
from lmpo.core import Rollout, loss_weights
from lmpo.core.parallel import all_mean, minibatch_rows, my_rows, share, world_size
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

    def __init__(self, cfg: TRPOConfig, policy: Policy, seed: int = 0) -> None:
        self.cfg = cfg
        self.actor = [p for p in policy.actor_parameters() if p.requires_grad]
        self.critic = policy.critic_parameters() if cfg.advantage.needs_value else []
        self.optimizer = make_optimizer(self.critic, cfg.optimizer, cfg.lr, cfg.adam_eps) if self.critic else None
        self.shuffler = Shuffler(seed)

    def update(self, policy: Policy, rollout: Rollout, progress: float) -> dict[str, float]:
        """One trust-region policy step and ``vf_iters`` epochs of value regression.

        Each process works on its share of the rows; the gradient, the Fisher-vector products, the surrogate and
        the KL are averaged over processes (``all_mean``), so every process takes the same step."""
        cfg, whole = self.cfg, rollout
        local, (w, w_mean) = share(whole, loss_weights(whole.mask, cfg.loss_aggregation),
                                   whole.mask / whole.mask.sum().clamp_min(1.0))
        adv = local.advantages
        assert adv is not None and local.returns is not None
        ev = policy.evaluate(local.obs, local.actions)
        old_dist = ev.dist.detach()  # pi_old: the policy before this update

        def surrogate_and_kl(ev: Evaluation) -> tuple[Tensor, Tensor]:
            ratio = (ev.log_probs - local.logprobs).exp()
            return (ratio * adv * w).sum(), (policy.kl(old_dist, ev.dist) * w_mean).sum()

        # step 1. policy gradient of the surrogate (KL from the same forward pass; it is 0 with zero gradient
        # here, but its Hessian is the Fisher matrix)
        surr, kl = surrogate_and_kl(ev)
        g = all_mean(flat_grad(surr, self.actor, retain_graph=True))
        # step 2. Fisher-vector products: F v = d/dtheta (grad KL . v), + damping v; on a random share of
        # the rows when fvp_fraction < 1 (the Fisher matrix is an average over states: a subsample estimates it)
        if cfg.fvp_fraction < 1.0:
            n = max(1, round(cfg.fvp_fraction * whole.batch_size))
            sub = whole.select(self.shuffler.permutation(whole.batch_size, whole.mask.device)[:n])
            sub, (sub_w,) = share(sub, sub.mask / sub.mask.sum().clamp_min(1.0))
            sub_dist = policy.evaluate(sub.obs, sub.actions).dist  # pi_old too: the parameters have not moved yet
            kl = (policy.kl(sub_dist.detach(), sub_dist) * sub_w).sum()
        grad_kl = flat_grad(kl, self.actor, create_graph=True)

        def fvp(v: Tensor) -> Tensor:
            return all_mean(flat_grad(grad_kl @ v, self.actor, retain_graph=True)) + cfg.cg_damping * v

        step_dir = conjugate_gradient(fvp, g, cfg.cg_iters)
        # step 3. scale to the trust region: 0.5 beta^2 x^T F x = max_kl
        shs = 0.5 * (step_dir @ fvp(step_dir))
        full_step = step_dir * torch.sqrt(cfg.max_kl / shs.clamp_min(1e-12))
        expected = g @ full_step
        # step 4. backtracking line search: accept only if the surrogate improves and KL <= max_kl
        old_params = parameters_to_vector(self.actor).detach().clone()
        accepted, steps, new_kl, improvement = False, 0, torch.zeros(()), torch.zeros(())
        surr = all_mean(surr.detach())
        with torch.no_grad():
            frac = 1.0
            for steps in range(1, cfg.backtrack_iters + 1):  # noqa: B007  (steps is reported below)
                _assign(old_params + frac * full_step, self.actor)
                new_surr, new_kl = surrogate_and_kl(policy.evaluate(local.obs, local.actions))
                new_surr, new_kl = all_mean(torch.stack([new_surr, new_kl])).unbind()
                improvement = new_surr - surr
                if new_kl <= cfg.max_kl and improvement > 0:
                    accepted = True
                    break
                frac *= cfg.backtrack_coef
            if not accepted:
                _assign(old_params, self.actor)
                new_kl, improvement = torch.zeros(()), torch.zeros(())
        metrics = {
            "losses/policy": -float(surr), "losses/entropy": float(ev.reported_entropy(local.mask)),
            "trpo/kl": float(new_kl), "trpo/accepted": float(accepted), "trpo/line_search_steps": float(steps),
            "trpo/step_fraction": frac if accepted else 0.0, "trpo/improvement": float(improvement),
            "trpo/expected_improvement": float(expected),
        }
        metrics["charts/approx_kl"] = metrics["trpo/kl"]
        # step 5. value function regression (its own parameters, so the trust region is untouched)
        if self.optimizer is not None:
            metrics.update(self._fit_value(policy, whole, progress))
        return metrics

    def _fit_value(self, policy: Policy, rollout: Rollout, progress: float) -> dict[str, float]:
        """``vf_iters`` epochs of shuffled minibatch regression of ``V(s)`` on the returns."""
        assert self.optimizer is not None and rollout.returns is not None
        lr = self.optimizer.set_lr(self.cfg.lr, progress, self.cfg.anneal_lr)
        total, n = torch.zeros(()), 0
        for _ in range(self.cfg.vf_iters):
            order = self.shuffler.permutation(rollout.batch_size, rollout.mask.device)
            for rows in minibatch_rows(order, self.cfg.vf_batch_size):
                # the minibatch's masked mean as a sum over this process's share (see lmpo.core.parallel); only what
                # the regression reads (indexing the whole rollout costs as much as a forward pass)
                scale = world_size() / rollout.mask[rows].sum().clamp_min(1.0)
                rows = my_rows(rows)
                obs, returns, mask = rollout.obs[rows], rollout.returns[rows], rollout.mask[rows]
                loss = (value_error(policy.value(obs, rollout.actions[rows]), returns) * mask).sum() * scale
                self.optimizer.step(loss, self.cfg.max_grad_norm)
                total, n = total + loss.detach(), n + 1
        return {"losses/value": float(total) / max(n, 1), "charts/lr": lr}

    def gradient_parameters(self) -> list[nn.Parameter]:
        """The value function's (the actor moves by conjugate gradient, on averaged gradients of its own)."""
        return [] if self.optimizer is None else self.optimizer.params

    def state_dict(self) -> dict[str, Any]:
        """Value-function optimiser state and the generator of minibatches and Fisher subsamples."""
        return {"optimizer": None if self.optimizer is None else self.optimizer.state_dict(),
                "shuffler": self.shuffler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the value-function optimiser and the shuffler."""
        if self.optimizer is not None and state.get("optimizer") is not None:
            self.optimizer.load_state_dict(state["optimizer"])
        self.shuffler.load_state_dict(state.get("shuffler", {}))
