"""The sentiment demonstration (configs/sentiment.yaml) with REINFORCE, TRPO and PPO: the issue's targets.

For each algorithm, one run of the recipe (pre-training, then RL against VADER's compound score minus the KL
penalty), and on the held-out user lines, before and after RL: the mean VADER compound of sampled and greedy replies,
the reference model's perplexity of the sampled replies, and distinct-2. Target: the compound rises by at least 0.4
while the perplexity stays within 2x and distinct-2 within 0.8x of the pre-trained model's.

    python bench/sentiment.py [--algos ppo,reinforce,trpo] [--runs-dir /tmp/sentiment] [key=value ...]
"""

from __future__ import annotations

import argparse
import platform
import subprocess
import time
from pathlib import Path

from lmpo.cli import main as lmpo
from lmpo.train.logging import read_metrics

ALGOS = {  # overrides per algorithm; PPO is the recipe's own
    "ppo": [],
    "reinforce": ["algo={name: reinforce, lr: 0.00025, ent_coef: 0.01, max_grad_norm: 1.0, advantage: {estimator: "
                  "returns, gamma: 1.0, baseline: group, group_std: true, whiten: false}}", "text.kl.coef=0.06",
                  "train.total_steps=25600"],
    "trpo": ["algo={name: trpo, max_kl: 0.02, advantage: {estimator: returns, gamma: 1.0, baseline: group, "
             "group_std: true, whiten: false}}", "text.kl.coef=0.1"],
}
ROWS = [("VADER compound, sampled", "sampled_reward"), ("VADER compound, greedy", "reward"),
        ("reference perplexity of replies, sampled", "sampled_ref_ppl"), ("distinct-2, sampled", "sampled_distinct2"),
        ("distinct-2, greedy", "distinct2"), ("KL to reference, per token", "kl_ref")]


def cpu_model() -> str:
    """The CPU's model name (lscpu), for the record."""
    try:
        out = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        return platform.processor() or "unknown CPU"
    return next((ln.split(":", 1)[1].strip() for ln in out.splitlines() if ln.startswith("Model name")), "unknown")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--algos", default="ppo,reinforce,trpo")
    parser.add_argument("--runs-dir", default="/tmp/lmpo-sentiment")
    parser.add_argument("overrides", nargs="*", help="more overrides for every run (train.total_steps=...)")
    args = parser.parse_args()
    print(f"CPU: {cpu_model()}")
    for algo in args.algos.split(","):
        start = time.perf_counter()
        name = f"sentiment-{algo}-{int(time.time())}"
        code = lmpo(["train", "sentiment", *ALGOS[algo], f"train.runs_dir={args.runs_dir}", f"name={name}",
                     "train.progress=false", *args.overrides])
        if code:
            raise SystemExit(code)
        records = read_metrics(Path(args.runs_dir) / name)
        before, after = records[0], records[-1]
        print(f"\n{algo}: {time.perf_counter() - start:.0f} s, run {args.runs_dir}/{name}")
        print(f"  {'held-out user lines':44s} {'before':>8s} {'after':>8s}")
        for label, key in ROWS:
            b, a = before.get(f"eval/heldout_{key}", float("nan")), after[f"eval/heldout_{key}"]
            print(f"  {label:44s} {b:8.3f} {a:8.3f}")
        rise = {d: after[f"eval/heldout_{k}"] - before[f"eval/heldout_{k}"]
                for d, k in (("sampled", "sampled_reward"), ("greedy", "reward"))}
        ppl = after["eval/heldout_sampled_ref_ppl"] / before["eval/heldout_sampled_ref_ppl"]
        d2 = after["eval/heldout_sampled_distinct2"] / before["eval/heldout_sampled_distinct2"]
        held = rise["sampled"] >= 0.4 and ppl <= 2 and d2 >= 0.8
        print(f"  compound rise: sampled {rise['sampled']:+.3f}, greedy {rise['greedy']:+.3f}; perplexity x{ppl:.2f}; "
              f"distinct-2 (sampled) x{d2:.2f} -> target (sampled rise >= 0.4, ppl <= 2x, distinct-2 >= 0.8x): "
              f"{'met' if held else 'NOT met'}")


if __name__ == "__main__":
    main()
