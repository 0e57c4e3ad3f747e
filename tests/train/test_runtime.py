"""Process-level speed settings: the allocator and mixed precision."""

import platform

import torch

from lmpo.train.runtime import autocast, tune_allocator


def test_tune_allocator_takes_on_glibc_only() -> None:
    assert tune_allocator() == (platform.system() == "Linux" and platform.libc_ver()[0] == "glibc")


def test_autocast_is_bf16_only_when_asked() -> None:
    a, b = torch.randn(4, 8), torch.randn(8, 3)
    with autocast("bf16", torch.device("cpu")):
        assert (a @ b).dtype == torch.bfloat16
    with autocast("fp32", torch.device("cpu")):
        assert (a @ b).dtype == torch.float32


def test_weights_changed_inside_autocast_are_seen_only_without_its_cache() -> None:
    lin, x = torch.nn.Linear(4, 4), torch.randn(2, 4)
    for weights_change, stale in ((False, True), (True, False)):
        with autocast("bf16", torch.device("cpu"), weights_change=weights_change):
            before = lin(x)
            with torch.no_grad():
                lin.weight.add_(1.0)  # an optimiser step
            assert torch.allclose(before, lin(x)) == stale
