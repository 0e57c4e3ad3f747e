"""A live progress bar over environment steps, showing the latest training and evaluation return."""

from __future__ import annotations

from types import TracebackType

from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class TrainingProgress:
    """Context manager around a rich progress bar; silent when ``enabled`` is False."""

    def __init__(self, total: int, done: int, enabled: bool = True, label: str = "train") -> None:
        self.progress = Progress(
            TextColumn(f"[bold]{label}"), BarColumn(), MofNCompleteColumn(), TextColumn("steps"),
            TextColumn("{task.fields[info]}"), TimeElapsedColumn(), TimeRemainingColumn(), disable=not enabled,
        )
        self.task = self.progress.add_task("train", total=total, completed=done, info="")

    def __enter__(self) -> TrainingProgress:
        self.progress.start()
        return self

    def update(self, done: int, episode_return: float | None, eval_return: float | None, info: str = "") -> None:
        """Move the bar to ``done`` steps and show the latest returns (or ``info``)."""
        if episode_return is not None:
            info += f"return {episode_return:8.2f}"
        if eval_return is not None:
            info += f"  eval {eval_return:8.2f}"
        self.progress.update(self.task, completed=done, info=info)

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.progress.stop()
