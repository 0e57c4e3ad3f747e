"""Dialogue corpora: the English chatterbot-corpus (shipped on PyPI) and users' own chat-messages JSONL.

A dialogue is a list of ``Turn(role, content)`` that starts with the user and alternates
user / assistant, the layout the chat format, the simulated user and pre-training all rely on.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import yaml

from lmpo.data.matching import normalize

Role = Literal["user", "assistant", "tool"]


@dataclass(frozen=True)
class Turn:
    """One utterance of a dialogue."""

    role: Role
    content: str


Dialogue = tuple[Turn, ...]


class CorpusError(ValueError):
    """A corpus file that cannot be used; the message names the file and the line or conversation."""


def read_utf8(path: Path, error: type[ValueError] = CorpusError) -> str:
    """A data file's text; not UTF-8 (naming the line of the first bad byte) or unreadable is an ``error``."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise error(f"cannot read {path}: {e.strerror}") from None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data[:e.start].count(b"\n") + 1
        raise error(f"{path}:{line}: not UTF-8 text (byte {data[e.start]:#04x}); save the file as UTF-8") from None


def jsonl_objects(path: Path, error: type[ValueError] = CorpusError) -> Iterator[tuple[str, dict[str, Any]]]:
    """``(where, object)`` for every non-blank line of a JSONL file, ``where`` being ``file:line``; a line that is
    not JSON, or not a JSON object, is an ``error`` naming it."""
    for n, line in enumerate(read_utf8(path, error).splitlines(), 1):
        if not line.strip():
            continue
        where = f"{path}:{n}"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as e:
            raise error(f"{where}: not valid JSON ({e.msg})") from None
        if not isinstance(record, dict):
            raise error(f"{where}: expected a JSON object per line")
        yield where, record


def _alternating(lines: list[str]) -> Dialogue:
    roles: tuple[Role, Role] = ("user", "assistant")
    return tuple(Turn(roles[i % 2], text.strip()) for i, text in enumerate(lines))


def chatterbot_dir(language: str = "english") -> Path:
    """Where the installed ``chatterbot-corpus`` package keeps ``language``'s YAML files."""
    import chatterbot_corpus

    path = Path(chatterbot_corpus.__file__).parent / "data" / language
    if not path.is_dir():
        raise CorpusError(f"chatterbot-corpus has no language {language!r} (looked in {path})")
    return path


def load_chatterbot(categories: list[str] | None = None, language: str = "english") -> list[Dialogue]:
    """Every conversation of the chosen categories (all by default), in file order.

    Each corpus conversation is a list of statements, said alternately by the user and the assistant.
    """
    root = chatterbot_dir(language)
    available = sorted(p.stem for p in root.glob("*.yml"))
    wanted = available if categories is None else categories
    unknown = sorted(set(wanted) - set(available))
    if unknown:
        raise CorpusError(f"unknown chatterbot-corpus categories {unknown} (available: {', '.join(available)})")
    dialogues: list[Dialogue] = []
    for name in wanted:
        data = yaml.safe_load((root / f"{name}.yml").read_text(encoding="utf-8"))
        for conv in data.get("conversations", []):
            lines = [str(x) for x in conv if str(x).strip()]
            if len(lines) >= 2:
                dialogues.append(_alternating(lines))
    return dialogues


def load_jsonl(path: str | Path) -> list[Dialogue]:
    """Dialogues from JSONL lines ``{"messages": [{"role": "user"|"assistant", "content": "..."}, ...]}``.

    ``system`` messages are skipped; the rest must start with the user and alternate.
    """
    path = Path(path)
    if not path.is_file():
        raise CorpusError(f"dialogue file not found: {path}")
    dialogues: list[Dialogue] = []
    for where, record in jsonl_objects(path):
        messages = record.get("messages")
        if not isinstance(messages, list):
            raise CorpusError(f"{where}: expected an object with a 'messages' list")
        turns: list[Turn] = []
        for m in messages:
            if not isinstance(m, dict) or not isinstance(m.get("content"), str):
                raise CorpusError(f"{where}: every message needs a string 'content'")
            role = m.get("role")
            if role == "system":
                continue
            if role not in ("user", "assistant"):
                raise CorpusError(f"{where}: unknown role {role!r} (user, assistant or system)")
            expected = "user" if len(turns) % 2 == 0 else "assistant"
            if role != expected:
                raise CorpusError(f"{where}: message {len(turns) + 1} should be from the {expected}")
            turns.append(Turn(role, m["content"].strip()))
        if len(turns) < 2:
            raise CorpusError(f"{where}: a dialogue needs a user message and an assistant reply")
        dialogues.append(tuple(turns))
    return dialogues


def split_dialogues(dialogues: list[Dialogue], heldout_fraction: float, salt: str = "lmpo"
                    ) -> tuple[list[Dialogue], list[Dialogue]]:
    """Deterministic train / held-out split by opening line.

    Every conversation that opens with the same user line (after normalisation) lands on the same side, so no
    held-out opening is ever a training opening; the side depends only on that line's text (a hash), so adding or
    removing other dialogues never moves it, and every process, seed and machine agrees.
    """
    if not 0.0 <= heldout_fraction < 1.0:
        raise ValueError("heldout_fraction must be in [0, 1)")
    train: list[Dialogue] = []
    heldout: list[Dialogue] = []
    for d in dialogues:
        text = salt + "\x00" + " ".join(normalize(d[0].content))
        u = int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64
        (heldout if u < heldout_fraction else train).append(d)
    return train, heldout
