"""The generation engine in a process of its own, so that ``lmpo serve``'s HTTP side and its decoding do not share
one interpreter lock.

In one process, the event loop (parsing, streaming, the store) and the engine's thread take turns on Python's lock,
and the server uses one core however many it has. ``EngineProcess`` starts a worker process that loads the model
itself (from a picklable ``ModelSource``), runs an ``Engine`` and polls for newer checkpoints; the server's side
sends it choices and cancellations, and gets back each choice's text and end, with the engine's statistics, in
bundles (one message per bundle of events, not one per token). It has the ``Engine``'s interface.
"""

from __future__ import annotations

import contextlib
import itertools
import multiprocessing
import os
import signal
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from lmpo.serve.engine import Choice, Engine, Event, ServedModel, Watcher

STARTUP_S = 600.0  # the longest the server waits for the worker to load its model


@dataclass(frozen=True)
class ModelSource:
    """How the worker process gets its model: ``load()`` builds it there (a picklable callable: a module-level
    function or a ``functools.partial`` of one); ``threads``: torch's CPU threads in the worker (None: the CPUs this
    process may use, less one for the HTTP side: on 2 cores, a second torch thread only fights it for the CPU)."""

    load: Callable[[], ServedModel]
    threads: int | None = None


# The fields of a choice that the worker fills in and the server reads once the choice has ended.
OUTCOME = ("reply", "finish_reason", "prompt_tokens", "completion_tokens", "version", "lookups")
# An event as sent: (key, delta, finish_reason, error, outcome at the end); plain values pickle fastest.
Sent = tuple[int, str, str | None, str | None, dict[str, Any] | None]


class _Outbox:
    """The worker's messages to the server, sent by one thread: events and statistics gathered while the engine
    decodes go out together."""

    def __init__(self, conn: Connection) -> None:
        self.conn, self.cv = conn, threading.Condition()
        self.events: list[Sent] = []
        self.batches: list[int] = []
        self.tokens = 0
        self.queue: int | None = None
        self.versions: list[str] = []
        self.closing = False
        self.thread = threading.Thread(target=self._send, name="lmpo-outbox", daemon=True)
        self.thread.start()

    def emitter(self, key: int, choice: Choice, done: Callable[[int], object]) -> Callable[[Event], None]:
        """What ``choice`` (the server's choice ``key``) emits; its last event carries its outcome."""
        def emit(ev: Event) -> None:
            last = ev.finish_reason is not None or ev.error is not None
            outcome = {name: getattr(choice, name) for name in OUTCOME} if last else None
            with self.cv:
                self.events.append((key, ev.delta, ev.finish_reason, ev.error, outcome))
                self.cv.notify()
            if last:
                done(key)
        return emit

    def batch(self, rows: int) -> None:
        with self.cv:
            self.batches.append(rows)

    def generated(self, tokens: int) -> None:
        with self.cv:
            self.tokens += tokens

    def queued(self, n: int) -> None:
        with self.cv:
            self.queue = n
            self.cv.notify()  # /health and /metrics see the queue move even when no text does

    def version(self, version: str) -> None:
        with self.cv:
            self.versions.append(version)
            self.cv.notify()

    def close(self) -> None:
        """Send what is left, then the end."""
        with self.cv:
            self.closing = True
            self.cv.notify()
        self.thread.join()

    def _send(self) -> None:
        while True:
            with self.cv:
                while not (self.events or self.versions or self.queue is not None or self.closing):
                    self.cv.wait()
                message = ("events", self.events, self.batches, self.tokens, self.queue, self.versions)
                self.events, self.batches, self.tokens, self.queue, self.versions = [], [], 0, None, []
                closing = self.closing
            try:
                self.conn.send(message)
                if closing:
                    self.conn.send(("closed",))
            except OSError:  # the server has gone
                return
            if closing:
                return


