"""Logging sinks: ``metrics.jsonl`` and TensorBoard, written only by the trainer."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter


class MetricsLogger:
    """Appends one JSON object per update to ``metrics.jsonl`` and mirrors the scalars to TensorBoard.

    All scalars of an update go into one TensorBoard event (one protobuf, one write): ten times cheaper
    than one ``SummaryWriter.add_scalar`` call per metric, which cost ~3% of a small PPO run.
    """

    def __init__(self, run_dir: Path, resume_iteration: int | None = None, resume_step: int = 0) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume_iteration is not None:
            self._truncate_after(resume_iteration)
        self.tb = EventFileWriter(str(run_dir / "tb"))
        if resume_iteration is not None:
            # TensorBoard drops events a crashed process wrote after the step we resume from
            self.tb.add_event(Event(step=resume_step + 1, wall_time=time.time(),
                                    session_log=SessionLog(status=SessionLog.START)))
        self.file = open(self.path, "a")  # noqa: SIM115  (kept open for the run, closed in close())

    def _truncate_after(self, iteration: int) -> None:
        """Forget records of updates after ``iteration`` (they are redone after a resume)."""
        if not self.path.exists():
            return
        kept = [ln for ln in self.path.read_text().splitlines()
                if ln.strip() and json.loads(ln).get("iteration", 0) <= iteration]
        self.path.write_text("".join(ln + "\n" for ln in kept))

    def log(self, step: int, record: dict[str, Any]) -> None:
        """Write one record at environment step ``step``."""
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        values = [Summary.Value(tag=k, simple_value=v) for k, v in record.items()
                  if "/" in k and isinstance(v, int | float) and math.isfinite(v)]
        if values:
            self.tb.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    def close(self) -> None:
        """Flush and close both sinks."""
        self.file.close()
        self.tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of ``metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
