"""Bad requests to a real ``lmpo serve``: each is answered with a 4xx and OpenAI's ``{"error": {...}}`` body whose
message names the problem; never a 500, never a dead worker.

1. a table of bad bodies (malformed JSON, wrong types, unknown roles, empty messages, server limits, oversized and
   non-UTF-8 bodies, deep nesting, huge numbers, bad feedback), each with its status and a phrase of its message;
2. the official ``openai`` client raises its exceptions for the same mistakes;
3. Hypothesis: generated bodies (valid requests, mutated ones, random JSON, random bytes) to both POST endpoints,
   none answered with a 5xx;
4. after all of these (the module's last tests): the server still answers, its process is alive, its log holds no
   traceback.

The module's server caps ``max_tokens`` at 16 (4 by default) and ``n`` at 3, so the generated requests stay cheap
and the caps are the server's settings, not the defaults.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lmpo.serve.schema import Limits
from tests.serve.conftest import LiveServer, start_server

MAX_TOKENS, MAX_N = 16, 3  # the module server's --max-tokens and --max-n
LIMITS = Limits()  # the limits without a flag: body size, messages, message length, stop strings
CHAT, FEEDBACK = "/v1/chat/completions", "/v1/feedback"
HELLO = [{"role": "user", "content": "hello"}]
# ~300 requests a second to a 2-core CPU: the fuzzing takes ~20 s (valid requests generate; the others are refused)
FUZZ = settings(max_examples=300, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


@pytest.fixture(scope="module")
def server(served_run: Path) -> Iterator[LiveServer]:
    """The module's server (overrides conftest's): small caps on max_tokens and n."""
    live = start_server(served_run, "--max-tokens", str(MAX_TOKENS), "--default-max-tokens", "4",
                        "--max-n", str(MAX_N))
    yield live
    live.stop()


@pytest.fixture(scope="module")
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.url, timeout=60) as c:
        yield c


def chat(**fields: Any) -> dict[str, Any]:
    """A valid chat request with ``fields`` changed (a field set to ``...`` is left out)."""
    body = {"model": "tiny", "messages": HELLO, "max_tokens": 2, **fields}
    return {k: v for k, v in body.items() if v is not ...}


def encode(value: Any) -> bytes:
    """JSON as a client sends it: ASCII, so a lone surrogate travels as a ``\\ud800`` escape."""
    return json.dumps(value).encode()


def with_raw(body: dict[str, Any], key: str, raw: str) -> bytes:
    """``body`` with ``"key": raw`` appended verbatim (JSON that ``json.dumps`` would not write)."""
    return encode(body)[:-1] + f', "{key}": {raw}}}'.encode()


def assert_error(r: httpx.Response, status: int, phrase: str = "") -> dict[str, Any]:
    """OpenAI's error body: ``{"error": {"message", "type", "param", "code"}}`` with ``phrase`` in the message."""
    assert r.status_code == status, (r.status_code, r.text[:500])
    assert r.headers["content-type"].startswith("application/json"), r.headers["content-type"]
    error = r.json()["error"]
    assert set(error) == {"message", "type", "param", "code"}, error
    assert isinstance(error["message"], str) and error["message"].strip(), error
    assert isinstance(error["type"], str) and error["type"], error
    assert phrase in error["message"], (phrase, error["message"])
    return error


# ------------------------------------------------------------------------------------------ 1. the table
def chunks(total: int, size: int = 1 << 16) -> list[bytes]:
    """A JSON body of ``total`` bytes in pieces (httpx sends an iterable chunked: no Content-Length)."""
    return [b'{"model": "', *(b"a" * min(size, total - start) for start in range(0, total, size))]


