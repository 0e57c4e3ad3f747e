"""A real ``lmpo serve`` process on a loopback port, serving a copy of the tiny dialogue run."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

STARTUP_S = 120.0


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class LiveServer:
    """A running ``lmpo serve``: its process, base URL, run directory and log."""

    proc: subprocess.Popen[bytes]
    url: str
    run_dir: Path
    log: Path

    def stop(self) -> bool:
        """SIGTERM (uvicorn finishes what is in flight); whether the server shut down cleanly (uvicorn exits by the
        signal it was stopped with, after its shutdown)."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
        return self.proc.wait(timeout=60) in (0, -signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: no chance to clean up."""
        self.proc.kill()
        self.proc.wait(timeout=30)

    def output(self) -> str:
        """What the server printed."""
        return self.log.read_text(errors="replace")


def start_server(run_dir: Path, *args: str, port: int | None = None, threads: int | None = 1,
                 log_dir: Path | None = None) -> LiveServer:
    """``lmpo serve run_dir args`` on a free loopback port (``threads``: its ``--threads``; None: its default), once
    ``/health`` answers; its output goes to ``serve-PORT.log`` in ``log_dir`` (default: beside the run)."""
    port = port or free_port()
    log = (log_dir or run_dir.parent) / f"serve-{port}.log"
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    flags = ["--port", str(port), *(() if threads is None else ("--threads", str(threads))), *args]
    with log.open("wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "lmpo", "serve", str(run_dir), *flags], stdout=out,
                                stderr=subprocess.STDOUT, env=env)
    server = LiveServer(proc, f"http://127.0.0.1:{port}", run_dir, log)
    deadline = time.monotonic() + STARTUP_S
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"lmpo serve exited with {proc.returncode}:\n{server.output()}")
        try:
            if httpx.get(f"{server.url}/health", timeout=2).status_code == 200:
                return server
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"lmpo serve did not answer within {STARTUP_S:.0f} s:\n{server.output()}")


def copy_run(run: Path, dest: Path) -> Path:
    """A copy of a (shared, read-only) run that a server may write its feedback store into."""
    shutil.copytree(run, dest, ignore=shutil.ignore_patterns("feedback.sqlite*", "*.log"))
    return dest


@pytest.fixture(scope="module")
def served_run(text_run: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the tiny dialogue run for this module's server."""
    return copy_run(text_run, tmp_path_factory.mktemp("served") / "tiny")


@pytest.fixture(scope="module")
def server(served_run: Path) -> Iterator[LiveServer]:
    """A server of the tiny run, shared by a module's tests."""
    live = start_server(served_run)
    yield live
    live.stop()
