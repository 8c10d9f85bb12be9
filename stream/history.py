"""The alert history: every alert an engine raised, on disk, for `alerts()` queries that outlive restarts.

The engine hands it each batch's alerts like any other sink; the query service
reads it. It is SQLite under the engine's `state_dir` (`alert-history.sqlite3`):
in the standard library, one file, indexed look-ups by account and time, and
safe to read from the query service's threads while the engine's loop writes
(WAL mode: readers never block the writer).

Append-only by alert id: an alert the engine raises again (its replay after a
crash re-raises the alerts of the batches after the last checkpoint) is
ignored, so the history holds each id once, at the place it was first raised.
Each write is committed and synced before `deliver` returns. The oldest
alerts beyond `keep` are dropped, a slice at a time.

Several engines in one group each keep the history of the alerts they
delivered (each alert id is delivered by one engine), so one engine's
`alerts()` answers for its own share; the alerts topic or the webhook carries
the whole stream. See docs/architecture.md.
"""

from __future__ import annotations

import json
import sqlite3
import threading
from collections.abc import Iterable
from pathlib import Path

from ringwatch.graph import Alert
from ringwatch.runtime.errors import RingwatchError

FILE_NAME = "alert-history.sqlite3"
PRUNE_EVERY = 1_000  # look at the size after this many new alerts

_SCHEMA = """
CREATE TABLE IF NOT EXISTS alerts (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,  -- the order the alerts were raised in
    alert_id TEXT NOT NULL UNIQUE,
    detected_at INTEGER NOT NULL,
    body TEXT NOT NULL                       -- the alert as JSON (Alert.to_json)
);
CREATE INDEX IF NOT EXISTS alerts_by_time ON alerts (detected_at);
CREATE TABLE IF NOT EXISTS alert_accounts (
    account TEXT NOT NULL,
    seq INTEGER NOT NULL REFERENCES alerts (seq) ON DELETE CASCADE,
    PRIMARY KEY (account, seq)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS alert_accounts_by_seq ON alert_accounts (seq);
"""


class AlertHistoryError(RingwatchError, RuntimeError):
    """The history file cannot be opened or written; the message names the file."""


class AlertHistory:
    """Alerts by the order they were raised, newest first on reading; a `Sink` for the engine to write."""

    def __init__(self, path: str | Path, *, keep: int = 100_000):
        if keep < 1:
            raise ValueError(f"keep: must be at least 1, got {keep}")
        self.path = Path(path)
        self.keep = keep
        self._lock = threading.Lock()
        self._local = threading.local()
        self._readers: list[sqlite3.Connection] = []
        self._added = 0
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            self._writer = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None)
            self._writer.execute("PRAGMA journal_mode=WAL")
            self._writer.execute("PRAGMA synchronous=FULL")  # a committed alert survives a power cut
            self._writer.execute("PRAGMA foreign_keys=ON")
            self._writer.executescript(_SCHEMA)
        except sqlite3.Error as exc:
            raise AlertHistoryError(f"alert history {self.path}: {exc}") from None

    # ---- the sink side (the engine's loop) ---------------------------------------------------------

    def deliver(self, alerts: Iterable[Alert]) -> None:
        """Record alerts not yet in the history, in the order given; committed when this returns."""
        rows = [(alert.alert_id, alert.detected_at, alert.to_json(), alert.accounts) for alert in alerts]
        if not rows:
            return
        with self._lock:
            writer = self._writer
            writer.execute("BEGIN IMMEDIATE")
            try:
                for alert_id, detected_at, body, accounts in rows:
                    cursor = writer.execute("INSERT OR IGNORE INTO alerts (alert_id, detected_at, body) "
                                            "VALUES (?, ?, ?)", (alert_id, detected_at, body))
                    if cursor.rowcount:
                        writer.executemany("INSERT OR IGNORE INTO alert_accounts (account, seq) VALUES (?, ?)",
                                           [(account, cursor.lastrowid) for account in set(accounts)])
                        self._added += 1
                if self._added >= PRUNE_EVERY:
                    self._prune()
                writer.execute("COMMIT")
            except BaseException:
                writer.execute("ROLLBACK")
                raise

    def _prune(self) -> None:
        """Drop the oldest alerts beyond `keep` (inside the caller's transaction)."""
        self._added = 0
        (newest,) = self._writer.execute("SELECT COALESCE(MAX(seq), 0) FROM alerts").fetchone()
        self._writer.execute("DELETE FROM alerts WHERE seq <= ?", (newest - self.keep,))

    def flush(self, timeout: float | None = None) -> bool:
        """Nothing to wait for: every `deliver` commits (and syncs) before it returns."""
        return True

    def close(self) -> None:
        with self._lock:
            for reader in self._readers:
                reader.close()
            self._readers.clear()
            self._writer.close()

    # ---- the query side (any thread) -----------------------------------------------------------------

    def recent(self, *, since: int | None = None, account: str | None = None, limit: int = 100) -> list[Alert]:
        """Newest first: alerts raised at or after `since` (epoch ms), through `account` if given."""
        where, params = ["a.detected_at >= ?"], [since if since is not None else -(2 ** 63)]
        if account is not None:
            where.append("a.seq IN (SELECT seq FROM alert_accounts WHERE account = ?)")
            params.append(account)
        rows = self._reader().execute(
            f"SELECT a.body FROM alerts a WHERE {' AND '.join(where)} ORDER BY a.seq DESC LIMIT ?",
            (*params, limit)).fetchall()
        return [Alert.from_dict(json.loads(body)) for (body,) in rows]

    def ids_through(self, account: str) -> list[str]:
        """Ids of every alert in the history whose ring passes through `account`, newest first."""
        rows = self._reader().execute(
            "SELECT a.alert_id FROM alert_accounts x JOIN alerts a ON a.seq = x.seq WHERE x.account = ? "
            "ORDER BY a.seq DESC", (account,)).fetchall()
        return [alert_id for (alert_id,) in rows]

    def __len__(self) -> int:
        (count,) = self._reader().execute("SELECT COUNT(*) FROM alerts").fetchone()
        return count

    def _reader(self) -> sqlite3.Connection:
        """One read-only connection per thread (sqlite3 connections are not shared between threads)."""
        reader = getattr(self._local, "connection", None)
        if reader is None:
            reader = sqlite3.connect(self.path.resolve().as_uri() + "?mode=ro", uri=True, check_same_thread=False)
            self._local.connection = reader
            with self._lock:
                self._readers.append(reader)
        return reader