OVER_LIMIT = LIMITS.max_body_bytes + 1
CASES = [
    # (id, path, body, status, phrase in the message)
    ("malformed-json", CHAT, b'{"model": "tiny", "messages": [', 400, "not valid JSON"),
    ("trailing-comma", CHAT, b'{"model": "tiny",}', 400, "not valid JSON"),
    ("empty-body", CHAT, b"", 400, "not valid JSON"),
    ("json-array", CHAT, b"[]", 400, "must be a JSON object"),
    ("json-number", CHAT, b"3", 400, "must be a JSON object"),
    ("json-string", CHAT, b'"hello"', 400, "must be a JSON object"),
    ("json-null", CHAT, b"null", 400, "must be a JSON object"),
    ("temperature-string", CHAT, encode(chat(temperature="hot")), 400, "temperature: Input should be a valid number"),
    ("temperature-bool", CHAT, encode(chat(temperature=True)), 400, "temperature: Input should be a valid number"),
    ("temperature-nan", CHAT, with_raw(chat(), "temperature", "NaN"), 400, "temperature"),
    ("temperature-too-high", CHAT, encode(chat(temperature=2.5)), 400, "temperature"),
    ("top-p-zero", CHAT, encode(chat(top_p=0)), 400, "top_p"),
    ("n-float", CHAT, encode(chat(n=1.5)), 400, "n: Input should be a valid integer"),
    ("n-string", CHAT, encode(chat(n="2")), 400, "n: Input should be a valid integer"),
    ("stream-string", CHAT, encode(chat(stream="yes")), 400, "stream: Input should be a valid boolean"),
    ("messages-string", CHAT, encode(chat(messages="hello")), 400, "messages: Input should be a valid list"),
    ("message-not-object", CHAT, encode(chat(messages=["hello"])), 400, "messages.0"),
    ("model-number", CHAT, encode(chat(model=7)), 400, "model: Input should be a valid string"),
    ("unknown-role", CHAT, encode(chat(messages=[{"role": "robot", "content": "hi"}])), 400, "messages.0.role"),
    ("missing-role", CHAT, encode(chat(messages=[{"content": "hi"}])), 400, "messages.0.role: Field required"),
    ("missing-content", CHAT, encode(chat(messages=[{"role": "user"}])), 400, "messages.0.content: Field required"),
    ("content-number", CHAT, encode(chat(messages=[{"role": "user", "content": 5}])), 400, "messages.0.content"),
    ("content-image", CHAT, encode(chat(messages=[{"role": "user", "content": [{"type": "image_url"}]}])), 400,
     "messages.0.content"),
    ("empty-content", CHAT, encode(chat(messages=[{"role": "user", "content": ""}])), 400, "the content is empty"),
    ("whitespace-content", CHAT, encode(chat(messages=[{"role": "user", "content": " \n\t "}])), 400,
     "the content is empty"),
    ("empty-parts", CHAT, encode(chat(messages=[{"role": "user", "content": []}])), 400, "the content is empty"),
    ("empty-tool-message", CHAT, encode(chat(messages=[*HELLO, {"role": "tool", "content": " "}])), 400,
     "the content is empty"),
    ("no-messages", CHAT, encode(chat(messages=[])), 400, "messages: List should have at least 1 item"),
    ("messages-missing", CHAT, encode(chat(messages=...)), 400, "messages: Field required"),
    ("model-missing", CHAT, encode(chat(model=...)), 400, "model: Field required"),
    ("system-only", CHAT, encode(chat(messages=[{"role": "system", "content": "be nice"}])), 400,
     "need a user message"),
    ("too-many-messages", CHAT, encode(chat(messages=HELLO * (LIMITS.max_messages + 1))), 400,
     f"at most {LIMITS.max_messages} messages"),
    ("over-long-message", CHAT,
     encode(chat(messages=[{"role": "user", "content": "a" * (LIMITS.max_message_chars + 1)}])), 400,
     f"longer than {LIMITS.max_message_chars} characters"),
    ("max-tokens-over-cap", CHAT, encode(chat(max_tokens=MAX_TOKENS + 1)), 400, f"max_tokens: at most {MAX_TOKENS}"),
    ("max-completion-tokens-over-cap", CHAT, encode(chat(max_completion_tokens=MAX_TOKENS + 1)), 400,
     f"max_tokens: at most {MAX_TOKENS}"),
    ("max-tokens-zero", CHAT, encode(chat(max_tokens=0)), 400, "max_tokens: Input should be greater than or equal"),
    ("n-over-cap", CHAT, encode(chat(n=MAX_N + 1)), 400, f"n: at most {MAX_N}"),
    ("n-zero", CHAT, encode(chat(n=0)), 400, "n: Input should be greater than or equal to 1"),
    ("too-many-stops", CHAT, encode(chat(stop=list("abcde"))), 400, f"stop: at most {LIMITS.max_stop}"),
    ("empty-stop", CHAT, encode(chat(stop="")), 400, "stop: at most"),
    ("unknown-field", CHAT, encode(chat(foo=1)), 400, "Unrecognized request argument supplied: foo"),
    ("tools", CHAT, encode(chat(tools=[{"type": "function", "function": {"name": "f"}}])), 400,
     "tools are not supported"),
    ("logprobs", CHAT, encode(chat(logprobs=True)), 400, "logprobs are not supported"),
    ("penalty", CHAT, encode(chat(presence_penalty=1)), 400, "presence_penalty are not supported"),
    ("stream-options-without-stream", CHAT, encode(chat(stream_options={"include_usage": True})), 400,
     "stream_options is only allowed with stream: true"),
    ("json-response-format", CHAT, encode(chat(response_format={"type": "json_object"})), 400, "response_format"),
    ("wrong-model", CHAT, encode(chat(model="gpt-4")), 404, "The model `gpt-4` does not exist"),
    ("body-over-limit", CHAT, b" " * OVER_LIMIT, 413, f"larger than {LIMITS.max_body_bytes} bytes"),
    ("body-over-limit-chunked", CHAT, chunks(OVER_LIMIT), 413, f"larger than {LIMITS.max_body_bytes} bytes"),
    ("not-utf8", CHAT, b'{"model": "ti\xffny", "messages": []}', 400, "not UTF-8"),
    ("latin1", CHAT, encode(chat())[:-1] + ', "user": "caf\xe9"}'.encode("latin-1"), 400, "not UTF-8"),
    ("utf16", CHAT, json.dumps(chat()).encode("utf-16"), 400, "not UTF-8"),
    ("lone-surrogate-content", CHAT, encode(chat(messages=[{"role": "user", "content": "hi \ud800"}])), 400,
     "messages.0.content: not valid Unicode"),
    ("lone-surrogate-model", CHAT, encode(chat(model="\udc00")), 400, "model: not valid Unicode"),
    ("lone-surrogate-key", CHAT, encode({**chat(), "\ud800": 1}), 400, "not valid Unicode"),
    ("nul-and-controls-in-model", CHAT, encode(chat(model="ti\x00ny\x1b")), 404, "does not exist"),
    ("deeply-nested", CHAT, b"[" * 100_000 + b"]" * 100_000, 400, "nested too deeply"),
    ("deeply-nested-field", CHAT, with_raw(chat(), "metadata", "[" * 5000 + "]" * 5000), 400, "nested too deeply"),
    # more digits than Python converts (sys.get_int_max_str_digits(), 4300)
    ("huge-integer", CHAT, with_raw(chat(max_tokens=...), "max_tokens", "9" * 5000), 400, "digits"),
    ("huge-seed", CHAT, with_raw(chat(), "seed", "9" * 30), 400, "seed"),
    ("huge-float", CHAT, with_raw(chat(), "temperature", "1e999"), 400, "temperature"),
    ("feedback-unknown-completion", FEEDBACK, encode({"completion_id": "chatcmpl-nope", "rating": "up"}), 404,
     "no completion 'chatcmpl-nope'"),
    ("feedback-score-0", FEEDBACK, encode({"completion_id": "chatcmpl-nope", "score": 0}), 400, "score"),
    ("feedback-score-6", FEEDBACK, encode({"completion_id": "chatcmpl-nope", "score": 6}), 400, "score"),
    ("feedback-score-float", FEEDBACK, encode({"completion_id": "chatcmpl-nope", "score": 4.5}), 400, "score"),
    ("feedback-no-rating", FEEDBACK, encode({"completion_id": "chatcmpl-nope"}), 400,
     "give a rating (up or down), a score (1-5), or both"),
    ("feedback-bad-rating", FEEDBACK, encode({"completion_id": "chatcmpl-nope", "rating": "meh"}), 400, "rating"),
    ("feedback-no-id", FEEDBACK, encode({"rating": "up"}), 400, "completion_id: Field required"),
    ("feedback-unknown-field", FEEDBACK, encode({"completion_id": "x", "rating": "up", "stars": 5}), 400, "stars"),
    ("feedback-not-json", FEEDBACK, b"rating=up", 400, "not valid JSON"),
    ("feedback-array", FEEDBACK, b"[1]", 400, "must be a JSON object"),
    ("feedback-huge-integer", FEEDBACK, with_raw({"completion_id": "x", "rating": "up"}, "choice", "9" * 5000), 400,
     "digits"),
]


