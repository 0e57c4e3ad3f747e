"""The generation engine: what a streamed reply may show, tool calls answered on the server, model swaps."""

from __future__ import annotations

import dataclasses
import json
import sqlite3
import threading
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from fastapi.testclient import TestClient

from lmpo.api import served_model
from lmpo.data import Turn
from lmpo.data.tokenizer import decode_reply
from lmpo.envs.support import Support, SupportSettings
from lmpo.envs.text import MAX_TOOL_CALLS
from lmpo.policies import GPT, GPTConfig, LMPolicy, SamplingConfig, generate
from lmpo.policies.generation import cache_row, left_pad
from lmpo.policies.hf import HFCausalLM
from lmpo.serve import FeedbackStore, ServeSettings, create_app
from lmpo.serve.engine import Choice, Engine, Event, Kept, Row, Sampling, ServedModel
from lmpo.serve.worker import EngineProcess, ModelSource


@pytest.fixture(scope="module")
def model(text_run: Path) -> ServedModel:
    return served_model(text_run)


def with_tool(model: ServedModel, answers: list[Turn], start: str | None = None) -> ServedModel:
    """The model with a tool that answers the first len(answers) replies it sees with ``answers``, in order."""
    left = list(answers)
    return dataclasses.replace(model, tool=lambda reply: left.pop(0) if left else None, tool_call_start=start)


def run(engine: Engine, choice_args: list[tuple[list[Turn], Sampling]]) -> list[tuple[Choice, list[Event]]]:
    """Submit choices and wait until every one has ended."""
    done = threading.Semaphore(0)
    out: list[tuple[Choice, list[Event]]] = []
    for history, sampling in choice_args:
        events: list[Event] = []

        def emit(ev: Event, events: list[Event] = events) -> None:
            events.append(ev)
            if ev.finish_reason or ev.error:
                done.release()

        out.append((Choice(history, sampling, emit), events))
    engine.submit([c for c, _ in out])
    for _ in out:
        assert done.acquire(timeout=120)
    return out


@pytest.mark.parametrize(("text", "shown", "stopped"), [
    ("Hello there", "Hello there", False),
    ("Hello <en", "Hello ", False),  # may become the stop string: held back
    ("Hello <end> more", "Hello ", True),
    ("Caf\ufffd", "Caf", False),  # a character not fully decoded yet
])
def test_what_a_stream_may_show(model: ServedModel, text: str, shown: str, stopped: bool) -> None:
    choice = Choice([], Sampling(stop=("<end>",)), lambda ev: None)
    assert choice.visible(text, model, final=False) == (shown, stopped)


@pytest.mark.parametrize(("text", "held"), [("", True), ("  [", True), ("[look", True), ("[lookup: x]", True),
                                            ("Your order", False), ("  Sure [lookup", False)])
def test_a_possible_tool_call_is_held_until_its_pass_ends(model: ServedModel, text: str, held: bool) -> None:
    tooled = with_tool(model, [], start="[")
    choice = Choice([], Sampling(), lambda ev: None)
    assert (choice.visible(text, tooled, final=False) == ("", False)) == held
    assert choice.visible(text, tooled, final=True)[0] == text  # at the end of a pass, all of it


def test_a_tool_call_is_answered_on_the_server_and_kept_in_the_record(model: ServedModel) -> None:
    kb = Support(SupportSettings(products=20, orders=20, transcripts=10), seed=0)
    name = kb.kb.rows[0]["name"]
    result = kb.tool(f"[lookup: {name}]")
    assert result is not None and name in result.content
    engine = Engine(with_tool(model, [result]), max_batch=4)
    try:
        [(choice, events)] = run(engine, [([Turn("user", "How much is it?")], Sampling(max_tokens=6, seed=None))])
    finally:
        engine.close()
    assert len(choice.lookups) == 1 and choice.lookups[0]["result"] == result.content
    assert choice.history[-1] == result and choice.history[-2].role == "assistant"  # the call, then the tool's turn
    text = "".join(e.delta for e in events)
    assert text == choice.reply  # the client hears the answer only, never the call
    assert choice.completion_tokens > len(choice.lookups[0]["call"].split())  # both passes' tokens are counted
    assert events[-1].finish_reason in ("stop", "length")


