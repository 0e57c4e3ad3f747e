"""The optimiser factory: only parameters that require gradients train; both Adams take the same step."""

import pytest
import torch

from lmpo.algorithms import PPO, TRPO, Reinforce
from lmpo.algorithms.base import Adam, FlatAdam, Shuffler, make_optimizer
from lmpo.config import PPOConfig, ReinforceConfig, TRPOConfig
from tests.conftest import make_policy, make_rollout


@pytest.mark.parametrize("kind", ["auto", "flat_adam", "adam"])
def test_frozen_parameters_neither_move_nor_hold_optimiser_state(kind: str) -> None:
    pol = make_policy()
    frozen = pol.trunk.layers[0].weight
    frozen.requires_grad_(False)
    before, head = frozen.detach().clone(), pol.head.layers[0].weight.detach().clone()
    ro = make_rollout(pol).flatten()
    algo = PPO(PPOConfig(epochs=2, batch_size=8, optimizer=kind), pol)  # type: ignore[arg-type]
    algo.update(pol, ro, 0.0)
    assert torch.equal(frozen, before)
    assert all(p is not frozen for p in algo.optimizer.params)  # type: ignore[attr-defined]
    assert not pol.head.layers[0].weight.equal(head)  # the rest trained
    n_state = sum(p.numel() for p in algo.optimizer.params)  # type: ignore[attr-defined]
    assert n_state == sum(p.numel() for p in pol.parameters() if p.requires_grad)


def test_flat_and_torch_adam_take_the_same_steps() -> None:
    pols = [make_policy(), make_policy()]
    pols[1].load_state_dict(pols[0].state_dict())
    ro = make_rollout(pols[0]).flatten()
    opts = [FlatAdam(list(pols[0].parameters()), 1e-2, 1e-5), Adam(list(pols[1].parameters()), 1e-2, 1e-5)]
    for _ in range(3):
        norms = []
        for pol, opt in zip(pols, opts, strict=True):
            ev = pol.evaluate(ro.obs, ro.actions)
            assert ro.advantages is not None and ev.values is not None
            loss = -(ev.log_probs * ro.advantages).mean() + ev.values.square().mean()
            norms.append(opt.step(loss, max_grad_norm=0.5))
        assert torch.allclose(norms[0], norms[1], rtol=1e-5)
    for a, b in zip(pols[0].parameters(), pols[1].parameters(), strict=True):
        assert torch.allclose(a, b, atol=1e-6)


def test_auto_is_flat_and_nothing_trainable_is_an_error() -> None:
    pol = make_policy()
    assert isinstance(make_optimizer(list(pol.parameters()), "auto", 1e-3, 1e-5), FlatAdam)
    assert isinstance(make_optimizer(list(pol.parameters()), "adam", 1e-3, 1e-5), Adam)
    pol.requires_grad_(False)
    with pytest.raises(ValueError, match="no parameter to train"):
        make_optimizer(list(pol.parameters()), "auto", 1e-3, 1e-5)


def test_minibatch_orders_come_from_the_run_seed_and_resume() -> None:
    a, b = Shuffler(3), Shuffler(3)
    torch.manual_seed(0)
    first = a.permutation(10, torch.device("cpu"))
    torch.manual_seed(1)  # the global stream (collection's) does not matter
    assert torch.equal(first, b.permutation(10, torch.device("cpu")))
    saved = a.state_dict()
    nxt = a.permutation(10, torch.device("cpu"))
    c = Shuffler(99)
    c.load_state_dict(saved)
    assert torch.equal(c.permutation(10, torch.device("cpu")), nxt)
    assert not torch.equal(Shuffler(4).permutation(10, torch.device("cpu")), first)


@pytest.mark.parametrize("algo", ["reinforce", "trpo", "ppo"])
def test_algorithms_evaluate_through_forward(algo: str) -> None:
    """DDP's and FSDP's hooks run in ``__call__``: every differentiable evaluation must pass through it."""
    pol = make_policy()
    ro = make_rollout(pol).flatten()
    calls = []
    pol.register_forward_pre_hook(lambda module, args, kwargs: calls.append(kwargs.get("value_only", False)),
                                  with_kwargs=True)
    cfgs = {"reinforce": Reinforce(ReinforceConfig(), pol), "trpo": TRPO(TRPOConfig(vf_iters=1), pol),
            "ppo": PPO(PPOConfig(epochs=1, batch_size=64), pol)}
    cfgs[algo].update(pol, ro, 0.0)
    assert calls and (algo != "trpo" or True in calls)  # TRPO's value regression goes through forward too