@pytest.mark.parametrize(("path", "body", "status", "phrase"), [pytest.param(*c[1:], id=c[0]) for c in CASES])
def test_bad_request(server: LiveServer, path: str, body: bytes | list[bytes], status: int, phrase: str) -> None:
    # a fresh connection per case: the server may close one whose body it stopped reading (413)
    r = httpx.post(f"{server.url}{path}", content=body, headers={"content-type": "application/json"}, timeout=60)
    assert_error(r, status, phrase)


@pytest.mark.parametrize(("method", "path", "status"), [("GET", CHAT, 405), ("PUT", FEEDBACK, 405),
                                                         ("GET", "/v1/nothing", 404), ("GET", "/v1/models/gpt-4", 404)])
def test_wrong_route(client: httpx.Client, method: str, path: str, status: int) -> None:
    assert_error(client.request(method, path), status)


def test_the_wrong_model_is_named(client: httpx.Client) -> None:
    error = assert_error(client.post(CHAT, json=chat(model="gpt-4")), 404)
    assert error["param"] == "model" and error["code"] == "model_not_found"


# ------------------------------------------------------------------------------------------ 2. openai's client
@pytest.fixture(scope="module")
def openai_client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="not-needed-here", max_retries=0, timeout=60)


@pytest.mark.parametrize(("fields", "error", "phrase"), [
    ({"n": MAX_N + 1}, openai.BadRequestError, f"n: at most {MAX_N}"),
    ({"max_tokens": MAX_TOKENS + 1}, openai.BadRequestError, f"max_tokens: at most {MAX_TOKENS}"),
    ({"temperature": "hot"}, openai.BadRequestError, "temperature: Input should be a valid number"),
    ({"extra_body": {"foo": 1}}, openai.BadRequestError, "Unrecognized request argument supplied: foo"),
    ({"tools": [{"type": "function", "function": {"name": "f"}}]}, openai.BadRequestError, "tools are not supported"),
    ({"messages": [{"role": "user", "content": "  "}]}, openai.BadRequestError, "the content is empty"),
    ({"model": "gpt-4"}, openai.NotFoundError, "The model `gpt-4` does not exist"),
], ids=["n", "max_tokens", "temperature", "unknown-field", "tools", "empty-content", "model"])
def test_openai_client_errors(openai_client: openai.OpenAI, fields: dict[str, Any], error: type[openai.APIStatusError],
                              phrase: str) -> None:
    request: dict[str, Any] = {"model": "tiny", "messages": HELLO, "max_tokens": 2, **fields}
    with pytest.raises(error) as raised:
        openai_client.chat.completions.create(**request)
    assert isinstance(raised.value.body, dict) and phrase in raised.value.body["message"]
    assert raised.value.type == "invalid_request_error"


