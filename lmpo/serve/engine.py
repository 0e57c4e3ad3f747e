"""The generation engine of ``lmpo serve``: dynamic batching of concurrent requests on one worker thread.

An idle worker takes the first waiting choice and waits up to ``window_s`` for more (up to ``max_batch``); then it
decodes them together with the model's cache, one token per step for every row, each row with its own temperature,
top-p, seed, stop strings and token limit. The batch is continuous: a row that ends answers its choice at once and
leaves the batch, and choices that arrive meanwhile join it between steps (their prompts read in one pass, their
cache right-aligned with the others'), so a batch never waits for its longest reply and no request waits for a
batch to end. (transformers' own cache, which Hugging Face models with linear-attention or recurrent layers keep, as
every one does under transformers before 4.56, cannot take rows in or out: their batches run to their end.)

Text reaches each choice as it is decoded (a streamed reply), except what may still turn into a stop string or a
tool call. A reply that calls the model's tool (a Support bot's ``[lookup: ...]``) is answered by the tool on the
server and the choice goes back to the front of the queue for its next pass, which keeps the reply's cache and reads
only what follows it (the end of the call, the tool's answer): the client sees the answer, the record keeps the
lookups. A new model (a reloaded checkpoint) takes over once the batch in flight has drained (no row joins
it meanwhile): every reply is decoded by one model.
"""

from __future__ import annotations

import contextlib
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from lmpo.data.chat import ChatFormat
from lmpo.data.corpus import Turn
from lmpo.data.tokenizer import decode_reply
from lmpo.envs.text import MAX_TOOL_CALLS
from lmpo.policies.generation import cache_row, cache_stack, left_pad, regroupable
from lmpo.policies.lm import LMPolicy
from lmpo.policies.sampling import SamplingConfig, sample_categorical, sampling_logprobs

JOIN_EVERY, JOIN_WAIT_S = 6, 0.05


@dataclass
class ServedModel:
    """What the server serves: a text run's policy, with how it reads conversations and its tool."""

    policy: LMPolicy
    tokenizer: Any
    chat: ChatFormat
    name: str  # the model id clients ask for
    version: str  # the checkpoint served (in /metrics and in every recorded completion)
    max_context: int  # dialogue tokens kept as a prompt (the last ones)
    max_positions: int | None = None  # a transformer's positions: prompt + reply must fit
    tool: Callable[[str], Turn | None] | None = None  # the tool's turn for a reply that calls it
    tool_call_start: str | None = None  # what every tool call starts with (None: no tool)


@dataclass(frozen=True)
class Sampling:
    """One request's sampling settings."""

    temperature: float = 1.0
    top_p: float = 1.0
    max_tokens: int = 64
    stop: tuple[str, ...] = ()
    seed: int | None = None


@dataclass
class Event:
    """What a choice hears from the engine: text (``delta``), then its end (``finish_reason`` set), or an error."""

    delta: str = ""
    finish_reason: str | None = None
    error: str | None = None


class Choice:
    """One choice of a request: its conversation (and the lookups it made), its settings, what it has been sent."""

    def __init__(self, history: Sequence[Turn], sampling: Sampling, emit: Callable[[Event], None],
                 seed: int | None = None, stream: bool = True) -> None:
        self.history, self.sampling, self.emit, self.seed = list(history), sampling, emit, seed
        self.generator = None if seed is None else torch.Generator().manual_seed(seed)  # this choice's own draws
        self.stream = stream  # text as it is decoded (else only the end: the reply is read from ``reply``)
        self.sent_at = 0.0  # when text was last sent
        self.lookups: list[dict[str, str]] = []
        self.sent = ""  # the reply's text sent so far
        self.reply = ""
        self.prompt_tokens = 0
        self.completion_tokens = 0
        self.version = ""
        self.finish_reason: str | None = None
        self.cancelled = False  # the client has gone: stop generating
        self.queued_at = 0.0  # when it was queued (a tool call's next pass: when the call ended)
        self.kept: Kept | None = None  # after a tool call: what the model has read so far, to go on from

    def visible(self, text: str, model: ServedModel, final: bool) -> tuple[str, bool]:
        """The part of this pass's ``text`` that may be sent now, and whether a stop string ended it."""
        start = model.tool_call_start
        if model.tool is not None and not final:
            head = text.lstrip()
            if start is None or not head or start.startswith(head[:len(start)]):
                return "", False  # may still be a tool call: held until the pass ends
        for s in self.sampling.stop:
            at = text.find(s)
            if at >= 0:
                return text[:at], True
        if final:
            return text, False
        keep = len(text.rstrip("\ufffd"))  # a character whose bytes are not all decoded yet
        for s in self.sampling.stop:  # hold back what may be the start of a stop string
            for k in range(min(len(s) - 1, keep), 0, -1):
                if text[:keep].endswith(s[:k]):
                    keep -= k
                    break
        return text[:keep], False


