"""Data-parallel training under torchrun against one process, side by side in one run: the RL phase of a recipe
(the main job by default) from one pre-trained model, the same global batch and total work.

1. ``lmpo pretrain RECIPE`` once (not timed); every setup resumes a copy of that run for ``--steps`` replies.
2. Setups: one process with the recipe's threads (``train.threads``, 2 in the main job), one process with one
   thread, and ``--processes`` processes under ``torchrun`` (each capped to its share of the cores). They run in
   turn, ``--rounds`` times (a shared machine's speed drifts within minutes: each round compares back-to-back runs).
3. Throughput: replies (environment steps) per second of rollout + update (the trainer's ``time/collect_s`` and
   ``time/update_s``; evaluation and start-up excluded), medians over rounds, and each round's ratio to one process.
   The learning curve beside it: the mean training satisfaction per update and the final greedy held-out
   satisfaction.

    python bench/scale.py [--recipe support] [--steps 1000] [--rounds 2] [--processes 2] [overrides ...]
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--recipe", default="support")
    parser.add_argument("--steps", type=int, default=1000, help="replies (environment steps) of RL per setup")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--processes", type=int, default=2)
    parser.add_argument("overrides", nargs="*", help="more overrides for every run")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}, {os.cpu_count()} cores")
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
    base = setups[0][0]
    print(f"\n| setup | replies/s (median) | ratio to '{base}' per round | training satisfaction | held-out |")
    print("|---|---|---|---|---|")
    for label, _, _ in setups:
        runs = results[label]
        ratios = [m["steps_per_s"] / b["steps_per_s"] for m, b in zip(runs, results[base], strict=True)]
        print(f"| {label} | {statistics.median(m['steps_per_s'] for m in runs):.1f} | "
              f"{', '.join(f'{x:.2f}' for x in ratios)} (median {statistics.median(ratios):.2f}) | "
              f"{statistics.fmean(m['satisfaction'] for m in runs):.3f} | "
              f"{statistics.fmean(m['heldout'] for m in runs):.3f} |")
    shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    main()