def test_the_recorded_completion_keeps_the_lookups(model: ServedModel, tmp_path: Path) -> None:
    lookup = Turn("tool", "Widget | price: 3 EUR")
    app = create_app(with_tool(model, [lookup]), FeedbackStore(tmp_path / "fb.sqlite"), ServeSettings())
    with TestClient(app) as http:
        r = http.post("/v1/chat/completions", json={"model": "tiny", "messages": [{"role": "user", "content": "Hi"}],
                                                     "max_tokens": 5})
    assert r.status_code == 200, r.text
    with sqlite3.connect(tmp_path / "fb.sqlite") as db:
        reply, lookups = db.execute("SELECT reply, lookups FROM completions").fetchone()
    assert reply == r.json()["choices"][0]["message"]["content"]
    [made] = json.loads(lookups)
    assert made["result"] == lookup.content and made["call"]


def test_batches_hold_many_choices_and_a_swap_takes_the_next_batch(model: ServedModel) -> None:
    sizes: list[int] = []
    engine = Engine(model, max_batch=8, window_s=0.2, on_batch=sizes.append)
    try:
        first = run(engine, [([Turn("user", f"hi {i}")], Sampling(max_tokens=4)) for i in range(6)])
        assert sizes[0] == 6 and len(sizes) <= 4  # six choices queued together: one batch, one step per token
        engine.swap(dataclasses.replace(model, version="iter_0000009"))
        assert engine.version == "iter_0000009"
        sizes.clear()
        second = run(engine, [([Turn("user", "hi")], Sampling(max_tokens=4))])
    finally:
        engine.close()
    assert {c.version for c, _ in first} == {"iter_0000000"} and second[0][0].version == "iter_0000009"
    assert set(sizes) == {1}


def test_max_batch_one_decodes_one_choice_at_a_time(model: ServedModel) -> None:
    sizes: list[int] = []
    engine = Engine(model, max_batch=1, window_s=0.0, on_batch=sizes.append)
    try:
        run(engine, [([Turn("user", "hi")], Sampling(max_tokens=3)) for _ in range(3)])
    finally:
        engine.close()
    assert set(sizes) == {1} and 3 <= len(sizes) <= 9  # one choice at a time, up to three tokens each


def tiny_gpt(model: ServedModel) -> ServedModel:
    """The tiny run's tokenizer and chat format with a random two-layer GPT (rotary positions): a KV cache."""
    torch.manual_seed(0)
    p = model.policy
    body = GPT(GPTConfig(p.body.vocab_size, 2, 2, 32, 256, 0.0, "rotary"))
    with torch.no_grad():  # weights far from GPT-2's small init: every reply token depends on the whole context
        for w in body.parameters():
            w.mul_(25)
    return dataclasses.replace(model, policy=LMPolicy(body, p.pad_id, p.eos_id, stop_ids=p.stop_ids).eval(),
                               max_positions=256)


def tiny_hf(model: ServedModel, name: str, **extra: int) -> ServedModel:
    """The tiny run's tokenizer and chat format with a random two-layer Hugging Face model ``name`` (grouped-query
    attention): lmpo's cache behind transformers' interface."""
    import transformers

    torch.manual_seed(0)
    p = model.policy
    config = getattr(transformers, f"{name}Config")(
        vocab_size=p.body.vocab_size, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=256, **extra)
    hf = getattr(transformers, f"{name}ForCausalLM")(config)
    with torch.no_grad():  # as tiny_gpt's: every reply token depends on the whole context
        for w in hf.parameters():
            w.mul_(8)
    policy = LMPolicy(HFCausalLM(hf), p.pad_id, p.eos_id, stop_ids=p.stop_ids).eval()
    return dataclasses.replace(model, policy=policy, max_positions=256)


SERVED = {"gpt": tiny_gpt, "llama": partial(tiny_hf, name="Llama"),
          "mistral": partial(tiny_hf, name="Mistral", sliding_window=6)}  # a window shorter than every prompt


