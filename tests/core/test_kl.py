"""KL estimators against the analytic KL, and the adaptive controller against hand-computed steps."""

import math

import pytest
import torch

from lmpo.core import AdaptiveKLController, FixedKLController, kl_estimate, kl_penalized_rewards


def test_estimators_by_hand() -> None:
    logp, ref = torch.tensor([-1.0, -2.0]), torch.tensor([-1.5, -1.0])
    log_r = ref - logp  # [-0.5, 1.0]
    assert torch.allclose(kl_estimate(logp, ref, "k1"), -log_r)
    assert torch.allclose(kl_estimate(logp, ref, "k2"), 0.5 * log_r**2)
    assert torch.allclose(kl_estimate(logp, ref, "k3"), log_r.exp() - 1 - log_r)
    assert (kl_estimate(logp, ref, "k3") >= 0).all()
    with pytest.raises(ValueError):
        kl_estimate(logp, ref, "k9")  # type: ignore[arg-type]


@pytest.mark.parametrize("kind", ["k1", "k3"])
def test_unbiased_estimators_match_analytic_kl(kind: str) -> None:
    g = torch.Generator().manual_seed(0)
    p = torch.softmax(torch.randn(6, generator=g), 0)  # the policy, sampled from
    q = torch.softmax(torch.randn(6, generator=g), 0)  # the reference
    exact = float((p * (p.log() - q.log())).sum())
    x = torch.multinomial(p, 400_000, replacement=True, generator=g)
    est = float(kl_estimate(p.log()[x], q.log()[x], kind).mean())  # type: ignore[arg-type]
    assert math.isclose(est, exact, rel_tol=0.02)


def test_penalized_rewards() -> None:
    r = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 0.0]])
    logp, ref = torch.full((2, 3), -1.0), torch.full((2, 3), -1.5)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]])
    out = kl_penalized_rewards(r, logp, ref, mask, 0.1, "k1")
    assert torch.allclose(out, torch.tensor([[-0.05, -0.05, 0.95], [-0.05, 1.95, 0.0]]))


def test_adaptive_controller() -> None:
    c = AdaptiveKLController(0.2, target=6.0, horizon=10_000)
    # KL twice the target: error clipped to +0.2, beta *= 1 + 0.2 * 512 / 10000
    assert math.isclose(c.update(12.0, 512), 0.2 * (1 + 0.2 * 512 / 10_000))
    before = c.value
    # KL at 5.4: error -0.1
    assert math.isclose(c.update(5.4, 1000), before * (1 - 0.1 * 1000 / 10_000))
    c2 = AdaptiveKLController(0.2, 1.0, 1)
    c2.load_state_dict(c.state_dict())
    assert c2.value == c.value  # a resume continues from the adapted coefficient
    f = FixedKLController(0.05)
    assert f.update(100.0, 10) == 0.05
    with pytest.raises(ValueError):
        AdaptiveKLController(0.1, target=0.0, horizon=10)


def test_resume_keeps_a_changed_coefficient() -> None:
    """A resume that sets another ``text.kl.coef`` gets it: the checkpoint's coefficient does not win."""
    saved = AdaptiveKLController(0.02, target=6.0, horizon=100)
    saved.update(12.0, 50)
    fixed = FixedKLController(0.2)
    fixed.load_state_dict(FixedKLController(0.02).state_dict())
    assert fixed.value == 0.2
    fixed.load_state_dict(saved.state_dict())
    assert fixed.value == 0.2
    changed = AdaptiveKLController(0.1, target=6.0, horizon=100)
    changed.load_state_dict(saved.state_dict())
    assert changed.value == 0.1
    same = AdaptiveKLController(0.02, target=6.0, horizon=100)
    same.load_state_dict(saved.state_dict())
    assert same.value == saved.value != 0.02
    legacy = AdaptiveKLController(0.05, target=6.0, horizon=100)
    legacy.load_state_dict({"value": 0.3})  # checkpoints from before the start was saved
    assert legacy.value == 0.3
