"""PPO with the clipped surrogate (Schulman et al. 2017).

``L = -E[min(r A, clip(r, 1-eps, 1+eps) A)] + c_v (V - R)^2 - c_ent H``, ``r = pi(a|s) / pi_old(a|s)``,
optimised for several epochs over shuffled minibatches of the same rollout.
"""

from __future__ import annotations

from typing import Any

import torch

from lmpo.algorithms.base import adam, optimizer_step, set_lr, unique_parameters, value_loss
from lmpo.config import PPOConfig
from lmpo.core import Rollout, masked_mean
from lmpo.policies.base import Policy


class PPO:
    """Clipped-surrogate PPO with optional value clipping, KL early stop and linear annealing."""

    def __init__(self, cfg: PPOConfig, policy: Policy) -> None:
        self.cfg = cfg
        self.params = unique_parameters(policy.actor_parameters(), policy.critic_parameters())
        self.optimizer = adam(self.params, cfg.lr, cfg.adam_eps)

    def update(self, policy: Policy, rollout: Rollout, progress: float) -> dict[str, float]:
        """Epochs x minibatches of clipped-surrogate steps; stops early past ``target_kl``."""
        assert rollout.advantages is not None and rollout.returns is not None
        cfg = self.cfg
        lr = set_lr(self.optimizer, cfg.lr, progress, cfg.anneal_lr)
        clip = cfg.clip_range * (1.0 - progress) if cfg.anneal_clip else cfg.clip_range
        sums: dict[str, torch.Tensor] = {}
        n_steps, stopped, epochs = 0, False, 0
        for epochs in range(1, cfg.epochs + 1):  # noqa: B007  (epochs is reported below)
            for rows in torch.randperm(rollout.batch_size).split(cfg.batch_size):
                mb = rollout.select(rows)
                m, adv = mb.mask, mb.advantages
                assert adv is not None and mb.returns is not None
                ev = policy.evaluate(mb.obs, mb.actions)
                log_ratio = ev.log_probs - mb.logprobs
                ratio = log_ratio.exp()
                with torch.no_grad():
                    approx_kl = masked_mean(ratio - 1 - log_ratio, m)  # k3 estimator of KL(old || new)
                    clipfrac = masked_mean(((ratio - 1).abs() > clip).float(), m)
                if cfg.target_kl is not None and approx_kl > cfg.target_kl:
                    stopped = True
                    break
                # clipped surrogate: pessimistic bound on the improvement
                pg_loss = masked_mean(torch.maximum(-adv * ratio, -adv * ratio.clamp(1 - clip, 1 + clip)), m)
                entropy = masked_mean(ev.entropy, m)
                loss = pg_loss - cfg.ent_coef * entropy
                if ev.values is not None:
                    v_loss = value_loss(ev.values, mb.returns, m, mb.values, cfg.clip_range_vf)
                    loss = loss + cfg.vf_coef * v_loss
                    sums["losses/value"] = sums.get("losses/value", 0) + v_loss.detach()
                grad_norm = optimizer_step(self.optimizer, loss, self.params, cfg.max_grad_norm)
                for k, v in (("losses/policy", pg_loss), ("losses/entropy", entropy), ("charts/approx_kl", approx_kl),
                             ("charts/clipfrac", clipfrac), ("charts/grad_norm", grad_norm)):
                    sums[k] = sums.get(k, 0) + v.detach()
                n_steps += 1
            if stopped:
                break
        metrics = {k: float(v) / max(n_steps, 1) for k, v in sums.items()}
        metrics.update({"charts/lr": lr, "charts/clip_range": clip, "charts/epochs": float(epochs),
                        "charts/early_stop": float(stopped), "charts/minibatch_steps": float(n_steps)})
        return metrics

    def state_dict(self) -> dict[str, Any]:
        """Optimiser state."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the optimiser."""
        self.optimizer.load_state_dict(state["optimizer"])
