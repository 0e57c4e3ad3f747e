"""Language-model benchmarks, each side by side in one process.

1. lmpo's batched sampler against transformers' ``generate()``: the same small GPT-2-architecture model
   (random weights, built here: no download), batch 64, 16 prompt tokens, 48 new tokens, sampling at
   temperature 1, one thread. lmpo's sampler also returns what RL needs (the log-prob of each token under
   the distribution it was sampled from, and the value of each state); ``generate()`` returns tokens only.
2. The same sampler on a Hugging Face Llama (transformers' forward) with lmpo's preallocated KV cache against
   transformers' own cache, replies of one length and replies that end at <eos>, one thread.
3. The same sampler with its transformer blocks compiled for decoding (``torch.compile``, ``policy.compile:
   [decode]``) against it run eagerly, on the same model and batch, one thread.
4. The dialogue model's update pass (``evaluate`` forward + backward) with lmpo's own GRU recurrence
   against the same body running PyTorch's ``nn.GRU`` on packed sequences (``torch_kernels=True``, what
   lmpo ran before), on a batch shaped like the main job's (64 replies of 1-64 tokens after prompts of
   5-72), two threads.

    python bench/lm.py [--repeats 5] [--part all|generation|hf-cache|compiled|recurrent]
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch

from lmpo.policies import LMPolicy, SamplingConfig
from lmpo.policies.recurrent import RecurrentLM

BATCH, PROMPT, NEW = 64, 16, 48


def build_model(vocab: int = 4096):
    """A 4-layer, 256-wide GPT-2 (about 5M parameters)."""
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    cfg = GPT2Config(vocab_size=vocab, n_positions=128, n_embd=256, n_layer=4, n_head=4, bos_token_id=1,
                     eos_token_id=2, pad_token_id=0)
    return GPT2LMHeadModel(cfg).eval()


def interleaved(runs: dict[str, Callable[[], float]], repeats: int) -> dict[str, float]:
    """Median rate of each run (work units per second), runs interleaved so all see the same machine."""
    results: dict[str, list[float]] = {name: [] for name in runs}
    for fn in runs.values():  # warm-up
        fn()
    for _ in range(repeats):
        for name, fn in runs.items():
            t = time.perf_counter()
            work = fn()
            results[name].append(work / (time.perf_counter() - t))
    return {k: statistics.median(v) for k, v in results.items()}


def bench_generation(repeats: int) -> None:
    """lmpo's ``generate`` against transformers' ``generate()``, new tokens per second."""
    torch.set_num_threads(1)
    from lmpo.policies import generate
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

    med = interleaved({"lmpo": run_lmpo, "transformers": run_hf}, repeats)
    print(f"GPT-2 4x256, vocab {vocab}; batch {BATCH}, {PROMPT} prompt + {NEW} new tokens, sampling, 1 thread; "
          f"median of {repeats}")
    for k, v in med.items():
        print(f"  {k:13s} {v:9.0f} new tokens/s")
    print(f"  ratio lmpo / transformers: {med['lmpo'] / med['transformers']:.2f}")


def bench_hf_cache(repeats: int) -> None:
    """lmpo's ``generate`` on a Hugging Face model that runs through transformers' forward (a Llama) with lmpo's
    preallocated cache against transformers' own ``DynamicCache``: replies of one length (what writing in place
    saves), and replies that end at <eos> (finished rows also leave the batch); the same draws, the same tokens."""
    torch.set_num_threads(1)
    from transformers import LlamaConfig, LlamaForCausalLM

    from lmpo.policies import generate
    from lmpo.policies.generation import Generation
    from lmpo.policies.hf import HFCausalLM

    torch.manual_seed(0)
    vocab = 4096
    cfg = LlamaConfig(vocab_size=vocab, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                      num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=512)
    model = LlamaForCausalLM(cfg).eval()
    with torch.no_grad():  # <eos> (id 2) likely from some states and not others: replies of many lengths
        model.lm_head.weight[2] *= 40
    lengths = torch.randint(4, PROMPT + 1, (BATCH,))
    prompts = torch.randint(3, vocab, (BATCH, PROMPT)).masked_fill(torch.arange(PROMPT) < PROMPT - lengths[:, None], 0)
    ours, own = HFCausalLM(model), HFCausalLM(model)
    own.preallocate = False
    print(f"Llama 4x256 (transformers' forward), vocab {vocab}; batch {BATCH}, prompts of 4-{PROMPT} tokens, sampling, "
          f"1 thread; median of {repeats}")
    for name, sampling in (("replies of 192 tokens", SamplingConfig(temperature=1.0, min_new_tokens=192,
                                                                     max_new_tokens=192)),
                           ("replies ending at <eos>, up to 192", SamplingConfig(temperature=1.0, max_new_tokens=192))):
        policies = {"lmpo's cache": LMPolicy(ours, 0, 2, sampling),
                    "transformers' cache": LMPolicy(own, 0, 2, sampling)}

        def decode(policy: LMPolicy) -> Generation:
            torch.manual_seed(1)  # the same draws every time: the same replies, the same work
            return generate(policy, prompts)

        replies = [decode(p) for p in policies.values()]
        assert torch.equal(replies[0].tokens, replies[1].tokens), "the two caches decoded different replies"
        n = replies[0].mask.sum(1)
        med = interleaved({k: (lambda p=p: float(decode(p).mask.sum())) for k, p in policies.items()}, repeats)
        rates = ", ".join(f"{k} {v:.0f}" for k, v in med.items())
        ratio = med["lmpo's cache"] / med["transformers' cache"]
        print(f"  {name} (mean {float(n.mean()):.0f}, {int(n.min())}-{int(n.max())}): {rates} new tokens/s; "
              f"ratio {ratio:.2f}")


def bench_compiled(repeats: int) -> None:
    """lmpo's ``generate`` with its transformer blocks compiled for decoding (``policy.compile: [decode]``) against
    the same sampler run eagerly, new tokens per second; the first compiled call's time (compilation) apart."""
    torch.set_num_threads(1)
    from lmpo.policies import generate
    from lmpo.policies.hf import HFCausalLM, compile_blocks

    model = build_model()
    prompts = torch.randint(3, model.config.vocab_size, (BATCH, PROMPT))
    sampling = SamplingConfig(temperature=1.0, min_new_tokens=NEW, max_new_tokens=NEW)
    eager = LMPolicy(HFCausalLM(model), pad_id=0, eos_id=2, sampling=sampling)
    compiled = LMPolicy(HFCausalLM(model), pad_id=0, eos_id=2, sampling=sampling)
    compile_blocks(compiled.body, ["decode"])
    start = time.perf_counter()
    generate(compiled, prompts)
    first = time.perf_counter() - start
    torch.manual_seed(0)
    a = generate(eager, prompts)
    torch.manual_seed(0)
    b = generate(compiled, prompts)
    agree = float((a.tokens == b.tokens).float().mean())
    med = interleaved({"eager": lambda: int(generate(eager, prompts).mask.sum()),
                       "compiled": lambda: int(generate(compiled, prompts).mask.sum())}, repeats)
    print(f"GPT-2 4x256 decoding, batch {BATCH}, {NEW} new tokens, 1 thread; median of {repeats}; first compiled call "
          f"{first:.0f} s (compilation); sampled tokens equal to eager's: {agree:.1%}")
    for k, v in med.items():
        print(f"  {k:13s} {v:9.0f} new tokens/s")
    print(f"  ratio compiled / eager: {med['compiled'] / med['eager']:.2f}")
    bench_compiled_main_job(repeats)


