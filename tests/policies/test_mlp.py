"""MLP policies against torch.distributions, and the Policy protocol."""

import numpy as np
import pytest
import torch
from torch.distributions import Categorical, Normal, kl_divergence

from lmpo.policies import Policy, RunningNorm
from tests.conftest import CONTINUOUS, make_policy


def test_protocol() -> None:
    assert isinstance(make_policy("discrete"), Policy)
    assert isinstance(make_policy("continuous"), Policy)


def test_categorical_matches_torch_distributions() -> None:
    pol = make_policy("discrete")
    obs = torch.randn(5, 7, 4)
    actions = torch.randint(0, 3, (5, 7))
    ev = pol.evaluate(obs, actions)
    logits = pol.head(pol.trunk(obs))
    ref = Categorical(logits=logits)
    assert torch.allclose(ev.log_probs, ref.log_prob(actions), atol=1e-6)
    assert torch.allclose(ev.entropy, ref.entropy(), atol=1e-6)
    other = pol.evaluate(obs, actions).dist + torch.randn(5, 7, 3)
    other = torch.log_softmax(other, -1)
    assert torch.allclose(pol.kl(ev.dist, other), kl_divergence(ref, Categorical(logits=other)), atol=1e-5)
    assert ev.values is not None and ev.values.shape == (5, 7)


def test_gaussian_matches_torch_distributions() -> None:
    pol = make_policy("continuous", log_std_init=-0.3)
    obs = torch.randn(5, 7, 3)
    actions = torch.randn(5, 7, 2)
    ev = pol.evaluate(obs, actions)
    mean = pol.head(pol.trunk(obs))
    ref = Normal(mean, pol.log_std.exp())
    assert torch.allclose(ev.log_probs, ref.log_prob(actions).sum(-1), atol=1e-5)
    assert torch.allclose(ev.entropy, ref.entropy().sum(-1), atol=1e-5)
    mu2, ls2 = torch.randn(5, 7, 2), torch.randn(5, 7, 2) * 0.3
    kl = pol.kl(ev.dist, torch.cat([mu2, ls2], -1))
    assert torch.allclose(kl, kl_divergence(ref, Normal(mu2, ls2.exp())).sum(-1), atol=1e-5)


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_sample_logprobs_equal_evaluate(kind: str) -> None:
    pol = make_policy(kind)
    obs = torch.randn(32, pol.obs_dim)
    step = pol.sample(obs)
    ev = pol.evaluate(obs, step.actions)
    assert torch.allclose(step.log_probs, ev.log_probs, atol=1e-6)
    assert step.values is not None and ev.values is not None
    assert torch.allclose(step.values, ev.values)
    det = pol.sample(obs, deterministic=True)
    assert torch.equal(det.actions, pol.sample(obs, deterministic=True).actions)


def test_continuous_actions_clipped_for_env_only() -> None:
    pol = make_policy("continuous", log_std_init=2.0)
    step = pol.sample(torch.randn(64, 3))
    space = CONTINUOUS[1]
    env_a = pol.env_action(step.actions, space)
    assert np.abs(step.actions.numpy()).max() > 2.0  # the stored action is the unclipped sample
    assert env_a.min() >= -2.0 and env_a.max() <= 2.0


def test_critic_variants() -> None:
    none = make_policy(critic="none")
    assert not none.has_value and none.critic_parameters() == []
    assert none.sample(torch.randn(2, 4)).values is None
    with pytest.raises(RuntimeError):
        none.value(torch.randn(2, 4))
    shared = make_policy(critic="shared")
    ids = {id(p) for p in shared.actor_parameters()}
    assert all(id(p) not in ids for p in shared.critic_parameters())  # only the head is the critic's own
    sep = make_policy(critic="separate")
    assert len(sep.critic_parameters()) == 6


def test_running_norm_matches_numpy() -> None:
    norm = RunningNorm((3,))
    data = np.random.default_rng(0).normal(5.0, 3.0, size=(1000, 3))
    for chunk in np.array_split(data, 7):
        norm.update(torch.as_tensor(chunk))
    assert np.allclose(norm.mean.numpy(), data.mean(0), atol=1e-6)
    assert np.allclose(norm.var.numpy(), data.var(0), atol=1e-4)
    z = norm(torch.as_tensor(data[:5], dtype=torch.float32))
    assert torch.allclose(z, torch.as_tensor((data[:5] - data.mean(0)) / data.std(0), dtype=torch.float32), atol=1e-3)


def test_bad_spaces_rejected() -> None:
    import gymnasium as gym

    from lmpo.policies import MLPPolicy

    with pytest.raises(ValueError, match="flat Box"):
        MLPPolicy(gym.spaces.Discrete(4), gym.spaces.Discrete(2), [8])
    with pytest.raises(ValueError, match="Discrete or flat Box"):
        MLPPolicy(gym.spaces.Box(-1, 1, (2,)), gym.spaces.MultiBinary(3), [8])


@pytest.mark.parametrize("kind", ["discrete", "continuous"])
def test_fused_inference_equals_separate_networks(kind: str) -> None:
    pol = make_policy(kind)
    obs = torch.randn(64, pol.obs_dim)
    with torch.no_grad():
        ref_dist, ref_values = pol.heads(obs)  # train mode: actor and critic run separately
        pol.eval()
        dist, values = pol.heads(obs)
        assert pol._fused is not None
    assert torch.allclose(dist, ref_dist, atol=1e-6) and torch.allclose(values, ref_values, atol=1e-6)
    # the fused weights never outlive a mode switch, so an update between rollouts is always seen
    pol.train()
    assert pol._fused is None
    with torch.no_grad():
        for p in pol.critic_parameters():
            p.add_(0.1)
        pol.eval()
        _, moved = pol.heads(obs)
    assert not torch.allclose(moved, ref_values)


def test_fused_inference_sees_loaded_weights() -> None:
    pol, other = make_policy(), make_policy()
    obs = torch.randn(8, pol.obs_dim)
    pol.eval()
    other.eval()
    with torch.no_grad():
        pol.heads(obs)  # builds the fused weights
        pol.load_state_dict(other.state_dict())
        assert torch.allclose(pol.heads(obs)[1], other.heads(obs)[1], atol=1e-6)
