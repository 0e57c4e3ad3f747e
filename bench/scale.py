"""Scaling, measured side by side in one run: data-parallel training under torchrun against one process, and LoRA
with the shared reference against full fine-tuning with a reference copy.

``--part ddp``: the RL phase of a recipe (the main job by default) from one pre-trained model, the same global batch
and total work.
1. ``lmpo pretrain RECIPE`` once (not timed); every setup resumes a copy of that run for ``--steps`` replies.
2. Setups: one process with the recipe's threads (``train.threads``, 2 in the main job), one process with one
   thread, and ``--processes`` processes under ``torchrun`` (each capped to its share of the cores). They run in
   turn, ``--rounds`` times (a shared machine's speed drifts within minutes: each round compares back-to-back runs).
3. Throughput: replies (environment steps) per second of rollout + update (the trainer's ``time/collect_s`` and
   ``time/update_s``; evaluation and start-up excluded), medians over rounds, and each round's ratio. The learning
   curve beside it: the mean training satisfaction per update and the final greedy held-out satisfaction.

``--part lora``: PPO on a Hugging Face GPT-2 built here (``--width``, ``--layers``: about 100 M parameters by
default), fine-tuned first by lmpo's pre-training (``--sft-epochs``) on the prompt set
(``configs/prompts-example.yaml``), then trained with PPO (8 x 4 conversations per update, minibatches of 16
replies, gradient checkpointing) twice from that model: full fine-tuning (every weight, a frozen reference copy) and
LoRA (adapters only; the reference is the same network with its adapters off). Peak resident memory of each
training process (and its rise over the process's memory once its libraries are imported), the training return of
the first and last five updates, and the sampled reward before and after on training and held-out prompts.

``--part fsdp``: memory of ``--processes`` processes under torchrun training a Hugging Face GPT-2 built here
(``--width``, ``--layers``; random weights, no pre-training) with PPO on the prompt set, data-parallel (DDP: every
process holds the weights, gradients and Adam's moments whole) and sharded (``train.fsdp``: each holds 1/N of them,
and the whole weights while it collects), each without and with LoRA adapters (r=16; the reference is the network
with its adapters off). Each process's peak resident memory and its rise over the process's memory once its
libraries are imported; the replies per second of each.

``--part mfu``: model FLOP utilisation of the main job's update step (PPO's epochs of minibatch forward and
backward passes and optimiser steps): FLOPs counted by PyTorch's ``FlopCounterMode`` on the rollout whose update
was timed, against this machine's measured float32 matmul peak at the same number of threads.

    python bench/scale.py --part ddp [--recipe support] [--steps 1000] [--rounds 2] [--processes 2] [overrides ...]
    python bench/scale.py --part lora [--width 1024] [--layers 8] [--lora-steps 640] [--sft-epochs 1]
    python bench/scale.py --part fsdp [--width 1024] [--layers 8] [--fsdp-steps 64] [--processes 2]
    python bench/scale.py --part mfu [--recipe support] [--updates 3]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from lmpo.train.logging import read_metrics  # noqa: E402


def cpu_model() -> str:
    """The CPU's model name (timings mean little without it)."""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or "unknown"


def lmpo(args: list[str], processes: int = 1) -> None:
    """``python -m lmpo ARGS``, under ``torchrun`` for several processes; stops the benchmark on failure."""
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    cmd = [*(launch if processes > 1 else [sys.executable]), "-m", "lmpo", *args]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise SystemExit(f"failed: {' '.join(cmd)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")


def measure(run: Path) -> dict[str, float]:
    """Throughput of the RL updates a run recorded, and its learning curve."""
    records = read_metrics(run)
    updates = [r for r in records if r.get("iteration", 0) > 0 and not r.get("final")]
    seconds = sum(r["time/collect_s"] + r["time/update_s"] for r in updates)
    steps = updates[-1]["env_steps"] - (records[0].get("env_steps", 0) if records else 0)
    final = records[-1]
    return {"steps_per_s": steps / seconds, "seconds": seconds, "updates": len(updates),
            "satisfaction": statistics.fmean(r.get("charts/satisfaction", float("nan")) for r in updates),
            "heldout": final.get("eval/heldout_satisfaction", float("nan"))}


