"""Run directories: one writer each, claimed atomically.

A fresh run claims ``runs/<name>`` with an exclusive ``mkdir`` (``runs/<name>-N`` when that exists), so two
runs started at once never share a directory. The writer then holds an exclusive ``flock`` on ``<run>/.lock``
(which names its pid) for as long as it trains: a second writer (``--resume`` of a live run) is refused in one
line. The kernel drops the lock when the process ends, however it ends, so a killed run leaves no stale lock.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from lmpo.config import ConfigError

try:
    import fcntl
except ImportError:  # Windows: no flock; one writer per run directory is then the user's care
    fcntl = None  # type: ignore[assignment]

LOCK_FILE = ".lock"


def _io_error(what: str, path: Path, e: OSError) -> ConfigError:
    return ConfigError(f"cannot {what} {path}: {e.strerror or e}")


def claim_run_dir(runs_dir: str | Path, name: str) -> Path:
    """Create ``<runs_dir>/<name>`` (or ``<name>-N``, the first that does not exist) exclusively: nothing is
    shared with or overwritten from another run, finished or live."""
    runs = Path(runs_dir)
    try:
        runs.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _io_error("create train.runs_dir", runs, e) from None
    path, n = runs / name, 1
    while True:
        try:
            path.mkdir()
            return path
        except FileExistsError:
            path, n = runs / f"{name}-{n}", n + 1
        except OSError as e:
            raise _io_error("create the run directory", path, e) from None


class RunLock:
    """The exclusive right to write a run directory, held from construction until ``release`` (or exit)."""

    def __init__(self, run_dir: Path) -> None:
        self.path = run_dir / LOCK_FILE
        try:
            self._fd: int | None = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as e:
            raise _io_error("write to", run_dir, e) from None
        if fcntl is None:
            return
        try:
            fcntl.flock(self._fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            owner = os.pread(self._fd, 32, 0).decode(errors="replace").strip() or "?"
            self.release()
            raise ConfigError(f"{run_dir} is being written by another lmpo process (pid {owner}); wait for it to "
                              "finish, or start a new run") from None
        os.ftruncate(self._fd, 0)
        os.pwrite(self._fd, f"{os.getpid()}\n".encode(), 0)

    def release(self) -> None:
        """Give the directory up (closing the file drops the lock); safe to call twice."""
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
