"""``lmpo/Prompts-v0``: single-turn prompts from a dataset; the reward functions judge each completion.

A row is ``{"prompt": "..."}`` or ``{"messages": [{"role": ..., "content": ...}, ...]}`` plus any other columns
(``answer``, ``references``, ...), which reach the reward functions as keyword arguments (TRL's convention). Rows come
from a JSONL file (read by lmpo itself), or from a local Hugging Face ``datasets`` directory (``save_to_disk``) or
data file (``.json``, ``.jsonl``, ``.csv``, ``.parquet``; the ``datasets`` extra); nothing is downloaded. With no
``path`` the prompts are the user lines of the dialogue corpus (chatterbot-corpus or ``corpus_jsonl``), each with the
corpus's reply as its ``completion``. A row's ``completion`` (when present) is what the model is pre-trained on.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any, ClassVar, Literal

from pydantic import Field

from lmpo.data.corpus import CorpusError, Dialogue, Turn, jsonl_objects, load_chatterbot, load_jsonl, split_dialogues
from lmpo.data.matching import normalize
from lmpo.data.tokenizer import train_tokenizer
from lmpo.envs.text import EnvSettings, Example, TextStep, TokenTextEnv

SAVED_PROMPTS = "prompts.jsonl"  # the examples of both splits, saved in the run: a finished run needs no dataset
DATA_FILES = {".json": "json", ".jsonl": "json", ".csv": "csv", ".parquet": "parquet", ".arrow": "arrow"}


class PromptsSettings(EnvSettings):
    path: str | None = Field(None, description="JSONL file, local `datasets` directory or data file (.json, .jsonl, "
                             ".csv, .parquet) of prompts; None: the dialogue corpus's user lines.")
    split: str = Field("train", description="The `datasets` split to read from a dataset directory or data file.")
    heldout_path: str | None = Field(None, description="Held-out prompts in the same formats (None: heldout_fraction "
                                     "of path's rows, chosen by a hash of the prompt).")
    heldout_fraction: float = Field(0.1, ge=0, lt=1, description="Share of prompts held out when heldout_path is None.")
    prompt_column: str = Field("prompt", description="Column of plain-text prompts.")
    messages_column: str = Field("messages", description="Column of chat-message prompts (used when a row has no "
                                 "prompt_column); system messages are dropped, the last message must be the user's.")
    completion_column: str = Field("completion", description="Column of reference replies, pre-trained on when "
                                   "text.pretrain.epochs > 0.")
    corpus_jsonl: str | None = Field(None, description="path None: chat-messages JSONL dialogues instead of the "
                                     "chatterbot corpus.")
    pretrain_on: Literal["completions", "corpus"] = Field(
        "completions", description="Pre-training dialogues: each prompt with its completion, or (path None) the "
        "corpus's whole dialogues.")
    max_examples: int | None = Field(None, ge=1, description="Keep only the first this many rows of path.")


class PromptConversation:
    """One prompt, one completion: the episode ends after the reply."""

    def __init__(self) -> None:
        self.done = True

    def reset(self, example: Example) -> list[Turn]:
        """The prompt's turns."""
        self.done = False
        return list(example["_turns"])

    def step(self, reply: str) -> TextStep:
        """The reply ends the episode; the rewards read the example's columns."""
        if self.done:
            raise RuntimeError("the conversation is over")
        self.done = True
        return TextStep([], True, {})


def prompt_turns(row: dict[str, Any], s: PromptsSettings, where: str) -> tuple[Turn, ...]:
    """A row's prompt as turns: its plain prompt as a user turn, or its chat messages (system ones dropped)."""
    prompt = row.get(s.prompt_column)
    if isinstance(prompt, str) and prompt.strip():
        return (Turn("user", prompt.strip()),)
    messages = row.get(s.messages_column)
    if prompt is None and isinstance(messages, list):
        turns: list[Turn] = []
        for m in messages:
            role = m.get("role") if isinstance(m, dict) else None
            if role == "system":
                continue
            if role not in ("user", "assistant", "tool") or not isinstance(m.get("content"), str):
                raise CorpusError(f"{where}: every message needs a role (user, assistant, tool or system) and a "
                                  "string content")
            turns.append(Turn(role, m["content"].strip()))
        if turns and turns[-1].role == "user":
            return tuple(turns)
        raise CorpusError(f"{where}: the prompt's last message must be the user's")
    raise CorpusError(f"{where}: expected a non-empty string {s.prompt_column!r} or a {s.messages_column!r} list "
                      f"(columns: {', '.join(sorted(row)) or 'none'})")