def _worker(conn: Connection, source: ModelSource, max_batch: int, window_s: float, watch: Watcher | None,
            watch_every_s: float) -> None:
    """The worker process: load, report, then take choices until told to close (or until the server has gone)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C and SIGTERM are the server's to handle: it closes us
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        import torch

        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
        torch.set_num_threads(source.threads or max(1, cpus - 1))
        model = source.load()
    except Exception as e:  # noqa: BLE001  (the server raises it: a user's mistake reads as one)
        try:
            conn.send(("failed", e))
        except Exception:  # noqa: BLE001  (an exception that does not pickle)
            conn.send(("failed", RuntimeError(f"{type(e).__name__}: {e}")))
        return
    conn.send(("ready", model.name, model.version, model.max_positions))
    out = _Outbox(conn)
    engine = Engine(model, max_batch, window_s, on_batch=out.batch, on_tokens=out.generated, on_queue=out.queued)
    if watch is not None:
        engine.watch(watch, watch_every_s, out.version)
    live: dict[int, Choice] = {}
    while True:
        try:
            message = conn.recv()
        except (EOFError, OSError):  # the server has gone (killed): nothing to answer
            os._exit(0)
        if message[0] == "submit":
            choices = []
            for key, history, sampling, seed, stream in message[1]:
                choice = Choice(history, sampling, lambda ev: None, seed, stream)
                choice.emit = out.emitter(key, choice, lambda k: live.pop(k, None))
                live[key] = choice
                choices.append(choice)
            engine.submit(choices)
        elif message[0] == "cancel":  # (a cancelled choice ends without an event: it is forgotten here)
            engine.cancel([c for k in message[1] if (c := live.pop(k, None)) is not None])
        else:  # "close"
            break
    engine.close()
    out.close()


def _ignore(_: Any) -> None:
    """A hook nobody set."""


class EngineProcess:
    """The server's side of the worker process, with the ``Engine``'s interface: ``submit`` sends choices, the
    worker's events reach each choice's ``emit`` (from a reader thread), the hooks see the engine's statistics."""

    def __init__(self, source: ModelSource, max_batch: int = 32, window_s: float = 0.01,
                 on_batch: Callable[[int], None] | None = None, on_tokens: Callable[[int], None] | None = None,
                 on_queue: Callable[[int], None] | None = None, on_version: Callable[[str], None] | None = None,
                 watch: Watcher | None = None, watch_every_s: float = 2.0) -> None:
        if max_batch < 1 or window_s < 0:
            raise ValueError("need max_batch >= 1 and window_s >= 0")
        ctx = multiprocessing.get_context("spawn")  # not fork: the server's threads and torch's state stay here
        self._conn, theirs = ctx.Pipe()
        self._proc = ctx.Process(target=_worker, name="lmpo-engine",
                                 args=(theirs, source, max_batch, window_s, watch, watch_every_s), daemon=True)
        self._proc.start()
        theirs.close()
        if not self._conn.poll(STARTUP_S):
            self._proc.kill()
            raise RuntimeError(f"the generation worker did not load its model within {STARTUP_S:.0f} s")
        try:
            first = self._conn.recv()
        except EOFError:
            self._proc.join()
            raise RuntimeError(f"the generation worker exited while loading (exit code {self._proc.exitcode})"
                               ) from None
        if first[0] == "failed":
            self._proc.join()
            raise first[1]
        _, self.name, self._version, self.max_positions = first
        self._on_batch, self._on_tokens = on_batch or _ignore, on_tokens or _ignore
        self._on_queue, self._on_version = on_queue or _ignore, on_version or _ignore
        self._live: dict[int, Choice] = {}  # by key: the choices the worker has not ended yet
        self._key_of: dict[int, int] = {}  # id(choice) -> key
        self._keys = itertools.count()
        self._send_lock = threading.Lock()
        self._queued = 0
        self._closing = False
        self._ended = threading.Event()
        threading.Thread(target=self._read, name="lmpo-engine-reader", daemon=True).start()

    # ------------------------------------------------------------------------------------------ API
    def submit(self, choices: Sequence[Choice]) -> None:
        """Send a request's choices to the worker (each is answered through its ``emit``)."""
        batch = []
        for c in choices:
            key = next(self._keys)
            self._live[key], self._key_of[id(c)] = c, key
            batch.append((key, c.history, c.sampling, c.seed, c.stream))
        if self._ended.is_set() or not self._send(("submit", batch)):
            self._fail([k for k, *_ in batch], "the generation worker has stopped")

    def cancel(self, choices: Sequence[Choice]) -> None:
        """Stop generating for ``choices`` (their client has gone)."""
        for c in choices:
            c.cancelled = True
        keys = [k for c in choices if (k := self._key_of.get(id(c))) is not None and k in self._live]
        if keys:
            self._send(("cancel", keys))
        for k in keys:  # the worker sends nothing more for them
            self._end(k)

    @property
    def version(self) -> str:
        """The newest version the worker has loaded (the next batch's)."""
        return self._version

    def queued(self) -> int:
        """Choices waiting for a batch in the worker (as last reported)."""
        return self._queued

    def close(self) -> None:
        """Let the worker finish the batch in flight (queued choices get an error) and exit."""
        self._closing = True
        self._send(("close",))
        self._ended.wait(timeout=90)
        self._proc.join(timeout=30)
        if self._proc.is_alive():
            self._proc.kill()
        self._fail(list(self._live), "the server is shutting down")

    # -------------------------------------------------------------------------------------- internals
    def _send(self, message: tuple[Any, ...]) -> bool:
        try:
            with self._send_lock:
                self._conn.send(message)
            return True
        except OSError:
            return False

    def _end(self, key: int) -> Choice | None:
        """The choice ``key``, no longer live."""
        choice = self._live.pop(key, None)
        if choice is not None:
            self._key_of.pop(id(choice), None)
        return choice

    def _fail(self, keys: list[int], why: str) -> None:
        for key in keys:
            choice = self._end(key)
            if choice is not None:
                with contextlib.suppress(Exception):
                    choice.emit(Event(error=why))

    def _read(self) -> None:
        """Deliver the worker's events until it closes; if it dies, fail what was waiting and stop the server."""
        while True:
            try:
                message = self._conn.recv()
            except Exception:  # noqa: BLE001  (EOF: the worker has gone; anything else: it cannot be understood)
                break
            if message[0] == "closed":
                break
            try:
                self._deliver(*message[1:])
            except Exception as e:  # noqa: BLE001  (a hook's failure must not stop every reply after it)
                print(f"lmpo serve: could not deliver the worker's events ({type(e).__name__}: {e})", flush=True)
        self._ended.set()
        if not self._closing:  # the worker died (killed, out of memory): this server cannot answer any more
            self._proc.join(timeout=5)
            print(f"lmpo serve: the generation worker stopped (exit code {self._proc.exitcode}); shutting down",
                  flush=True)
            self._fail(list(self._live), "the generation worker stopped")
            os.kill(os.getpid(), signal.SIGTERM)

    def _deliver(self, events: list[Sent], batches: list[int], tokens: int,
                 queue: int | None, versions: list[str]) -> None:
        """One bundle from the worker: statistics to the hooks, events to their choices."""
        for rows in batches:
            self._on_batch(rows)
        if tokens:
            self._on_tokens(tokens)
        if queue is not None:
            self._queued = queue
            self._on_queue(queue)
        for version in versions:
            self._version = version
            self._on_version(version)
        for key, delta, finish_reason, error, outcome in events:
            choice = self._end(key) if outcome is not None else self._live.get(key)
            if choice is None:
                continue
            if outcome is not None:
                for name, value in outcome.items():
                    setattr(choice, name, value)
            with contextlib.suppress(Exception):  # a client's loop gone: the reader lives on
                choice.emit(Event(delta, finish_reason, error))