def bench_compiled_main_job(repeats: int) -> None:
    """The main job's transformer (2 layers of 128, rotary, vocab 2048): decoding and the scoring pass (``evaluate``
    forward + backward, what PPO's update runs) compiled against eager, batch 64, prompts of 100 tokens."""
    from lmpo.policies import GPT, GPTConfig, generate
    from lmpo.policies.hf import compile_blocks

    def make() -> LMPolicy:
        torch.manual_seed(0)
        return LMPolicy(GPT(GPTConfig(2048, 2, 4, 128, 512, 0.0, "rotary")), pad_id=0, eos_id=2,
                        sampling=SamplingConfig(temperature=1.0, min_new_tokens=32, max_new_tokens=32))

    eager, compiled = make(), make()
    compile_blocks(compiled.body, ["decode", "score"])
    prompts = torch.randint(3, 2048, (BATCH, 100))
    replies = generate(eager, prompts).tokens

    def decode(policy: LMPolicy) -> Callable[[], float]:
        return lambda: float(generate(policy, prompts).mask.sum())

    def score(policy: LMPolicy) -> Callable[[], float]:
        def run() -> float:
            ev = policy.evaluate(prompts, replies)
            ev.log_probs.sum().backward()
            policy.zero_grad()
            return float(BATCH)
        return run

    start = time.perf_counter()
    decode(compiled)()
    score(compiled)()
    first = time.perf_counter() - start
    med = interleaved({"decode, eager": decode(eager), "decode, compiled": decode(compiled),
                       "score, eager": score(eager), "score, compiled": score(compiled)}, repeats)
    print(f"the main job's transformer (2x128, rotary, vocab 2048), batch {BATCH}, prompts of 100 tokens, 1 thread; "
          f"median of {repeats}; first compiled calls {first:.0f} s")
    print(f"  decoding {med['decode, eager']:.0f} -> {med['decode, compiled']:.0f} new tokens/s "
          f"({med['decode, compiled'] / med['decode, eager']:.2f}x); scoring (forward + backward) "
          f"{med['score, eager']:.0f} -> {med['score, compiled']:.0f} replies/s "
          f"({med['score, compiled'] / med['score, eager']:.2f}x)")