def split_by_prompt(examples: list[Example], heldout_fraction: float) -> dict[str, list[Example]]:
    """Train and held-out examples by a hash of the prompt's last line (as the dialogue corpora are split): a
    prompt that repeats stays on one side, and the side never depends on the other rows."""
    keys = [e["_turns"][-1:] for e in examples]
    train, _ = split_dialogues(keys, heldout_fraction)
    kept = {id(k) for k in train}
    return {"train": [e for e, k in zip(examples, keys) if id(k) in kept],
            "heldout": [e for e, k in zip(examples, keys) if id(k) not in kept]}


def read_rows(path: str, split: str) -> list[dict[str, Any]]:
    """The rows of a JSONL file, or of a local ``datasets`` directory or data file (never downloaded)."""
    p = Path(path).expanduser()
    if not p.exists():
        raise CorpusError(f"prompt data not found: {path}")
    if p.is_file() and p.suffix == ".jsonl":
        return _jsonl_rows(p)
    if p.is_file() and p.suffix not in DATA_FILES:
        raise CorpusError(f"{path}: unknown data file type {p.suffix!r} (one of {', '.join(DATA_FILES)})")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")  # local data only: never reach for the hub
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    try:
        import datasets
    except ImportError:
        raise CorpusError(f"{path}: reading a dataset directory or {p.suffix or 'data'} file needs the datasets "
                          "package: pip install 'lmpo[datasets]'") from None
    try:
        if p.is_dir() and (p / "dataset_dict.json").is_file():
            data: Any = datasets.load_from_disk(str(p))[split]
        elif p.is_dir() and (p / "state.json").is_file():
            data = datasets.load_from_disk(str(p))
        elif p.is_dir():
            data = datasets.load_dataset(str(p), split=split)
        else:
            data = datasets.load_dataset(DATA_FILES[p.suffix], data_files=str(p), split=split)
    except (KeyError, ValueError, OSError, datasets.exceptions.DatasetGenerationError) as e:
        raise CorpusError(f"{path}: cannot read split {split!r} ({str(e).splitlines()[0] if str(e) else e!r})"
                          ) from None
    return [dict(row) for row in data]


def _jsonl_rows(path: Path) -> list[dict[str, Any]]:
    return [row for _, row in jsonl_objects(path)]


