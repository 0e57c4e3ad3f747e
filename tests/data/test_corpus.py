"""Corpora: chatterbot-corpus loading, JSONL validation, the deterministic split."""

import json
from pathlib import Path

import pytest

from lmpo.data import CorpusError, Turn, load_chatterbot, load_jsonl, split_dialogues


def test_chatterbot_all_categories() -> None:
    dialogues = load_chatterbot()
    assert len(dialogues) > 1500
    for d in dialogues:
        assert len(d) >= 2 and d[0].role == "user"
        assert all(t.role == ("user" if i % 2 == 0 else "assistant") for i, t in enumerate(d))
        assert all(t.content for t in d)
    ai = load_chatterbot(["ai"])
    assert ai[0] == (Turn("user", "What is AI?"), ai[0][1]) and 0 < len(ai) < len(dialogues)
    with pytest.raises(CorpusError, match="unknown chatterbot-corpus categories"):
        load_chatterbot(["no-such-category"])


def test_jsonl_roundtrip_and_system_messages(tmp_path: Path) -> None:
    path = tmp_path / "d.jsonl"
    rows = [{"messages": [{"role": "system", "content": "be nice"}, {"role": "user", "content": " hi "},
                          {"role": "assistant", "content": "hello"}]},
            {"messages": [{"role": "user", "content": "a"}, {"role": "assistant", "content": "b"},
                          {"role": "user", "content": "c"}, {"role": "assistant", "content": "d"}]}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n\n")
    d = load_jsonl(path)
    assert d[0] == (Turn("user", "hi"), Turn("assistant", "hello")) and len(d[1]) == 4


@pytest.mark.parametrize(("line", "message"), [
    ("{not json", "line 1|:1: not valid JSON"),
    ('{"msgs": []}', "'messages' list"),
    ('{"messages": [{"role": "bot", "content": "x"}]}', "unknown role 'bot'"),
    ('{"messages": [{"role": "assistant", "content": "x"}, {"role": "user", "content": "y"}]}',
     "should be from the user"),
    ('{"messages": [{"role": "user", "content": "only"}]}', "needs a user message and an assistant reply"),
    ('{"messages": [{"role": "user", "content": 3}]}', "string 'content'"),
])
def test_jsonl_errors_name_file_and_line(tmp_path: Path, line: str, message: str) -> None:
    path = tmp_path / "bad.jsonl"
    path.write_text(line + "\n")
    with pytest.raises(CorpusError) as err:
        load_jsonl(path)
    assert f"{path}:1" in str(err.value)
    assert any(part in str(err.value) for part in message.split("|"))


def test_missing_jsonl(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="not found"):
        load_jsonl(tmp_path / "none.jsonl")


def test_split_is_deterministic_disjoint_and_stable() -> None:
    dialogues = load_chatterbot()
    train, held = split_dialogues(dialogues, 0.1)
    assert len(train) + len(held) == len(dialogues)
    # the corpus repeats conversations across files; a repeat always lands on the same side (no leakage)
    assert not set(train) & set(held)
    assert 0.06 < len(set(held)) / len(set(dialogues)) < 0.14
    assert split_dialogues(dialogues, 0.1) == (train, held)
    # a conversation's side does not depend on the others: split a subset, get the same sides
    sub_train, sub_held = split_dialogues(dialogues[::3], 0.1)
    assert set(sub_held) <= set(held) and set(sub_train) <= set(train)
    assert split_dialogues(dialogues, 0.0)[1] == []
    with pytest.raises(ValueError):
        split_dialogues(dialogues, 1.0)
