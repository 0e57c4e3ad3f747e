"""Language-model benchmarks: lmpo's batched sampler against transformers' ``generate()``.

Same small GPT-2-architecture model (random weights, built here: no download), batch 64, 16 prompt
tokens, 48 new tokens, sampling at temperature 1, one thread, side by side in one process. lmpo's sampler
also returns what RL needs (the log-prob of each token under the distribution it was sampled from, and
the value of each state); ``generate()`` returns tokens only.

    python bench/lm.py [--repeats 5]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

BATCH, PROMPT, NEW = 64, 16, 48


def build_model(vocab: int = 4096):
    """A 4-layer, 256-wide GPT-2 (about 5M parameters)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=256, n_layer=4, n_head=4, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    torch.set_num_threads(1)
    from lmpo.policies import LMPolicy, SamplingConfig, generate
    from lmpo.policies.hf import HFCausalLM

    model = build_model()
    vocab = model.config.vocab_size
    prompts = torch.randint(3, vocab, (BATCH, PROMPT))
    # min_new_tokens = max_new_tokens: both produce exactly 48 tokens per row (no early <eos>)
    policy = LMPolicy(HFCausalLM(model), pad_id=0, eos_id=2,
                      sampling=SamplingConfig(temperature=1.0, min_new_tokens=NEW, max_new_tokens=NEW))

    def run_lmpo() -> int:
        return int(generate(policy, prompts).mask.sum())

    def run_hf() -> int:
        with torch.no_grad():
            out = model.generate(prompts, attention_mask=torch.ones_like(prompts), do_sample=True, temperature=1.0,
                                 top_k=0, top_p=1.0, max_new_tokens=NEW, min_new_tokens=NEW, pad_token_id=0)
        return int(out.shape[0] * (out.shape[1] - PROMPT))

    results: dict[str, list[float]] = {"lmpo": [], "transformers": []}
    for fn in (run_lmpo, run_hf):  # warm-up
        fn()
    for _ in range(args.repeats):  # interleaved, so both see the same machine state
        for name, fn in (("lmpo", run_lmpo), ("transformers", run_hf)):
            t = time.perf_counter()
            tokens = fn()
            results[name].append(tokens / (time.perf_counter() - t))
    med = {k: statistics.median(v) for k, v in results.items()}
    print(f"GPT-2 4x256, vocab {vocab}; batch {BATCH}, {PROMPT} prompt + {NEW} new tokens, sampling, 1 thread; "
          f"median of {args.repeats}")
    for k, v in med.items():
        print(f"  {k:13s} {v:9.0f} new tokens/s")
    print(f"  ratio lmpo / transformers: {med['lmpo'] / med['transformers']:.2f}")


if __name__ == "__main__":
    main()
