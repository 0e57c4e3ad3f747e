"""LoRA end to end on a Hugging Face model the test builds and fine-tunes: RL trains adapters only, against the same
network with its adapters off as the reference, raises the reward on held-out prompts, and leaves a peft adapter, a
merged model and a run that ``lmpo serve`` serves."""

from pathlib import Path

import pytest
import torch
from openai import OpenAI
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM

import lmpo
from lmpo.cli import main
from lmpo.train.logging import read_metrics
from tests.conftest import chatml_gpt2
from tests.serve.conftest import start_server

ROOT = Path(__file__).resolve().parents[2]
COMMON = ["train.progress=false", "text.eval_samples=2", "policy.kind=hf"]


@pytest.fixture(scope="module")
def sft_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A random 2-layer GPT-2 with a ChatML tokenizer, fine-tuned by lmpo's pre-training on the prompt set's
    completions (and one RL update), exported as a Hugging Face model: where LoRA starts."""
    tmp = tmp_path_factory.mktemp("lora-base")
    chatml_gpt2(tmp / "m", width=64, layers=2, heads=2, vocab_size=600)
    assert main(["train", str(ROOT / "configs" / "prompts-example.yaml"), *COMMON, f"policy.path={tmp / 'm'}",
                 f"train.runs_dir={tmp}", "name=sft", "text.pretrain.epochs=15", "text.pretrain.lr=0.003",
                 f"env.kwargs.path={ROOT / 'examples' / 'prompts.jsonl'}", "train.total_steps=64"]) == 0
    return tmp / "sft" / "hf"


def test_lora_rl_raises_the_reward_and_exports_an_adapter_and_a_merged_model(
        tmp_path: Path, sft_model: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(ROOT)  # the recipe names examples/ relative to the repository
    assert main(["train", "configs/prompts-example.yaml", *COMMON, f"policy.path={sft_model}",
                 f"train.runs_dir={tmp_path}", "name=lora", "text.pretrain.epochs=0", "policy.lora={r: 8, alpha: 16}",
                 "algo.lr=0.005", "train.total_steps=4800"]) == 0
    run = tmp_path / "lora"
    records = read_metrics(run)
    before, after = records[0], records[-1]
    for split in ("train", "heldout"):
        assert after[f"eval/{split}_sampled_reward"] - before[f"eval/{split}_sampled_reward"] >= 0.15, split
        # the reference is the policy with its adapters off: the same model before RL, apart after
        assert before[f"eval/{split}_kl_ref"] == pytest.approx(0.0, abs=1e-6)
        assert after[f"eval/{split}_kl_ref"] > 1e-3
    assert not (run / "reference.safetensors").exists()  # no second copy of the weights
    # the base weights stayed as they were; the adapters moved
    latest = (run / "checkpoints" / "latest").read_text().strip()
    weights = load_file(run / "checkpoints" / latest / "policy.safetensors")
    base = AutoModelForCausalLM.from_pretrained(sft_model)
    c_attn = "body.model.base_model.model.transformer.h.0.attn.c_attn"
    assert torch.equal(weights[f"{c_attn}.base_layer.weight"], base.transformer.h[0].attn.c_attn.weight)
    assert torch.count_nonzero(weights[f"{c_attn}.lora_B.default.weight"]) > 0
    # the adapter in peft's format on the base model, merged, is the exported model
    from peft import PeftModel

    merged = PeftModel.from_pretrained(base, run / "hf" / "adapter").merge_and_unload()  # merges into base
    base = AutoModelForCausalLM.from_pretrained(sft_model)
    exported = AutoModelForCausalLM.from_pretrained(run / "hf")
    for (name, a), (_, b) in zip(merged.state_dict().items(), exported.state_dict().items(), strict=True):
        torch.testing.assert_close(a, b, msg=name)
    assert not torch.equal(exported.transformer.h[0].attn.c_attn.weight, base.transformer.h[0].attn.c_attn.weight)
    # lmpo.load gives the trained policy back
    policy, _ = lmpo.load(run)
    ids = torch.tensor([[5, 6, 7, 8]])
    with torch.no_grad():
        torch.testing.assert_close(policy.body.model(input_ids=ids).logits, exported(input_ids=ids).logits)
    # and lmpo serve serves it (adapters merged), through the official client
    server = start_server(run, "--max-tokens", "32")
    try:
        client = OpenAI(base_url=f"{server.url}/v1", api_key="none")
        reply = client.chat.completions.create(model="lora", max_tokens=8,
                                               messages=[{"role": "user", "content": "Can you book a taxi?"}])
        assert reply.choices[0].message.content is not None and reply.choices[0].finish_reason in ("stop", "length")
    finally:
        assert server.stop()