@pytest.mark.parametrize("kind", ["gru", "gpt", "llama", "mistral"])
def test_rows_joining_and_leaving_a_batch_decode_what_generate_decodes(model: ServedModel, kind: str) -> None:
    """Greedy replies of choices that join a running batch at different steps (prompts of different lengths) and
    leave it at different steps are the replies ``generate`` gives each prompt alone."""
    served = model if kind == "gru" else SERVED[kind](model)
    lines = ["Hello", "How are you doing today, my friend?", "Hi", "What is the weather like where you live?", "Yo"]
    lengths = [24, 5, 17, 9, 30]
    sizes: list[int] = []
    engine = Engine(served, max_batch=8, window_s=0.0, on_batch=sizes.append)
    results = []
    try:
        for line, n in zip(lines, lengths, strict=True):  # one at a time: each joins the batch in flight
            done = threading.Event()
            events: list[Event] = []

            def emit(ev: Event, events: list[Event] = events, done: threading.Event = done) -> None:
                events.append(ev)
                if ev.finish_reason or ev.error:
                    done.set()

            choice = Choice([Turn("user", line)], Sampling(temperature=0.0, max_tokens=n), emit)
            results.append((choice, done))
            steps = len(sizes)
            engine.submit([choice])
            deadline = time.monotonic() + 60
            while len(sizes) < steps + 2 and not done.is_set():  # decoding has gone on: the next one joins it
                assert time.monotonic() < deadline
                time.sleep(0.0005)
        for _, done in results:
            assert done.wait(120)
    finally:
        engine.close()
    assert any(b > a for a, b in zip(sizes, sizes[1:]))  # rows joined a batch in flight
    assert any(b < a for a, b in zip(sizes, sizes[1:]))  # and left it before it ended
    policy = served.policy
    for (choice, _), line, n in zip(results, lines, lengths, strict=True):
        prompt = served.chat.opening([Turn("user", line)])
        gen = generate(policy, left_pad([prompt], policy.pad_id), SamplingConfig(temperature=0.0, max_new_tokens=n))
        alone = decode_reply(served.tokenizer, gen.tokens[0, gen.mask[0] > 0].tolist())
        assert choice.reply == alone, line


@pytest.mark.parametrize("kind", ["gpt", "llama"])
def test_a_reply_goes_on_after_its_lookups_from_what_it_had_read(model: ServedModel, monkeypatch: pytest.MonkeyPatch,
                                                                 kind: str) -> None:
    """After a lookup, a reply's next pass reads only what follows what the model had read (its cache is kept), and
    decodes what reading the whole conversation afresh decodes: greedy replies with two lookups each, in a batch
    where rows join and leave, equal ``generate`` on each pass's whole prompt."""
    result = Turn("tool", "Widget | price: 3 EUR")
    served = dataclasses.replace(SERVED[kind](model), tool=lambda reply: result, tool_call_start=None)
    read_on: list[int] = []
    original = Engine._read_on

    def counted(model: ServedModel, rows: list) -> object:
        read_on.append(len(rows))
        return original(model, rows)

    monkeypatch.setattr(Engine, "_read_on", staticmethod(counted))
    lines, lengths = ["Hello", "How are you doing today, my friend?", "Hi", "What is the weather like?"], [7, 4, 9, 5]
    engine = Engine(served, max_batch=8, window_s=0.0)
    try:
        ended = run(engine, [([Turn("user", line)], Sampling(temperature=0.0, max_tokens=n))
                             for line, n in zip(lines, lengths, strict=True)])
    finally:
        engine.close()
    assert read_on  # (a random model's replies mostly read back as other tokens: those passes read it all afresh)
    policy = served.policy
    for (choice, _), line, n in zip(ended, lines, lengths, strict=True):
        history, calls = [Turn("user", line)], []
        for _ in range(MAX_TOOL_CALLS + 1):  # every reply calls the tool, up to the limit; then the answer
            prompt = served.chat.opening(history)[-min(served.max_context, 256 - n):]  # as the server cuts it
            gen = generate(policy, left_pad([prompt], policy.pad_id), SamplingConfig(temperature=0.0, max_new_tokens=n))
            reply = decode_reply(served.tokenizer, gen.tokens[0, gen.mask[0] > 0].tolist())
            calls.append(reply)
            history += [Turn("assistant", reply), result]
        assert [lk["call"] for lk in choice.lookups] == calls[:-1], line
        assert choice.reply == calls[-1], line


