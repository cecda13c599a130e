"""The embedded default store: one SQLite file in WAL mode.

One connection per store, guarded by a lock (``check_same_thread=False``). SQLite admits one writer at
a time anyway, so per-thread connections would only trade the lock for SQLITE_BUSY retries, leak a
connection per short-lived thread and make ``close()`` unable to reach them. Other processes share
the file safely through WAL and ``busy_timeout``.
"""

from __future__ import annotations

import functools
import logging
import math
import os
import sqlite3
import threading
from collections.abc import Sequence
from pathlib import Path

import orjson

from agentemit import codec
from agentemit.span import Span
from agentemit.stores._rows import (
    COLUMNS,
    Problem,
    StoreClosedError,
    abandon,
    assemble_summaries,
    check_page,
    iter_rows,
    next_sequence_id,
    register_fork_aware,
    row_problem,
)
from agentemit.stores.base import AttemptSelector, RolloutSummary, SpanStore

SCHEMA_VERSION = 1
SYNCHRONOUS_MODES = ("OFF", "NORMAL", "FULL", "EXTRA")
PAGE_SIZES = tuple(2**n for n in range(9, 17))  # what SQLite accepts: 512 to 65,536 bytes
DEFAULT_PAGE_SIZE = 32768

_log = logging.getLogger(__name__)

_SCHEMA = (
    """CREATE TABLE IF NOT EXISTS spans (
        rollout_id TEXT NOT NULL,
        attempt_id TEXT NOT NULL,
        span_id TEXT NOT NULL,
        trace_id TEXT NOT NULL,
        parent_id TEXT,
        name TEXT NOT NULL,
        sequence_id INTEGER NOT NULL,
        start_time INTEGER NOT NULL,
        end_time INTEGER NOT NULL,
        status TEXT NOT NULL,
        reward REAL,
        checksum TEXT NOT NULL,
        data BLOB NOT NULL,
        PRIMARY KEY (rollout_id, attempt_id, span_id)
    )""",
    "CREATE INDEX IF NOT EXISTS spans_by_sequence ON spans (rollout_id, attempt_id, sequence_id)",
)

_ROW_PLACEHOLDERS = f"({', '.join('?' for _ in COLUMNS)})"
_ROWS_PER_STATEMENT = 1000  # 1000 x 13 parameters stays below SQLite's 32,766 limit


@functools.lru_cache(maxsize=8)
def _insert_sql(rows: int) -> str:
    """A multi-row INSERT: sqlite3 releases the GIL around every statement step, and under a busy
    producer each release costs up to the interpreter's switch interval (5 ms) to get the GIL back,
    so one statement per few hundred rows instead of one per row (executemany) is what keeps the
    worker fast. Duplicate keys are skipped row by row (ON CONFLICT DO NOTHING)."""
    values = ", ".join([_ROW_PLACEHOLDERS] * rows)
    return f"INSERT INTO spans ({', '.join(COLUMNS)}) VALUES {values} ON CONFLICT DO NOTHING"


# Python's sqlite3 binds only exact int, float, str and bytearray directly: any other value, None and
# bytes included, goes through its adapter protocol, which raises and clears two AttributeErrors per
# value (~4,000 instructions a row for the data blob and a missing reward: 11% of an insert, measured
# with callgrind). A float NaN binds directly and SQLite stores it as NULL, as it would None.
_NULL_REAL = math.nan


def _flat_params(chunk: Sequence[Span], first_index: int) -> list[object]:
    """The parameters of one multi-row INSERT: every row's columns, row after row."""
    params: list[object] = []
    extend, append = params.extend, params.append
    for row in iter_rows(chunk, "sqlite", first_index):
        extend(row[:10])  # the key, ids, name, times and status: str and int, or parent_id None at a root
        reward = row.reward
        append(_NULL_REAL if reward is None else reward)
        append(row.checksum)
        append(bytearray(row.data))
    return params


# The attempt holding the rollout's newest span (max start_time, then sequence_id, then attempt_id).
_LATEST = (
    "SELECT attempt_id FROM spans WHERE rollout_id = ? "
    "ORDER BY start_time DESC, sequence_id DESC, attempt_id DESC LIMIT 1"
)

_HEADS = """
WITH page AS (
    SELECT rollout_id, COUNT(*) AS n, MIN(start_time) AS first_time, MAX(end_time) AS last_time
    FROM spans GROUP BY rollout_id ORDER BY first_time, rollout_id LIMIT ? OFFSET ?
),
latest AS (
    SELECT rollout_id, attempt_id FROM (
        SELECT s.rollout_id, s.attempt_id, ROW_NUMBER() OVER (
            PARTITION BY s.rollout_id ORDER BY s.start_time DESC, s.sequence_id DESC, s.attempt_id DESC
        ) AS rn
        FROM spans s JOIN page p ON p.rollout_id = s.rollout_id
    ) WHERE rn = 1
),
final AS (
    SELECT rollout_id, reward FROM (
        SELECT s.rollout_id, s.reward, ROW_NUMBER() OVER (
            PARTITION BY s.rollout_id ORDER BY s.sequence_id DESC, s.span_id DESC
        ) AS rn
        FROM spans s JOIN latest l ON l.rollout_id = s.rollout_id AND l.attempt_id = s.attempt_id
        WHERE s.reward IS NOT NULL
    ) WHERE rn = 1
)
SELECT p.rollout_id, p.n, p.first_time, p.last_time, f.reward
FROM page p LEFT JOIN final f ON f.rollout_id = p.rollout_id
ORDER BY p.first_time, p.rollout_id
"""

