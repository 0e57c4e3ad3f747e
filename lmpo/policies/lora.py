"""LoRA through peft for Hugging Face policies, and the reference it makes free: the same network with its
adapters disabled (Hu et al. 2021; TRL users ask for exactly this, #3108, #3194).

Only the adapters and the value head train: the optimiser holds state for them alone, and the frozen base
weights exist once, serving the policy (adapters on) and the KL reference (adapters off).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

from torch import Tensor

from lmpo.policies.base import Evaluation, save_weights
from lmpo.policies.hf import HFCausalLM
from lmpo.policies.lm import LMPolicy

ADAPTER_DIR = "adapter"  # inside an hf export: the adapter alone, in peft's format


def add_lora(body: HFCausalLM, r: int, alpha: int, target_modules: list[str] | None) -> HFCausalLM:
    """Wrap ``body``'s model in peft's LoRA: every weight frozen, adapters (their second matrix zero, so the policy
    starts as the model it wraps) on ``target_modules`` (None: every linear layer but the output head). No adapter
    dropout: lmpo scores and samples without dropout (a ratio of identical parameters must be exactly 1)."""
    from peft import LoraConfig, get_peft_model
    from transformers.pytorch_utils import Conv1D

    conv1d = any(isinstance(m, Conv1D) for m in body.model.modules())  # GPT-2 stores its projections transposed
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=0.0, bias="none", fan_in_fan_out=conv1d,
                        target_modules=target_modules if target_modules is not None else "all-linear")
    body.model = get_peft_model(body.model, config)
    return body


def has_lora(policy: LMPolicy) -> bool:
    """Whether the policy's body carries peft adapters."""
    return isinstance(policy.body, HFCausalLM) and hasattr(policy.body.model, "disable_adapter")


class AdaptersOff:
    """The reference policy of a LoRA run: the policy's own network with its adapters disabled."""

    def __init__(self, policy: LMPolicy) -> None:
        if not has_lora(policy):
            raise TypeError("AdaptersOff needs a policy with LoRA adapters (add_lora)")
        self.policy = policy

    def evaluate(self, obs: Tensor, actions: Tensor) -> Evaluation:
        """``Policy.evaluate`` of the model without its adapters (the model training started from)."""
        model: Any = self.policy.body.model
        with model.disable_adapter():
            return self.policy.evaluate(obs, actions)


def save_lora_export(policy: LMPolicy, tokenizer: Any, path: str | Path) -> None:
    """The adapter in peft's format in ``path/adapter`` (``PeftModel.from_pretrained(base, path/adapter)``), and the
    merged model (``merge_and_unload``) with its tokenizer and value head in ``path``, loadable without peft."""
    path = Path(path)
    model: Any = policy.body.model
    model.save_pretrained(path / ADAPTER_DIR)
    merged = copy.deepcopy(model).merge_and_unload()
    merged.save_pretrained(path)
    tokenizer.save_pretrained(path)
    save_weights(policy.value_head, path / "value_head.safetensors")
