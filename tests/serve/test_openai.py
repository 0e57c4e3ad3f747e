"""The served API as the official ``openai`` client uses it: plain, n > 1, stop, seed, streaming, concurrency; and
what the server records and reports (the feedback store, ``/metrics``)."""

from __future__ import annotations

import asyncio
import http.client
import json
import re
import sqlite3
import time
from pathlib import Path

import httpx
import openai
import pytest

from tests.serve.conftest import LiveServer

HELLO = [{"role": "user", "content": "Hello"}]


def client(server: LiveServer) -> openai.OpenAI:
    return openai.OpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)


def recorded(run_dir: Path, cid: str) -> list[tuple]:
    """The store's rows of a completion: (choice, reply, version, finish_reason, messages, sampling)."""
    with sqlite3.connect(run_dir / "feedback.sqlite") as db:
        return db.execute("SELECT choice, reply, version, finish_reason, messages, sampling FROM completions "
                          "WHERE id = ? ORDER BY choice", (cid,)).fetchall()


def test_models_lists_the_served_run(server: LiveServer) -> None:
    models = client(server).models.list().data
    assert [m.id for m in models] == ["tiny"]
    assert client(server).models.retrieve("tiny").id == "tiny"
    with pytest.raises(openai.NotFoundError):
        client(server).models.retrieve("gpt-4")


def test_a_completion_is_answered_and_recorded(server: LiveServer) -> None:
    out = client(server).chat.completions.create(model="tiny", messages=HELLO, max_tokens=6, temperature=0.8,
                                                  seed=1, user="someone")
    assert out.object == "chat.completion" and out.model == "tiny" and out.id.startswith("chatcmpl-")
    (choice,) = out.choices
    assert choice.message.role == "assistant" and choice.finish_reason in ("stop", "length")
    assert out.usage is not None and out.usage.prompt_tokens > 0
    assert 1 <= out.usage.completion_tokens <= 6
    assert out.usage.total_tokens == out.usage.prompt_tokens + out.usage.completion_tokens
    rows = recorded(server.run_dir, out.id)
    assert len(rows) == 1
    _, reply, version, finish, messages, sampling = rows[0]
    assert reply == choice.message.content and finish == choice.finish_reason
    assert version == "iter_0000000" and json.loads(messages) == HELLO
    assert json.loads(sampling) == {"temperature": 0.8, "top_p": 0.9, "max_tokens": 6, "stop": [], "seed": 1}


def test_n_choices_are_distinct_samples(server: LiveServer) -> None:
    out = client(server).chat.completions.create(model="tiny", messages=HELLO, n=4, max_tokens=8, temperature=1.0,
                                                  seed=3)
    assert [c.index for c in out.choices] == [0, 1, 2, 3]
    assert len({c.message.content for c in out.choices}) > 1  # four draws of gibberish do not all agree
    assert out.usage is not None
    assert out.usage.completion_tokens <= 4 * 8 and out.usage.completion_tokens >= 4
    assert [r[1] for r in recorded(server.run_dir, out.id)] == [c.message.content for c in out.choices]


def test_a_seed_repeats_a_reply_and_another_seed_does_not(server: LiveServer) -> None:
    def ask(seed: int) -> str:
        out = client(server).chat.completions.create(model="tiny", messages=HELLO, max_tokens=12, temperature=1.0,
                                                      seed=seed)
        return str(out.choices[0].message.content)

    first = ask(11)
    assert ask(11) == first
    assert any(ask(s) != first for s in (12, 13, 14))


def test_stop_strings_end_the_reply_before_them(server: LiveServer) -> None:
    c = client(server)
    full = ""
    for seed in range(20):  # a reply with two plain letters in the middle
        full = str(c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=16, temperature=1.0,
                                             seed=seed).choices[0].message.content)
        m = re.search(r"[A-Za-z]{2}", full[3:])
        if m:
            break
    else:
        pytest.fail("no reply with two plain letters after its third character")
    stop = m.group(0)
    out = c.chat.completions.create(model="tiny", messages=HELLO, max_tokens=16, temperature=1.0, seed=seed,
                                    stop=[stop, "\u2603never"])
    assert out.choices[0].message.content == full[:full.index(stop)].strip()
    assert out.choices[0].finish_reason == "stop"


def sse_events(server: LiveServer, body: dict) -> list[dict | str]:
    """The events of a streamed completion as parsed JSON (and the final ``[DONE]``)."""
    events: list[dict | str] = []
    with httpx.stream("POST", f"{server.url}/v1/chat/completions", json=body, timeout=120) as r:
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/event-stream")
        for line in r.iter_lines():
            if line.startswith("data: "):
                data = line.removeprefix("data: ")
                events.append(data if data == "[DONE]" else json.loads(data))
            else:
                assert line == "", line  # only data lines and the blank lines between events
    return events


