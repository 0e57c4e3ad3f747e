"""REINFORCE: one step changes the policy in the direction of the advantages."""

import math

import pytest
import torch

from lmpo.algorithms import Reinforce
from lmpo.config import AdvantageConfig, ReinforceConfig
from tests.conftest import make_policy, make_rollout


def _params(pol):
    return [p.detach().clone() for p in pol.parameters()]


@pytest.mark.parametrize(("kind", "critic", "baseline"),
                         [("discrete", "none", "mean"), ("continuous", "separate", "value")])
def test_update_changes_parameters(kind: str, critic: str, baseline: str) -> None:
    pol = make_policy(kind, critic=critic)
    ro = make_rollout(pol)
    cfg = ReinforceConfig(advantage=AdvantageConfig(estimator="returns", baseline=baseline), ent_coef=0.01)
    algo = Reinforce(cfg, pol)
    before = _params(pol)
    metrics = algo.update(pol, ro.flatten(), 0.0)
    assert all(math.isfinite(v) for v in metrics.values())
    assert any(not torch.equal(a, b) for a, b in zip(before, pol.parameters()))
    assert ("losses/value" in metrics) == (baseline == "value")


def test_step_raises_logprob_of_advantaged_actions() -> None:
    pol = make_policy("discrete", critic="none")
    ro = make_rollout(pol, b=8, t=8).flatten()
    algo = Reinforce(ReinforceConfig(lr=1e-2), pol)
    before = pol.evaluate(ro.obs, ro.actions).log_probs.detach()
    algo.update(pol, ro, 0.0)
    after = pol.evaluate(ro.obs, ro.actions).log_probs.detach()
    assert ro.advantages is not None
    # first-order: sum_i A_i * (logp_after - logp_before) > 0
    assert float((ro.advantages * (after - before)).sum()) > 0