@dataclass
class Kept:
    """A reply's cache after a tool call (``ids`` read by ``model``): its next pass reads only what follows."""

    model: ServedModel
    ids: list[int]
    cache: Any


@dataclass
class Batch:
    """The rows being decoded together, with the model they started on, its cache, the mask ``(B, L)`` of the
    tokens it holds and the logits ``(B, V)`` of each row's next token."""

    model: ServedModel
    rows: list[Row]
    cache: Any
    mask: Tensor
    logits: Tensor
    regroup: bool  # rows may leave and join (lmpo's caches; not transformers' own)
    steps: int = 0  # steps decoded since rows last joined


@dataclass
class Row:
    """A choice in the batch being decoded."""

    choice: Choice
    prompt: list[int]
    tokens: list[int] = field(default_factory=list)
    done: bool = False
    stopped: bool = False  # a stop string ended it
    calling: bool = False  # its text is a tool call: nothing is shown before the pass ends


Watcher = Callable[[str], ServedModel | None]  # a model newer than the version served, or None (--watch)


class Engine:
    """The batching worker thread. ``submit`` queues choices; the hooks see batch sizes, tokens and the queue."""

    def __init__(self, model: ServedModel, max_batch: int = 32, window_s: float = 0.01,
                 on_batch: Callable[[int], None] | None = None, on_tokens: Callable[[int], None] | None = None,
                 on_queue: Callable[[int], None] | None = None, seed: int = 0,
                 stream_interval_s: float = 0.02) -> None:
        if max_batch < 1 or window_s < 0:
            raise ValueError("need max_batch >= 1 and window_s >= 0")
        self.model, self.max_batch, self.window_s = model, max_batch, window_s
        self.stream_interval_s = stream_interval_s
        self._next: ServedModel | None = None
        self._queue: deque[Choice] = deque()
        self._cv = threading.Condition()
        self._stopping = False
        self._on_batch, self._on_tokens, self._on_queue = on_batch, on_tokens, on_queue
        self._rng = torch.Generator().manual_seed(seed)
        self._closed = threading.Event()
        self._thread = threading.Thread(target=self._work, name="lmpo-engine", daemon=True)
        self._thread.start()

    # ------------------------------------------------------------------------------------------ API
    def submit(self, choices: Sequence[Choice]) -> None:
        """Queue a request's choices (each is answered through its ``emit``)."""
        now = time.monotonic()
        for c in choices:
            c.queued_at = now
        with self._cv:
            self._queue.extend(choices)
            self._report_queue()
            self._cv.notify()

    def cancel(self, choices: Sequence[Choice]) -> None:
        """Stop generating for ``choices`` (their client has gone)."""
        for c in choices:
            c.cancelled = True

    def swap(self, model: ServedModel) -> None:
        """Serve ``model`` from the next batch on."""
        with self._cv:
            self._next = model
            self._cv.notify()

    def watch(self, newer: Watcher, every_s: float, on_version: Callable[[str], None]) -> None:
        """Ask ``newer`` every ``every_s`` for a model newer than the version served, and swap to it (until the
        engine closes); ``on_version`` hears each new version."""
        def poll() -> None:
            while not self._closed.wait(every_s):
                try:
                    model = newer(self.version)
                except Exception as e:  # noqa: BLE001  (a half-written or broken checkpoint: keep serving, retry)
                    print(f"lmpo serve: could not load the newer checkpoint ({type(e).__name__}: {e})", flush=True)
                    continue
                if model is not None:
                    self.swap(model)
                    on_version(model.version)

        threading.Thread(target=poll, name="lmpo-watch", daemon=True).start()

    @property
    def name(self) -> str:
        """The model id clients ask for."""
        return self.model.name

    @property
    def max_positions(self) -> int | None:
        """The served model's positions (prompt + reply), if it has a limit."""
        return self.model.max_positions

    @property
    def version(self) -> str:
        """The version the next batch will be decoded with."""
        return (self._next or self.model).version

    def queued(self) -> int:
        """Choices waiting for a batch."""
        with self._cv:
            return len(self._queue)

    def close(self) -> None:
        """Stop once the batch in flight has ended (no row joins it meanwhile); queued choices get an error."""
        self._closed.set()
        with self._cv:
            self._stopping = True
            self._cv.notify()
        self._thread.join(timeout=60)
        for choice in self._queue:
            choice.emit(Event(error="the server is shutting down"))

    # --------------------------------------------------------------------------------------- worker
    def _report_queue(self) -> None:
        if self._on_queue is not None:
            self._on_queue(len(self._queue))

    def _admit(self, batch: Batch | None) -> list[Choice] | None:
        """Choices to join the batch. An empty engine waits for the first one, then up to ``window_s`` for more (up
        to ``max_batch``); a running batch takes what is waiting, without waiting, up to ``max_batch`` rows, unless a
        new model waits for the batch to drain (or the model's cache cannot take rows in). None: closing."""
        with self._cv:
            if batch is None:
                while not self._queue and not self._stopping:
                    self._cv.wait()
                if self._stopping:
                    return None
                if self._next is not None and self._queue[0].lookups:  # a reply the old model began: it ends on it
                    return self._continuations(self.max_batch)
                if self._next is not None:  # nothing in flight: the new model takes over
                    self.model, self._next = self._next, None
                deadline = time.monotonic() + self.window_s
                while len(self._queue) < self.max_batch and not self._stopping:
                    left = deadline - time.monotonic()
                    if left <= 0:
                        break
                    self._cv.wait(left)
                room = self.max_batch
            elif not batch.regroup or not self._queue or self._stopping:
                return []
            elif self._next is not None:  # draining for the new model: only replies the old one began join
                return self._continuations(self.max_batch - sum(not r.done for r in batch.rows))
            else:
                live = sum(not r.done for r in batch.rows)
                room = self.max_batch - live
                waited = time.monotonic() - self._queue[0].queued_at
                # a join copies the batch's cache: a full batch takes newcomers every JOIN_EVERY steps (or once one
                # has waited JOIN_WAIT_S), a batch under half full at once
                if room <= 0 or (2 * live >= self.max_batch and batch.steps < JOIN_EVERY and waited < JOIN_WAIT_S):
                    return []
            taken = [self._queue.popleft() for _ in range(min(room, len(self._queue)))]
            self._report_queue()
        return [c for c in taken if not c.cancelled]

    def _continuations(self, room: int) -> list[Choice]:
        """The waiting choices (at the front of the queue) whose reply the current model began with a tool call;
        the caller holds the lock."""
        taken: list[Choice] = []
        while self._queue and self._queue[0].lookups and len(taken) < room:
            taken.append(self._queue.popleft())
        self._report_queue()
        return [c for c in taken if not c.cancelled]

    def _work(self) -> None:
        batch: Batch | None = None
        while (choices := self._admit(batch)) is not None:
            try:
                if choices:
                    batch = self._join(batch, choices)
                if batch is not None:
                    batch = self._step(batch)
            except Exception as e:  # noqa: BLE001  (a failed batch answers its requests; the worker lives on)
                failed = {id(c): c for c in choices} | ({id(r.choice): r.choice for r in batch.rows} if batch else {})
                for c in failed.values():
                    with contextlib.suppress(Exception):  # a client's loop gone: the worker lives on
                        c.emit(Event(error=f"generation failed: {type(e).__name__}: {e}"))
                batch = None

    def _prompt(self, model: ServedModel, choice: Choice) -> list[int]:
        """The choice's conversation as ids, its last ``max_context`` tokens (fewer where positions are short)."""
        keep = model.max_context
        if model.max_positions is not None:
            keep = min(keep, model.max_positions - choice.sampling.max_tokens)
        return model.chat.opening(choice.history)[-max(keep, 1):]

    @torch.no_grad()
    def _join(self, batch: Batch | None, choices: list[Choice]) -> Batch:
        """Read the new choices' prompts and add them to the batch, right-aligned: fresh prompts in one pass, and
        in another the replies that go on after a tool call, from what they had read (only what follows is read)."""
        model = self.model if batch is None else batch.model
        rows = [Row(c, self._prompt(model, c)) for c in choices]
        going_on: list[Row] = []
        fresh: list[Row] = []
        for r in rows:
            (going_on if self._goes_on(model, r) else fresh).append(r)
        parts = ([self._read(model, fresh)] if fresh else []) + ([self._read_on(model, going_on)] if going_on else [])
        for r in rows:
            r.choice.kept = None  # read: not needed any more
        if batch is None and len(parts) == 1:
            return parts[0]
        return self._merge(([batch] if batch is not None else []) + parts)

    @staticmethod
    def _merge(batches: list[Batch]) -> Batch:
        """The batches' unfinished rows as one batch (right-aligned, without the columns that are padding for every
        row), in one copy of their caches."""
        sources, masks, logits, rows = [], [], [], []
        for b in batches:
            live = [i for i, r in enumerate(b.rows) if not r.done]
            index = None if len(live) == len(b.rows) else torch.tensor(live, dtype=torch.long, device=b.mask.device)
            mask = b.mask if index is None else b.mask[index]
            start = int(mask.any(0).int().argmax())
            sources.append((b.cache, start, mask.shape[1], index))
            masks.append(mask[:, start:])
            logits.append(b.logits if index is None else b.logits[index])
            rows += [b.rows[i] for i in live]
        width = max(m.shape[1] for m in masks)
        mask = torch.cat([torch.cat([m.new_zeros(m.shape[0], width - m.shape[1]), m], 1) for m in masks])
        return Batch(batches[0].model, rows, cache_stack(sources), mask, torch.cat(logits), True)

    @staticmethod
    def _goes_on(model: ServedModel, row: Row) -> bool:
        """Whether the row's cache from before its tool call holds the start of its new prompt (not so where the
        prompt was cut to fit, or the reply's text reads back as other tokens)."""
        kept = row.choice.kept
        return (kept is not None and kept.model is model and len(kept.ids) < len(row.prompt)
                and row.prompt[:len(kept.ids)] == kept.ids)

    @staticmethod
    def _read(model: ServedModel, rows: list[Row]) -> Batch:
        """The rows' prompts read in one pass."""
        policy = model.policy
        ids = left_pad([r.prompt for r in rows], policy.pad_id, next(policy.parameters()).device)
        mask = ids != policy.pad_id
        with policy._no_dropout():
            logits, _, cache = policy.body(ids, mask, keep=1)
        return Batch(model, rows, cache, mask, logits[:, -1], regroupable(cache))

    @staticmethod
    def _read_on(model: ServedModel, rows: list[Row]) -> Batch:
        """The rows' prompts after what their kept caches hold, read in one pass with those caches."""
        policy = model.policy
        kept = [r.choice.kept for r in rows if r.choice.kept is not None]
        held = max(len(k.ids) for k in kept)
        cache = cache_stack([(k.cache, 0, len(k.ids), None) for k in kept])
        device = next(policy.parameters()).device
        before = torch.tensor([[j >= held - len(k.ids) for j in range(held)] for k in kept], device=device)
        ids = left_pad([r.prompt[len(k.ids):] for r, k in zip(rows, kept, strict=True)], policy.pad_id, device)
        mask = torch.cat([before, ids != policy.pad_id], 1)  # the new text of a shorter one after a gap: masked out
        with policy._no_dropout():
            logits, _, cache = policy.body(ids, mask, cache, keep=1)
        return Batch(model, rows, cache, mask, logits[:, -1], True)

    @torch.no_grad()
    def _step(self, batch: Batch) -> Batch | None:
        """One token for every row; a row that ends answers its choice at once, and leaves the batch when the
        finished rows are half of it or new rows join; None when none is left."""
        model, policy = batch.model, batch.model.policy
        live = [r for r in batch.rows if not r.done]
        if self._on_batch is not None:
            self._on_batch(len(live))
        tokens = self._sample(model, batch.rows, batch.logits).tolist()  # (B,)
        again: list[Choice] = []
        for i, r in enumerate(batch.rows):
            if not r.done:
                self._advance(model, r, tokens[i])
                if r.done and self._finish(model, r):
                    read = int(batch.mask[i].sum())  # the prompt and the reply's tokens fed so far
                    cache = cache_row(batch.cache, i, batch.mask[i]) if batch.regroup else None
                    r.choice.kept = None if cache is None else Kept(model, (r.prompt + r.tokens)[:read], cache)
                    again.append(r.choice)
        if again:  # replies that called the tool: their next pass goes first (and joins as newcomers do: a join
            now = time.monotonic()  # at every step would cost more than it saves)
            for c in again:
                c.queued_at = now
            with self._cv:
                self._queue.extendleft(reversed(again))
                self._report_queue()
        if all(r.done for r in batch.rows):
            return None
        if batch.regroup and 2 * sum(r.done for r in batch.rows) >= len(batch.rows):
            batch = self._merge([batch])  # finished rows leave once they are half the batch (a copy of the cache)
        rows, cache, mask = batch.rows, batch.cache, batch.mask
        step = torch.tensor([policy.pad_id if r.done else r.tokens[-1] for r in rows], device=mask.device)
        mask = torch.cat([mask, (step != policy.pad_id).unsqueeze(1)], dim=1)
        with policy._no_dropout():
            logits, _, cache = policy.body(step.unsqueeze(1), mask, cache)
        return Batch(model, rows, cache, mask, logits[:, -1], batch.regroup, batch.steps + 1)

    def _sample(self, model: ServedModel, rows: list[Row], logits: Tensor) -> Tensor:
        """One token per row, each row from its own temperature and top-p (rows that share them together; ``<eos>``
        banned at a reply's first token)."""
        policy = model.policy
        out = torch.full((len(rows),), policy.pad_id, dtype=torch.long, device=logits.device)
        groups: dict[tuple[float, float], list[int]] = {}
        for i, r in enumerate(rows):
            if not r.done:
                groups.setdefault((r.choice.sampling.temperature, r.choice.sampling.top_p), []).append(i)
        for (temperature, top_p), idx in groups.items():
            cfg = SamplingConfig(temperature=temperature, top_p=top_p, min_new_tokens=1, max_new_tokens=1)
            step = torch.tensor([len(rows[i].tokens) for i in idx], device=logits.device)
            every = len(idx) == len(rows)
            logp = sampling_logprobs(logits if every else logits[idx], step, cfg, policy.pad_id, policy.stop_ids)
            if cfg.greedy:
                token = logp.argmax(-1)
            else:
                u = torch.rand(len(idx), generator=self._rng)  # one draw for the rows without a seed of their own
                for k, i in enumerate(idx):
                    if rows[i].choice.generator is not None:
                        u[k] = torch.rand(1, generator=rows[i].choice.generator)
                token = sample_categorical(logp, u.to(logp.device).unsqueeze(1))
            if every:
                out = token
            else:
                out[idx] = token
        return out

    def _advance(self, model: ServedModel, row: Row, token: int) -> None:
        """Append ``token`` to ``row``; send the text that became visible; end the row where it ends."""
        choice, policy = row.choice, model.policy
        if choice.cancelled:
            row.done = True
            return
        if token in policy.stop_ids:
            row.done = True
            return
        row.tokens.append(token)
        row.done = len(row.tokens) >= choice.sampling.max_tokens
        if (not choice.stream and not choice.sampling.stop) or row.calling:
            return  # nothing to send before the end, no stop string to look for
        text = decode_reply(model.tokenizer, row.tokens)
        start = model.tool_call_start
        if model.tool is not None and (start is None or text.lstrip().startswith(start)):
            row.calling = True  # held whole until the pass ends (no need to decode it at every step)
            return
        shown, row.stopped = choice.visible(text, model, final=False)
        row.done = row.done or row.stopped
        now = time.monotonic()
        # at most one delta per stream_interval_s (the first at once): under load a delta per token per stream is
        # most of the server's work; the end of a pass sends the rest
        if choice.stream and len(shown) > len(choice.sent) and shown.startswith(choice.sent) and (not choice.sent or
                                                                now - choice.sent_at >= self.stream_interval_s):
            choice.emit(Event(delta=shown[len(choice.sent):]))
            choice.sent, choice.sent_at = shown, now

    def _finish(self, model: ServedModel, row: Row) -> bool:
        """The end of a row's pass: a tool call (True: the choice goes on) or the reply's end."""
        choice = row.choice
        choice.prompt_tokens = choice.prompt_tokens or len(row.prompt)
        choice.completion_tokens += len(row.tokens)
        if self._on_tokens is not None:
            self._on_tokens(len(row.tokens))
        choice.version = model.version
        if choice.cancelled:
            return False
        text = decode_reply(model.tokenizer, row.tokens)
        if model.tool is not None and len(choice.lookups) < MAX_TOOL_CALLS and not row.stopped:
            result = model.tool(text)
            if result is not None:
                choice.lookups.append({"call": text, "result": result.content})
                choice.history += [Turn("assistant", text), result]
                return True
        shown, stopped = choice.visible(text, model, final=True)
        if not shown.startswith(choice.sent):  # decoding all the tokens changed what was sent: the record keeps that
            shown = choice.sent
        if len(shown) > len(choice.sent) and choice.stream:
            choice.emit(Event(delta=shown[len(choice.sent):]))
        choice.reply = shown
        choice.finish_reason = "stop" if stopped or row.stopped or len(row.tokens) < choice.sampling.max_tokens \
            else "length"
        choice.emit(Event(finish_reason=choice.finish_reason))
        return False