def ddp(args: argparse.Namespace) -> None:
    """Part ``ddp``: one process against ``--processes`` under torchrun."""
    tmp = Path(tempfile.mkdtemp(prefix="lmpo-scale-"))
    common = ["train.progress=false", f"train.runs_dir={tmp}", *args.overrides]
    start = time.perf_counter()
    lmpo(["pretrain", args.recipe, "name=base", *common])
    print(f"pre-trained in {time.perf_counter() - start:.0f} s ({tmp / 'base'})")
    setups = [("1 process, recipe's threads", 1, []), ("1 process, 1 thread", 1, ["train.threads=1"]),
              (f"{args.processes} processes (torchrun)", args.processes, [])]
    results: dict[str, list[dict[str, float]]] = {label: [] for label, _, _ in setups}
    for r in range(args.rounds):
        for i, (label, processes, extra) in enumerate(setups):
            run = tmp / f"round{r}-setup{i}"
            shutil.copytree(tmp / "base", run)
            lmpo(["train", "--resume", str(run), f"train.total_steps={args.steps}", "train.eval_every=0", *extra,
                  *args.overrides], processes)
            results[label].append(measure(run))
            m = results[label][-1]
            print(f"round {r + 1}, {label}: {m['steps_per_s']:.1f} replies/s over {m['updates']:.0f} updates "
                  f"({m['seconds']:.0f} s); satisfaction {m['satisfaction']:.3f}, held-out {m['heldout']:.3f}")
    print("\n| setup | replies/s (median) | ratio to one process, recipe's threads / one thread (per round) | "
          "training satisfaction | held-out |")
    print("|---|---|---|---|---|")
    recipe, single = results[setups[0][0]], results[setups[1][0]]
    for label, _, _ in setups:
        runs = results[label]
        ratios = [[m["steps_per_s"] / b["steps_per_s"] for m, b in zip(runs, base, strict=True)]
                  for base in (recipe, single)]
        print(f"| {label} | {statistics.median(m['steps_per_s'] for m in runs):.1f} | "
              + " / ".join(f"{', '.join(f'{x:.2f}' for x in rs)} (median {statistics.median(rs):.2f})"
                           for rs in ratios)
              + f" | {statistics.fmean(m['satisfaction'] for m in runs):.3f} | "
              f"{statistics.fmean(m['heldout'] for m in runs):.3f} |")
    shutil.rmtree(tmp, ignore_errors=True)


PEAK = """import os, resource, runpy, sys
import lmpo.cli, lmpo.train.trainer, transformers, peft  # the libraries, before training
base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
sys.argv = ["lmpo", *sys.argv[1:]]
try:
    runpy.run_module("lmpo", run_name="__main__")
except SystemExit as e:
    if e.code:
        raise
print(f"PEAK_KIB {os.environ.get('RANK', '0')} {base} {resource.getrusage(resource.RUSAGE_SELF).ru_maxrss}")
"""


def peak_memory(args: list[str], processes: int = 1) -> list[tuple[float, float]]:
    """``lmpo ARGS`` in a process of its own (or ``processes`` under torchrun): each one's peak resident memory and
    the rise over its memory once its libraries were imported, in MiB, in rank order."""
    script = Path(tempfile.mkdtemp(prefix="lmpo-peak-")) / "peak.py"
    script.write_text(PEAK)
    launch = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={processes}"]
    proc = subprocess.run([*(launch if processes > 1 else [sys.executable]), str(script), *args], cwd=ROOT,
                          capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(ROOT)})
    if proc.returncode:
        raise SystemExit(f"failed: lmpo {' '.join(args)}\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}")
    out = {}
    for part in proc.stdout.split("PEAK_KIB ")[1:]:
        rank, base, peak = (int(x) for x in part.split()[:3])
        out[rank] = (peak / 1024, (peak - base) / 1024)
    return [out[r] for r in sorted(out)]


