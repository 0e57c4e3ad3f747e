"""LoRA through peft on tiny Hugging Face models the tests build: only the adapters (and the value head) train, the
reference is the same network with its adapters off, and nothing is copied."""

from pathlib import Path

import pytest
import torch

from lmpo.algorithms import PPO
from lmpo.config import ConfigError, PPOConfig, load_config
from lmpo.core import estimate_advantages
from lmpo.policies.generation import generate, to_rollout
from lmpo.policies.hf import load_hf_policy
from lmpo.policies.lora import AdaptersOff, add_lora, has_lora
from lmpo.policies.sampling import SamplingConfig
from tests.policies.test_hf import _prompts, tiny_dir, tiny_llama_dir  # noqa: F401  (fixtures)


def _lora_policy(path: Path):  # type: ignore[no-untyped-def]
    policy, tok = load_hf_policy(path, SamplingConfig(max_new_tokens=6))
    base, _ = load_hf_policy(path, SamplingConfig(max_new_tokens=6))
    add_lora(policy.body, r=4, alpha=8, target_modules=None)
    return policy, base, tok


@pytest.mark.parametrize("arch", ["gpt2", "llama"])
def test_only_adapters_train_and_the_reference_is_the_base_model(arch: str, tiny_dir: Path,  # noqa: F811
                                                                  tiny_llama_dir: Path) -> None:  # noqa: F811
    policy, base, tok = _lora_policy(tiny_dir if arch == "gpt2" else tiny_llama_dir)
    assert has_lora(policy) and not has_lora(base)
    prompts = _prompts(tok)
    torch.manual_seed(0)
    with torch.no_grad():
        gen = generate(policy, prompts)
        # adapters start at zero: the policy is the model it wraps
        before = policy.evaluate(prompts, gen.tokens).log_probs
        torch.testing.assert_close(before, base.evaluate(prompts, gen.tokens).log_probs)
    frozen = {n: p.detach().clone() for n, p in policy.body.named_parameters() if not p.requires_grad}
    trained = [n for n, p in policy.named_parameters() if p.requires_grad]
    assert trained and all("lora_" in n or n.startswith("value_head.") for n in trained)
    rewards = torch.arange(gen.tokens.shape[0], dtype=torch.float32)
    rollout = estimate_advantages(to_rollout(prompts, gen, rewards), "gae", 1.0, 1.0, "none", True)
    algo = PPO(PPOConfig(epochs=4, batch_size=64, lr=0.01), policy)
    policy.train()
    algo.update(policy, rollout, 0.0)
    policy.eval()
    n_state = sum(p.numel() for p in algo.optimizer.params)  # type: ignore[attr-defined]
    assert n_state == sum(p.numel() for p in policy.parameters() if p.requires_grad)
    assert n_state < 0.5 * sum(p.numel() for p in policy.parameters())
    for name, p in policy.body.named_parameters():  # the base weights did not move
        if name in frozen:
            assert torch.equal(p, frozen[name]), name
    reference = AdaptersOff(policy)
    with torch.no_grad():
        after = policy.evaluate(prompts, gen.tokens).log_probs
        ref = reference.evaluate(prompts, gen.tokens).log_probs
    assert not torch.allclose(after, before, atol=1e-4)  # the adapters moved the policy
    torch.testing.assert_close(ref, before)  # adapters off: exactly where training started
    # no second copy of the weights: the reference holds the policy itself
    assert reference.policy is policy


def test_lora_settings_are_checked(tmp_path: Path) -> None:
    base = ["env.id=lmpo/Prompts-v0", "env.kwargs.path=examples/prompts.jsonl", "policy.kind=hf",
            f"policy.path={tmp_path}", "policy.lora={r: 4}"]
    with pytest.raises(ConfigError, match="text.pretrain.epochs=0"):
        load_config(None, base)
    with pytest.raises(ConfigError, match="hf policies"):
        load_config(None, ["env.id=lmpo/Prompts-v0", "policy.kind=gru", "policy.lora={r: 4}"])
    cfg = load_config(None, [*base, "text.pretrain.epochs=0"])
    assert cfg.policy.lora is not None and cfg.policy.lora.alpha == 16