def bench_recurrent(repeats: int) -> None:
    """The update pass of the main job's GRU policy: lmpo's recurrence against ``nn.GRU``'s packed path."""
    torch.set_num_threads(2)
    vocab, batch, max_prompt, max_reply = 2048, 64, 72, 64
    torch.manual_seed(0)
    prompt_len = torch.randint(5, max_prompt + 1, (batch,))
    reply_len = torch.randint(1, max_reply + 1, (batch,))
    reply_len[0] = max_reply  # one reply at the limit, as in most of the main job's batches
    pos = torch.arange(max_prompt)
    prompts = torch.randint(3, vocab, (batch, max_prompt)).masked_fill(pos < max_prompt - prompt_len.unsqueeze(1), 0)
    replies = torch.randint(3, vocab, (batch, max_reply)).masked_fill(
        torch.arange(max_reply) >= reply_len.unsqueeze(1), 0)
    policies = {}
    for name, torch_kernels in (("lmpo", False), ("nn.GRU packed", True)):
        torch.manual_seed(0)
        body = RecurrentLM(vocab, "gru", 256, 512)
        body.torch_kernels = torch_kernels
        policies[name] = LMPolicy(body, pad_id=0, eos_id=2, sampling=SamplingConfig(max_new_tokens=max_reply))
    a, b = (p.evaluate(prompts, replies).log_probs for p in policies.values())
    assert torch.allclose(a, b, atol=1e-5), "the two bodies must compute the same log-probs"

    def update_pass(policy: LMPolicy) -> Callable[[], float]:
        def run() -> float:
            ev = policy.evaluate(prompts, replies)
            (ev.log_probs.sum() + ev.values.sum()).backward()  # type: ignore[union-attr]
            policy.zero_grad()
            return float(batch)
        return run

    med = interleaved({name: update_pass(p) for name, p in policies.items()}, repeats)
    print(f"GRU 256/512, vocab {vocab}; {batch} replies of 1-{max_reply} tokens after prompts of 5-{max_prompt}, "
          f"evaluate forward + backward, 2 threads; median of {repeats}")
    for k, v in med.items():
        print(f"  {k:13s} {v:9.0f} replies/s")
    print(f"  ratio lmpo / nn.GRU packed: {med['lmpo'] / med['nn.GRU packed']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--part", choices=["all", "generation", "hf-cache", "compiled", "recurrent"], default="all")
    args = parser.parse_args()
    if args.part in ("all", "generation"):
        bench_generation(args.repeats)
    if args.part in ("all", "hf-cache"):
        bench_hf_cache(args.repeats)
    if args.part in ("all", "compiled"):
        bench_compiled(args.repeats)
    if args.part in ("all", "recurrent"):
        bench_recurrent(args.repeats)


if __name__ == "__main__":
    main()
