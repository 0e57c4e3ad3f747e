"""``lmpo/Prompts-v0``: prompts from JSONL and from local ``datasets`` files, their columns as reward fields, the
held-out split, and one-line errors for data that cannot be used."""

import json
from pathlib import Path

import pytest

from lmpo.data.corpus import CorpusError, Turn
from lmpo.envs.prompts import Prompts, PromptsSettings

ROWS = [{"prompt": f"What is {i} plus {i}?", "answer": str(2 * i), "completion": f"It is {2 * i}."} for i in range(40)]


def _jsonl(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_jsonl_prompts_columns_and_heldout_split(tmp_path: Path) -> None:
    env = Prompts(PromptsSettings(path=str(_jsonl(tmp_path / "p.jsonl", ROWS)), heldout_fraction=0.25))
    train, held = env.examples("train"), env.examples("heldout")
    assert len(train) + len(held) == 40 and 4 <= len(held) <= 16
    assert not {e["prompt"] for e in train} & {e["prompt"] for e in held}
    conv = env.conversation()
    assert conv.reset(train[0]) == [Turn("user", train[0]["prompt"])]
    step = conv.step("It is 4.")
    assert step.done and step.turns == []
    # pre-training is each prompt with its completion
    assert env.pretraining("train")[0] == (Turn("user", train[0]["prompt"]), Turn("assistant", train[0]["completion"]))


def test_chat_message_prompts_drop_system_and_end_with_the_user(tmp_path: Path) -> None:
    rows = [{"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
                          {"role": "assistant", "content": "Hello!"}, {"role": "user", "content": "Capital of Peru?"}],
             "answer": "Lima"}]
    env = Prompts(PromptsSettings(path=str(_jsonl(tmp_path / "m.jsonl", rows)), heldout_fraction=0.0))
    assert env.conversation().reset(env.examples("train")[0]) == [
        Turn("user", "Hi"), Turn("assistant", "Hello!"), Turn("user", "Capital of Peru?")]
    bad = [{"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello!"}]}]
    with pytest.raises(CorpusError, match="row 1: the prompt's last message must be the user's"):
        Prompts(PromptsSettings(path=str(_jsonl(tmp_path / "bad.jsonl", bad))))


@pytest.mark.parametrize(("rows", "match"), [
    ([{"question": "no prompt column"}], "row 1: expected a non-empty string 'prompt'.*columns: question"),
    ([{"prompt": ""}], "row 1: expected a non-empty string 'prompt'"),
])
def test_unusable_rows_are_one_line_errors(tmp_path: Path, rows: list[dict], match: str) -> None:
    with pytest.raises(CorpusError, match=match):
        Prompts(PromptsSettings(path=str(_jsonl(tmp_path / "p.jsonl", rows))))


def test_unusable_files_are_one_line_errors(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match="prompt data not found"):
        Prompts(PromptsSettings(path=str(tmp_path / "missing.jsonl")))
    (tmp_path / "broken.jsonl").write_text('{"prompt": "ok"}\n{"prompt": \n')
    with pytest.raises(CorpusError, match=r"broken.jsonl:2: not valid JSON"):
        Prompts(PromptsSettings(path=str(tmp_path / "broken.jsonl")))
    (tmp_path / "notes.txt").write_text("hello")
    with pytest.raises(CorpusError, match="unknown data file type '.txt'"):
        Prompts(PromptsSettings(path=str(tmp_path / "notes.txt")))
    with pytest.raises(CorpusError, match="no training prompts"):
        Prompts(PromptsSettings(path=str(_jsonl(tmp_path / "empty.jsonl", []))))


def test_local_datasets_directory_and_data_files(tmp_path: Path) -> None:
    datasets = pytest.importorskip("datasets")  # the `datasets` extra; installed by `make test`
    ds = datasets.Dataset.from_list(ROWS)
    ds.save_to_disk(str(tmp_path / "saved"))
    datasets.DatasetDict({"train": ds, "test": ds.select(range(5))}).save_to_disk(str(tmp_path / "dict"))
    ds.to_parquet(str(tmp_path / "p.parquet"))
    ds.to_csv(str(tmp_path / "p.csv"), index=False)
    for path, split in (("saved", "train"), ("p.parquet", "train"), ("p.csv", "train"), ("dict", "test")):
        env = Prompts(PromptsSettings(path=str(tmp_path / path), split=split, heldout_fraction=0.0))
        rows = env.examples("train")
        assert len(rows) == (5 if split == "test" else 40), path
        assert rows[3]["prompt"] == ROWS[3]["prompt"] and str(rows[3]["answer"]) == ROWS[3]["answer"], path
    with pytest.raises(CorpusError, match="cannot read split 'validation'"):
        Prompts(PromptsSettings(path=str(tmp_path / "dict"), split="validation"))


def test_heldout_file_and_a_saved_run(tmp_path: Path) -> None:
    settings = PromptsSettings(path=str(_jsonl(tmp_path / "train.jsonl", ROWS[:30])),
                               heldout_path=str(_jsonl(tmp_path / "held.jsonl", ROWS[30:])))
    env = Prompts(settings)
    assert [e["prompt"] for e in env.examples("heldout")] == [r["prompt"] for r in ROWS[30:]]
    env.save(tmp_path)
    for name in ("train.jsonl", "held.jsonl"):
        (tmp_path / name).unlink()
    again = Prompts(settings, run_dir=tmp_path)  # the run reads its own copy: the dataset may be gone
    assert again.examples("train") == env.examples("train") and again.examples("heldout") == env.examples("heldout")


def test_corpus_prompts_by_default() -> None:
    env = Prompts(PromptsSettings())
    example = env.examples("train")[0]
    assert example["_turns"][-1] == Turn("user", example["prompt"]) and isinstance(example["completion"], str)
    held = {e["prompt"] for e in env.examples("heldout")}
    assert held and held.isdisjoint({e["prompt"] for e in env.examples("train")})
    assert len(Prompts(PromptsSettings(pretrain_on="corpus")).pretraining("train")) < len(env.pretraining("train"))
    corpus = Prompts(PromptsSettings(pretrain_on="corpus"))
    said = {t.content for d in corpus.pretraining("train") for t in d if t.role == "user"}
    assert said.isdisjoint(held)  # pre-training never says a held-out prompt
