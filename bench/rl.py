"""RL throughput: lmpo against TRL on the same policy, reward model and batches, on CPU.

The work: a 4-layer, 256-wide GPT-2 policy (random weights, fixed seed, built here: no download); a
1-layer GPT-2 reward model whose attention is uniform (zero query and key projections) and amplified, so
that its score at a completion's last token is close to the mean of a per-token value over prompt and
completion (a reward every token moves, which a policy can climb within 30 steps); prompts from
chatterbot-corpus; 64 completions of 32 new tokens per step (16 prompts x 4, temperature 1; <eos> banned
until 32, so every completion has 32 tokens); a k1 KL penalty of weight 0.02 to the frozen initial policy
(not for GRPO, below); Adam at a constant lr 5e-4, gradient norm clipped at 1; 30 steps. Pairs:

- ``rloo``: lmpo REINFORCE with the leave-one-out baseline vs TRL ``RLOOTrainer`` (trl 1.16.0; one
  gradient step per batch; ``beta`` = the KL weight, in the reward as both do). lmpo sums each reply's
  token log-probs and averages over replies (``loss_aggregation: token_sum``), which is TRL's RLOO loss;
- ``grpo``: lmpo REINFORCE with GRPO's advantage (``baseline: group, group_std: true, whiten: false``)
  vs TRL ``GRPOTrainer`` (trl 1.16.0; ``scale_rewards="group"``, ``num_iterations=1``). The loss is
  GRPO's own on both sides: lmpo ``loss_aggregation: sequence_mean``, TRL ``loss_type="grpo"`` (with
  every completion 32 tokens long it equals a token mean, ``dapo``). No KL on either side: TRL's
  ``beta`` puts a k3 term into the loss, which lmpo (KL in the reward) has no setting for, so the one
  objective both sides compute exactly is GRPO's default, ``beta=0.0``, without a reference model;
- ``ppo``: lmpo PPO vs TRL's ``PPOTrainer`` (``trl.experimental.ppo``, last shipped in trl 1.12.0): 4
  epochs of one minibatch, clip 0.2, value clip 0.2, value weight 0.1, GAE(1, 0.95). TRL's PPO needs a
  separate value model (a copy of the policy with a score head); lmpo's reads a value head off the
  policy's own hidden states.

Each trainer runs in its own fresh process, in turn, with 2 threads: lmpo in lmpo's environment, TRL in
its own (``.venv-trl16`` with trl 1.16.0 for rloo and grpo, ``.venv-trl`` with trl 1.12.0 for ppo, both
made by ``make bench-rl``; TRL is never a dependency of lmpo). A process reports
completion tokens per second over its 30 steps, its peak resident memory (``ru_maxrss``: libraries,
models and training together) and the mean reward of every step. TRL runs at its fastest fair CPU
settings: no gradient checkpointing, no vLLM, no logging integrations, no saving. Both sides run once in
fp32 and once in bf16 mixed precision (lmpo ``train.precision: bf16``, TRL ``bf16=True``: both autocast
to bfloat16), and the ratio of lmpo in bf16 to TRL in fp32 (the issue's TRL settings) is printed too.
lmpo runs as its trainer does, with ``tune_allocator()`` (glibc keeps freed blocks for reuse).

    python bench/rl.py [--pairs rloo,grpo,ppo] [--repeats 1] [--precision fp32|bf16|both]
        [--trl-python .venv-trl/bin/python] [--trl16-python .venv-trl16/bin/python]
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch

STEPS, PROMPTS, PER_PROMPT, NEW = 30, 16, 4, 32
LR, KL, THREADS, PPO_EPOCHS = 5e-4, 0.02, 2, 4
WORKERS = {"rloo": ("lmpo-reinforce-loo", "trl-rloo"), "grpo": ("lmpo-reinforce-group", "trl-grpo"),
           "ppo": ("lmpo-ppo", "trl-ppo")}


# ------------------------------------------------------------------------------ shared by every side
def rm_scores(rm: Any, prompt_ids: list[list[int]], completion_ids: list[list[int]], pad: int) -> torch.Tensor:
    """The reward: the reward model's score at the last token of prompt + completion (as TRL's PPO reads it)."""
    rows = [list(p) + list(c) for p, c in zip(prompt_ids, completion_ids, strict=True)]
    width = max(map(len, rows))
    ids = torch.full((len(rows), width), pad, dtype=torch.long)
    for i, r in enumerate(rows):  # left-padded: every row ends at the last column
        ids[i, width - len(r):] = torch.tensor(r)
    mask = ids != pad
    positions = (mask.long().cumsum(1) - 1).clamp_min(0)
    with torch.no_grad():
        h = rm.transformer(input_ids=ids.masked_fill(~mask, 0), attention_mask=mask.long(),
                           position_ids=positions).last_hidden_state
        return rm.score(h[:, -1]).squeeze(-1).float()


def peak_rss_mb() -> float:
    """Peak resident memory of this process (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_assets(assets: Path) -> tuple[Any, Any, list[str]]:
    """The policy's tokenizer (left padding), the reward model and the prompts."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(assets / "policy")
    tok.padding_side = "left"
    rm = AutoModelForSequenceClassification.from_pretrained(assets / "reward").eval()
    return tok, rm, json.loads((assets / "prompts.json").read_text())


# ------------------------------------------------------------------------------------ lmpo workers
def lmpo_algorithm(algo: str, policy: Any) -> tuple[Any, float]:
    """lmpo's side of a pair and its KL weight to the initial policy (0: no reference model)."""
    from lmpo.algorithms import PPO, Reinforce
    from lmpo.config import AdvantageConfig, PPOConfig, ReinforceConfig

    common: dict[str, Any] = {"lr": LR, "adam_eps": 1e-8, "max_grad_norm": 1.0}
    if algo == "reinforce-loo":  # TRL's RLOO loss: -(A * each reply's summed log-prob), mean over replies
        adv = AdvantageConfig(estimator="returns", gamma=1.0, baseline="loo", whiten=False)
        return Reinforce(ReinforceConfig(**common, loss_aggregation="token_sum", advantage=adv), policy), KL
    if algo == "reinforce-group":  # GRPO: (r - group mean) / (group std + 1e-4), TRL's loss_type="grpo"
        adv = AdvantageConfig(estimator="returns", gamma=1.0, baseline="group", group_std=True, whiten=False)
        return Reinforce(ReinforceConfig(**common, loss_aggregation="sequence_mean", advantage=adv), policy), 0.0
    adv = AdvantageConfig(estimator="gae", gamma=1.0, gae_lambda=0.95, whiten=True)
    return PPO(PPOConfig(**common, epochs=PPO_EPOCHS, batch_size=PROMPTS * PER_PROMPT, clip_range=0.2,
                         clip_range_vf=0.2, vf_coef=0.1, advantage=adv), policy), KL


def run_lmpo(algo: str, assets: Path, steps: int, precision: str) -> dict[str, Any]:
    """lmpo's library API, the loop its trainer runs: generate, score, shape with KL, advantages, update."""
    import copy

    import numpy as np

    from lmpo.core import estimate_advantages, kl_penalized_rewards
    from lmpo.policies import SamplingConfig, generate
    from lmpo.policies.generation import left_pad, to_rollout
    from lmpo.policies.hf import load_hf_policy
    from lmpo.train.runtime import autocast, tune_allocator

    tune_allocator()
    tok, rm, prompts = load_assets(assets)
    sampling = SamplingConfig(temperature=1.0, min_new_tokens=NEW, max_new_tokens=NEW)
    policy, _ = load_hf_policy(assets / "policy", sampling)
    algorithm, kl_coef = lmpo_algorithm(algo, policy)
    reference = copy.deepcopy(policy).eval().requires_grad_(False) if kl_coef else None
    prompt_ids = tok(text=prompts)["input_ids"]
    rng = np.random.default_rng(0)
    rewards, tokens, cpu = [], 0, torch.device("cpu")
    start = time.perf_counter()
    for step in range(steps):
        chosen = [prompt_ids[i] for i in rng.choice(len(prompt_ids), PROMPTS, replace=False) for _ in range(PER_PROMPT)]
        obs = left_pad(chosen, policy.pad_id)
        with autocast(precision, cpu):
            gen = generate(policy, obs)
            ref = reference.evaluate(obs, gen.tokens).log_probs if reference is not None else None
        completions = [row[m > 0].tolist() for row, m in zip(gen.tokens, gen.mask, strict=True)]
        scores = rm_scores(rm, chosen, completions, policy.pad_id)  # float32 on every side
        rollout = to_rollout(obs, gen, scores, torch.arange(len(chosen)) // PER_PROMPT)
        if ref is not None:
            rollout.rewards = kl_penalized_rewards(rollout.rewards, rollout.logprobs, ref, rollout.mask, kl_coef, "k1")
        a = algorithm.cfg.advantage
        rollout = estimate_advantages(rollout, a.estimator, a.gamma, a.gae_lambda, a.baseline, a.whiten, a.group_std)
        with autocast(precision, cpu, weights_change=True):
            algorithm.update(policy, rollout, step / steps)
        rewards.append(float(scores.mean()))
        tokens += int(gen.mask.sum())
    seconds = time.perf_counter() - start
    return {"rewards": rewards, "tokens": tokens, "seconds": seconds, "peak_rss_mb": peak_rss_mb()}


def run_floor(assets: Path, precision: str) -> dict[str, float]:
    """The arithmetic no trainer of this batch avoids, timed at its best on one batch: a forward pass over
    prompts + completions (the least that sampling them costs, and what the reference's log-probs cost),
    the reward model, and one forward + backward (a gradient step)."""
    from lmpo.policies import SamplingConfig
    from lmpo.policies.generation import left_pad
    from lmpo.policies.hf import load_hf_policy
    from lmpo.train.runtime import autocast, tune_allocator

    tune_allocator()
    tok, rm, prompts = load_assets(assets)
    policy, _ = load_hf_policy(assets / "policy", SamplingConfig(min_new_tokens=NEW, max_new_tokens=NEW))
    chosen = [ids for ids in tok(text=prompts[:PROMPTS])["input_ids"] for _ in range(PER_PROMPT)]
    obs = left_pad(chosen, policy.pad_id)
    torch.manual_seed(0)
    replies = torch.randint(0, len(tok), (len(chosen), NEW))
    replies[replies == policy.pad_id] = policy.eos_id

    def best(fn: Any, mixed: bool = True, repeats: int = 7) -> float:
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            with autocast(precision if mixed else "fp32", torch.device("cpu")):
                fn()
            times.append(time.perf_counter() - start)
        return min(times)

    def forward() -> None:
        with torch.no_grad():
            policy.evaluate(obs, replies)

    def forward_backward() -> None:
        policy.zero_grad(set_to_none=True)
        policy.evaluate(obs, replies).log_probs.sum().backward()

    return {"forward": best(forward), "forward_backward": best(forward_backward),
            "reward_model": best(lambda: rm_scores(rm, chosen, replies.tolist(), policy.pad_id), mixed=False)}


# ------------------------------------------------------------------------------------- TRL workers
def _trl_common(out_dir: str, precision: str) -> dict[str, Any]:
    """TrainingArguments shared by TRL's trainers: CPU, fp32 or bf16 autocast, constant lr, no logging
    integrations or saving."""
    return {"output_dir": out_dir, "learning_rate": LR, "lr_scheduler_type": "constant", "max_grad_norm": 1.0,
            "bf16": precision == "bf16", "fp16": False, "gradient_checkpointing": False, "use_cpu": True, "seed": 0,
            "report_to": "none", "save_strategy": "no", "logging_steps": 1, "disable_tqdm": True,
            "dataloader_num_workers": 0, "per_device_train_batch_size": PROMPTS * PER_PROMPT,
            "gradient_accumulation_steps": 1}


def run_trl(algo: str, assets: Path, steps: int, precision: str) -> dict[str, Any]:
    """TRL's own trainer on the same assets; step rewards and lengths come from its logs."""
    import trl
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification, TrainerCallback

    tok, rm, prompts = load_assets(assets)
    records: list[dict[str, float]] = []
    clock: dict[str, float] = {}

    class Record(TrainerCallback):  # type: ignore[misc]
        def on_train_begin(self, *args: Any, **kwargs: Any) -> None:
            clock["start"] = time.perf_counter()

        def on_train_end(self, *args: Any, **kwargs: Any) -> None:
            clock["end"] = time.perf_counter()

        def on_log(self, args: Any, state: Any, control: Any, logs: dict[str, float] | None = None, **kw: Any) -> None:
            records.append(dict(logs or {}))

    policy = AutoModelForCausalLM.from_pretrained(assets / "policy")
    with tempfile.TemporaryDirectory() as out:
        if algo in ("rloo", "grpo"):
            from trl import GRPOConfig, GRPOTrainer, RLOOConfig, RLOOTrainer

            def reward(prompts: list[str], completion_ids: list[list[int]], **kw: Any) -> list[float]:
                return rm_scores(rm, tok(text=prompts)["input_ids"], completion_ids, tok.pad_token_id).tolist()

            settings = {**_trl_common(out, precision), "max_steps": steps, "num_generations": PER_PROMPT,
                        "max_completion_length": NEW, "generation_kwargs": {"min_new_tokens": NEW},
                        "temperature": 1.0, "top_p": 1.0, "top_k": 0, "num_iterations": 1, "use_vllm": False,
                        "log_completions": False}
            if algo == "rloo":  # KL (k1, summed over the reply) in the reward, as lmpo's
                trainer_cls, args = RLOOTrainer, RLOOConfig(**settings, beta=KL)
            else:  # GRPO's own loss and advantage; beta=0: no KL, no reference model (TRL's default)
                trainer_cls, args = GRPOTrainer, GRPOConfig(**settings, beta=0.0, loss_type="grpo",
                                                            scale_rewards="group")
            trainer: Any = trainer_cls(model=policy, reward_funcs=reward, args=args, processing_class=tok,
                                       train_dataset=Dataset.from_dict({"prompt": prompts}), callbacks=[Record()])
            trainer.train()
            rewards = [x["reward"] for x in records if "reward" in x]
            lengths = [x["completions/mean_length"] for x in records if "completions/mean_length" in x]
            tokens = int(round(sum(lengths) * PROMPTS * PER_PROMPT))
        else:
            from trl.experimental.ppo import PPOConfig, PPOTrainer

            ref = AutoModelForCausalLM.from_pretrained(assets / "policy")
            value = AutoModelForSequenceClassification.from_pretrained(assets / "policy", num_labels=1)
            ids = tok(text=prompts)["input_ids"]
            args = PPOConfig(**_trl_common(out, precision), total_episodes=steps * PROMPTS * PER_PROMPT,
                             num_mini_batches=1, local_rollout_forward_batch_size=PROMPTS * PER_PROMPT,
                             num_ppo_epochs=PPO_EPOCHS,
                             response_length=NEW, temperature=1.0, kl_coef=KL, kl_estimator="k1", cliprange=0.2,
                             cliprange_value=0.2, vf_coef=0.1, gamma=1.0, lam=0.95, num_sample_generations=0,
                             stop_token=None, missing_eos_penalty=None)
            trainer = PPOTrainer(args=args, processing_class=tok, model=policy, ref_model=ref, reward_model=rm,
                                 value_model=value, train_dataset=Dataset.from_dict({"input_ids": ids}),
                                 callbacks=[Record()])
            trainer.train()
            rewards = [x["objective/scores"] for x in records if "objective/scores" in x]
            eos = sum(x["val/num_eos_tokens"] for x in records if "val/num_eos_tokens" in x)
            tokens = steps * PROMPTS * PER_PROMPT * NEW - int(eos)  # responses are NEW tokens; an <eos> would end one
    if len(rewards) != steps:
        raise RuntimeError(f"TRL logged {len(rewards)} steps, expected {steps}")
    return {"rewards": rewards, "tokens": tokens, "seconds": clock["end"] - clock["start"],
            "peak_rss_mb": peak_rss_mb(), "trl": trl.__version__}


# ----------------------------------------------------------------------------------------- driver
def build_assets(assets: Path) -> None:
    """Tokenizer, policy (with its generation settings), reward model and prompts, saved for every worker."""
    from transformers import GPT2Config, GPT2ForSequenceClassification, GPT2LMHeadModel

    from lmpo.data import dialogue_texts, load_chatterbot, train_tokenizer

    dialogues = list(dict.fromkeys(load_chatterbot()))
    tok = train_tokenizer(dialogue_texts(dialogues), vocab_size=4096)
    pad, eos = tok.pad_token_id, tok.eos_token_id
    torch.manual_seed(0)
    sizes = {"vocab_size": len(tok), "n_positions": 128, "n_embd": 256, "n_head": 4, "pad_token_id": pad,
             "eos_token_id": eos, "bos_token_id": tok.bos_token_id}
    policy = GPT2LMHeadModel(GPT2Config(n_layer=4, **sizes))
    policy.generation_config.min_new_tokens = NEW  # every side bans <eos> for the 32 tokens: equal lengths
    policy.generation_config.pad_token_id = pad
    policy.save_pretrained(assets / "policy")
    tok.save_pretrained(assets / "policy")
    torch.manual_seed(1)
    rm = GPT2ForSequenceClassification(GPT2Config(n_layer=1, num_labels=1, **sizes))
    with torch.no_grad():  # uniform attention (zero queries and keys), amplified: the mean of per-token values
        width = sizes["n_embd"]
        attn = rm.transformer.h[0].attn
        attn.c_attn.weight[:, : 2 * width] = 0.0
        attn.c_attn.bias[: 2 * width] = 0.0
        attn.c_proj.weight.mul_(20.0)
    rm.save_pretrained(assets / "reward")
    prompts = list(dict.fromkeys(d[0].content for d in dialogues if len(tok(d[0].content)["input_ids"]) <= 16))
    (assets / "prompts.json").write_text(json.dumps(prompts))


def spawn(python: str, worker: str, assets: Path, steps: int, precision: str) -> dict[str, Any]:
    """One worker in a fresh process; its result is the last line it prints."""
    cmd = [python, __file__, "--worker", worker, "--assets", str(assets), "--steps", str(steps),
           "--precision", precision]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        raise RuntimeError(f"{worker} failed:\n{out.stderr[-4000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def floor_seconds(pair: str, floor: dict[str, float]) -> float:
    """The least a step of ``pair`` costs: sampling (at least one forward over prompts + completions, which also
    gives the old log-probs and values), the reference's log-probs (one forward; GRPO here has no reference),
    the reward model, and the gradient steps (REINFORCE one, PPO one per epoch)."""
    forwards = 1 if pair == "grpo" else 2
    gradient_steps = PPO_EPOCHS if pair == "ppo" else 1
    return forwards * floor["forward"] + floor["reward_model"] + gradient_steps * floor["forward_backward"]


def report(results: dict[tuple[str, str], list[dict[str, Any]]], floors: dict[str, dict[str, float]],
           pairs: list[str], precisions: list[str]) -> None:
    """Per precision: every trainer's medians, lmpo / TRL ratios and the floor; then lmpo bf16 / TRL fp32."""
    med: dict[tuple[str, str], dict[str, float]] = {}
    for precision in precisions:
        print(f"{precision}:")
        print(f"  {'trainer':26s} {'tokens/s':>9s} {'peak RSS MB':>12s} {'reward first 5 -> last 5':>26s}")
        for (worker, prec), runs in results.items():
            if prec != precision:
                continue
            tps = statistics.median(r["tokens"] / r["seconds"] for r in runs)
            rss = statistics.median(r["peak_rss_mb"] for r in runs)
            first = statistics.median(statistics.mean(r["rewards"][:5]) for r in runs)
            last = statistics.median(statistics.mean(r["rewards"][-5:]) for r in runs)
            med[worker, prec] = {"tps": tps, "rss": rss}
            name = f"{worker} (trl {runs[0]['trl']})" if "trl" in runs[0] else worker
            print(f"  {name:26s} {tps:9.0f} {rss:12.0f} {first:12.3f} -> {last:9.3f}")
        for ours, theirs in (WORKERS[p] for p in pairs):
            a, b = med[ours, precision], med[theirs, precision]
            print(f"  {ours} / {theirs}: tokens/s x{a['tps'] / b['tps']:.2f}, peak memory x{a['rss'] / b['rss']:.2f}")
        floor = floors[precision]
        f, fb, r = floor["forward"], floor["forward_backward"], floor["reward_model"]
        print(f"  floor, one batch at its best: forward {f:.3f} s, forward+backward {fb:.3f} s, "
              f"reward model {r:.3f} s")
        batch_tokens = PROMPTS * PER_PROMPT * NEW
        for pair in pairs:
            ours, theirs = WORKERS[pair]
            seconds = floor_seconds(pair, floor)
            best_tps, step = batch_tokens / seconds, batch_tokens / med[ours, precision]["tps"]
            print(f"    {pair}: the arithmetic alone takes {seconds:.2f} s a step: at most {best_tps:.0f} tokens/s, "
                  f"x{best_tps / med[theirs, precision]['tps']:.2f} {theirs}; {ours} takes {step:.2f} s a step, "
                  f"x{step / seconds:.2f} the floor")
    if {"fp32", "bf16"} <= set(precisions):
        print("lmpo in bf16 / TRL in fp32 (the issue's TRL settings, bf16 off):")
        for ours, theirs in (WORKERS[p] for p in pairs):
            a, b = med[ours, "bf16"], med[theirs, "fp32"]
            print(f"  {ours} / {theirs}: tokens/s x{a['tps'] / b['tps']:.2f}, peak memory x{a['rss'] / b['rss']:.2f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trl-python", default=".venv-trl/bin/python", help="Python with trl 1.12.0 (ppo)")
    parser.add_argument("--trl16-python", default=".venv-trl16/bin/python",
                        help="Python with trl 1.16.0 (rloo, grpo)")
    parser.add_argument("--repeats", type=int, default=1, help="runs of every worker (medians are reported)")
    parser.add_argument("--pairs", "--only", default=",".join(WORKERS),
                        help=f"comma-separated pairs among {', '.join(WORKERS)} (default: all)")
    parser.add_argument("--steps", type=int, default=STEPS, help="RL steps per run")
    parser.add_argument("--precision", choices=["fp32", "bf16", "both"], default="both",
                        help="autocast precision of both sides")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    parser.add_argument("--assets", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(THREADS)
    if args.worker:
        side, _, algo = args.worker.partition("-")
        if algo == "floor":
            print(json.dumps(run_floor(args.assets, args.precision)))
            return
        run = run_lmpo if side == "lmpo" else run_trl
        print(json.dumps(run(algo, args.assets, args.steps, args.precision)))
        return
    pairs = args.pairs.split(",")
    if unknown := set(pairs) - set(WORKERS):
        parser.error(f"unknown pairs {sorted(unknown)}: choose among {', '.join(WORKERS)}")
    trl_python = {"rloo": args.trl16_python, "grpo": args.trl16_python, "ppo": args.trl_python}
    for pair in pairs:
        if not Path(trl_python[pair]).exists():
            sys.exit(f"{trl_python[pair]} not found: `make bench-rl` creates the TRL environments")
    precisions = ["fp32", "bf16"] if args.precision == "both" else [args.precision]
    with tempfile.TemporaryDirectory() as tmp:
        assets = Path(tmp)
        build_assets(assets)
        results: dict[tuple[str, str], list[dict[str, Any]]] = {}
        for _ in range(args.repeats):  # in turn, so both sides see the same machine state
            for precision in precisions:
                for pair in pairs:
                    for worker in WORKERS[pair]:
                        python = sys.executable if worker.startswith("lmpo") else trl_python[pair]
                        result = spawn(python, worker, assets, args.steps, precision)
                        results.setdefault((worker, precision), []).append(result)
        floors = {p: spawn(sys.executable, "lmpo-floor", assets, args.steps, p) for p in precisions}
    print(f"GPT-2 4x256 policy, 1-layer reward model; {PROMPTS} prompts x {PER_PROMPT} completions of {NEW} tokens "
          f"per step, {args.steps} steps, {THREADS} threads; median of {args.repeats}")
    report(results, floors, pairs, precisions)


if __name__ == "__main__":
    main()