def fsdp(args: argparse.Namespace) -> None:
    """Part ``fsdp``: each process's memory, DDP against FSDP."""
    from transformers import AutoModelForCausalLM

    from tests.conftest import chatml_gpt2

    tmp = Path(tempfile.mkdtemp(prefix="lmpo-fsdp-"))
    chatml_gpt2(tmp / "model", args.width, args.layers, heads=8, vocab_size=2000)
    n_params = sum(p.numel() for p in AutoModelForCausalLM.from_pretrained(tmp / "model").parameters())
    print(f"GPT-2, {args.layers} layers of width {args.width}: {n_params / 1e6:.1f} M parameters; "
          f"{args.processes} processes")
    common = ["train", "configs/prompts-example.yaml", "train.progress=false", "policy.kind=hf",
              f"train.runs_dir={tmp}", f"policy.path={tmp / 'model'}", "text.pretrain.epochs=0", "text.eval_samples=1",
              "text.eval_conversations=8", "text.conversations_per_update=8", "train.threads=1",
              f"train.total_steps={args.fsdp_steps}", "algo={name: ppo, lr: 0.00002, epochs: 2, batch_size: 16, "
              "advantage: {estimator: returns, gamma: 1.0, baseline: group, group_std: false, whiten: false}}"]
    print("\n| setup | peak RSS per process, ranks 0, 1, ... (MiB) | rise over libraries (MiB) | replies/s |")
    print("|---|---|---|---|")
    lora = ["policy.lora={r: 16, alpha: 32}", "algo.lr=0.0005"]
    setups = {"DDP": [], "FSDP (train.fsdp)": ["train.fsdp=true"], "DDP, LoRA r=16": lora,
              "FSDP, LoRA r=16": ["train.fsdp=true", *lora]}
    peak: dict[str, float] = {}
    for i, (label, extra) in enumerate(setups.items()):
        peaks = peak_memory([*common, f"name=run{i}", *extra], args.processes)
        peak[label] = max(p for p, _ in peaks)
        print(f"| {label} | {', '.join(f'{p:.0f}' for p, _ in peaks)} | {', '.join(f'{r:.0f}' for _, r in peaks)} | "
              f"{measure(tmp / f'run{i}')['steps_per_s']:.2f} |")
    print(f"\npeak of the larger process: FSDP / DDP {peak['FSDP (train.fsdp)'] / peak['DDP']:.2f}x; with LoRA, "
          f"FSDP / DDP {peak['FSDP, LoRA r=16'] / peak['DDP, LoRA r=16']:.2f}x; FSDP with LoRA / DDP without "
          f"{peak['FSDP, LoRA r=16'] / peak['DDP']:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)


def lora(args: argparse.Namespace) -> None:
    """Part ``lora``: PPO with LoRA and the shared reference against full fine-tuning with a reference copy."""
    from transformers import AutoModelForCausalLM

    from tests.conftest import chatml_gpt2

    tmp = Path(tempfile.mkdtemp(prefix="lmpo-lora-"))
    chatml_gpt2(tmp / "model", args.width, args.layers, heads=8, vocab_size=2000)
    model = AutoModelForCausalLM.from_pretrained(tmp / "model")
    n_params = sum(p.numel() for p in model.parameters())
    print(f"GPT-2, {args.layers} layers of width {args.width}: {n_params / 1e6:.1f} M parameters")
    # evaluation on 16 prompts (2 samples each) and 8 x 4 conversations per update: the KV caches of generation stay
    # below the weights (a batch of 324 evaluation replies' caches outweighs a 60 M model's weights several times)
    common = ["configs/prompts-example.yaml", "train.progress=false", "policy.kind=hf", f"train.runs_dir={tmp}",
              "text.eval_samples=2", "text.eval_conversations=16", "text.conversations_per_update=8", "train.threads=2"]
    start = time.perf_counter()
    lmpo(["train", *common, f"policy.path={tmp / 'model'}", "name=sft", "text.pretrain.lr=0.001",
          f"text.pretrain.epochs={args.sft_epochs}", "train.total_steps=64"])
    print(f"fine-tuned by pre-training in {time.perf_counter() - start:.0f} s")
    ppo = ("algo={name: ppo, lr: LR, epochs: 2, batch_size: 16, max_grad_norm: 1.0, advantage: {estimator: returns, "
           "gamma: 1.0, baseline: group, group_std: false, whiten: false}}")
    setups = [("full fine-tuning, reference copy", [ppo.replace("LR", "0.00002")]),
              ("LoRA r=16, reference = adapters off", [ppo.replace("LR", "0.0005"), "policy.lora={r: 16, alpha: 32}"])]
    print("\n| setup | trained parameters | peak RSS (MiB) | rise over libraries (MiB) | training return, first -> "
          "last 5 updates | sampled reward before -> after, train | held-out | time |")
    print("|---|---|---|---|---|---|---|---|")
    peaks = []
    for i, (label, extra) in enumerate(setups):
        start = time.perf_counter()
        [(peak, rise)] = peak_memory(["train", *common, f"policy.path={tmp / 'sft' / 'hf'}", f"name=run{i}",
                                  "text.pretrain.epochs=0", f"train.total_steps={args.lora_steps}",
                                  "policy.gradient_checkpointing=true", *extra])
        peaks.append((peak, rise))
        records = read_metrics(tmp / f"run{i}")
        before, after = records[0], records[-1]
        trained = before["model/trainable_parameters"]
        returns = [r["charts/episode_return"] for r in records if r.get("iteration", 0) > 0 and not r.get("final")]
        print(f"| {label} | {trained / 1e6:.2f} M | {peak:.0f} | {rise:.0f} | "
              f"{statistics.fmean(returns[:5]):.3f} -> {statistics.fmean(returns[-5:]):.3f} | "
              f"{before['eval/train_sampled_reward']:.3f} -> {after['eval/train_sampled_reward']:.3f} | "
              f"{before['eval/heldout_sampled_reward']:.3f} -> {after['eval/heldout_sampled_reward']:.3f} | "
              f"{time.perf_counter() - start:.0f} s |")
    print(f"\nLoRA / full fine-tuning: peak {peaks[1][0] / peaks[0][0]:.2f}x, rise {peaks[1][1] / peaks[0][1]:.2f}x")
    shutil.rmtree(tmp, ignore_errors=True)


def matmul_peak(threads: int, n: int = 2048, repeats: int = 10) -> float:
    """The machine's measured float32 matmul rate (FLOP/s) on ``threads`` threads: the best of ``repeats``."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best


def mfu(args: argparse.Namespace) -> None:
    """Part ``mfu``: the model FLOP utilisation of the main job's update step against the measured matmul peak.

    The update's FLOPs are counted by ``torch.utils.flop_counter.FlopCounterMode`` (matmuls and attention, forward
    and backward, as executed: padding included) on the very rollout whose update was timed, from the same state."""
    import copy

    import torch
    from torch.utils.flop_counter import FlopCounterMode

    from lmpo.cli import load_recipe, resolve_recipe
    from lmpo.train.trainer import Trainer

    tmp = Path(tempfile.mkdtemp(prefix="lmpo-mfu-"))
    cfg = load_recipe(resolve_recipe(args.recipe), ["train.progress=false", f"train.runs_dir={tmp}",
                                                    "text.pretrain.epochs=2", *args.overrides])
    trainer = Trainer(cfg)
    threads = torch.get_num_threads()
    peak = matmul_peak(threads)
    torch.set_num_threads(threads)
    print(f"float32 matmul peak, {threads} threads: {peak / 1e9:.1f} GFLOP/s")
    rows = []
    for _ in range(args.updates):
        trainer.policy.eval()
        rollout, _ = trainer._collect()
        saved = (copy.deepcopy(trainer.policy.state_dict()), copy.deepcopy(trainer.algo.state_dict()))
        start = time.perf_counter()
        trainer.learn(rollout, 0.0)
        seconds = time.perf_counter() - start
        trainer.policy.load_state_dict(saved[0])
        trainer.algo.load_state_dict(saved[1])
        with FlopCounterMode(display=False) as counter:
            metrics = trainer.learn(rollout, 0.0)  # the same work again, counted (the state goes on from here)
        flops = counter.get_total_flops()
        rows.append((rollout.batch_size, metrics.get("charts/minibatch_steps", 1.0), flops, seconds))
        print(f"update of {rollout.batch_size} replies, {metrics.get('charts/minibatch_steps', 1):.0f} steps: "
              f"{flops / 1e9:.1f} GFLOP in {seconds:.2f} s = {flops / seconds / 1e9:.1f} GFLOP/s, "
              f"MFU {flops / seconds / peak:.1%}")
    total_flops, total_s = sum(r[2] for r in rows), sum(r[3] for r in rows)
    print(f"\n| model | update steps | GFLOP/s | float32 matmul peak | MFU |\n|---|---|---|---|---|\n"
          f"| {args.recipe}: {sum(p.numel() for p in trainer.policy.parameters()) / 1e6:.2f} M parameters | "
          f"{sum(r[1] for r in rows):.0f} over {len(rows)} updates | {total_flops / total_s / 1e9:.1f} | "
          f"{peak / 1e9:.1f} GFLOP/s ({threads} threads) | {total_flops / total_s / peak:.1%} |")
    trainer.close()
    shutil.rmtree(tmp, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--part", choices=["ddp", "lora", "fsdp", "mfu"], default="ddp")
    parser.add_argument("--recipe", default="support")
    parser.add_argument("--steps", type=int, default=1000, help="ddp: replies (environment steps) of RL per setup")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("--width", type=int, default=1024, help="lora, fsdp: the GPT-2's width")
    parser.add_argument("--layers", type=int, default=8, help="lora, fsdp: the GPT-2's layers")
    parser.add_argument("--lora-steps", type=int, default=640, help="lora: replies of PPO per setup")
    parser.add_argument("--sft-epochs", type=int, default=1, help="lora: epochs of pre-training before PPO")
    parser.add_argument("--fsdp-steps", type=int, default=64, help="fsdp: replies of PPO per setup")
    parser.add_argument("--updates", type=int, default=3, help="mfu: updates measured")
    parser.add_argument("overrides", nargs="*", help="ddp, mfu: more overrides for every run")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores")
    {"ddp": ddp, "lora": lora, "fsdp": fsdp, "mfu": mfu}[args.part](args)


if __name__ == "__main__":
    main()
