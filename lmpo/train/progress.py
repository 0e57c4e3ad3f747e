"""Live progress: a bar over environment steps (training, pre-training) and a status line for phases made
of parts (evaluation)."""

from __future__ import annotations

from types import TracebackType
from typing import Self

from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    SpinnerColumn,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


class _Live:
    """Starts and stops ``self.progress`` (a rich ``Progress``) as a context manager."""

    progress: Progress

    def __enter__(self) -> Self:
        self.progress.start()
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()


class TrainingProgress(_Live):
    """Context manager around a rich progress bar; silent when ``enabled`` is False."""

    def __init__(self, total: int, done: int, enabled: bool = True, label: str = "train") -> None:
        self.progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
        )
        self.task = self.progress.add_task("train", total=total, completed=done, info="")

    def update(self, done: int, episode_return: float | None, eval_return: float | None, info: str = "") -> None:
        """Move the bar to ``done`` steps and show the latest returns (or ``info``)."""
        if episode_return is not None:
            info += f"return {episode_return:8.2f}"
        if eval_return is not None:
            info += f"  eval {eval_return:8.2f}"
        self.progress.update(self.task, completed=done, info=info)


class PhaseStatus(_Live):
    """A spinner with the phase's current part and the time spent (``part`` is the ``report`` callback
    of ``Task.evaluate``); silent when ``enabled`` is False."""

    def __init__(self, label: str, enabled: bool = True) -> None:
        self.progress = Progress(SpinnerColumn(), TextColumn(f"[bold]{label}"), TextColumn("{task.fields[part]}"),
                                 TimeElapsedColumn(), disable=not enabled, transient=True)
        self.task = self.progress.add_task(label, total=None, part="")

    def part(self, name: str) -> None:
        """Show the part now running."""
        self.progress.update(self.task, part=name)
