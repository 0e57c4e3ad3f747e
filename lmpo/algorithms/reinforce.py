"""REINFORCE (Williams 1992): ascend ``E[sum_t (G_t - b_t) grad log pi(a_t | s_t)]``.

The returns ``G_t`` and the baseline ``b_t`` (none, batch mean, leave-one-out, learned value) are computed
by ``lmpo.core.estimate_advantages`` before ``update``; this file is only the gradient step.
"""

from __future__ import annotations

from typing import Any

from torch import nn

from lmpo.algorithms.base import make_optimizer, unique_parameters, value_error
from lmpo.config import ReinforceConfig
from lmpo.core import Rollout, loss_weights
from lmpo.core.parallel import share
from lmpo.policies.base import Policy


class Reinforce:
    """One policy-gradient step per rollout, with the value function (if any) regressed alongside."""

    def __init__(self, cfg: ReinforceConfig, policy: Policy, seed: int = 0) -> None:
        self.cfg = cfg
        self.use_value = cfg.advantage.needs_value
        critic = policy.critic_parameters() if self.use_value else []
        self.params = unique_parameters(policy.actor_parameters(), critic)
        self.optimizer = make_optimizer(self.params, cfg.optimizer, cfg.lr, cfg.adam_eps)

    def update(self, policy: Policy, rollout: Rollout, progress: float) -> dict[str, float]:
        """``loss = -agg_t(log pi(a_t|s_t) * A_t) - c_ent * H + c_v * (V - G)^2``, ``agg`` the configured
        aggregation over the batch's tokens (``loss_weights``)."""
        cfg, m = self.cfg, rollout.mask
        # weights over the whole batch, then this process's share of its rows (all of them in one process)
        rollout, (w_pg, w_mean) = share(rollout, loss_weights(m, cfg.loss_aggregation), m / m.sum().clamp_min(1.0))
        assert rollout.advantages is not None and rollout.returns is not None
        lr = self.optimizer.set_lr(cfg.lr, progress, cfg.anneal_lr)
        ev = policy.evaluate(rollout.obs, rollout.actions)
        pg_loss = -(ev.log_probs * rollout.advantages * w_pg).sum()
        loss = pg_loss
        if cfg.ent_coef:
            entropy = (ev.entropy * w_mean).sum()
            loss = loss - cfg.ent_coef * entropy
        else:  # reported only: no graph through a (B, T, V) entropy nobody differentiates
            entropy = ev.reported_entropy(rollout.mask)
        metrics: dict[str, Any] = {}
        if self.use_value:
            assert ev.values is not None
            v_loss = (value_error(ev.values, rollout.returns) * w_mean).sum()
            loss = loss + cfg.vf_coef * v_loss
            metrics["losses/value"] = v_loss.detach()
        grad_norm = self.optimizer.step(loss, cfg.max_grad_norm)
        metrics.update({"losses/policy": pg_loss.detach(), "losses/entropy": entropy.detach(),
                        "charts/grad_norm": grad_norm, "charts/lr": lr})
        return {k: float(v) for k, v in metrics.items()}

    def gradient_parameters(self) -> list[nn.Parameter]:
        """What the optimiser trains."""
        return self.optimizer.params

    def state_dict(self) -> dict[str, Any]:
        """Optimiser state."""
        return {"optimizer": self.optimizer.state_dict()}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore the optimiser."""
        self.optimizer.load_state_dict(state["optimizer"])
