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

from lmpo.config import ConfigError
from lmpo.train.checkpoint import write_atomic

INTEGER_KEYS = ("iteration", "env_steps")  # what resume and plots order records by


class MetricsLogger:
    """Appends one JSON object per update to ``metrics.jsonl`` and mirrors the scalars to TensorBoard.

    All scalars of an update go into one TensorBoard event (one protobuf, one write): ten times cheaper
    than one ``SummaryWriter.add_scalar`` call per metric, which cost ~3% of a small PPO run.
    """

    def __init__(self, run_dir: Path, resume_iteration: int | None = None, resume_step: int = 0) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.finished = False  # whether the kept records end with the final evaluation (a finished run resumed)
        if resume_iteration is not None:
            self._truncate_after(resume_iteration)
        try:
            self.tb = EventFileWriter(str(run_dir / "tb"))
        except OSError as e:  # tb/ is a file, or cannot be made
            raise ConfigError(f"cannot write TensorBoard events to {run_dir / 'tb'}: {e.strerror or e}") from None
        if resume_iteration is not None:
            # TensorBoard drops events a crashed process wrote after the step we resume from
            self.tb.add_event(Event(step=resume_step + 1, wall_time=time.time(),
                                    session_log=SessionLog(status=SessionLog.START)))
        self.file = open(self.path, "a")  # noqa: SIM115  (kept open for the run, closed in close())

    def _truncate_after(self, iteration: int) -> None:
        """Forget records of updates after ``iteration`` (they are redone after a resume)."""
        if not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path.parent) if r.get("iteration", 0) <= iteration]
        self.finished = bool(kept) and bool(kept[-1].get("final"))
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())  # a kill keeps the history

    def log(self, step: int, record: dict[str, Any]) -> None:
        """Write one record at environment step ``step``."""
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        values = [Summary.Value(tag=k, simple_value=v) for k, v in record.items()
                  if "/" in k and isinstance(v, int | float) and math.isfinite(v)]
        if values:
            self.tb.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))

    def close(self) -> None:
        """Flush and close both sinks (again: nothing)."""
        if self.file.closed:
            return
        try:
            self.file.close()
        finally:
            self.tb.close()


def read_metrics(run_dir: Path, missing_ok: bool = False) -> list[dict[str, Any]]:
    """All records of ``metrics.jsonl`` (none when it is missing and ``missing_ok``). A torn last line (a crash
    mid-write) is left out; a damaged line anywhere else is a ``ConfigError`` naming the file and line."""
    path = run_dir / "metrics.jsonl"
    if missing_ok and not path.exists():
        return []
    try:
        lines = path.read_text().splitlines()
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    records = []
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (ValueError, RecursionError):  # JSONDecodeError is a ValueError; so is an integer of 5,000 digits
            if number == len(lines):
                break  # torn by a crash: that update is redone on resume
            raise ConfigError(f"{path}:{number}: not a JSON record") from None
        if not isinstance(record, dict) or not all(isinstance(record.get(k, 0), int) for k in INTEGER_KEYS):
            raise ConfigError(f"{path}:{number}: not one of lmpo's records (an object whose "
                              f"{' and '.join(INTEGER_KEYS)} are integers)")
        records.append(record)
    return records
