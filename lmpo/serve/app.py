"""The FastAPI app of ``lmpo serve``: an OpenAI-compatible chat API, feedback, metrics and a web chat page.

``create_app`` wires a served model, the generation engine, the feedback store and the metrics together. Every
completion is recorded in the store before the client gets its last byte; every error is a 4xx (or, for a failure of
the server's own, a 500) with OpenAI's ``{"error": {...}}`` body.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import json
import sys
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from pydantic import BaseModel, ValidationError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from lmpo.config import ConfigError
from lmpo.serve.engine import Choice, Engine, Event, Sampling, ServedModel, Watcher
from lmpo.serve.metrics import ServerMetrics
from lmpo.serve.schema import ChatRequest, FeedbackRequest, Limits
from lmpo.serve.store import FeedbackStore, Record, UnknownCompletion
from lmpo.serve.worker import EngineProcess, ModelSource

OPEN_PATHS = ("/", "/health")  # answered without an API key


class APIError(Exception):
    """An error answered as ``{"error": {"message", "type", "param", "code"}}`` with an HTTP status."""

    def __init__(self, status: int, message: str, kind: str = "invalid_request_error", param: str | None = None,
                 code: str | None = None) -> None:
        super().__init__(message)
        self.status, self.message, self.kind, self.param, self.code = status, message, kind, param, code

    def response(self) -> JSONResponse:
        """The JSON answer."""
        body = {"error": {"message": self.message, "type": self.kind, "param": self.param, "code": self.code}}
        return JSONResponse(body, status_code=self.status)


@dataclass
class ServeSettings:
    """How the server batches, limits, authenticates and reloads."""

    limits: Limits = field(default_factory=Limits)
    api_keys: Sequence[str] = ()
    max_batch: int = 32  # choices decoded together (1: no batching)
    window_s: float = 0.01  # how long the first waiting choice waits for others
    default_temperature: float = 0.7
    default_top_p: float = 0.9
    watch: Watcher | None = None  # polled every watch_every_s for a newer checkpoint (picklable for a ModelSource)
    watch_every_s: float = 2.0


def _error_from_validation(e: ValidationError) -> APIError:
    first = e.errors()[0]
    where = ".".join(str(p) for p in first["loc"]) or None
    message = str(first["msg"]).removeprefix("Value error, ")
    return APIError(400, f"{where}: {message}" if where else message, param=where)


async def read_json(request: Request, limit: int) -> Any:
    """The request body as JSON: at most ``limit`` bytes (413), UTF-8 (400), valid JSON (400)."""
    declared = request.headers.get("content-length")
    if declared is not None and declared.isdigit() and int(declared) > limit:
        raise APIError(413, f"the request body is larger than {limit} bytes")
    body = bytearray()
    async for chunk in request.stream():
        body += chunk
        if len(body) > limit:
            raise APIError(413, f"the request body is larger than {limit} bytes")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError as e:
        raise APIError(400, f"the request body is not UTF-8 (byte {e.start})") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        raise APIError(400, f"the request body is not valid JSON ({e.msg} at line {e.lineno} column {e.colno})"
                       ) from None
    except RecursionError:
        raise APIError(400, "the request body is nested too deeply") from None
    except ValueError:  # after JSONDecodeError, a subclass: an integer longer than Python converts
        raise APIError(400, "the request body is not valid JSON (a number of more than "
                       f"{sys.get_int_max_str_digits()} digits)") from None


def parse(model: type[BaseModel], data: Any) -> Any:
    """``data`` validated as ``model`` (a 400 naming the first problem)."""
    if not isinstance(data, dict):
        raise APIError(400, "the request body must be a JSON object")
    try:
        return model.model_validate(data)
    except ValidationError as e:
        raise _error_from_validation(e) from None


class Mailbox:
    """Events from the engine's thread to the event loop's queues, one wake-up of the loop per bundle of events
    rather than per token of every stream."""

    def __init__(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop, self.lock = loop, threading.Lock()
        self.items: list[tuple[asyncio.Queue[Any], Any]] = []

    def post(self, queue: asyncio.Queue[Any], item: Any) -> None:
        """Put ``item`` on ``queue`` (from any thread)."""
        with self.lock:
            self.items.append((queue, item))
            wake = len(self.items) == 1
        if wake:
            self.loop.call_soon_threadsafe(self.deliver)

    def deliver(self) -> None:
        """On the loop: everything posted so far."""
        with self.lock:
            items, self.items = self.items, []
        for queue, item in items:
            queue.put_nowait(item)


class Server:
    """The state behind the routes: model, engine, store, metrics, settings."""

    def __init__(self, model: ServedModel | ModelSource, store: FeedbackStore, settings: ServeSettings) -> None:
        self.store, self.settings, self.metrics = store, settings, ServerMetrics()
        m = self.metrics
        self.engine: Engine | EngineProcess
        if isinstance(model, ServedModel):  # in this process (tests, embedding)
            self.engine = Engine(model, settings.max_batch, settings.window_s, on_batch=m.batch.observe,
                                 on_tokens=m.tokens.inc, on_queue=m.queue.set)
            if settings.watch is not None:
                self.engine.watch(settings.watch, settings.watch_every_s, self._reloaded)
        else:  # in a worker process of its own (lmpo serve)
            self.engine = EngineProcess(model, settings.max_batch, settings.window_s, on_batch=m.batch.observe,
                                        on_tokens=m.tokens.inc, on_queue=m.queue.set, on_version=self._reloaded,
                                        watch=settings.watch, watch_every_s=settings.watch_every_s)
        self.name = self.engine.name
        positions = self.engine.max_positions
        if positions is not None and settings.limits.max_tokens >= positions:
            self.engine.close()
            raise ConfigError(f"--max-tokens {settings.limits.max_tokens} leaves no room for a prompt in the "
                              f"model's {positions} positions")
        m.serving(self.name, self.engine.version)
        self._mailbox: Mailbox | None = None  # made on the first request, on the server's event loop

    def _reloaded(self, version: str) -> None:
        """A newer checkpoint is loaded (the engine takes it once its batch in flight has drained)."""
        self.metrics.serving(self.name, version)
        self.metrics.reloads.inc()
        print(f"lmpo serve: now serving {version}", flush=True)

    def close(self) -> None:
        """Finish the batch in flight (and stop watching), close the store."""
        self.engine.close()
        self.store.close()

    # ------------------------------------------------------------------------------------ completions
    def sampling(self, req: ChatRequest, index: int) -> tuple[Sampling, int | None]:
        """A request's settings, and the choice's own seed when the request gives one."""
        s = self.settings
        max_tokens = req.max_completion_tokens or req.max_tokens or s.limits.default_max_tokens
        sampling = Sampling(s.default_temperature if req.temperature is None else float(req.temperature),
                            s.default_top_p if req.top_p is None else float(req.top_p), max_tokens, req.stops(),
                            req.seed)
        return sampling, None if req.seed is None else (req.seed * 1_000_003 + index) % (2**63)

    def start(self, req: ChatRequest) -> tuple[list[Choice], asyncio.Queue[tuple[int, Event]]]:
        """Queue the request's choices; their events arrive on the returned queue as ``(index, event)``."""
        if self._mailbox is None:
            self._mailbox = Mailbox(asyncio.get_running_loop())
        post = self._mailbox.post
        events: asyncio.Queue[tuple[int, Event]] = asyncio.Queue()

        def emitter(i: int) -> Callable[[Event], None]:
            return lambda ev: post(events, (i, ev))  # called on the engine's thread

        history = req.turns()
        choices = []
        for i in range(req.n or 1):
            sampling, seed = self.sampling(req, i)
            choices.append(Choice(history, sampling, emitter(i), seed, stream=bool(req.stream)))
        self.engine.submit(choices)
        return choices, events

    async def record(self, cid: str, created: float, req: ChatRequest, choices: list[Choice]) -> None:
        """Every choice in the store, committed (before the client is told the completion is complete)."""
        messages = [{"role": m.role, "content": m.text()} for m in req.messages]
        records = [Record(cid, i, self.name, c.version, messages, c.reply, c.finish_reason or "stop",
                          c.prompt_tokens, c.completion_tokens,
                          {"temperature": c.sampling.temperature, "top_p": c.sampling.top_p,
                           "max_tokens": c.sampling.max_tokens, "stop": list(c.sampling.stop), "seed": c.sampling.seed},
                          c.lookups, created) for i, c in enumerate(choices)]
        await asyncio.to_thread(self.store.add_completions, records)
        self.metrics.completions.inc(len(records))


