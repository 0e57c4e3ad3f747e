"""The collector: truncation bootstraps from V(final obs), termination from 0, episodes are whole."""

import numpy as np
import torch

from lmpo.envs import make_vector_env
from lmpo.policies import MLPPolicy
from lmpo.train.collect import ControlCollector


def _setup(max_steps: int, num_envs: int = 2, critic: str = "separate"):
    env = make_vector_env("CartPole-v1", num_envs, kwargs={"max_episode_steps": max_steps})
    pol = MLPPolicy(env.single_observation_space, env.single_action_space, [16], critic=critic)
    return ControlCollector(env, seed=0, device=torch.device("cpu")), pol


def test_truncation_bootstraps_from_final_observation() -> None:
    col, pol = _setup(max_steps=5)
    # replay the same envs by hand to know every final observation
    ref_env = make_vector_env("CartPole-v1", 2, kwargs={"max_episode_steps": 5})
    ref_obs, _ = ref_env.reset(seed=0)
    torch.manual_seed(1)
    ro = col.collect_steps(pol, 12)
    torch.manual_seed(1)
    finals = {}
    for t in range(12):
        a = pol.sample(torch.as_tensor(ref_obs)).actions.numpy()
        ref_obs, _, term, trunc, info = ref_env.step(a)
        for i in np.flatnonzero(trunc):
            finals[(i, t)] = info["final_obs"][i]
        assert not term.any()  # 5 random steps never drop the pole here
    assert ro.values is not None and ro.next_values is not None
    for (i, t), final in finals.items():
        assert ro.dones[i, t] == 1.0
        v = pol.value(torch.as_tensor(final[None], dtype=torch.float32))
        assert torch.allclose(ro.next_values[i, t], v[0])
    # inside episodes V(s_t+1) is the next row entry; the row's last step bootstraps from V(s_T)
    assert torch.allclose(ro.next_values[0, 0], ro.values[0, 1])
    assert torch.allclose(ro.next_values[:, -1], pol.value(torch.as_tensor(col.obs, dtype=torch.float32)))
    assert ro.dones[:, -1].eq(1).all() and len(finals) == 4


def test_termination_bootstraps_from_zero() -> None:
    col, pol = _setup(max_steps=500, num_envs=4)
    ro = col.collect_steps(pol, 60)  # a random policy drops the pole within 60 steps
    terminated = (ro.dones[:, :-1] == 1.0)
    assert terminated.any()
    assert ro.next_values is not None
    assert (ro.next_values[:, :-1][terminated] == 0).all()
    assert col.total_steps == 240 and len(col.recent) > 0


def test_episode_mode_rows_are_whole_episodes() -> None:
    col, pol = _setup(max_steps=500, num_envs=3, critic="none")
    ro = col.collect_episodes(pol, episodes_per_env=2)
    assert ro.batch_size == 6 and ro.values is None
    lengths = ro.mask.sum(1)
    for i in range(6):
        n = int(lengths[i])
        assert ro.dones[i, n - 1] == 1 and ro.dones[i].sum() == 1
        assert ro.rewards[i, :n].eq(1.0).all()  # CartPole pays 1 per step of the episode
    assert ro.group_ids is not None and ro.group_ids.eq(0).all()
    # the episodes' lengths are the lengths the collector recorded (the first two of each env)
    assert col.total_steps >= int(lengths.sum())  # steps past an env's quota are simulated, not used