def test_streaming_follows_the_contract(server: LiveServer) -> None:
    events = sse_events(server, {"model": "tiny", "messages": HELLO, "n": 2, "max_tokens": 10, "seed": 5,
                                 "stream": True, "stream_options": {"include_usage": True}})
    assert events[-1] == "[DONE]" and events.count("[DONE]") == 1
    chunks = [e for e in events[:-1] if isinstance(e, dict)]
    assert len(chunks) == len(events) - 1
    assert len({c["id"] for c in chunks}) == 1 and all(c["object"] == "chat.completion.chunk" for c in chunks)
    *body, last = chunks
    assert last["choices"] == [] and last["usage"]["total_tokens"] == (last["usage"]["prompt_tokens"]
                                                                      + last["usage"]["completion_tokens"])
    assert all(c["usage"] is None for c in body)  # with include_usage: null on every chunk but the last
    texts = {}
    for i in (0, 1):
        mine = [c["choices"][0] for c in body if c["choices"][0]["index"] == i]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}  # the first chunk carries the role
        ends = [k for k, ch in enumerate(mine) if ch["finish_reason"] is not None]
        assert ends == [len(mine) - 1]  # exactly once, on its last chunk
        assert mine[-1]["finish_reason"] in ("stop", "length")
        texts[i] = "".join(ch["delta"].get("content", "") for ch in mine)
    rows = recorded(server.run_dir, chunks[0]["id"])
    assert [r[1] for r in rows] == [texts[0], texts[1]]  # what was streamed is what was recorded


def test_streaming_without_usage_and_through_the_client(server: LiveServer) -> None:
    events = sse_events(server, {"model": "tiny", "messages": HELLO, "max_tokens": 4, "stream": True})
    assert all("usage" not in e for e in events if isinstance(e, dict))
    stream = client(server).chat.completions.create(model="tiny", messages=HELLO, max_tokens=8, stream=True,
                                                    stream_options={"include_usage": True}, seed=2)
    chunks = list(stream)
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    whole = client(server).chat.completions.create(model="tiny", messages=HELLO, max_tokens=8, seed=2)
    assert text == whole.choices[0].message.content  # streamed or not, the same reply for the same seed


def test_concurrent_requests_are_batched(server: LiveServer) -> None:
    async def run() -> list[str]:
        aclient = openai.AsyncOpenAI(base_url=f"{server.url}/v1", api_key="unused", max_retries=0, timeout=120)
        outs = await asyncio.gather(*[aclient.chat.completions.create(
            model="tiny", messages=[{"role": "user", "content": f"Hi {i}"}], max_tokens=8) for i in range(24)])
        await aclient.close()
        return [o.id for o in outs]

    before = batches(server)
    ids = asyncio.run(run())
    assert len(set(ids)) == 24
    after = batches(server)
    steps = after["count"] - before["count"]  # decoding steps, each observing the rows it decoded
    assert 8 <= after["sum"] - before["sum"] <= 24 * 8  # every generated token was decoded in some step
    assert after["1.0"] - before["1.0"] < steps  # and some steps decoded several requests together


def batches(server: LiveServer) -> dict[str, float]:
    """The batch-size histogram's count, sum and steps of one row (bucket le=1) from /metrics."""
    text = httpx.get(f"{server.url}/metrics").text

    def value(name: str) -> float:
        return float(re.search(rf"^{re.escape(name)} (\S+)$", text, re.M).group(1))  # type: ignore[union-attr]

    return {"count": value("lmpo_batch_size_count"), "sum": value("lmpo_batch_size_sum"),
            "1.0": value('lmpo_batch_size_bucket{le="1.0"}')}


def test_feedback_is_recorded_and_counted(server: LiveServer) -> None:
    out = client(server).chat.completions.create(model="tiny", messages=HELLO, max_tokens=4)
    r = httpx.post(f"{server.url}/v1/feedback", json={"completion_id": out.id, "rating": "up", "score": 4,
                                                      "comment": "nice"})
    assert r.status_code == 200 and r.json()["completion_id"] == out.id
    with sqlite3.connect(server.run_dir / "feedback.sqlite") as db:
        row = db.execute("SELECT thumb, score, comment FROM ratings WHERE completion_id = ?", (out.id,)).fetchone()
    assert row == (1, 4, "nice")
    metrics = httpx.get(f"{server.url}/metrics").text
    assert re.search(r'^lmpo_feedback_total\{kind="up"\} [1-9]', metrics, re.M)
    assert 'lmpo_model_info{name="tiny",version="iter_0000000"} 1.0' in metrics
    for name in ("lmpo_requests_total", "lmpo_request_latency_seconds_bucket", "lmpo_time_to_first_token_seconds_count",
                 "lmpo_generated_tokens_total", "lmpo_queue_length", "lmpo_completions_total"):
        assert name in metrics


def test_health_names_the_version(server: LiveServer) -> None:
    assert httpx.get(f"{server.url}/health").json() == {"status": "ok", "model": "tiny", "version": "iter_0000000",
                                                        "queued": 0}


def test_an_idle_connection_outlives_the_clients_keep_alive(server: LiveServer) -> None:
    # httpx (and so the openai client) reuses a connection idle for up to 5 s: a server closing it at the same moment
    # races the client's next request, which then fails with nothing answered
    conn = http.client.HTTPConnection(server.url.removeprefix("http://"), timeout=30)
    try:
        conn.request("GET", "/health")
        conn.getresponse().read()
        sock = conn.sock
        time.sleep(6.0)
        conn.request("GET", "/health")
        answer = conn.getresponse().read()  # a server that has closed the connection: RemoteDisconnected
        assert conn.sock is sock and b'"status":"ok"' in answer  # the same connection answered
    finally:
        conn.close()


def test_a_history_with_an_empty_assistant_reply_is_answered(server: LiveServer) -> None:
    history = [*HELLO, {"role": "assistant", "content": ""}, {"role": "user", "content": "Still there?"},
               {"role": "system", "content": "ignored: lmpo's models have no system prompt"}]
    out = client(server).chat.completions.create(model="tiny", messages=history, max_tokens=4)
    assert json.loads(recorded(server.run_dir, out.id)[0][4]) == history  # recorded as the client sent it
