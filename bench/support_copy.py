"""How well a Support-v0 run copies what it looked up: on held-out customers, the share of sampled answers given
after exactly one lookup that state the asked value correctly. This is what limits RL on the shop
(docs/benchmarks.md): a lookup only pays if the value is copied right.

    python bench/support_copy.py RUN_DIR [--reference] [--customers 200] [--samples 6] [--seed 0]

``--reference``: measure the pre-trained model (``reference.safetensors``) instead of the final one; a run of
``lmpo train support train.total_steps=1`` is then a probe of pre-training alone.
"""

from __future__ import annotations

import argparse
from collections import Counter
from pathlib import Path

import torch

from lmpo.api import load_run
from lmpo.policies.base import load_weights


def copy_accuracy(run_dir: Path, reference: bool, customers: int, samples: int, seed: int) -> tuple[float, int]:
    """P(correct | exactly one lookup) over sampled held-out conversations, and the number of such answers."""
    task, policy, _ = load_run(run_dir)
    if reference:
        load_weights(policy, run_dir / "reference.safetensors")
    torch.manual_seed(seed)
    _, _, played = task.play(policy, task.env.examples("heldout")[:customers], None, None, samples)
    counts = Counter(r.info["correct"] for r in played.replies
                     if r.info.get("verdict") is not None and r.info.get("turn_lookups") == 1)
    n = sum(counts.values())
    return (counts[1.0] / n if n else float("nan")), n


def main() -> None:
    """Print the copy accuracy of one run."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", type=Path)
    ap.add_argument("--reference", action="store_true", help="the pre-trained model, not the final one")
    ap.add_argument("--customers", type=int, default=200)
    ap.add_argument("--samples", type=int, default=6)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    acc, n = copy_accuracy(args.run_dir, args.reference, args.customers, args.samples, args.seed)
    which = "pre-trained" if args.reference else "final"
    print(f"{args.run_dir} ({which}): P(correct | one lookup), sampled = {acc:.3f} over {n} answers")


if __name__ == "__main__":
    main()
