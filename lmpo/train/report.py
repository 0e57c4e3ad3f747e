"""The evaluation table and a sample conversation of a text run, printed with rich."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

if TYPE_CHECKING:
    from lmpo.policies.lm import LMPolicy
    from lmpo.train.text_task import TextTask

SPLITS = {"train": "training examples", "heldout": "held-out", "heldout_phrasings": "held-out, held-out phrasings"}
METRICS = [  # (label, key after "eval/<split>_", format)
    ("mean reward per reply (greedy)", "reward", "{:.3f}"),
    ("mean reward per reply (sampled)", "sampled_reward", "{:.3f}"),
    ("satisfaction (greedy)", "satisfaction", "{:.3f}"),
    ("satisfaction (sampled)", "sampled_satisfaction", "{:.3f}"),
    ("task completion (greedy)", "completed", "{:.3f}"),
    ("task completion (sampled)", "sampled_completed", "{:.3f}"),
    ("answer accuracy (greedy)", "correct", "{:.3f}"),
    ("lookups per answer", "turn_lookups", "{:.2f}"),
    ("mean return per conversation", "return", "{:.3f}"),
    ("mean turns", "turns", "{:.2f}"),
    ("mean reply words", "words", "{:.1f}"),
    ("mean reply tokens (greedy)", "reply_tokens", "{:.1f}"),
    ("mean reply tokens (sampled)", "sampled_reply_tokens", "{:.1f}"),
    ("distinct-2 (greedy)", "distinct2", "{:.3f}"),
    ("distinct-2 (sampled)", "sampled_distinct2", "{:.3f}"),
    ("KL to reference (sampled, per token)", "kl_ref", "{:.4f}"),
    ("reference perplexity of replies (sampled)", "sampled_ref_ppl", "{:.1f}"),
]
GLOBAL = [("held-out perplexity", "eval/heldout_ppl", "{:.1f}")]


def _cell(fmt: str, value: float) -> str:
    """The formatted value, without the sign of an estimate that rounds to zero ("-0.0000")."""
    text = fmt.format(value)
    return text[1:] if text.startswith("-") and float(text) == 0 else text


def splits_of(columns: dict[str, dict[str, float]]) -> list[str]:
    """The splits evaluated, in the order the table shows them."""
    found = {k.split("/", 1)[1].rsplit("_reward", 1)[0] for c in columns.values() for k in c
             if k.startswith("eval/") and k.endswith("_reward") and "_sampled" not in k and "rewards/" not in k}
    return sorted(found, key=lambda s: (list(SPLITS).index(s) if s in SPLITS else len(SPLITS), s))


def print_eval_table(columns: dict[str, dict[str, float]], title: str = "evaluation") -> None:
    """One row per metric, grouped by split; one column per evaluation (e.g. before / after RL)."""
    table = Table(title=title)
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    for split in splits_of(columns):
        table.add_section()
        table.add_row(f"[bold]{SPLITS.get(split, split)}[/bold]", *([""] * len(columns)))
        for label, key, fmt in METRICS:
            full = f"eval/{split}_{key}"
            if any(full in c for c in columns.values()):
                table.add_row(f"  {label}", *(_cell(fmt, c[full]) if full in c else "-" for c in columns.values()))
    table.add_section()
    for label, key, fmt in GLOBAL:
        if any(key in c for c in columns.values()):
            table.add_row(label, *(_cell(fmt, c[key]) if key in c else "-" for c in columns.values()))
    Console().print(table)


def print_transcript(task: TextTask, policy: LMPolicy, index: int = 0) -> None:
    """A held-out conversation (greedy replies) as a transcript: the user's lines, the bot's replies with the
    user's verdicts, and the tool's results of the bot's lookups."""
    split = "heldout" if task.eval_examples("heldout") else "train"
    conversation = task.converse(policy, task.eval_examples(split)[index], task.sampling.as_greedy())
    console = Console()
    console.print(f"[bold]sample conversation[/bold] ({SPLITS[split]} example)")
    for turn, info in conversation:
        who = {"user": "user", "assistant": "bot ", "tool": "tool"}[turn.role]
        console.print(f"  {who}: {escape(turn.content)}{_verdict(info)}")


def _verdict(info: dict[str, Any]) -> str:
    verdict = info.get("verdict")
    if verdict is None:
        return ""
    word = {1.0: "satisfied", 0.5: "neutral", 0.0: "unsatisfied"}.get(float(verdict), f"{verdict:.2f}")
    return f"  [dim]({word})[/dim]"
