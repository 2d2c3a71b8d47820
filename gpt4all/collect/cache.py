"""The durable answer cache: one SQLite database (WAL) shared by every collect run that points at it.

Why SQLite: each answer is committed as it arrives, and a committed row survives kill -9 (the WAL is written
before the call returns); the primary key on the request hash makes a duplicate answer impossible by
construction; lookups stay indexed at a million rows without loading anything into memory; several processes
may share one cache safely. Rows are keyed by `request_key` = a hash of (model, generation parameters,
messages), so a re-run, in any run dir, never re-sends a prompt that was answered.
"""

from __future__ import annotations

import hashlib
import json
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

DB_NAME = "cache.sqlite"
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
  key TEXT PRIMARY KEY, status TEXT NOT NULL, record TEXT NOT NULL, attempts INTEGER NOT NULL, updated REAL
);
CREATE TABLE IF NOT EXISTS batches (
  name TEXT PRIMARY KEY, input_file_id TEXT, batch_id TEXT, state TEXT NOT NULL, created REAL
);
CREATE TABLE IF NOT EXISTS batch_items (key TEXT PRIMARY KEY, batch TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS batch_items_batch ON batch_items(batch);
"""


def request_key(model: str, params: dict[str, Any], messages: list[dict[str, str]]) -> str:
    """The cache key of one request: sha256 of (endpoint model, generation parameters, messages)."""
    blob = json.dumps({"model": model, "params": params, "messages": messages}, sort_keys=True, ensure_ascii=False)
    return hashlib.sha256(blob.encode()).hexdigest()


class AnswerCache:
    """Answered and failed records by request key, plus the Batch API's submitted batches."""

    def __init__(self, cache_dir: str | Path):
        self.dir = Path(cache_dir)
        self.dir.mkdir(parents=True, exist_ok=True)
        self.path = self.dir / DB_NAME
        self.db = sqlite3.connect(self.path, timeout=60, isolation_level=None, check_same_thread=False)
        self.db.execute("PRAGMA journal_mode=WAL")
        self.db.execute("PRAGMA synchronous=NORMAL")  # durable against process death; fsync at checkpoints
        self.db.executescript(SCHEMA)

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- answers ---------------------------------------------------------------------------------------------
    def put(self, key: str, record: dict[str, Any], answered: bool, attempts: int) -> None:
        """Commit one outcome now. An answered row is final: nothing overwrites it."""
        self.db.execute(
            "INSERT INTO answers(key, status, record, attempts, updated) VALUES (?, ?, ?, ?, ?) "
            "ON CONFLICT(key) DO UPDATE SET status=excluded.status, record=excluded.record, "
            "attempts=answers.attempts + excluded.attempts, updated=excluded.updated "
            "WHERE answers.status != 'answered'",
            (key, "answered" if answered else "failed", json.dumps(record, ensure_ascii=False), attempts, time.time()),
        )

    def get_many(self, keys: Iterable[str]) -> dict[str, tuple[str, dict[str, Any], int]]:
        """key -> (status, record, attempts so far) for the keys present."""
        out: dict[str, tuple[str, dict[str, Any], int]] = {}
        for chunk in _chunks(list(keys), 500):
            q = f"SELECT key, status, record, attempts FROM answers WHERE key IN ({','.join('?' * len(chunk))})"
            for key, status, record, attempts in self.db.execute(q, chunk):
                out[key] = (status, json.loads(record), attempts)
        return out

    def answered_keys(self, keys: Iterable[str]) -> set[str]:
        return {k for k, (s, _, _) in self.get_many(keys).items() if s == "answered"}

    def count(self, status: str = "answered") -> int:
        return self.db.execute("SELECT COUNT(*) FROM answers WHERE status = ?", (status,)).fetchone()[0]

    # ---- batches ---------------------------------------------------------------------------------------------
    def add_batch(self, name: str, keys: list[str], input_file_id: str) -> None:
        """Record an uploaded request file and the keys it carries (before the batch is created)."""
        with self.db:
            self.db.execute("BEGIN")
            self.db.execute("INSERT INTO batches(name, input_file_id, state, created) VALUES (?, ?, 'uploaded', ?)",
                            (name, input_file_id, time.time()))
            self.db.executemany("INSERT OR REPLACE INTO batch_items(key, batch) VALUES (?, ?)", [(k, name) for k in keys])

    def set_batch(self, name: str, state: str, batch_id: str | None = None) -> None:
        self.db.execute("UPDATE batches SET state = ?, batch_id = COALESCE(?, batch_id) WHERE name = ?",
                        (state, batch_id, name))

    def open_batches(self) -> list[dict[str, Any]]:
        """Batches uploaded or submitted but not yet collected, oldest first."""
        rows = self.db.execute("SELECT name, input_file_id, batch_id, state FROM batches "
                               "WHERE state IN ('uploaded', 'submitted') ORDER BY created").fetchall()
        return [dict(zip(("name", "input_file_id", "batch_id", "state"), r)) for r in rows]

    def batch_keys(self, name: str) -> list[str]:
        return [k for (k,) in self.db.execute("SELECT key FROM batch_items WHERE batch = ?", (name,))]

    def pending_in_batches(self) -> set[str]:
        q = "SELECT i.key FROM batch_items i JOIN batches b ON i.batch = b.name WHERE b.state IN ('uploaded', 'submitted')"
        return {k for (k,) in self.db.execute(q)}

    def release_items(self, keys: Iterable[str]) -> None:
        """Forget that these keys belong to a batch (so they can be sent again)."""
        self.db.executemany("DELETE FROM batch_items WHERE key = ?", [(k,) for k in keys])


def _chunks(items: list[str], n: int) -> Iterator[list[str]]:
    for i in range(0, len(items), n):
        yield items[i : i + n]
