"""Returns, GAE and baselines against hand-computed tensors and slow per-episode reference loops."""

import pytest
import torch

from lmpo.core import (
    Rollout,
    apply_baseline,
    discounted_returns,
    estimate_advantages,
    gae,
    group_mean_std,
    leave_one_out_baseline,
    linked_returns,
)


def test_discounted_returns_by_hand() -> None:
    # one row, two episodes: [1, 1, 1 | 2, 2] with the first terminated and the second cut by the row end,
    # bootstrapping from V = 10 (a truncation, not a termination).
    r = torch.tensor([[1.0, 1.0, 1.0, 2.0, 2.0]])
    dones = torch.tensor([[0.0, 0.0, 1.0, 0.0, 1.0]])
    boot = torch.tensor([[0.0, 0.0, 0.0, 0.0, 10.0]])
    g = discounted_returns(r, dones, 0.5, torch.ones_like(r), boot)
    # second episode: G4 = 2 + 0.5*10 = 7, G3 = 2 + 0.5*7 = 5.5; first: G2 = 1, G1 = 1.5, G0 = 1.75
    assert torch.allclose(g, torch.tensor([[1.75, 1.5, 1.0, 5.5, 7.0]]))


def test_discounted_returns_ignore_padding() -> None:
    r = torch.tensor([[1.0, 1.0, 5.0], [2.0, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    dones = torch.tensor([[0.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    g = discounted_returns(r, dones, 0.9, mask)
    assert torch.allclose(g, torch.tensor([[1.9, 1.0, 0.0], [2.0, 0.0, 0.0]]))


def test_gae_by_hand_with_termination_and_truncation() -> None:
    gamma, lam = 0.9, 0.5
    r = torch.tensor([[1.0, 0.0, 2.0, 1.0]])
    v = torch.tensor([[0.5, 1.0, 2.0, 3.0]])
    # step 1 terminates (next value 0); step 3 is truncated with V(final obs) = 4
    dones = torch.tensor([[0.0, 1.0, 0.0, 1.0]])
    nv = torch.tensor([[1.0, 0.0, 3.0, 4.0]])
    adv, ret = gae(r, v, nv, dones, torch.ones_like(r), gamma, lam)
    d = [1 + 0.9 * 1 - 0.5, 0 + 0 - 1.0, 2 + 0.9 * 3 - 2.0, 1 + 0.9 * 4 - 3.0]
    a3 = d[3]
    a2 = d[2] + gamma * lam * a3
    a1 = d[1]
    a0 = d[0] + gamma * lam * a1
    assert torch.allclose(adv, torch.tensor([[a0, a1, a2, a3]]))
    assert torch.allclose(ret, adv + v)


def test_gae_lambda_one_equals_returns_minus_values() -> None:
    torch.manual_seed(0)
    r, v = torch.randn(3, 7), torch.randn(3, 7)
    dones = (torch.rand(3, 7) < 0.3).float()
    dones[:, -1] = 1.0
    boot = torch.randn(3, 7) * dones
    nv = torch.cat([v[:, 1:], torch.zeros(3, 1)], 1) * (1 - dones) + boot
    adv, _ = gae(r, v, nv, dones, torch.ones_like(r), 0.95, 1.0)
    g = discounted_returns(r, dones, 0.95, torch.ones_like(r), boot)
    assert torch.allclose(adv, g - v, atol=1e-5)


def _reference_gae(r, v, nv, dones, mask, gamma, lam):
    """Slow, obviously-correct GAE: split each row into episodes and sum discounted TD errors forward."""
    b, t = r.shape
    out = torch.zeros(b, t, dtype=torch.float64)
    for i in range(b):
        for s in range(t):
            if mask[i, s] == 0:
                continue
            total, k = 0.0, s
            while True:
                delta = r[i, k] + gamma * nv[i, k] - v[i, k]
                total += (gamma * lam) ** (k - s) * float(delta)
                if dones[i, k] == 1 or k == t - 1 or mask[i, k + 1] == 0:
                    break
                k += 1
            out[i, s] = total
    return out


def _reference_returns(r, dones, boot, mask, gamma):
    b, t = r.shape
    out = torch.zeros(b, t, dtype=torch.float64)
    for i in range(b):
        for s in range(t):
            if mask[i, s] == 0:
                continue
            total, k = 0.0, s
            while True:
                total += gamma ** (k - s) * float(r[i, k])
                if dones[i, k] == 1:
                    total += gamma ** (k - s + 1) * float(boot[i, k])
                    break
                k += 1
            out[i, s] = total
    return out


def _random_batch(seed: int, b: int = 5, t: int = 11):
    g = torch.Generator().manual_seed(seed)
    r, v = torch.randn(b, t, generator=g), torch.randn(b, t, generator=g)
    lengths = torch.randint(1, t + 1, (b,), generator=g)
    mask = (torch.arange(t) < lengths[:, None]).float()
    dones = (torch.rand(b, t, generator=g) < 0.25).float()
    dones[torch.arange(b), lengths - 1] = 1.0  # every row's last real step ends its recursion
    dones *= mask
    truncated = dones * (torch.rand(b, t, generator=g) < 0.5).float()
    boot = torch.randn(b, t, generator=g) * truncated
    nv = (torch.cat([v[:, 1:], torch.zeros(b, 1)], 1) * (1 - dones) + boot) * mask
    return r * mask, v * mask, nv, dones, mask, boot


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize(("gamma", "lam"), [(0.99, 0.95), (0.9, 0.0), (1.0, 1.0), (0.5, 0.7)])
def test_gae_matches_reference(seed: int, gamma: float, lam: float) -> None:
    r, v, nv, dones, mask, _ = _random_batch(seed)
    adv, ret = gae(r, v, nv, dones, mask, gamma, lam)
    ref = _reference_gae(r, v, nv, dones, mask, gamma, lam)
    assert torch.allclose(adv.double(), ref, atol=1e-5)
    assert torch.allclose(ret, (adv + v) * mask)
    assert (adv[mask == 0] == 0).all()


@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("gamma", [0.99, 0.5, 1.0])
def test_returns_match_reference(seed: int, gamma: float) -> None:
    r, _, _, dones, mask, boot = _random_batch(seed)
    g = discounted_returns(r, dones, gamma, mask, boot)
    assert torch.allclose(g.double(), _reference_returns(r, dones, boot, mask, gamma), atol=1e-5)


def test_leave_one_out_by_hand() -> None:
    scores = torch.tensor([1.0, 2.0, 6.0, 10.0, 20.0])
    groups = torch.tensor([0, 0, 0, 1, 1])
    b = leave_one_out_baseline(scores, groups)
    assert torch.allclose(b, torch.tensor([4.0, 3.5, 1.5, 20.0, 10.0]))


def test_leave_one_out_needs_two_per_group() -> None:
    with pytest.raises(ValueError, match="at least 2"):
        leave_one_out_baseline(torch.tensor([1.0, 2.0, 3.0]), torch.tensor([0, 0, 1]))


def test_baselines() -> None:
    ret = torch.tensor([[3.0, 2.0, 1.0], [5.0, 0.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]])
    assert torch.equal(apply_baseline(ret, mask, "none"), ret * mask)
    # batch mean over the 4 real steps = 11 / 4
    assert torch.allclose(apply_baseline(ret, mask, "mean"), (ret - 2.75) * mask)
    v = torch.tensor([[1.0, 1.0, 1.0], [2.0, 9.0, 9.0]])
    assert torch.allclose(apply_baseline(ret, mask, "value", values=v), torch.tensor([[2.0, 1.0, 0.0], [3.0, 0, 0]]))
    # leave-one-out on each row's first-step return: row 0 gets 5, row 1 gets 3
    loo = apply_baseline(ret, mask, "loo", group_ids=torch.tensor([7, 7]))
    assert torch.allclose(loo, torch.tensor([[-2.0, -3.0, -4.0], [2.0, 0.0, 0.0]]))
    with pytest.raises(ValueError, match="value function"):
        apply_baseline(ret, mask, "value")


def test_estimate_advantages_whitens_over_real_steps() -> None:
    r, v, nv, dones, mask, _ = _random_batch(3)
    ro = Rollout(obs=torch.zeros(*r.shape, 1), actions=torch.zeros_like(r), logprobs=torch.zeros_like(r),
                 rewards=r, mask=mask, dones=dones, values=v, next_values=nv)
    ro = estimate_advantages(ro, "gae", 0.99, 0.95, whiten=True)
    assert ro.advantages is not None
    real = ro.advantages[mask.bool()]
    assert abs(float(real.mean())) < 1e-5
    assert abs(float(real.std()) - 1.0) < 1e-4
    assert (ro.advantages[mask == 0] == 0).all()


def _rows(rewards: list[list[float]]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Right-padded rows of rewards, each ending (done) on its last real step."""
    width = max(map(len, rewards))
    r, mask, dones = (torch.zeros(len(rewards), width) for _ in range(3))
    for i, row in enumerate(rewards):
        r[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1.0
        dones[i, len(row) - 1] = 1.0
    return r, mask, dones


def test_linked_returns_equal_the_returns_of_the_joined_episode() -> None:
    # episode 0 is three rows (a conversation of three replies), episode 1 one row
    rows = [[0.0, 1.0], [0.0, 0.0, 2.0], [0.5, 3.0], [5.0]]
    r, mask, dones = _rows(rows)
    g = linked_returns(r, dones, 0.9, mask, None, torch.tensor([0, 0, 0, 1]))
    joined = torch.tensor([sum(rows[:3], [])])
    g_joined = discounted_returns(joined, torch.zeros_like(joined), 0.9, torch.ones_like(joined))[0]
    assert torch.allclose(torch.cat([g[0, :2], g[1, :3], g[2, :2]]), g_joined)
    assert torch.allclose(g[3, 0], torch.tensor(5.0))


def test_leave_one_out_over_multi_row_episodes() -> None:
    # group 0: episode A (two rows, rewards 1 then 2) and episode B (one row, reward 0.5); gamma 1
    r, mask, dones = _rows([[0.0, 1.0], [2.0], [0.5]])
    episodes, groups = torch.tensor([0, 0, 1]), torch.tensor([0, 0, 0])
    ro = Rollout(obs=None, actions=r, logprobs=r, rewards=r, mask=mask, dones=dones, group_ids=groups,
                 episode_ids=episodes)
    adv = estimate_advantages(ro, "returns", 1.0, baseline="loo").advantages
    # A's returns: [3, 3] then [2]; B's: [0.5]. A's baseline is B's 0.5; its second row's baseline is
    # lowered by the 1 A earned before it; B's baseline is A's 3.
    assert torch.allclose(adv, torch.tensor([[2.5, 2.5], [2.5, 0.0], [-2.5, 0.0]]))


def test_group_mean_and_std_by_hand() -> None:
    mean, std = group_mean_std(torch.tensor([1.0, 2.0, 6.0, 10.0, 20.0]), torch.tensor([0, 0, 0, 1, 1]))
    assert torch.allclose(mean, torch.tensor([3.0, 3.0, 3.0, 15.0, 15.0]))
    # Bessel-corrected: group 0 squares 4 + 1 + 9 = 14 over 2; group 1 25 + 25 = 50 over 1
    assert torch.allclose(std, torch.tensor([7.0**0.5] * 3 + [50.0**0.5] * 2))


def test_group_baseline_grpo_and_dr_grpo() -> None:
    ret = torch.tensor([[1.0, 1.0], [3.0, 0.0], [0.0, 0.0], [4.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 0.0], [1.0, 0.0]])
    groups = torch.tensor([0, 0, 1, 1])
    # group means 2 and 2; Dr. GRPO: the returns minus the group mean, unscaled
    dr = apply_baseline(ret, mask, "group", group_ids=groups)
    assert torch.allclose(dr, torch.tensor([[-1.0, -1.0], [1.0, 0.0], [-2.0, 0.0], [2.0, 0.0]]))
    # GRPO: divided by the group's std (sqrt(2) and sqrt(8)) plus 1e-4
    grpo = apply_baseline(ret, mask, "group", group_ids=groups, group_std=True)
    s0, s1 = 2.0**0.5 + 1e-4, 8.0**0.5 + 1e-4
    assert torch.allclose(grpo, torch.tensor([[-1 / s0, -1 / s0], [1 / s0, 0.0], [-2 / s1, 0.0], [2 / s1, 0.0]]))
    # a group whose samples all scored the same gets advantage 0, not a division by zero
    same = apply_baseline(torch.ones(2, 1), torch.ones(2, 1), "group", group_ids=torch.tensor([0, 0]), group_std=True)
    assert torch.equal(same, torch.zeros(2, 1))


def test_group_baseline_over_multi_row_episodes() -> None:
    # as the leave-one-out case above: A's returns [3, 3] then [2], B's [0.5]; the group mean of 3 and 0.5 is 1.75,
    # lowered by 1 for A's second row
    r, mask, dones = _rows([[0.0, 1.0], [2.0], [0.5]])
    ro = Rollout(obs=None, actions=r, logprobs=r, rewards=r, mask=mask, dones=dones, group_ids=torch.tensor([0, 0, 0]),
                 episode_ids=torch.tensor([0, 0, 1]))
    adv = estimate_advantages(ro, "returns", 1.0, baseline="group", group_std=False).advantages
    assert torch.allclose(adv, torch.tensor([[1.25, 1.25], [1.25, 0.0], [-1.25, 0.0]]))
