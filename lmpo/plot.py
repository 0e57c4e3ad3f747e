"""``lmpo plot``: learning curves of a run as one PNG.

Control runs: return, losses, KL, entropy and steps per second against environment steps. Text runs (a
``config.yaml`` with a ``text`` section): reward and its components, satisfaction, KL to the reference, reply
length, evaluations over training and losses against replies played, with the pre-training numbers in the title.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from lmpo.config import ConfigError
from lmpo.train.logging import read_metrics

if TYPE_CHECKING:
    from matplotlib.figure import Figure

PANELS = [  # control runs: (title, y label, keys), all six always drawn
    ("return", "episode return", ["charts/episode_return", "eval/mean_return"]),
    ("policy loss", "loss", ["losses/policy"]),
    ("value loss", "loss", ["losses/value"]),
    ("KL", "KL per step", ["charts/approx_kl", "trpo/kl"]),
    ("entropy", "nats per step", ["losses/entropy"]),
    ("steps per second", "environment steps / s", ["charts/sps"]),
]
TEXT_PANELS = [  # text runs, training curves: (title, y label, keys); "rewards/*" is filled in from the records
    ("reward", "mean reward per reply", ["charts/episode_return", "rewards/*"]),
    ("satisfaction and success", "share of replies", ["charts/satisfaction", "charts/completed", "charts/correct"]),
    ("KL (to reference, per update)", "KL per token", ["charts/kl_ref", "charts/approx_kl", "trpo/kl"]),
    ("KL coefficient", "kl_coef (β)", ["charts/kl_coef"]),
    ("reply length", "words / tokens per reply", ["charts/words", "charts/reply_tokens"]),
    ("turns and lookups", "turns / lookups per answer", ["charts/turns", "charts/turn_lookups"]),
]
TEXT_EVAL_PANELS = [  # text runs, evaluations (greedy and sampled replies per split): (title, y label, metric)
    ("evaluation: reward (x=0: before RL)", "mean reward per reply", "reward"),
    ("evaluation: satisfaction (x=0: before RL)", "share of replies", "satisfaction"),
    ("evaluation: task completion (x=0: before RL)", "share of replies", "completed"),
]
TEXT_LOSS_PANELS = [
    ("policy and value loss", "loss", ["losses/policy", "losses/value"]),
    ("entropy", "nats per token", ["losses/entropy"]),
]
SPLIT_ORDER = ["train", "heldout", "heldout_phrasings"]
PRETRAIN = [("loss", "pretrain/loss"), ("train ppl", "pretrain/train_ppl"), ("held-out ppl", "pretrain/heldout_ppl")]


@dataclass
class Line:
    """One curve of a panel: its legend label, its points and its matplotlib style (markers for evaluations)."""

    label: str
    xs: list[float]
    ys: list[float]
    style: dict[str, Any] = field(default_factory=dict)


@dataclass
class Panel:
    """One axes of the figure."""

    title: str
    ylabel: str
    lines: list[Line]


def short(key: str) -> str:
    """A legend label: the key without its ``charts/``, ``rewards/``, ``eval/`` or ``losses/`` prefix."""
    for prefix in ("charts/", "rewards/", "eval/", "losses/"):
        if key.startswith(prefix):
            return key[len(prefix):]
    return key


def is_text_run(run_dir: Path) -> bool:
    """Whether the run's ``config.yaml`` has a non-null ``text`` section (read as plain YAML)."""
    path = run_dir / "config.yaml"
    if not path.is_file():
        return False
    try:
        cfg = yaml.safe_load(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, yaml.YAMLError) as e:
        raise ConfigError(f"{path}: not a valid run config ({type(e).__name__})") from None
    return isinstance(cfg, dict) and cfg.get("text") is not None


def series(records: list[tuple[float, dict[str, Any]]], key: str, **style: Any) -> Line | None:
    """The points of ``key`` over ``(x, record)`` pairs, or None when no record has it."""
    pts = [(x, float(r[key])) for x, r in records if isinstance(r.get(key), int | float)]
    if not pts:
        return None
    if key.startswith("eval/"):  # evaluations are sparse: show each one
        style.setdefault("marker", "o")
    return Line(short(key), [x for x, _ in pts], [y for _, y in pts], style)


def panels_from(records: list[tuple[float, dict[str, Any]]], specs: list[tuple[str, str, list[str]]],
                keep_empty: bool = False) -> list[Panel]:
    """One panel per spec with a curve per key present; ``rewards/*`` expands to every reward component."""
    components = sorted({k for _, r in records for k in r if k.startswith("rewards/")})
    panels = []
    for title, ylabel, keys in specs:
        expanded = [c for k in keys for c in (components if k == "rewards/*" else [k])]
        bold = {k: 2.0 if k == "charts/episode_return" else 1.2 for k in expanded}  # the total over its parts
        lines = [ln for k in expanded if (ln := series(records, k, linewidth=bold[k]))]
        if lines or keep_empty:
            panels.append(Panel(title, ylabel, lines))
    return panels