@pytest.mark.parametrize("kind", ["gpt", "llama"])
@torch.no_grad()
def test_reading_on_from_a_kept_cache_gives_what_reading_afresh_gives(model: ServedModel, kind: str) -> None:
    """Rows that go on from kept caches of different lengths, with new text of different lengths (left-padded after
    their caches), get the next-token logits of their whole prompts read afresh."""
    served = SERVED[kind](model)
    enc = served.tokenizer
    calls = ["[lookup: price of Widget]", "[lookup: delivery of the Golden Brass Backpack]", "[lookup: x]"]
    lines = ["Hello", "How are you doing today, my friend?", "Hi"]
    befores = [served.chat.opening([Turn("user", line)]) + enc.encode(call, add_special_tokens=False)
               for line, call in zip(lines, calls, strict=True)]
    # read in one left-padded batch: each row's kept cache is its own real tokens only
    read = Engine._read(served, [Row(Choice([], Sampling(), lambda ev: None), b) for b in befores])
    assert len(set(map(len, befores))) == len(befores)
    rows, kept = [], []
    for i, (line, call, before) in enumerate(zip(lines, calls, befores, strict=True)):
        kept.append(Kept(served, before, cache_row(read.cache, i, read.mask[i])))
        result = Turn("tool", "Widget | price: 3 EUR. " * (1 + len(line) % 3))
        history = [Turn("user", line), Turn("assistant", call), result]
        rows.append(Row(Choice(history, Sampling(), lambda ev: None), served.chat.opening(history)))
        assert rows[-1].prompt[:len(before)] == before  # the new prompt starts with what was read
    for row, k in zip(rows, kept, strict=True):
        row.choice.kept = k
        assert Engine._goes_on(served, row)
    on = Engine._read_on(served, rows)
    afresh = Engine._read(served, rows)
    assert torch.allclose(on.logits, afresh.logits, atol=1e-4, rtol=1e-4)
    # and a decoding step from either cache gives the same next logits
    step = on.logits.argmax(-1)
    for batch in (on, afresh):
        mask = torch.cat([batch.mask, torch.ones(len(rows), 1, dtype=torch.bool)], 1)
        batch.logits = served.policy.body(step.unsqueeze(1), mask, batch.cache)[0][:, -1]
    assert torch.allclose(on.logits, afresh.logits, atol=1e-4, rtol=1e-4)


def test_a_reply_with_lookups_ends_on_the_model_that_began_it(model: ServedModel) -> None:
    """A reload that arrives between a reply's lookup and its answer waits for the answer: one model per reply."""
    lookup = Turn("tool", "Widget | price: 3 EUR")
    started = threading.Event()
    engine = Engine(with_tool(model, [lookup, lookup]), max_batch=4, on_batch=lambda n: started.set())
    try:
        done = threading.Event()
        choice = Choice([Turn("user", "How much?")], Sampling(max_tokens=6),
                        lambda ev: done.set() if ev.finish_reason or ev.error else None)
        engine.submit([choice])
        assert started.wait(60)  # its first pass is being decoded by the old model
        engine.swap(dataclasses.replace(with_tool(model, []), version="iter_0000009"))
        assert done.wait(120)
        assert len(choice.lookups) == 2 and choice.version == "iter_0000000"
        after = run(engine, [([Turn("user", "hi")], Sampling(max_tokens=3))])
        assert after[0][0].version == "iter_0000009"  # and the new model takes over after it
    finally:
        engine.close()


def test_the_worker_process_answers_forgets_cancelled_choices_and_closes(text_run: Path) -> None:
    """``lmpo serve``'s engine in a process of its own: choices are answered across the pipe with their outcome;
    cancelled ones are forgotten on both sides (a client that leaves costs nothing after), and it closes cleanly."""
    ended: list[Event] = []
    engine = EngineProcess(ModelSource(partial(served_model, text_run), threads=1), max_batch=4)
    try:
        assert (engine.name, engine.version) == ("tiny", "iter_0000000")
        long = [Choice([Turn("user", "Hello")], Sampling(max_tokens=100_000), ended.append) for _ in range(3)]
        engine.submit(long)
        engine.cancel(long)
        assert not engine._live and not engine._key_of  # nothing kept for them
        done = threading.Event()
        choice = Choice([Turn("user", "Hi")], Sampling(temperature=0.0, max_tokens=5),
                        lambda ev: done.set() if ev.finish_reason or ev.error else None)
        engine.submit([choice])
        assert done.wait(60)
        assert choice.finish_reason in ("stop", "length") and choice.version == "iter_0000000"
        assert choice.completion_tokens >= 1 and choice.prompt_tokens > 0  # the outcome came back from the worker
    finally:
        engine.close()
    assert not engine._proc.is_alive() and engine._proc.exitcode == 0
