"""A shared store on PostgreSQL (psycopg 3 with a connection pool), for many writers on many hosts.

``data`` is BYTEA, not JSONB: JSONB re-orders keys and re-formats numbers, so the exact bytes the
checksum covers would be lost (and JSONB refuses ``\\u0000`` in strings). Text keys use the "C"
collation so ordering by span_id or rollout_id matches SQLite and Python everywhere.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Sequence
from typing import Any

import psycopg
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict
from psycopg_pool import ConnectionPool

from agentemit import codec
from agentemit.span import Span
from agentemit.stores._rows import (
    COLUMNS,
    Problem,
    StoreClosedError,
    abandon,
    assemble_summaries,
    build_rows,
    check_page,
    next_sequence_id,
    register_fork_aware,
    row_problem,
)
from agentemit.stores.base import AttemptSelector, RolloutSummary, SpanStore

SCHEMA_VERSION = 1

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,62}")
_STAGE = "agentemit_stage"  # per-session temp table a batch holding stored spans is COPYed into

_TABLES = (
    "CREATE TABLE IF NOT EXISTS {schema}.schema_version (version INTEGER NOT NULL)",
    """CREATE TABLE IF NOT EXISTS {schema}.spans (
        rollout_id TEXT COLLATE "C" NOT NULL,
        attempt_id TEXT COLLATE "C" NOT NULL,
        span_id TEXT COLLATE "C" NOT NULL,
        trace_id TEXT NOT NULL,
        parent_id TEXT,
        name TEXT COLLATE "C" NOT NULL,
        sequence_id BIGINT NOT NULL,
        start_time BIGINT NOT NULL,
        end_time BIGINT NOT NULL,
        status TEXT NOT NULL,
        reward DOUBLE PRECISION,
        checksum TEXT NOT NULL,
        data BYTEA NOT NULL,
        PRIMARY KEY (rollout_id, attempt_id, span_id)
    )""",
    "CREATE INDEX IF NOT EXISTS spans_by_sequence ON {schema}.spans (rollout_id, attempt_id, sequence_id)",
)

_STAGE_DDL = f"""CREATE TEMP TABLE IF NOT EXISTS {_STAGE} (
    ord INTEGER NOT NULL,
    rollout_id TEXT COLLATE "C", attempt_id TEXT COLLATE "C", span_id TEXT COLLATE "C", trace_id TEXT,
    parent_id TEXT, name TEXT COLLATE "C", sequence_id BIGINT, start_time BIGINT, end_time BIGINT,
    status TEXT, reward DOUBLE PRECISION, checksum TEXT, data BYTEA
) ON COMMIT DELETE ROWS"""

_COLS = ", ".join(COLUMNS)
_ROW_TYPES = ["text", "text", "text", "text", "text", "text", "int8", "int8", "int8", "text", "float8", "text", "bytea"]
_STAGE_TYPES = ["int4", *_ROW_TYPES]

_LATEST = (
    "SELECT attempt_id FROM {schema}.spans WHERE rollout_id = %s "
    "ORDER BY start_time DESC, sequence_id DESC, attempt_id DESC LIMIT 1"
)

_HEADS = """
WITH page AS (
    SELECT rollout_id, COUNT(*) AS n, MIN(start_time) AS first_time, MAX(end_time) AS last_time
    FROM {schema}.spans GROUP BY rollout_id ORDER BY first_time, rollout_id LIMIT %s OFFSET %s
),
latest AS (
    SELECT rollout_id, attempt_id FROM (
        SELECT s.rollout_id, s.attempt_id, ROW_NUMBER() OVER (
            PARTITION BY s.rollout_id ORDER BY s.start_time DESC, s.sequence_id DESC, s.attempt_id DESC
        ) AS rn
        FROM {schema}.spans s JOIN page p ON p.rollout_id = s.rollout_id
    ) ranked WHERE rn = 1
),
final AS (
    SELECT rollout_id, reward FROM (
        SELECT s.rollout_id, s.reward, ROW_NUMBER() OVER (
            PARTITION BY s.rollout_id ORDER BY s.sequence_id DESC, s.span_id DESC
        ) AS rn
        FROM {schema}.spans s JOIN latest l ON l.rollout_id = s.rollout_id AND l.attempt_id = s.attempt_id
        WHERE s.reward IS NOT NULL
    ) ranked WHERE rn = 1
)
SELECT p.rollout_id, p.n, p.first_time, p.last_time, f.reward
FROM page p LEFT JOIN final f ON f.rollout_id = p.rollout_id
ORDER BY p.first_time, p.rollout_id
"""

_ATTEMPTS = """
SELECT rollout_id, attempt_id FROM {schema}.spans WHERE rollout_id = ANY(%s::text[])
GROUP BY rollout_id, attempt_id
ORDER BY rollout_id, MIN(start_time), MIN(sequence_id), attempt_id
"""

_NAMES = """
SELECT rollout_id, name, COUNT(*) FROM {schema}.spans WHERE rollout_id = ANY(%s::text[])
GROUP BY rollout_id, name
"""


def _redacted(dsn: str) -> str:
    """The DSN without its password, for error messages."""
    try:
        params = conninfo_to_dict(dsn)
    except psycopg.ProgrammingError:
        return "<unparsable dsn>"
    return " ".join(f"{k}={v}" for k, v in params.items() if k != "password" and v is not None)


def _holds_nul(*texts: str | None) -> bool:
    """True when a read parameter holds a NUL: PostgreSQL text cannot (DataError), and no stored
    value does (validation refuses them), so such a query matches nothing, as in the other stores.
    """
    return any(text is not None and "\x00" in text for text in texts)


def _create_stage(conn: psycopg.Connection[Any]) -> None:
    conn.execute(_STAGE_DDL)


class PostgresStore(SpanStore):
    """A :class:`SpanStore` in PostgreSQL; the schema and tables are created on first use.

    Args:
        dsn: a libpq connection string or ``postgresql://`` URL.
        min_size, max_size: connection pool bounds.
        schema: the PostgreSQL schema holding ``spans`` and ``schema_version`` (created if missing).
        timeout: seconds to wait for a connection (on first use, for the pool to connect at all).

    Raises:
        ValueError: for a schema name that is not a plain identifier, or bad pool sizes.
    """

    def __init__(
        self, dsn: str, *, min_size: int = 1, max_size: int = 8, schema: str = "public", timeout: float = 30.0
    ) -> None:
        if not isinstance(schema, str) or not _IDENTIFIER.fullmatch(schema):
            raise ValueError(f"postgres store: schema {schema!r} must match {_IDENTIFIER.pattern}")
        if not 0 <= min_size <= max_size or max_size < 1:
            raise ValueError(
                f"postgres store: need 0 <= min_size <= max_size and max_size >= 1, got {min_size}, {max_size}"
            )
        self.dsn = dsn
        self.schema = schema
        self.min_size = min_size
        self.max_size = max_size
        self.timeout = timeout
        self._where = f"postgres store ({_redacted(dsn)}, schema {schema})"
        self._lock = threading.Lock()
        self._pool: ConnectionPool | None = None
        self._closed = False
        ident = sql.Identifier(schema)
        self._insert_staged = sql.SQL(
            f"INSERT INTO {{schema}}.spans ({_COLS}) SELECT {_COLS} FROM pg_temp.{_STAGE} ORDER BY ord "
            "ON CONFLICT DO NOTHING"
        ).format(schema=ident)
        self._copy_staged = sql.SQL(f"COPY pg_temp.{_STAGE} (ord, {_COLS}) FROM STDIN (FORMAT BINARY)")
        self._copy_direct = sql.SQL(f"COPY {{schema}}.spans ({_COLS}) FROM STDIN (FORMAT BINARY)").format(schema=ident)
        self._latest = sql.SQL(_LATEST).format(schema=ident)
        self._heads = sql.SQL(_HEADS).format(schema=ident)
        self._attempts = sql.SQL(_ATTEMPTS).format(schema=ident)
        self._names = sql.SQL(_NAMES).format(schema=ident)
        self._ident = ident
        register_fork_aware(self)

    def __repr__(self) -> str:
        return f"PostgresStore({_redacted(self.dsn)!r}, schema={self.schema!r})"

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()
        if self._pool is not None:
            abandon(self._pool)  # its sockets belong to the parent: closing them here would end its sessions
            self._pool = None

    # --- pool and schema ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError(f"{self._where}: used after close(); open a new store")

    def _ready_pool(self) -> ConnectionPool:
        """The pool, opened and the schema created on first use."""
        self._check_open()
        pool = self._pool
        if pool is not None:
            return pool
        with self._lock:
            self._check_open()
            if self._pool is None:
                self._pool = self._open_pool()
            return self._pool

    def _open_pool(self) -> ConnectionPool:
        pool = ConnectionPool(
            self.dsn,
            min_size=self.min_size,
            max_size=self.max_size,
            kwargs={"autocommit": True},
            configure=_create_stage,
            timeout=self.timeout,
            open=False,
            name=f"agentemit-{self.schema}",
        )
        try:
            pool.open(wait=self.min_size > 0, timeout=self.timeout)
            with pool.connection() as conn:
                self._create_schema(conn)
        except psycopg.Error as exc:  # PoolTimeout is one: the server is unreachable or refused us
            pool.close()
            raise psycopg.OperationalError(f"{self._where}: cannot open: {exc}") from exc
        except BaseException:
            pool.close()
            raise
        return pool

    def _create_schema(self, conn: psycopg.Connection[Any]) -> None:
        with conn.transaction():
            # Concurrent CREATE ... IF NOT EXISTS can still collide in the catalogs; serialize creators.
            conn.execute("SELECT pg_advisory_xact_lock(hashtext(%s))", (f"agentemit.schema:{self.schema}",))
            exists = conn.execute("SELECT 1 FROM pg_namespace WHERE nspname = %s", (self.schema,)).fetchone()
            if exists is None:
                conn.execute(sql.SQL("CREATE SCHEMA {schema}").format(schema=self._ident))
            for statement in _TABLES:
                conn.execute(sql.SQL(statement).format(schema=self._ident))
            row = conn.execute(sql.SQL("SELECT MAX(version) FROM {schema}.schema_version").format(schema=self._ident))
            found = row.fetchone()
            version = found[0] if found else None
            if version is not None and version > SCHEMA_VERSION:
                raise ValueError(
                    f"{self._where}: schema version {version} is newer than this agentemit supports "
                    f"({SCHEMA_VERSION}); upgrade agentemit"
                )
            if version is None:
                conn.execute(
                    sql.SQL("INSERT INTO {schema}.schema_version (version) VALUES (%s)").format(schema=self._ident),
                    (SCHEMA_VERSION,),
                )

    # --- writes ----------------------------------------------------------------------------------

    def add_many_spans(self, spans: Sequence[Span]) -> int:
        self._check_open()
        rows = build_rows(spans, "postgres")
        pool = self._ready_pool()
        if not rows:
            return 0
        with pool.connection() as conn:
            try:  # the usual batch holds only new spans: COPY it straight into the table, in autocommit
                # (one statement is atomic on its own; BEGIN and COMMIT would be two more round trips,
                # each retaking the GIL, which waits up to the switch interval while other requests run)
                with conn.cursor().copy(self._copy_direct) as copy:
                    copy.set_types(_ROW_TYPES)
                    for row in rows:
                        copy.write_row(row)
                return len(rows)
            except (psycopg.errors.UniqueViolation, psycopg.errors.DeadlockDetected):
                pass  # a retried batch, a span twice in it, or a race with a writer of the same spans:
                # nothing of it was kept; the staged path below skips whatever is stored by now
            with conn.transaction():
                cur = conn.cursor()
                with cur.copy(self._copy_staged) as copy:
                    copy.set_types(_STAGE_TYPES)
                    for ord_, row in enumerate(rows):
                        copy.write_row((ord_, *row))
                cur.execute(self._insert_staged)
                return max(cur.rowcount, 0)

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
        check_page(limit, offset, "postgres")
        if _holds_nul(rollout_id, attempt_id, name):
            return []
        parts: list[sql.Composable] = [
            sql.SQL("SELECT data FROM {schema}.spans WHERE rollout_id = %s").format(schema=self._ident)
        ]
        params: list[object] = [rollout_id]
        if attempt_id == "latest":
            parts.append(sql.SQL(" AND attempt_id = ({latest})").format(latest=self._latest))
            params.append(rollout_id)
        elif attempt_id is not None:
            parts.append(sql.SQL(" AND attempt_id = %s"))
            params.append(attempt_id)
        if name is not None:
            parts.append(sql.SQL(" AND name = %s"))
            params.append(name)
        parts.append(sql.SQL(" ORDER BY sequence_id, span_id LIMIT %s OFFSET %s"))
        params += [limit, offset]
        with self._ready_pool().connection() as conn:
            rows = conn.execute(sql.Composed(parts), params).fetchall()
        return [codec.decode_span(row[0]) for row in rows]

    def list_rollouts(self, *, limit: int | None = None, offset: int = 0) -> list[RolloutSummary]:
        check_page(limit, offset, "postgres")
        with self._ready_pool().connection() as conn, conn.transaction():
            conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")  # one snapshot
            heads = conn.execute(self._heads, (limit, offset)).fetchall()
            ids = [h[0] for h in heads]
            attempts = conn.execute(self._attempts, (ids,)).fetchall()
            names = conn.execute(self._names, (ids,)).fetchall()
        return assemble_summaries(heads, attempts, names)

    def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        if _holds_nul(rollout_id, attempt_id):
            return 0
        query = sql.SQL("SELECT MAX(sequence_id) FROM {schema}.spans WHERE rollout_id = %s AND attempt_id = %s").format(
            schema=self._ident
        )
        with self._ready_pool().connection() as conn:
            row = conn.execute(query, (rollout_id, attempt_id)).fetchone()
        return next_sequence_id(row[0] if row else None)

    def verify(self, *, chunk_size: int = 1000) -> list[Problem]:
        """Rows whose checksum does not match their data (or whose data does not match their key).

        Streams rows through a server-side cursor, ``chunk_size`` at a time.
        """
        query = sql.SQL("SELECT rollout_id, attempt_id, span_id, checksum, data FROM {schema}.spans").format(
            schema=self._ident
        )
        problems: list[Problem] = []
        pool = self._ready_pool()
        with pool.connection() as conn, conn.transaction(), conn.cursor(name="agentemit_verify") as cur:
            cur.itersize = chunk_size
            cur.execute(query)
            for rollout_id, attempt_id, span_id, checksum, data in cur:
                key = (rollout_id, attempt_id, span_id)
                problem = row_problem(key, checksum, bytes(data))
                if problem is not None:
                    problems.append((key, problem))
        return problems

    def close(self) -> None:
        """Close the pool; idempotent."""
        with self._lock:
            self._closed = True
            pool, self._pool = self._pool, None
        if pool is not None:
            pool.close()