def eval_points(records: list[dict[str, Any]]) -> list[tuple[float, dict[str, Any]]]:
    """Records with evaluation keys at their x: the first (before RL) at 0, the final one at the last update."""
    last = 0.0
    out: list[tuple[float, dict[str, Any]]] = []
    for r in records:
        last = float(r.get("env_steps", last))
        if any(k.startswith("eval/") for k in r):
            out.append((last, r))
    return out


def splits_of(records: list[tuple[float, dict[str, Any]]]) -> list[str]:
    """The evaluated splits (``eval/<split>_reward``), train / heldout / heldout_phrasings first."""
    found = {k[len("eval/"):-len("_reward")] for _, r in records for k in r
             if k.startswith("eval/") and k.endswith("_reward") and not k.endswith("_sampled_reward")
             and "rewards/" not in k}
    return sorted(found, key=lambda s: (SPLIT_ORDER.index(s) if s in SPLIT_ORDER else len(SPLIT_ORDER), s))


def eval_panels(records: list[dict[str, Any]]) -> list[Panel]:
    """Greedy (solid) and sampled (dashed) evaluation curves per split, one colour per split."""
    points = eval_points(records)
    panels = []
    for title, ylabel, metric in TEXT_EVAL_PANELS:
        lines = []
        for infix, style, marker in (("", "-", "o"), ("sampled_", "--", "s")):  # legend columns: greedy | sampled
            for i, split in enumerate(splits_of(points)):
                ln = series(points, f"eval/{split}_{infix}{metric}", color=f"C{i}", linestyle=style, marker=marker)
                if ln:
                    lines.append(ln)
        if lines:
            panels.append(Panel(title, ylabel, lines))
    return panels


def pretrain_summary(records: list[dict[str, Any]]) -> str:
    """``pre-training: loss 0.37, train ppl 1.42, held-out ppl 1.93`` from the first record, or ''."""
    first = records[0] if records else {}
    parts = [f"{name} {first[key]:.3g}" for name, key in PRETRAIN if isinstance(first.get(key), int | float)]
    return "pre-training: " + ", ".join(parts) if parts else ""


def run_figure(run_dir: Path) -> Figure:
    """The run's figure (not saved): a grid of the panels it has data for."""
    if not (run_dir / "metrics.jsonl").is_file():
        raise ConfigError(f"no metrics.jsonl in {run_dir}")
    records = read_metrics(run_dir)
    updates = [(float(r["env_steps"]), r) for r in records if "env_steps" in r]
    if not updates:
        raise ConfigError(f"{run_dir}/metrics.jsonl has no updates yet")
    if is_text_run(run_dir):
        panels = panels_from(updates, TEXT_PANELS) + eval_panels(records) + panels_from(updates, TEXT_LOSS_PANELS)
        xlabel, subtitle = "replies", pretrain_summary(records)
    else:  # control runs: the six panels as always, evaluations only from update records
        panels, xlabel, subtitle = panels_from(updates, PANELS, keep_empty=True), "environment steps", ""
    return draw(panels, xlabel, f"{run_dir.name}\n{subtitle}" if subtitle else run_dir.name)


def draw(panels: list[Panel], xlabel: str, title: str) -> Figure:
    """Panels in a grid of about square shape (unused cells removed), every axes titled and labelled."""
    from matplotlib.figure import Figure

    ncols = math.ceil(math.sqrt(len(panels)))
    nrows = math.ceil(len(panels) / ncols)
    fig = Figure(figsize=(5 * ncols, 3.6 * nrows + 0.6), layout="constrained")
    axes = list(fig.subplots(nrows, ncols, squeeze=False).flat)
    for ax, panel in zip(axes, panels):
        for ln in panel.lines:
            style = {"markersize": 4, **ln.style}
            if len(ln.xs) == 1:  # a single point would not show as a line
                style.setdefault("marker", "o")
            ax.plot(ln.xs, ln.ys, label=ln.label, **style)
        ax.set_title(panel.title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(panel.ylabel)
        ax.grid(alpha=0.3)
        if len(ax.lines) > 4:  # e.g. greedy and sampled per split: below the axes, where it hides no curve
            ax.legend(fontsize=7, ncols=2, loc="upper center", bbox_to_anchor=(0.5, -0.2))
        elif ax.lines:
            ax.legend(fontsize=8)
    for ax in axes[len(panels):]:
        fig.delaxes(ax)
    fig.suptitle(title)
    return fig


def plot_run(run_dir: Path, output: Path | None = None) -> Path:
    """Draw every panel that the run has data for; returns the PNG path."""
    fig = run_figure(run_dir)
    out = output or run_dir / "curves.png"
    try:
        fig.savefig(out, dpi=100)
    except OSError as e:
        raise ConfigError(f"cannot write {out}: {e.strerror or e}") from None
    except ValueError as e:  # an extension matplotlib does not write
        raise ConfigError(f"cannot write {out}: {e}") from None
    return out
