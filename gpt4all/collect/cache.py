"""The durable answer cache: one SQLite database (WAL) shared by every collect run that points at it.

Why SQLite: each answer is committed as it arrives, and a committed row survives kill -9 (the WAL is written
before the call returns); the primary key on the request hash makes a duplicate answer impossible by
construction; lookups stay indexed at a million rows without loading anything into memory; several processes
may share one cache safely. Rows are keyed by `request_key` = a hash of (model, generation parameters,
messages), so a re-run, in any run dir, never re-sends a prompt that was answered.

Concurrent collectors sharing one cache claim a request before sending it (`claim`; a collector claims and commits
in group transactions, `settle_and_claim_many`):
a claim names its owner and expires after a lease that the owner renews while it runs, so a killed collector's
claims outlive it by at most one lease; another collector then takes them over. The schema version is kept in
`PRAGMA user_version`; an older cache is upgraded in place (and says so), a newer one is refused.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sqlite3
import time
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

DB_NAME = "cache.sqlite"
Outcome = tuple[str, dict[str, Any], bool, int]  # key, record, answered, attempts
Claim = tuple[str, str, float, float]  # key, owner, lease_s, settled_after
SCHEMA_VERSION = 2  # 1: answers and batches; 2: + claims
SCHEMA = """
CREATE TABLE IF NOT EXISTS answers (
  key TEXT PRIMARY KEY, status TEXT NOT NULL, record TEXT NOT NULL, attempts INTEGER NOT NULL, updated REAL
);
CREATE TABLE IF NOT EXISTS batches (
  name TEXT PRIMARY KEY, input_file_id TEXT, batch_id TEXT, state TEXT NOT NULL, created REAL
);
CREATE TABLE IF NOT EXISTS batch_items (key TEXT PRIMARY KEY, batch TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS batch_items_batch ON batch_items(batch);
CREATE TABLE IF NOT EXISTS claims (key TEXT PRIMARY KEY, owner TEXT NOT NULL, expires REAL NOT NULL);
CREATE INDEX IF NOT EXISTS claims_owner ON claims(owner);
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
        try:
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")  # durable against process death; fsync at checkpoints
            self._migrate()
        except sqlite3.DatabaseError as err:
            self.db.close()
            raise RuntimeError(f"answer cache {self.path} is not a readable SQLite database ({err}): move it away "
                               "or point collect.cache_dir elsewhere") from None

    def _migrate(self) -> None:
        """Create or upgrade the schema; refuse a cache written by a newer gpt4all-lab."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            version = self.db.execute("PRAGMA user_version").fetchone()[0]
            tables = {r[0] for r in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
            if version > SCHEMA_VERSION:
                raise RuntimeError(f"answer cache {self.path} has schema {version}, newer than this gpt4all-lab's "
                                   f"({SCHEMA_VERSION}): upgrade gpt4all-lab or use another collect.cache_dir")
            if "answers" in tables and version < SCHEMA_VERSION:
                log.warning("answer cache %s is from an older gpt4all-lab (schema %d): upgrading it to schema %d "
                            "(adds request claims); its %d rows are kept", self.path, version or 1, SCHEMA_VERSION,
                            self.db.execute("SELECT COUNT(*) FROM answers").fetchone()[0])
            for statement in filter(str.strip, SCHEMA.split(";")):
                self.db.execute(statement)
            self.db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self.db.execute("COMMIT")
        except BaseException:
            self.db.execute("ROLLBACK")
            raise

    def close(self) -> None:
        self.db.close()

    def __enter__(self) -> AnswerCache:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # ---- answers ---------------------------------------------------------------------------------------------
    def put(self, key: str, record: dict[str, Any], answered: bool, attempts: int) -> None:
        """Commit one outcome now and drop its claim. An answered row is final: nothing overwrites it."""
        self.settle_and_claim_many([((key, record, answered, attempts), None)])

    def settle_and_claim_many(self, ops: list[tuple[Outcome | None, Claim | None]]) -> list[tuple[str, str | None] | None]:
        """For each op (outcome, claim): commit the outcome (key, record, answered, attempts) as `put` does and
        decide the claim (key, owner, lease_s, settled_after) as `claim` does; returns each claim's result (None
        for an op without one). All in one transaction (a group commit) of a few set-wise statements: a
        collector's cache thread commits the answers and claims of a burst together.

        The outcomes are committed first, then the claims are decided (a claim never names a key settled in the
        same call: a worker claims a request before it sends it, and settles it only after).
        """
        now = time.time()
        outcomes = [o for o, _ in ops if o]
        with self.db:
            self.db.execute("BEGIN IMMEDIATE")
            if outcomes:
                self.db.executemany(
                    "INSERT INTO answers(key, status, record, attempts, updated) VALUES (?, ?, ?, ?, ?) "
                    "ON CONFLICT(key) DO UPDATE SET status=excluded.status, record=excluded.record, "
                    "attempts=answers.attempts + excluded.attempts, updated=excluded.updated "
                    "WHERE answers.status != 'answered'",
                    [(key, "answered" if answered else "failed", json.dumps(record, ensure_ascii=False), attempts, now)
                     for key, record, answered, attempts in outcomes])
                self.db.executemany("DELETE FROM claims WHERE key = ?", [(o[0],) for o in outcomes])
            claimed = iter(self._claim_many([c for _, c in ops if c], now))
        return [next(claimed) if c else None for _, c in ops]

    # ---- claims: one payer per request across processes ------------------------------------------------------
    def claim(self, key: str, owner: str, lease_s: float, settled_after: float) -> tuple[str, str | None]:
        """Try to claim a request for sending: ("mine", expired owner or None) | ("held", owner) | ("settled", None).

        "settled": answered, or failed after `settled_after` (another collector's outcome during this run);
        "held": another owner's claim has not expired; "mine": claimed now, taking over an expired claim if any.
        """
        return self.settle_and_claim_many([(None, (key, owner, lease_s, settled_after))])[0]  # type: ignore[return-value]

    def _claim_many(self, claims: list[Claim], now: float) -> list[tuple[str, str | None]]:
        settled: dict[str, tuple[str, float | None]] = {}
        held: dict[str, tuple[str, float]] = {}
        for chunk in _chunks([c[0] for c in claims], 500):
            marks = ",".join("?" * len(chunk))
            settled.update((k, (s, u)) for k, s, u in self.db.execute(
                f"SELECT key, status, updated FROM answers WHERE key IN ({marks})", chunk))
            held.update((k, (o, e)) for k, o, e in self.db.execute(
                f"SELECT key, owner, expires FROM claims WHERE key IN ({marks})", chunk))
        results: list[tuple[str, str | None]] = []
        mine = []
        for key, owner, lease_s, settled_after in claims:
            status, updated = settled.get(key, (None, None))
            other, expires = held.get(key, (owner, 0.0))
            if status == "answered" or (status and (updated or 0) > settled_after):
                results.append(("settled", None))
            elif other != owner and expires > now:
                results.append(("held", other))
            else:
                mine.append((key, owner, now + lease_s))
                results.append(("mine", other if other != owner else None))
        self.db.executemany("INSERT OR REPLACE INTO claims(key, owner, expires) VALUES (?, ?, ?)", mine)
        return results

    def renew_claims(self, owner: str, lease_s: float) -> int:
        """Extend every claim of `owner` by a lease from now (the heartbeat of a live collector)."""
        return self.db.execute("UPDATE claims SET expires = ? WHERE owner = ?", (time.time() + lease_s, owner)).rowcount

    def release_claims(self, owner: str) -> int:
        """Drop every claim of `owner` (a collector that stops, finished or not)."""
        return self.db.execute("DELETE FROM claims WHERE owner = ?", (owner,)).rowcount

    def claims(self) -> list[tuple[str, str, float]]:
        return self.db.execute("SELECT key, owner, expires FROM claims").fetchall()

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