# ------------------------------------------------------------------------------------------ 3. Hypothesis
# a character a tokenizer, a JSON encoder or a database may choke on: lone surrogates (JSON can escape them; they are
# no Unicode), NUL and other controls, a BOM, bidi overrides, non-characters, the last code point
ODD = st.sampled_from(["\ud800", "\udfff", "\ud83d", "\x00", "\x1b", "\x7f", "\u202e", "\ufeff", "\uffff",
                       "\U0010ffff", "\r\n", "\\", '"']) | st.characters(exclude_categories=())
ANY_TEXT = st.lists(ODD | st.characters(), max_size=10).map("".join)
TEXT = st.text(st.characters(exclude_categories=("Cs",)), max_size=12)  # valid Unicode (controls included)
WORDS = st.sampled_from(["hi", "hello there", "how are you?", "Thanks!", "¿qué tal?", "好", "🙂"])
SAYING = st.tuples(TEXT, WORDS, TEXT).map("".join)  # never blank
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | ANY_TEXT,
                    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(ANY_TEXT, inner, max_size=3),
                    max_leaves=8)
MESSAGE = st.fixed_dictionaries(
    {"role": st.sampled_from(["user", "assistant", "tool"]),
     "content": SAYING | st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": SAYING}), min_size=1,
                                  max_size=2)},
    optional={"name": TEXT})