class Prompts:
    """Prompt datasets: one example per row, split into RL's prompts and held-out ones."""

    Settings: ClassVar[type[EnvSettings]] = PromptsSettings
    eval_splits: ClassVar[tuple[str, ...]] = ("train", "heldout")
    default_rewards: ClassVar[tuple[dict[str, Any], ...]] = ()  # a prompt dataset has no judge of its own
    tool_call_start: ClassVar[str | None] = None  # no tools

    def __init__(self, settings: Any, seed: int = 0, run_dir: Path | None = None) -> None:
        self.settings: PromptsSettings = settings
        saved = run_dir / SAVED_PROMPTS if run_dir is not None else None
        self.dialogues: list[Dialogue] = []
        if settings.path is None:  # pre-training may read the whole dialogues: loaded even when the run saved its rows
            corpus = load_jsonl(settings.corpus_jsonl) if settings.corpus_jsonl else load_chatterbot()
            self.dialogues = list(dict.fromkeys(corpus))
        if saved is not None and saved.is_file():
            self.splits = self._saved(saved)
        elif settings.path is None:
            self.splits = self._from_corpus()
        else:
            self.splits = self._from_files()
        if not self.splits["train"]:
            raise CorpusError(f"{settings.path or 'the corpus'}: no training prompts (an empty file, or "
                              "env.kwargs.heldout_fraction too large)")

    def _example(self, row: dict[str, Any], where: str) -> Example:
        """The row's columns and its prompt as turns (``_turns``: keys starting with ``_`` are not reward fields)."""
        return {**row, "_turns": prompt_turns(row, self.settings, where)}

    def _saved(self, path: Path) -> dict[str, list[Example]]:
        """The splits a run saved (``save``)."""
        out: dict[str, list[Example]] = {split: [] for split in self.eval_splits}
        for row in _jsonl_rows(path):
            turns = tuple(Turn(t["role"], t["content"]) for t in row.pop("_turns"))
            out[row.pop("_split")].append({**row, "_turns": turns})  # what _example made of the row
        return out

    def _from_files(self) -> dict[str, list[Example]]:
        s = self.settings
        assert s.path is not None
        rows = read_rows(s.path, s.split)[: s.max_examples]
        examples = [self._example(r, f"{s.path} row {i + 1}") for i, r in enumerate(rows)]
        if s.heldout_path is not None:
            held = [self._example(r, f"{s.heldout_path} row {i + 1}")
                    for i, r in enumerate(read_rows(s.heldout_path, s.split))]
            return {"train": examples, "heldout": held}
        return split_by_prompt(examples, s.heldout_fraction)

    def _from_corpus(self) -> dict[str, list[Example]]:
        """Every user line the corpus answers, with the dialogue before it, as a prompt; its reply the completion."""
        examples = [{"prompt": d[i].content, "completion": d[i + 1].content, "_turns": d[: i + 1]}
                    for d in self.dialogues for i in range(0, len(d) - 1, 2)]
        return split_by_prompt(examples, self.settings.heldout_fraction)

    def examples(self, split: str) -> list[Example]:
        """The examples of ``split`` ("train" or "heldout")."""
        return self.splits[split]

    def pretraining(self, split: str) -> list[Dialogue]:
        """Each prompt with its completion (rows without one are skipped), or the corpus's whole dialogues."""
        s = self.settings
        if s.pretrain_on == "corpus" and self.dialogues:  # training dialogues say no held-out prompt
            held = {" ".join(normalize(e["prompt"])) for e in self.splits["heldout"]}
            seen = [any(" ".join(normalize(t.content)) in held for t in d if t.role == "user") for d in self.dialogues]
            return [d for d, h in zip(self.dialogues, seen) if h == (split == "heldout")]
        return [(*e["_turns"], Turn("assistant", str(e[s.completion_column]).strip()))
                for e in self.splits[split] if isinstance(e.get(s.completion_column), str)]

    def tokenizer_texts(self) -> list[str]:
        """Every turn of every prompt, and the completions."""
        texts = [t.content for split in self.eval_splits for e in self.splits[split] for t in e["_turns"]]
        return texts + [t.content for d in self.pretraining("train") for t in d[-1:]]

    def conversation(self) -> PromptConversation:
        """A new single-turn episode."""
        return PromptConversation()

    def tool(self, reply: str) -> Turn | None:
        """Prompts have no tools."""
        return None

    def save(self, run_dir: Path) -> None:
        """Both splits' rows as ``prompts.jsonl``: the run needs no dataset to be evaluated or resumed."""
        lines = [json.dumps({**e, "_split": split, "_turns": [{"role": t.role, "content": t.content}
                                                                for t in e["_turns"]]}, default=str)
                 for split in self.eval_splits for e in self.splits[split]]
        (run_dir / SAVED_PROMPTS).write_text("\n".join(lines) + "\n", encoding="utf-8")


class PromptsEnv(TokenTextEnv):
    """The Gymnasium face: one token per step; ``reward(info)`` of the finished completion (0 by default)."""

    def __init__(self, tokenizer: Any = None, path: str | None = None, max_reply_tokens: int = 32,
                 max_len: int = 256, vocab_size: int = 2048) -> None:
        family = Prompts(PromptsSettings(path=path, heldout_fraction=0.0))
        tokenizer = tokenizer or train_tokenizer(family.tokenizer_texts(), vocab_size)
        super().__init__(family, tokenizer, lambda info: 0.0, "train", max_reply_tokens, max_len)
