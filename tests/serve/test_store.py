"""The feedback store, its export as training data, int8 serving, and the ``serve`` / ``feedback`` commands'
errors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from lmpo.api import served_model
from lmpo.cli import main
from lmpo.data.preferences import load_pairs
from lmpo.serve.export import preference_pairs, rated_replies
from lmpo.serve.store import FeedbackStore, Record, UnknownCompletion

HI = [{"role": "user", "content": "Hi"}]


def record(cid: str, choice: int, reply: str, messages: list | None = None) -> Record:
    return Record(cid, choice, "m", "iter_0000001", messages or HI, reply, "stop", 3, 4, {"temperature": 1.0})


@pytest.fixture
def store(tmp_path: Path) -> FeedbackStore:
    s = FeedbackStore(tmp_path / "sub" / "fb.sqlite")
    s.add_completions([record("a", 0, "Hello!"), record("a", 1, "Go away."), record("a", 2, "Hi there.")])
    s.add_completions([record("b", 0, "Fine.", [{"role": "user", "content": "How are you?"}])])
    return s


def test_ratings_need_a_recorded_choice_and_are_kept(store: FeedbackStore) -> None:
    with pytest.raises(UnknownCompletion):
        store.add_rating("zzz", 0, 1, None, None)
    with pytest.raises(UnknownCompletion):
        store.add_rating("a", 7, 1, None, None)  # a choice the completion does not have
    first = store.add_rating("a", 0, 1, None, "good")
    assert store.add_rating("a", 0, None, 5, None) == first + 1
    assert store.count("ratings") == 2 and store.count("completions") == 4
    with pytest.raises(ValueError, match="no table"):
        store.count("completions; DROP TABLE ratings")


def test_rated_values_mix_thumbs_and_scores(store: FeedbackStore) -> None:
    store.add_rating("a", 0, 1, 5, None)  # +1 and (5 - 3) / 2 = +1
    store.add_rating("a", 1, -1, 2, "rude")  # -1 and -0.5
    store.add_rating("b", 0, None, 3, None)  # 0
    values = {r.reply: r.value for r in store.rated_replies()}
    assert values == {"Hello!": 1.0, "Go away.": -0.75, "Fine.": 0.0}
    rows = list(rated_replies(store))
    assert rows[1]["comments"] == ["rude"] and rows[1]["thumbs"] == [-1] and rows[1]["scores"] == [2]


def test_pairs_come_from_replies_to_one_context_rated_differently(store: FeedbackStore, tmp_path: Path) -> None:
    store.add_rating("a", 0, 1, None, None)
    store.add_rating("a", 1, -1, None, None)
    store.add_rating("a", 2, 1, None, None)  # tied with "Hello!": no pair between them
    store.add_rating("b", 0, 1, None, None)  # alone in its context: no pair
    pairs = list(preference_pairs(store))
    assert {(p["chosen"][0]["content"], p["rejected"][0]["content"]) for p in pairs} == {
        ("Hello!", "Go away."), ("Hi there.", "Go away.")}
    assert all(p["prompt"] == HI for p in pairs)
    out = tmp_path / "pairs.jsonl"  # what lmpo train-rm reads
    out.write_text("".join(json.dumps(p) + "\n" for p in pairs))
    loaded = load_pairs(out)
    assert len(loaded) == 2 and loaded[0].context[0].content == "Hi"


def test_feedback_export_writes_jsonl(store: FeedbackStore, tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    store.add_rating("a", 0, 1, None, None)
    store.add_rating("a", 1, -1, None, None)
    store.close()
    run = tmp_path / "sub"
    for fmt, n in (("pairs", 1), ("ratings", 2)):
        out = tmp_path / f"{fmt}.jsonl"
        assert main(["feedback", "export", str(run), "--db", str(run / "fb.sqlite"), "--format", fmt,
                     "-o", str(out)]) == 0
        assert len(out.read_text().splitlines()) == n
        assert f"wrote {n} " in capsys.readouterr().out


def test_commands_refuse_what_they_cannot_serve_or_export(tmp_path: Path, capsys: pytest.CaptureFixture[str]
                                                         ) -> None:
    assert main(["feedback", "export", str(tmp_path)]) == 2
    assert "no feedback store" in capsys.readouterr().err
    assert main(["serve", str(tmp_path / "nowhere")]) == 2
    assert main(["serve", str(tmp_path), "--max-batch", "0"]) == 2
    assert "--max-batch must be at least 1" in capsys.readouterr().err


def test_int8_quantises_the_linear_layers_and_keeps_the_model(text_run: Path) -> None:
    full = served_model(text_run)
    small = served_model(text_run, quantize="int8")
    layers = list(small.policy.modules())
    assert not any(type(m) is torch.nn.Linear for m in layers)
    assert sum(isinstance(m, torch.ao.nn.quantized.dynamic.Linear) for m in layers) == sum(
        type(m) is torch.nn.Linear for m in full.policy.modules())
    ids = torch.tensor([full.chat.opening([])[-4:] * 2])
    mask = torch.ones_like(ids, dtype=torch.bool)
    with torch.no_grad():
        a = torch.log_softmax(full.policy.body(ids, mask)[0], -1)
        b = torch.log_softmax(small.policy.body(ids, mask)[0], -1)
    assert (a.exp() - b.exp()).abs().sum(-1).max() < 0.1  # next-token distributions within 0.1 total variation x2
    assert not torch.equal(a, b)  # and it is not the float32 model
