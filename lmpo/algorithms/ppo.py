"""PPO with the clipped surrogate (Schulman et al. 2017).

``L = -E[min(r A, clip(r, 1-eps, 1+eps) A)] + c_v (V - R)^2 - c_ent H``, ``r = pi(a|s) / pi_old(a|s)``,
optimised for several epochs over shuffled minibatches of the same rollout.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import Tensor, nn

from lmpo.algorithms.base import Shuffler, make_optimizer, unique_parameters, value_error
from lmpo.config import PPOConfig
from lmpo.core import Rollout, loss_weights
from lmpo.core.parallel import all_mean, minibatch_rows, share
from lmpo.policies.base import Evaluation, Policy


def _clip_bounds(adv: Tensor, clip: float) -> tuple[Tensor, Tensor]:
    """Per-step bounds such that ``-min(r A, clip(r, 1 - eps, 1 + eps) A) = -A clamp(r, lo, hi)``.

    For A >= 0 the left side is ``-A min(r, 1 + eps)``; for A < 0 it is ``-A max(r, 1 - eps)``. So
    ``lo = 1 - eps`` where A < 0 (else -inf) and ``hi = 1 + eps`` where A >= 0 (else +inf).
    """
    lo = torch.where(adv < 0, 1 - clip, -math.inf)
    hi = torch.where(adv >= 0, 1 + clip, math.inf)
    return lo, hi


def _approx_kl(ratio: Tensor, log_ratio: Tensor, w: Tensor) -> Tensor:
    """k3 estimator of KL(old || new): ``E[(r - 1) - log r]`` (Schulman 2020), weighted mean over steps."""
    with torch.no_grad():
        return torch.dot((ratio - 1 - log_ratio).reshape(-1), w.reshape(-1))


@torch.no_grad()
def _last_step_metrics(w: Tensor, ev: Evaluation, pg: Tensor, v_err: Tensor | None, ratio: Tensor,
                       log_ratio: Tensor, grad_norm: Tensor, clip: float) -> dict[str, float]:
    """Losses, KL and clip fraction of one minibatch step."""
    def mean(x: Tensor) -> Tensor:
        return torch.dot(x.reshape(-1).float(), w.reshape(-1))

    out = {"losses/policy": mean(pg), "losses/entropy": ev.reported_entropy(w > 0), "charts/grad_norm": grad_norm,
           "charts/approx_kl": _approx_kl(ratio, log_ratio, w), "charts/clipfrac": mean((ratio - 1).abs() > clip)}
    if v_err is not None:
        out["losses/value"] = mean(v_err)
    return {k: float(v) for k, v in out.items()}


class PPO:
    """Clipped-surrogate PPO with optional value clipping, KL early stop and linear annealing."""

    def __init__(self, cfg: PPOConfig, policy: Policy, seed: int = 0) -> None:
        self.cfg = cfg
        self.use_value = cfg.advantage.needs_value  # RLOO and GRPO-style advantages train no value
        self.params = unique_parameters(policy.actor_parameters(),
                                        policy.critic_parameters() if self.use_value else [])
        self.optimizer = make_optimizer(self.params, cfg.optimizer, cfg.lr, cfg.adam_eps)
        self.shuffler = Shuffler(seed)

    def update(self, policy: Policy, rollout: Rollout, progress: float) -> dict[str, float]:
        """Epochs x minibatches of clipped-surrogate steps; stops early past ``target_kl``.

        Losses, ``approx_kl`` and ``clipfrac`` describe the last minibatch step (as CleanRL logs them):
        computing them at every step would cost 10% of the update on small policies.
        """
        assert rollout.advantages is not None and rollout.returns is not None
        cfg = self.cfg
        lr = self.optimizer.set_lr(cfg.lr, progress, cfg.anneal_lr)
        clip = cfg.clip_range * (1.0 - progress) if cfg.anneal_clip else cfg.clip_range
        n_steps, stopped, epochs, last = 0, False, 0, None
        for epochs in range(1, cfg.epochs + 1):  # noqa: B007  (epochs is reported below)
            for whole in self._minibatches(rollout):
                # weights over the whole minibatch, then this process's share of its rows (all of them in one)
                w = whole.mask / whole.mask.sum().clamp_min(1.0)
                w_loss = w if cfg.loss_aggregation == "token_mean" else loss_weights(whole.mask, cfg.loss_aggregation)
                mb, (w, w_loss) = share(whole, w, w_loss)
                assert mb.advantages is not None and mb.returns is not None
                ev = policy.evaluate(mb.obs, mb.actions)
                log_ratio = ev.log_probs - mb.logprobs
                ratio = log_ratio.exp()
                if cfg.target_kl is not None and all_mean(_approx_kl(ratio, log_ratio, w)) > cfg.target_kl:
                    stopped = True
                    break
                # clipped surrogate, the pessimistic bound -min(r A, clip(r, 1-eps, 1+eps) A), written as one
                # clamp with per-step bounds (see _clip_bounds): same value and gradient, half the autograd nodes
                lo, hi = _clip_bounds(mb.advantages, clip)
                pg = -mb.advantages * ratio.clamp(lo, hi)
                per_step = pg if cfg.ent_coef == 0 else pg - cfg.ent_coef * ev.entropy
                loss = torch.dot(per_step.reshape(-1), w_loss.reshape(-1))  # aggregated over real steps
                v_err = None
                if self.use_value and ev.values is not None:
                    v_err = value_error(ev.values, mb.returns, mb.values, cfg.clip_range_vf)
                    loss = loss + cfg.vf_coef * torch.dot(v_err.reshape(-1), w.reshape(-1))  # masked mean
                grad_norm = self.optimizer.step(loss, cfg.max_grad_norm)
                last = (w, ev, pg, v_err, ratio, log_ratio, grad_norm)
                n_steps += 1
            if stopped:
                break
        metrics = {"charts/lr": lr, "charts/clip_range": clip, "charts/epochs": float(epochs),
                   "charts/early_stop": float(stopped), "charts/minibatch_steps": float(n_steps)}
        if last is not None:
            metrics.update(_last_step_metrics(*last, clip))
        return metrics

    def _minibatches(self, rollout: Rollout) -> list[Rollout]:
        """Shuffled minibatches of rows; when one minibatch holds the whole rollout it is used as it is (the order
        of rows is moot)."""
        if rollout.batch_size <= self.cfg.batch_size:
            return [rollout]
        order = self.shuffler.permutation(rollout.batch_size, rollout.mask.device)
        return [rollout.select(rows) for rows in minibatch_rows(order, self.cfg.batch_size)]

    def gradient_parameters(self) -> list[nn.Parameter]:
        """What the optimiser trains."""
        return self.optimizer.params

    def state_dict(self) -> dict[str, Any]:
        """Optimiser state and the minibatch shuffler's generator."""
        return {"optimizer": self.optimizer.state_dict(), "shuffler": self.shuffler.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the optimiser and the shuffler."""
        self.optimizer.load_state_dict(state["optimizer"])
        self.shuffler.load_state_dict(state.get("shuffler", {}))
