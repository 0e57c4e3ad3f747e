"""Logging sinks: ``metrics.jsonl`` and TensorBoard, written only by the trainer."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from torch.utils.tensorboard import SummaryWriter


class MetricsLogger:
    """Appends one JSON object per update to ``metrics.jsonl`` and mirrors the scalars to TensorBoard."""

    def __init__(self, run_dir: Path, resume_iteration: int | None = None, resume_step: int = 0) -> None:
        self.path = run_dir / "metrics.jsonl"
        if resume_iteration is not None:
            self._truncate_after(resume_iteration)
        # purge_step drops events a crashed process wrote after the checkpoint we resume from
        self.tb = SummaryWriter(str(run_dir / "tb"), purge_step=resume_step + 1 if resume_iteration else None)
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
        for key, value in record.items():
            if "/" in key and isinstance(value, int | float) and math.isfinite(value):
                self.tb.add_scalar(key, value, step)

    def close(self) -> None:
        """Flush and close both sinks."""
        self.file.close()
        self.tb.close()


def read_metrics(run_dir: Path) -> list[dict[str, Any]]:
    """All records of ``metrics.jsonl``."""
    path = run_dir / "metrics.jsonl"
    return [json.loads(ln) for ln in path.read_text().splitlines() if ln.strip()]