SYSTEM = st.fixed_dictionaries({"role": st.sampled_from(["system", "developer"]), "content": TEXT})
STOP = st.text(st.characters(exclude_categories=("Cs",)), min_size=1, max_size=8)


@st.composite
def chat_requests(draw: st.DrawFn) -> dict[str, Any]:
    """A valid request: 1-3 turns (a system message maybe first), small max_tokens and n, any sampling settings."""
    messages = draw(st.lists(MESSAGE, min_size=1, max_size=3))
    if draw(st.booleans()):
        messages.insert(0, draw(SYSTEM))
    body = draw(st.fixed_dictionaries(
        {"model": st.just("tiny"), "messages": st.just(messages), "max_tokens": st.integers(1, 4)},
        optional={"temperature": st.floats(0, 2), "top_p": st.floats(0, 1, exclude_min=True),
                  "n": st.integers(1, MAX_N), "stop": STOP | st.lists(STOP, max_size=LIMITS.max_stop),
                  "seed": st.integers(-(2**63), 2**63 - 1), "stream": st.booleans(), "user": TEXT,
                  "metadata": st.dictionaries(TEXT, TEXT, max_size=2), "frequency_penalty": st.just(0)}))
    if body.get("stream") and draw(st.booleans()):
        body["stream_options"] = {"include_usage": draw(st.booleans())}
    return body


def string_leaves(value: Any) -> list[tuple[Any, Any]]:
    """``(container, key)`` of every string inside ``value`` (keys of dicts, indices of lists)."""
    found, todo = [], [value]
    while todo:
        node = todo.pop()
        items = node.items() if isinstance(node, dict) else enumerate(node) if isinstance(node, list) else ()
        for key, item in items:
            if isinstance(item, str):
                found.append((node, key))
            todo.append(item)
    return found


