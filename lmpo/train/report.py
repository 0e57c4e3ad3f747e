"""The evaluation table of a dialogue run, printed with rich."""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

if TYPE_CHECKING:
    from lmpo.policies.lm import LMPolicy
    from lmpo.train.chat_task import ChatTask

ROWS = [
    ("satisfaction (train)", "eval/train_satisfaction", "{:.3f}"),
    ("satisfaction (held-out)", "eval/heldout_satisfaction", "{:.3f}"),
    ("satisfaction (train, sampled)", "eval/train_sampled_satisfaction", "{:.3f}"),
    ("mean reward (train)", "eval/train_reward", "{:.3f}"),
    ("mean reward (held-out)", "eval/heldout_reward", "{:.3f}"),
    ("mean turns (train)", "eval/train_turns", "{:.2f}"),
    ("mean turns (held-out)", "eval/heldout_turns", "{:.2f}"),
    ("held-out perplexity", "eval/heldout_ppl", "{:.1f}"),
    ("distinct-2 (train)", "eval/train_distinct2", "{:.3f}"),
    ("mean reply tokens (train)", "eval/train_reply_tokens", "{:.1f}"),
    ("KL to reference (per token)", "eval/kl_ref", "{:.4f}"),
]


def _cell(fmt: str, value: float) -> str:
    """The formatted value, without the sign of an estimate that rounds to zero ("-0.0000")."""
    text = fmt.format(value)
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def print_eval_table(columns: dict[str, dict[str, float]], title: str = "evaluation") -> None:
    """One row per metric, one column per evaluation (e.g. before / after RL)."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    for label, key, fmt in ROWS:
        table.add_row(label, *(_cell(fmt, c[key]) if key in c else "-" for c in columns.values()))
    Console().print(table)


def print_transcript(task: ChatTask, policy: LMPolicy, index: int = 0) -> None:
    """A sample conversation (greedy replies) from a held-out opening line, or a training one."""
    dialogues = task.heldout or task.train
    conversation = task.converse(policy, dialogues[index], task.sampling.as_greedy())
    console = Console()
    console.print("[bold]sample conversation[/bold] (held-out opening)" if task.heldout else "[bold]sample[/bold]")
    for turn, verdict in conversation:
        who = "user" if turn.role == "user" else "bot "
        note = f"  [dim]({verdict})[/dim]" if verdict else ""
        console.print(f"  {who}: {turn.content}{note}")