_ATTEMPTS = """
SELECT rollout_id, attempt_id FROM spans WHERE rollout_id IN (SELECT value FROM json_each(?))
GROUP BY rollout_id, attempt_id
ORDER BY rollout_id, MIN(start_time), MIN(sequence_id), attempt_id
"""

_NAMES = """
SELECT rollout_id, name, COUNT(*) FROM spans WHERE rollout_id IN (SELECT value FROM json_each(?))
GROUP BY rollout_id, name
"""


class SqliteStore(SpanStore):
    """A :class:`SpanStore` in one SQLite file (created with its parent folder on first use).

    Args:
        path: the database file.
        synchronous: SQLite's ``PRAGMA synchronous``; NORMAL is durable across process crashes in WAL
            mode and may lose the last transactions only on power loss; FULL survives that too.
        busy_timeout_ms: how long a write waits for another process's write lock before failing.
        page_size: the page size of a file this store creates (an existing file keeps its own).
            Spans are rows of about 1 KB written in batches, and with 32 KiB pages a batch of 1,000
            inserts ~40% faster than with SQLite's 4 KiB (a batch of 10, ~25% slower: small batches
            come from slow producers, where speed does not matter; BENCHMARKS.md).

    Raises:
        ValueError: for an unknown ``synchronous`` mode or ``page_size``, or a file written by a newer
            schema version.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        synchronous: str = "NORMAL",
        busy_timeout_ms: int = 5000,
        page_size: int = DEFAULT_PAGE_SIZE,
    ) -> None:
        self.path = os.fspath(path)
        mode = synchronous.upper() if isinstance(synchronous, str) else synchronous
        if mode not in SYNCHRONOUS_MODES:
            raise ValueError(f"sqlite store: synchronous {synchronous!r} is not one of {', '.join(SYNCHRONOUS_MODES)}")
        if type(busy_timeout_ms) is not int or busy_timeout_ms < 0:
            raise ValueError(f"sqlite store: busy_timeout_ms {busy_timeout_ms!r} must be an int >= 0")
        if type(page_size) is not int or page_size not in PAGE_SIZES:
            raise ValueError(f"sqlite store: page_size {page_size!r} must be a power of two from 512 to 65536")
        self.synchronous: str = mode
        self.page_size = page_size
        self.busy_timeout_ms = busy_timeout_ms
        self._lock = threading.Lock()
        self._conn: sqlite3.Connection | None = None
        self._closed = False
        register_fork_aware(self)

    def __repr__(self) -> str:
        return f"SqliteStore({self.path!r}, synchronous={self.synchronous!r})"

    @property
    def _fork_guard(self) -> threading.Lock:
        """Held across a fork, so no thread is inside SQLite when it happens (see ``_rows``)."""
        return self._lock

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        if self._conn is not None:
            abandon(self._conn)  # the parent's connection: never use or close it here
            self._conn = None

    # --- connection ------------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"sqlite store {self.path!r}: used after close(); open a new store")

    def _connect(self) -> sqlite3.Connection:
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        try:
            conn = sqlite3.connect(
                self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None, check_same_thread=False
            )
        except sqlite3.Error as exc:
            raise sqlite3.OperationalError(f"sqlite store: cannot open {self.path!r}: {exc}") from exc
        try:
            # PRAGMA values cannot be bound as parameters; all are validated in __init__. The page
            # size takes effect only in a new, empty file, and only before it turns to WAL mode.
            conn.execute(f"PRAGMA busy_timeout = {self.busy_timeout_ms:d}")
            conn.execute(f"PRAGMA page_size = {self.page_size:d}")
            journal = conn.execute("PRAGMA journal_mode = WAL").fetchone()[0]
            if str(journal).lower() != "wal" and self.path != ":memory:":
                _log.warning("sqlite store %r: WAL mode unavailable, journal_mode is %s", self.path, journal)
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            self._create_schema(conn)
        except BaseException:
            conn.close()
            raise
        return conn

    def _create_schema(self, conn: sqlite3.Connection) -> None:
        conn.execute("BEGIN IMMEDIATE")
        try:
            conn.execute("CREATE TABLE IF NOT EXISTS schema_version (version INTEGER NOT NULL)")
            row = conn.execute("SELECT MAX(version) FROM schema_version").fetchone()
            found = row[0] if row else None
            if found is not None and found > SCHEMA_VERSION:
                raise ValueError(
                    f"sqlite store {self.path!r}: schema version {found} is newer than this agentemit "
                    f"supports ({SCHEMA_VERSION}); upgrade agentemit"
                )
            for statement in _SCHEMA:
                conn.execute(statement)
            if found is None:
                conn.execute("INSERT INTO schema_version (version) VALUES (?)", (SCHEMA_VERSION,))
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise

    def _connection(self) -> sqlite3.Connection:
        """The store's connection, opened on first use; the caller holds ``self._lock``."""
        self._check_open()
        if self._conn is None:
            self._conn = self._connect()
        return self._conn

    # --- writes ----------------------------------------------------------------------------------

    def add_many_spans(self, spans: Sequence[Span]) -> int:
        self._check_open()
        with self._lock:
            conn = self._connection()
            if not spans:
                return 0
            before = conn.total_changes
            if len(spans) <= _ROWS_PER_STATEMENT:
                # One statement is one atomic transaction of its own. An explicit BEGIN and COMMIT
                # would each release and retake the GIL, and retaking it waits up to the switch
                # interval (5 ms) while the agent's threads run: 1.7x slower under load (BENCHMARKS.md).
                conn.execute(_insert_sql(len(spans)), _flat_params(spans, 0))
                return conn.total_changes - before
            conn.execute("BEGIN IMMEDIATE")
            try:  # one multi-row statement per chunk; any failure rolls the whole batch back
                for start in range(0, len(spans), _ROWS_PER_STATEMENT):
                    chunk = spans[start : start + _ROWS_PER_STATEMENT]
                    conn.execute(_insert_sql(len(chunk)), _flat_params(chunk, start))
                conn.execute("COMMIT")
            except BaseException:
                if conn.in_transaction:
                    conn.execute("ROLLBACK")
                raise
            return conn.total_changes - before

    # --- reads -----------------------------------------------------------------------------------

    def query_spans(
        self,
        rollout_id: str,
        attempt_id: AttemptSelector = None,
        *,
        name: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Span]:
        check_page(limit, offset, "sqlite")
        sql = "SELECT data FROM spans WHERE rollout_id = ?"
        params: list[object] = [rollout_id]
        if attempt_id == "latest":
            sql += f" AND attempt_id = ({_LATEST})"
            params.append(rollout_id)
        elif attempt_id is not None:
            sql += " AND attempt_id = ?"
            params.append(attempt_id)
        if name is not None:
            sql += " AND name = ?"
            params.append(name)
        sql += " ORDER BY sequence_id, span_id LIMIT ? OFFSET ?"
        params += [-1 if limit is None else limit, offset]
        with self._lock:
            rows = self._connection().execute(sql, params).fetchall()
        return [codec.decode_span(row[0]) for row in rows]

    def list_rollouts(self, *, limit: int | None = None, offset: int = 0) -> list[RolloutSummary]:
        check_page(limit, offset, "sqlite")
        with self._lock:
            conn = self._connection()
            conn.execute("BEGIN")  # one snapshot for the three queries
            try:
                heads = conn.execute(_HEADS, (-1 if limit is None else limit, offset)).fetchall()
                ids = orjson.dumps([h[0] for h in heads])
                attempts = conn.execute(_ATTEMPTS, (ids,)).fetchall()
                names = conn.execute(_NAMES, (ids,)).fetchall()
            finally:
                conn.execute("COMMIT")
        return assemble_summaries(heads, attempts, names)

    def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        with self._lock:
            row = (
                self._connection()
                .execute(
                    "SELECT MAX(sequence_id) FROM spans WHERE rollout_id = ? AND attempt_id = ?",
                    (rollout_id, attempt_id),
                )
                .fetchone()
            )
        return next_sequence_id(row[0])

    def verify(self, *, chunk_size: int = 1000) -> list[Problem]:
        """Rows whose checksum does not match their data (or whose data does not match their key).

        Reads through a second connection, so writers in this process are not blocked meanwhile.
        """
        if self.path == ":memory:":  # a private database: only the store's own connection sees it
            with self._lock:
                return _verify_rows(self._connection(), chunk_size)
        with self._lock:
            self._connection()  # the schema exists before the reader looks
        reader = sqlite3.connect(self.path, timeout=self.busy_timeout_ms / 1000, isolation_level=None)
        try:
            return _verify_rows(reader, chunk_size)
        finally:
            reader.close()

    def close(self) -> None:
        """Close the connection; idempotent."""
        with self._lock:
            self._closed = True
            if self._conn is not None:
                self._conn.close()
                self._conn = None


def _verify_rows(conn: sqlite3.Connection, chunk_size: int) -> list[Problem]:
    problems: list[Problem] = []
    cursor = conn.execute("SELECT rollout_id, attempt_id, span_id, checksum, data FROM spans")
    while batch := cursor.fetchmany(chunk_size):
        for rollout_id, attempt_id, span_id, checksum, data in batch:
            key = (rollout_id, attempt_id, span_id)
            raw = data.encode() if isinstance(data, str) else bytes(data)  # a tampered row may hold TEXT
            problem = row_problem(key, str(checksum), raw)
            if problem is not None:
                problems.append((key, problem))
    return problems