def usage(choices: list[Choice]) -> dict[str, int]:
    """OpenAI's token counts: the prompt once, every choice's generated tokens (tool calls included)."""
    prompt = choices[0].prompt_tokens if choices else 0
    completion = sum(c.completion_tokens for c in choices)
    return {"prompt_tokens": prompt, "completion_tokens": completion, "total_tokens": prompt + completion}


async def complete(server: Server, req: ChatRequest) -> JSONResponse:
    """A whole (not streamed) completion."""
    t0 = time.perf_counter()
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    choices, events = server.start(req)
    left = len(choices)
    while left:
        _, ev = await events.get()
        if ev.error is not None:
            raise APIError(500, ev.error, kind="server_error")
        left -= ev.finish_reason is not None
    await server.record(cid, created, req, choices)
    server.metrics.latency.labels("false").observe(time.perf_counter() - t0)
    body = {"id": cid, "object": "chat.completion", "created": created, "model": server.name,
            "system_fingerprint": choices[0].version,
            "choices": [{"index": i, "message": {"role": "assistant", "content": c.reply},
                         "finish_reason": c.finish_reason, "logprobs": None} for i, c in enumerate(choices)],
            "usage": usage(choices)}
    return JSONResponse(body)


def stream(server: Server, req: ChatRequest) -> StreamingResponse:
    """A streamed completion: server-sent events, the role first, the text as it is decoded, each choice's
    ``finish_reason`` on its last chunk, the usage (when asked), then ``[DONE]``."""
    t0 = time.perf_counter()
    cid, created = f"chatcmpl-{uuid.uuid4().hex}", int(time.time())
    include_usage = bool(req.stream_options and req.stream_options.include_usage)
    choices, events = server.start(req)

    def chunk(delta_choices: list[dict[str, Any]], **extra: Any) -> str:
        body = {"id": cid, "object": "chat.completion.chunk", "created": created, "model": server.name,
                "system_fingerprint": choices[0].version or server.engine.version, "choices": delta_choices, **extra}
        if include_usage and "usage" not in extra:
            body["usage"] = None
        return f"data: {json.dumps(body)}\n\n"

    async def body() -> AsyncIterator[str]:
        finished = False
        try:
            for i in range(len(choices)):
                yield chunk([{"index": i, "delta": {"role": "assistant", "content": ""}, "finish_reason": None,
                              "logprobs": None}])
            first: list[float] = []
            async for piece in _deltas(server, req, cid, created, choices, events, chunk, first, t0):
                yield piece
            if include_usage:
                yield chunk([], usage=usage(choices))
            finished = True
            server.metrics.ttft.observe(first[0] if first else time.perf_counter() - t0)
            server.metrics.latency.labels("true").observe(time.perf_counter() - t0)
            yield "data: [DONE]\n\n"
        except APIError as e:
            yield f"data: {json.dumps({'error': {'message': e.message, 'type': e.kind}})}\n\n"
        finally:
            if not finished:  # the client went away (or generation failed): stop generating for it
                server.engine.cancel(choices)

    return StreamingResponse(body(), media_type="text/event-stream",
                             headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


async def _deltas(server: Server, req: ChatRequest, cid: str, created: float, choices: list[Choice],
                  events: asyncio.Queue[tuple[int, Event]], chunk: Callable[..., str], first: list[float],
                  t0: float) -> AsyncIterator[str]:
    """The chunks of a stream's text and ends, as the engine sends them; the completion is recorded before the
    last choice's last chunk (nothing is acknowledged unrecorded). ``first`` gets the time to the first text."""
    left = len(choices)

    def text(i: int, delta: str) -> str:
        return chunk([{"index": i, "delta": {"content": delta}, "finish_reason": None, "logprobs": None}])

    while left:
        waiting = [await events.get()]
        while not events.empty():  # under load, a choice's deltas of several steps go out as one chunk
            waiting.append(events.get_nowait())
        pending: dict[int, str] = {}
        for i, ev in waiting:
            if ev.error is not None:
                raise APIError(500, ev.error, kind="server_error")
            if ev.delta:
                if not first:
                    first.append(time.perf_counter() - t0)
                pending[i] = pending.get(i, "") + ev.delta
            if ev.finish_reason is not None:
                if i in pending:
                    yield text(i, pending.pop(i))
                left -= 1
                if left == 0:
                    await server.record(cid, created, req, choices)
                yield chunk([{"index": i, "delta": {}, "finish_reason": ev.finish_reason, "logprobs": None}])
        for i, delta in pending.items():
            yield text(i, delta)


# ------------------------------------------------------------------------------------------------ the app
def _authorized(headers: Sequence[tuple[bytes, bytes]], keys: Sequence[bytes]) -> bool:
    """A bearer token equal to one of ``keys``, compared in constant time (every key is compared)."""
    header = next((v for k, v in headers if k == b"authorization"), b"")
    scheme, _, token = header.partition(b" ")
    given = token.strip()
    ok = False
    for key in keys:
        ok |= hmac.compare_digest(given, key)
    return ok and scheme.lower() == b"bearer"


class Guard:
    """API keys on every path but the page and the health check; requests and errors counted. Plain ASGI (not
    Starlette's ``BaseHTTPMiddleware``), so a streamed reply's chunks go straight through."""

    def __init__(self, app: ASGIApp, srv: Server) -> None:
        self.app, self.srv = app, srv
        self.keys = [k.encode() for k in srv.settings.api_keys]

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        path = scope["path"]
        status = [500]

        async def sending(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
            await send(message)

        try:
            if self.keys and path not in OPEN_PATHS and not _authorized(scope["headers"], self.keys):
                await APIError(401, "a valid API key is needed (Authorization: Bearer <key>)",
                               code="invalid_api_key").response()(scope, receive, sending)
            else:
                await self.app(scope, receive, sending)
        finally:
            route = path if path in ROUTES else "other"
            self.srv.metrics.requests.labels(route, str(status[0])).inc()
            if status[0] >= 400:
                self.srv.metrics.errors.labels(route, str(status[0])).inc()


def create_app(model: ServedModel | ModelSource, store: FeedbackStore, settings: ServeSettings | None = None
               ) -> FastAPI:
    """The app serving ``model`` (a ``ModelSource``: from a worker process), recording into ``store``. The engine
    starts now (a worker: once it has loaded the model) and stops with the app; ``app.state.engine`` names the
    model and its version."""
    srv = Server(model, store, settings or ServeSettings())

    @contextlib.asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        try:
            yield
        finally:
            await asyncio.to_thread(srv.close)

    app = FastAPI(title="lmpo serve", version="1", lifespan=lifespan, docs_url=None, redoc_url=None)
    app.state.engine = srv.engine
    app.add_middleware(Guard, srv=srv)
    _error_handlers(app)
    _api_routes(app, srv)
    _ops_routes(app, srv)
    return app


def _error_handlers(app: FastAPI) -> None:
    """Every error in OpenAI's shape."""

    @app.exception_handler(APIError)
    async def api_error(_: Request, e: APIError) -> JSONResponse:
        return e.response()

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_: Request, e: StarletteHTTPException) -> JSONResponse:
        kind = "not_found_error" if e.status_code == 404 else "invalid_request_error"
        return APIError(e.status_code, str(e.detail), kind=kind).response()

    @app.exception_handler(Exception)
    async def internal(_: Request, e: Exception) -> JSONResponse:
        return APIError(500, f"internal error: {type(e).__name__}", kind="server_error").response()


def _body_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI request body of a route that reads its JSON itself (to answer every bad body in OpenAI's shape)."""
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": model.model_json_schema()}}}}


def _api_routes(app: FastAPI, srv: Server) -> None:
    """``/v1/chat/completions``, ``/v1/feedback``, ``/v1/models``."""
    limits = srv.settings.limits

    @app.post("/v1/chat/completions", openapi_extra=_body_schema(ChatRequest))
    async def chat_completions(request: Request) -> Response:
        req: ChatRequest = parse(ChatRequest, await read_json(request, limits.max_body_bytes))
        try:
            req.check(limits)
        except ValueError as e:
            raise APIError(400, str(e)) from None
        if req.model != srv.name:
            raise APIError(404, f"The model `{req.model}` does not exist (this server serves `{srv.name}`)",
                           param="model", code="model_not_found")
        return stream(srv, req) if req.stream else await complete(srv, req)

    @app.post("/v1/feedback", openapi_extra=_body_schema(FeedbackRequest))
    async def feedback(request: Request) -> JSONResponse:
        fb: FeedbackRequest = parse(FeedbackRequest, await read_json(request, limits.max_body_bytes))
        thumb = None if fb.rating is None else (1 if fb.rating == "up" else -1)
        try:
            rating_id = await asyncio.to_thread(srv.store.add_rating, fb.completion_id, fb.choice, thumb, fb.score,
                                                fb.comment)
        except UnknownCompletion:
            raise APIError(404, f"no completion {fb.completion_id!r} with a choice {fb.choice}",
                           param="completion_id", code="completion_not_found") from None
        if fb.rating is not None:
            srv.metrics.feedback.labels(fb.rating).inc()
        if fb.score is not None:
            srv.metrics.feedback.labels("score").inc()
        return JSONResponse({"id": rating_id, "object": "feedback", "completion_id": fb.completion_id,
                             "choice": fb.choice})

    @app.get("/v1/models")
    async def models() -> JSONResponse:
        return JSONResponse({"object": "list", "data": [_model_card(srv)]})

    @app.get("/v1/models/{name}")
    async def model_card(name: str) -> JSONResponse:
        if name != srv.name:
            raise APIError(404, f"The model `{name}` does not exist", param="model", code="model_not_found")
        return JSONResponse(_model_card(srv))


def _ops_routes(app: FastAPI, srv: Server) -> None:
    """``/metrics``, ``/health`` and the chat page ``/``."""
    page = (resources.files("lmpo") / "serve" / "static" / "index.html").read_text()

    @app.get("/metrics")
    async def metrics() -> Response:
        return Response(generate_latest(srv.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/health")
    async def health() -> JSONResponse:
        return JSONResponse({"status": "ok", "model": srv.name, "version": srv.engine.version,
                             "queued": srv.engine.queued()})

    @app.get("/", response_class=HTMLResponse)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)


ROUTES = ("/", "/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/feedback")


def _model_card(server: Server) -> dict[str, Any]:
    return {"id": server.name, "object": "model", "created": 0, "owned_by": "lmpo", "version": server.engine.version}