@st.composite
def oddly_spelled(draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid request with odd characters put into 1-3 of its strings (and nothing else changed)."""
    body = draw(valid)
    strings = string_leaves(body)
    for _ in range(draw(st.integers(1, 3))):
        node, key = draw(st.sampled_from(strings))
        at = draw(st.integers(0, len(node[key])))
        node[key] = node[key][:at] + draw(ODD) + node[key][at:]
    return body


@st.composite
def mutated(draw: st.DrawFn, valid: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid request with 1-3 changes: a field dropped, a field (or a message's) set to any JSON, a random key."""
    body = draw(valid)
    for _ in range(draw(st.integers(1, 3))):
        how = draw(st.sampled_from(["drop", "retype", "extra", "message"]))
        messages = body.get("messages")
        if how == "drop" and body:
            del body[draw(st.sampled_from(sorted(body)))]
        elif how == "retype":
            body[draw(st.sampled_from(sorted(body) or ["model"]))] = draw(JSON)
        elif how == "extra":
            body[draw(ANY_TEXT)] = draw(JSON)
        elif how == "message" and isinstance(messages, list) and messages:
            i = draw(st.integers(0, len(messages) - 1))
            if isinstance(messages[i], dict) and draw(st.booleans()):
                messages[i][draw(st.sampled_from(["role", "content", "name"]) | ANY_TEXT)] = draw(JSON)
            else:
                messages[i] = draw(JSON)
    return body


@st.composite
def as_bytes(draw: st.DrawFn, value: st.SearchStrategy[Any]) -> bytes:
    """``value`` as JSON bytes: escaped (ASCII), raw UTF-8 (a lone surrogate: invalid UTF-8), or cut short."""
    how = draw(st.sampled_from(["escaped"] * 6 + ["raw"] * 3 + ["cut"]))
    data = json.dumps(draw(value), ensure_ascii=how != "raw").encode("utf-8", "surrogatepass")
    return data[: draw(st.integers(0, len(data)))] if how == "cut" else data


def bodies(valid: st.SearchStrategy[dict[str, Any]]) -> st.SearchStrategy[bytes]:
    """What a client might send: valid requests, ones with odd characters, mutated ones, any JSON, any bytes."""
    return st.one_of(as_bytes(valid), as_bytes(oddly_spelled(valid)), as_bytes(mutated(valid)), as_bytes(JSON),
                     st.binary(max_size=64))


def check_answer(r: httpx.Response, body: bytes) -> None:
    """No 5xx; an error in OpenAI's shape; a stream ending with ``[DONE]``."""
    assert r.status_code < 500, (body[:300], r.text[:500])
    if r.status_code >= 400:
        assert_error(r, r.status_code)
    elif r.headers["content-type"].startswith("text/event-stream"):
        assert r.text.endswith("data: [DONE]\n\n"), r.text[-500:]
        events = [json.loads(e.removeprefix("data: ")) for e in r.text.split("\n\n") if e.startswith("data: {")]
        assert not any("error" in e for e in events), r.text[-500:]
    else:
        assert r.json()["object"] in ("chat.completion", "feedback"), r.text[:500]


@settings(FUZZ, max_examples=100)
@given(body=chat_requests())
def test_fuzz_valid_requests_are_answered(client: httpx.Client, body: dict[str, Any]) -> None:
    r = client.post(CHAT, content=encode(body))
    check_answer(r, encode(body))
    assert r.status_code == 200, r.text[:500]
    if body.get("stream"):
        events = [json.loads(line[6:]) for line in r.text.split("\n\n") if line.startswith("data: {")]
        finished = [c["index"] for e in events for c in e["choices"] if c["finish_reason"] is not None]
        assert sorted(finished) == list(range(body.get("n", 1)))
        assert ("usage" in events[-1] and events[-1]["usage"] is not None) == \
            bool(body.get("stream_options", {}).get("include_usage"))
    else:
        assert len(r.json()["choices"]) == body.get("n", 1)


@FUZZ
@given(body=bodies(chat_requests()))
def test_fuzz_chat_completions(client: httpx.Client, body: bytes) -> None:
    check_answer(client.post(CHAT, content=body, headers={"content-type": "application/json"}), body)


@pytest.fixture(scope="module")
def completion_ids(client: httpx.Client) -> list[str]:
    """Two served completions (of 2 choices each) the feedback fuzzing can rate."""
    ids = []
    for _ in range(2):
        r = client.post(CHAT, json=chat(n=2))
        assert r.status_code == 200, r.text
        ids.append(r.json()["id"])
    return ids


def feedback_requests(ids: list[str]) -> st.SearchStrategy[dict[str, Any]]:
    """Feedback on served completions (or unknown ids, or choices they lack); a rating, a score, both or neither."""
    return st.fixed_dictionaries(
        {"completion_id": st.sampled_from(ids) | TEXT},
        optional={"choice": st.integers(0, 3), "rating": st.sampled_from(["up", "down"]), "score": st.integers(1, 5),
                  "comment": TEXT})


@FUZZ
@given(data=st.data())
def test_fuzz_feedback(client: httpx.Client, completion_ids: list[str], data: st.DataObject) -> None:
    valid = feedback_requests(completion_ids)
    body = data.draw(st.one_of(as_bytes(valid), bodies(valid)))
    r = client.post(FEEDBACK, content=body, headers={"content-type": "application/json"})
    check_answer(r, body)


# ------------------------------------------------------------------------------------------ 4. still serving
def test_still_serving(server: LiveServer, client: httpx.Client) -> None:
    """After every bad request above: the process is alive and its worker answers."""
    assert server.proc.poll() is None, server.output()
    r = client.post(CHAT, json=chat())
    assert r.status_code == 200, r.text
    assert r.json()["choices"][0]["message"]["role"] == "assistant"
    assert client.get("/health").json()["status"] == "ok"


def test_no_traceback_in_the_log(server: LiveServer) -> None:
    """No request above reached the server's own error handling (uvicorn logs those with a traceback)."""
    out = server.output()
    failures = out.count("Traceback") + out.count("Exception in ASGI application")
    assert failures == 0, out[-3000:]
