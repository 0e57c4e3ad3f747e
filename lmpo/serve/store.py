"""The feedback store: every served completion and every rating, in SQLite (WAL mode).

One row per choice of a completion (``id``, ``choice``); a rating refers to one. Every write is one transaction and
is committed before the server acknowledges it (``synchronous=FULL``: a commit is on disk when it returns), so a
server killed at any moment loses nothing it answered, and the database opens cleanly afterwards (WAL recovery).
Queries are parameterised; one connection, guarded by a lock, serves the server's threads.
"""

from __future__ import annotations

import contextlib
import json
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

DB_NAME = "feedback.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS completions (
    id TEXT NOT NULL,
    choice INTEGER NOT NULL,
    created REAL NOT NULL,
    model TEXT NOT NULL,
    version TEXT NOT NULL,
    messages TEXT NOT NULL,          -- JSON: the request's messages
    reply TEXT NOT NULL,             -- what the client was sent
    lookups TEXT NOT NULL,           -- JSON: [{"call": bot turn, "result": tool turn}, ...] made before the reply
    finish_reason TEXT NOT NULL,
    prompt_tokens INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    sampling TEXT NOT NULL,          -- JSON: temperature, top_p, max_tokens, stop, seed
    PRIMARY KEY (id, choice)
);
CREATE TABLE IF NOT EXISTS ratings (
    rating_id INTEGER PRIMARY KEY AUTOINCREMENT,
    completion_id TEXT NOT NULL,
    choice INTEGER NOT NULL,
    created REAL NOT NULL,
    thumb INTEGER,                   -- +1 up, -1 down, NULL none
    score INTEGER,                   -- 1..5, NULL none
    comment TEXT,
    FOREIGN KEY (completion_id, choice) REFERENCES completions (id, choice)
);
CREATE INDEX IF NOT EXISTS ratings_by_completion ON ratings (completion_id, choice);
"""


class UnknownCompletion(KeyError):
    """A rating for a completion (or choice) the store has no record of."""


@dataclass
class Record:
    """One served choice of a completion."""

    id: str
    choice: int
    model: str
    version: str
    messages: list[dict[str, Any]]
    reply: str
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int
    sampling: dict[str, Any]
    lookups: list[dict[str, str]] = field(default_factory=list)
    created: float = field(default_factory=time.time)


@dataclass
class RatedReply:
    """A recorded reply with its ratings' mean value (thumbs as +-1, scores 1..5 as -1..1)."""

    messages: list[dict[str, Any]]
    reply: str
    version: str
    value: float
    thumbs: list[int]
    scores: list[int]
    comments: list[str]


class FeedbackStore:
    """Completions and ratings in an SQLite file (created with its parent directory where missing)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None, timeout=30.0)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=FULL")
        self._db.execute("PRAGMA foreign_keys=ON")
        with self._transaction() as db:
            for statement in SCHEMA.split(";"):  # executescript would commit on its own
                if statement.strip():
                    db.execute(statement)

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One ``BEGIN IMMEDIATE ... COMMIT`` under the lock; rolled back on any error."""
        with self._lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
                self._db.execute("COMMIT")
            except BaseException:
                if self._db.in_transaction:  # a failed COMMIT (disk full) too: never leave a transaction open
                    self._db.execute("ROLLBACK")
                raise

    def add_completions(self, records: Sequence[Record]) -> None:
        """Record a completion's choices in one transaction (before the client is answered)."""
        rows = [(r.id, r.choice, r.created, r.model, r.version, json.dumps(r.messages), r.reply, json.dumps(r.lookups),
                 r.finish_reason, r.prompt_tokens, r.completion_tokens, json.dumps(r.sampling)) for r in records]
        with self._transaction() as db:
            db.executemany("INSERT INTO completions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)

    def add_rating(self, completion_id: str, choice: int, thumb: int | None, score: int | None,
                   comment: str | None) -> int:
        """Record a rating of a recorded choice; its id. ``UnknownCompletion`` when there is no such choice."""
        with self._transaction() as db:
            known = db.execute("SELECT 1 FROM completions WHERE id = ? AND choice = ?",
                               (completion_id, choice)).fetchone()
            if known is None:
                raise UnknownCompletion(completion_id)
            cur = db.execute("INSERT INTO ratings (completion_id, choice, created, thumb, score, comment) "
                             "VALUES (?, ?, ?, ?, ?, ?)", (completion_id, choice, time.time(), thumb, score, comment))
            return int(cur.lastrowid or 0)

    def count(self, table: str) -> int:
        """Rows in ``completions`` or ``ratings``."""
        if table not in ("completions", "ratings"):
            raise ValueError(f"no table {table!r}")
        with self._lock:
            return int(self._db.execute(f"SELECT COUNT(*) FROM {table}").fetchone()[0])  # noqa: S608 (checked name)

    def rated_replies(self) -> list[RatedReply]:
        """Every rated choice with its ratings, oldest first."""
        query = ("SELECT c.id, c.choice, c.messages, c.reply, c.version, r.thumb, r.score, r.comment "
                 "FROM completions c JOIN ratings r ON r.completion_id = c.id AND r.choice = c.choice "
                 "ORDER BY c.created, c.id, c.choice, r.rating_id")
        with self._lock:
            rows = self._db.execute(query).fetchall()
        out: dict[tuple[str, int], RatedReply] = {}
        for cid, choice, messages, reply, version, thumb, score, comment in rows:
            rated = out.setdefault((cid, choice), RatedReply(json.loads(messages), reply, version, 0.0, [], [], []))
            if thumb is not None:
                rated.thumbs.append(int(thumb))
            if score is not None:
                rated.scores.append(int(score))
            if comment:
                rated.comments.append(comment)
        for rated in out.values():
            values = [float(t) for t in rated.thumbs] + [(s - 3) / 2 for s in rated.scores]
            rated.value = sum(values) / len(values) if values else 0.0
        return [r for r in out.values() if r.thumbs or r.scores]

    def close(self) -> None:
        """Close the connection (the WAL is checkpointed into the database file)."""
        with self._lock:
            self._db.close()
