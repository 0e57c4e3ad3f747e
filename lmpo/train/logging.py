"""Logging sinks: ``metrics.jsonl`` (always), TensorBoard and Weights & Biases, written only by the trainer."""

from __future__ import annotations

import json
import math
import time
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tensorboard.compat.proto.event_pb2 import Event, SessionLog
from tensorboard.compat.proto.summary_pb2 import Summary
from tensorboard.summary.writer.event_file_writer import EventFileWriter

from lmpo.config import ConfigError, WandbSection
from lmpo.train.checkpoint import write_atomic

INTEGER_KEYS = ("iteration", "env_steps")  # what resume and plots order records by
SAMPLES = "samples.jsonl"  # every evaluation's sample completions, with their rewards


class MetricsLogger:
    """Appends one JSON object per update to ``metrics.jsonl`` and mirrors the scalars to TensorBoard and W&B (the
    sinks of ``train.loggers``); evaluation samples go to ``samples.jsonl`` and to the same sinks as tables.

    All scalars of an update go into one TensorBoard event (one protobuf, one write): ten times cheaper
    than one ``SummaryWriter.add_scalar`` call per metric, which cost ~3% of a small PPO run.
    """

    def __init__(self, run_dir: Path, resume_iteration: int | None = None, resume_step: int = 0,
                 loggers: Sequence[str] = ("tensorboard",), wandb: WandbSection | None = None,
                 config: dict[str, Any] | None = None) -> None:
        self.path = run_dir / "metrics.jsonl"
        self.samples_path = run_dir / SAMPLES
        self.finished = False  # whether the kept records end with the final evaluation (a finished run resumed)
        if resume_iteration is not None:
            self._truncate_after(resume_iteration)
        self.tb: EventFileWriter | None = None
        if "tensorboard" in loggers:
            try:
                self.tb = EventFileWriter(str(run_dir / "tb"))
            except OSError as e:  # tb/ is a file, or cannot be made
                raise ConfigError(f"cannot write TensorBoard events to {run_dir / 'tb'}: {e.strerror or e}") from None
            if resume_iteration is not None:
                # TensorBoard drops events a crashed process wrote after the step we resume from
                self.tb.add_event(Event(step=resume_step + 1, wall_time=time.time(),
                                        session_log=SessionLog(status=SessionLog.START)))
        self.wandb = WandbSink(run_dir, wandb or WandbSection(), config or {}) if "wandb" in loggers else None
        self.file = open(self.path, "a")  # noqa: SIM115  (kept open for the run, closed in close())

    def _truncate_after(self, iteration: int) -> None:
        """Forget records (and samples) of updates after ``iteration``: they are redone after a resume."""
        if self.samples_path.exists():
            kept_samples = [r for r in _jsonl(self.samples_path) if r.get("iteration", 0) <= iteration]
            write_atomic(self.samples_path, "".join(json.dumps(r) + "\n" for r in kept_samples).encode())
        if not self.path.exists():
            return
        kept = [r for r in read_metrics(self.path.parent) if r.get("iteration", 0) <= iteration]
        self.finished = bool(kept) and bool(kept[-1].get("final"))
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept).encode())  # a kill keeps the history

    def log(self, step: int, record: dict[str, Any]) -> None:
        """Write one record at environment step ``step``."""
        self.file.write(json.dumps(record) + "\n")
        self.file.flush()
        scalars = {k: v for k, v in record.items() if "/" in k and isinstance(v, int | float) and math.isfinite(v)}
        if scalars and self.tb is not None:
            values = [Summary.Value(tag=k, simple_value=v) for k, v in scalars.items()]
            self.tb.add_event(Event(wall_time=time.time(), step=step, summary=Summary(value=values)))
        if scalars and self.wandb is not None:
            self.wandb.log(step, scalars)

    def samples(self, step: int, iteration: int, rows: list[dict[str, Any]]) -> None:
        """An evaluation's sample completions with their rewards: appended to ``samples.jsonl`` (each row with its
        ``iteration`` and ``env_steps``), and a table in TensorBoard (text) and W&B."""
        if not rows:
            return
        with open(self.samples_path, "a", encoding="utf-8") as f:
            f.write("".join(json.dumps({"iteration": iteration, "env_steps": step, **r}) + "\n" for r in rows))
        if self.tb is not None:
            from torch.utils.tensorboard.summary import text

            self.tb.add_event(Event(wall_time=time.time(), step=step, summary=text("samples", markdown_table(rows))))
        if self.wandb is not None:
            self.wandb.table(step, rows)

    def close(self) -> None:
        """Flush and close every sink (again: nothing)."""
        if self.file.closed:
            return
        try:
            self.file.close()
        finally:
            try:
                if self.tb is not None:
                    self.tb.close()
            finally:
                if self.wandb is not None:
                    self.wandb.close()


class NullLogger:
    """Where the records of a process that does not write go (under torchrun, every rank but 0)."""

    finished = False

    def log(self, step: int, record: dict[str, Any]) -> None:
        """Nothing."""

    def samples(self, step: int, iteration: int, rows: list[dict[str, Any]]) -> None:
        """Nothing."""

    def close(self) -> None:
        """Nothing."""


def markdown_table(rows: list[dict[str, Any]]) -> str:
    """Rows of equal keys as a Markdown table (TensorBoard's text panel renders it); cells on one line."""
    keys = list(rows[0])

    def cell(v: Any) -> str:
        text = f"{v:.3f}" if isinstance(v, float) else str(v)
        return " ".join(text.split()).replace("|", "\\|")

    lines = ["| " + " | ".join(keys) + " |", "|" + "---|" * len(keys)]
    return "\n".join(lines + ["| " + " | ".join(cell(r.get(k, "")) for k in keys) + " |" for r in rows])


class WandbSink:
    """A Weights & Biases run in ``<run>/wandb``, resumed under the same id when the lmpo run resumes. Offline mode
    (the default) needs no network or account; ``wandb sync <run>/wandb/offline-run-*`` uploads it later."""

    def __init__(self, run_dir: Path, settings: WandbSection, config: dict[str, Any]) -> None:
        try:
            import wandb
        except ImportError:
            raise ConfigError("train.loggers: wandb needs the wandb package: pip install 'lmpo[wandb]'") from None
        self.wandb = wandb
        id_file = run_dir / "wandb_id"
        run_id = id_file.read_text().strip() if id_file.is_file() else uuid.uuid4().hex[:8]
        write_atomic(id_file, run_id.encode())
        self.run = wandb.init(project=settings.project, entity=settings.entity, name=run_dir.name, id=run_id,
                              resume="allow", dir=str(run_dir), mode=settings.mode, config=config,
                              tags=settings.tags or None, settings=wandb.Settings(console="off", silent=True))

    def log(self, step: int, scalars: dict[str, float]) -> None:
        """Scalars at ``step`` (environment steps)."""
        self.run.log(scalars, step=step)

    def table(self, step: int, rows: list[dict[str, Any]]) -> None:
        """The samples as a ``wandb.Table``."""
        keys = list(rows[0])
        columns: list[str | int] = [*keys]
        self.run.log({"samples": self.wandb.Table(columns=columns, data=[[r.get(k) for k in keys] for r in rows])},
                     step=step)

    def close(self) -> None:
        """Finish the run (its files are complete on disk)."""
        self.run.finish()


def _jsonl(path: Path) -> list[dict[str, Any]]:
    """The complete JSON lines of a file (a torn last line left out)."""
    out = []
    for line in path.read_text(encoding="utf-8", errors="replace").splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            continue
    return out


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
