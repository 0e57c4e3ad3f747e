"""Preference pairs: TRL's JSONL formats, pairs built from a dialogue corpus, and the held-out split."""

import json
from pathlib import Path

import pytest

from lmpo.data.corpus import CorpusError, Turn, load_chatterbot
from lmpo.data.preferences import Pair, corpus_pairs, load_pairs, split_pairs


def _write(path: Path, rows: list) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_plain_chat_and_implicit_prompt_pairs(tmp_path: Path) -> None:
    pairs = load_pairs(_write(tmp_path / "p.jsonl", [
        {"prompt": "Hi", "chosen": "Hello!", "rejected": "Go away."},
        {"prompt": [{"role": "system", "content": "Be kind."}, {"role": "user", "content": "Hi"}],
         "chosen": [{"role": "assistant", "content": "Hello!"}], "rejected": [{"role": "assistant", "content": "No."}]},
        {"chosen": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}],
         "rejected": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "No."}]},
    ]))
    assert pairs[0] == Pair((Turn("user", "Hi"),), (Turn("assistant", "Hello!"),), (Turn("assistant", "Go away."),))
    assert pairs[1].context == (Turn("user", "Hi"),)  # the system message dropped
    assert pairs[2].context == () and pairs[2].chosen[0] == Turn("user", "Hi")


@pytest.mark.parametrize(("row", "match"), [
    ({"prompt": "Hi", "chosen": "Hello!"}, ":1: expected an object with 'chosen' and 'rejected'"),
    ({"prompt": "Hi", "chosen": "", "rejected": "No."}, ":1: 'chosen' is empty"),
    ({"prompt": "Hi", "chosen": [{"role": "robot", "content": "x"}], "rejected": "No."}, "needs a role"),
    ({"prompt": 3, "chosen": "a", "rejected": "b"}, "'prompt' must be a non-empty string or list"),
])
def test_bad_pairs_are_one_line_errors(tmp_path: Path, row: dict, match: str) -> None:
    with pytest.raises(CorpusError, match=match):
        load_pairs(_write(tmp_path / "bad.jsonl", [row]))


def test_corpus_pairs_reject_only_wrong_replies_and_split_by_opening() -> None:
    dialogues = list(dict.fromkeys(load_chatterbot(["greetings", "food", "sports"])))
    pairs = corpus_pairs(dialogues, negatives=3, seed=1)
    answers: dict[str, set[str]] = {}
    for d in dialogues:
        for i in range(0, len(d) - 1, 2):
            answers.setdefault(d[i].content.lower().strip("?!. "), set()).add(d[i + 1].content)
    assert len(pairs) > 3 * len(dialogues) // 2
    for p in pairs:
        line = p.context[-1].content.lower().strip("?!. ")
        assert p.chosen[0].content in answers[line] and p.rejected[0].content not in answers[line]
    train, held = split_pairs(pairs, 0.3)
    assert held and train and len(train) + len(held) == len(pairs)
    assert {p.context[0] for p in train}.isdisjoint({p.context[0] for p in held})
    assert corpus_pairs(dialogues, 3, seed=1) == pairs  # deterministic
