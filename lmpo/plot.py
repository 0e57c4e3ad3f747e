"""``lmpo plot``: learning curves of a run as one PNG (return, losses, KL, entropy)."""

from __future__ import annotations

from pathlib import Path

from lmpo.config import ConfigError
from lmpo.train.logging import read_metrics

PANELS = [
    ("return", ["charts/episode_return", "eval/mean_return"]),
    ("policy loss", ["losses/policy"]),
    ("value loss", ["losses/value"]),
    ("KL", ["charts/approx_kl", "trpo/kl"]),
    ("entropy", ["losses/entropy"]),
    ("steps per second", ["charts/sps"]),
]


def plot_run(run_dir: Path, output: Path | None = None) -> Path:
    """Draw every panel that the run has data for; returns the PNG path."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    if not (run_dir / "metrics.jsonl").is_file():
        raise ConfigError(f"no metrics.jsonl in {run_dir}")
    records = [r for r in read_metrics(run_dir) if "env_steps" in r]
    if not records:
        raise ConfigError(f"{run_dir}/metrics.jsonl has no updates yet")
    fig, axes = plt.subplots(2, 3, figsize=(15, 8))
    for ax, (title, keys) in zip(axes.flat, PANELS, strict=True):
        for key in keys:
            pts = [(r["env_steps"], r[key]) for r in records if key in r]
            if pts:
                xs, ys = zip(*pts, strict=True)
                ax.plot(xs, ys, label=key, marker="o" if key.startswith("eval/") else None, markersize=3)
        ax.set_title(title)
        ax.set_xlabel("environment steps")
        ax.grid(alpha=0.3)
        if ax.lines:
            ax.legend(fontsize=8)
    fig.suptitle(run_dir.name)
    fig.tight_layout()
    out = output or run_dir / "curves.png"
    fig.savefig(out, dpi=100)
    plt.close(fig)
    return out
