"""PPO with the clipped surrogate (Schulman et al. 2017).

``L = -E[min(r A, clip(r, 1-eps, 1+eps) A)] + c_v (V - R)^2 - c_ent H``, ``r = pi(a|s) / pi_old(a|s)``,
optimised for several epochs over shuffled minibatches of the same rollout.
"""

from __future__ import annotations

from typing import Any

import torch

from lmpo.algorithms.base import FlatAdam, unique_parameters, value_error
from lmpo.config import PPOConfig
from lmpo.core import Rollout
from lmpo.policies.base import Policy

_METRICS = ("losses/policy", "losses/value", "losses/entropy", "charts/approx_kl", "charts/clipfrac",
            "charts/grad_norm")


class PPO:
    """Clipped-surrogate PPO with optional value clipping, KL early stop and linear annealing."""

    def __init__(self, cfg: PPOConfig, policy: Policy) -> None:
        self.cfg = cfg
        self.params = unique_parameters(policy.actor_parameters(), policy.critic_parameters())
        self.optimizer = FlatAdam(self.params, cfg.lr, cfg.adam_eps)

    def update(self, policy: Policy, rollout: Rollout, progress: float) -> dict[str, float]:
        """Epochs x minibatches of clipped-surrogate steps; stops early past ``target_kl``."""
        assert rollout.advantages is not None and rollout.returns is not None
        cfg = self.cfg
        lr = self.optimizer.set_lr(cfg.lr, progress, cfg.anneal_lr)
        clip = cfg.clip_range * (1.0 - progress) if cfg.anneal_clip else cfg.clip_range
        totals = torch.zeros(len(_METRICS))  # running sums of the per-minibatch metrics
        n_steps, stopped, epochs = 0, False, 0
        for epochs in range(1, cfg.epochs + 1):  # noqa: B007  (epochs is reported below)
            for mb in self._minibatches(rollout):
                adv, returns = mb.advantages, mb.returns
                assert adv is not None and returns is not None
                w = mb.mask / mb.mask.sum()  # masked mean over real steps = (x * w).sum()
                ev = policy.evaluate(mb.obs, mb.actions)
                log_ratio = ev.log_probs - mb.logprobs
                ratio = log_ratio.exp()
                with torch.no_grad():
                    approx_kl = ((ratio - 1 - log_ratio) * w).sum()  # k3 estimator of KL(old || new)
                    clipfrac = (((ratio - 1).abs() > clip) * w).sum()
                if cfg.target_kl is not None and approx_kl > cfg.target_kl:
                    stopped = True
                    break
                # clipped surrogate: the pessimistic bound max(-A r, -A clip(r, 1-eps, 1+eps)), per step
                neg_adv = -adv
                pg = torch.maximum(neg_adv * ratio, neg_adv * ratio.clamp(1 - clip, 1 + clip))
                per_step = pg - cfg.ent_coef * ev.entropy
                v_err = torch.zeros_like(pg)
                if ev.values is not None:
                    v_err = value_error(ev.values, returns, mb.values, cfg.clip_range_vf)
                    per_step = per_step + cfg.vf_coef * v_err
                grad_norm = self.optimizer.step((per_step * w).sum(), cfg.max_grad_norm)
                with torch.no_grad():
                    parts = torch.stack([pg, v_err, ev.entropy]).reshape(3, -1) @ w.reshape(-1)  # (3,) masked means
                    totals += torch.cat([parts, torch.stack([approx_kl, clipfrac, grad_norm])])
                n_steps += 1
            if stopped:
                break
        metrics = dict(zip(_METRICS, (totals / max(n_steps, 1)).tolist(), strict=True))
        metrics.update({"charts/lr": lr, "charts/clip_range": clip, "charts/epochs": float(epochs),
                        "charts/early_stop": float(stopped), "charts/minibatch_steps": float(n_steps)})
        return metrics

    def _minibatches(self, rollout: Rollout) -> list[Rollout]:
        """Shuffled minibatches of rows; the rollout itself when one minibatch holds it all (order is moot)."""
        if rollout.batch_size <= self.cfg.batch_size:
            return [rollout]
        return [rollout.select(rows) for rows in torch.randperm(rollout.batch_size).split(self.cfg.batch_size)]

    def state_dict(self) -> dict[str, Any]:
        """Optimiser state."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the optimiser."""
        self.optimizer.load_state_dict(state["optimizer"])
