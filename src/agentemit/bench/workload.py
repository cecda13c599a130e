"""The events every section produces, and the tracer/store set-up they share.

One workload everywhere, so figures compare: nine short messages then one reward, repeating (the
shape of an agent loop: many log lines, a reward per step). Spans for the server section are built
the way the pipeline builds them, from raw records, so their size and attributes match.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentemit import OtelTracer, PipelineConfig, emit_message, emit_reward, semconv
from agentemit.pipeline.builder import build_span
from agentemit.span import Attributes, Span
from agentemit.stores import SqliteStore
from agentemit.tracing.context import RECORD_OVERHEAD, RawRecord

MESSAGE = "tool call returned 42 rows in 12 ms"
OBJECT = {"step": 3, "action": "search", "scores": [0.1, 0.2], "done": False}  # what emit_object is timed with
EVENT_NAMES = (semconv.SPAN_MESSAGE, semconv.SPAN_REWARD)


def produce(n: int) -> None:
    """Emit ``n`` events into the active rollout: nine messages, then a reward, repeating."""
    message, reward = emit_message, emit_reward
    for i in range(n):
        if i % 10 == 9:
            reward(0.5)
        else:
            message(MESSAGE)


def config(spool_dir: Path, **overrides: Any) -> PipelineConfig:
    """Defaults (not the environment, so a stray AGENTEMIT_* variable cannot skew a figure), own spool."""
    return PipelineConfig(spool_dir=spool_dir, **overrides)


def sqlite_tracer(directory: Path, **overrides: Any) -> tuple[OtelTracer, SqliteStore]:
    """A started tracer over a fresh SqliteStore in ``directory`` (rollout traces not kept in memory)."""
    store = SqliteStore(directory / "bench.db")
    tracer = OtelTracer(store, config=config(directory / "spool", **overrides), keep_last_trace=False)
    tracer.init_worker("bench")
    return tracer, store


def count_rows(db: Path, where: str = "", params: tuple[Any, ...] = ()) -> int:
    """Rows in a SQLite store's file, read through a separate connection."""
    conn = sqlite3.connect(db)
    try:
        row = conn.execute(f"SELECT COUNT(*) FROM spans {where}", params).fetchone()
    finally:
        conn.close()
    return int(row[0])


def count_events(db: Path) -> int:
    """Stored spans of emitted events (the rollout's own root span is not one)."""
    return count_rows(db, "WHERE name IN (?, ?)", EVENT_NAMES)


REWARD_PAIRS = (  # the attributes emit_reward(0.5) hands its rollout (flat pairs: tracing/context.py)
    semconv.REWARD_LEGACY,
    0.5,
    semconv.reward_name_key(0),
    semconv.PRIMARY_REWARD_NAME,
    semconv.reward_value_key(0),
    0.5,
)


def make_records(
    n: int, tag: str, per_rollout: int = 1_000, message: Callable[[int], str] | None = None
) -> list[RawRecord]:
    """``n`` raw records of the standard workload as the emit path makes them, ``per_rollout`` to a
    rollout. ``message(i)`` gives the i-th message body (default: the standard ``MESSAGE``)."""
    records: list[RawRecord] = []
    now = time.time_ns()
    for i in range(n):
        rollout, seq = divmod(i, per_rollout)
        # Attributes as flat pairs, as emit_reward(0.5) and emit_message(body) hand them over.
        if i % 10 == 9:
            kind, name = "reward", semconv.SPAN_REWARD
            attrs: tuple[Any, ...] = REWARD_PAIRS
            size = RECORD_OVERHEAD
        else:
            body = MESSAGE if message is None else message(i)
            kind, name = "message", semconv.SPAN_MESSAGE
            attrs = (semconv.MESSAGE_BODY, body, semconv.MESSAGE_LEGACY, body)
            size = RECORD_OVERHEAD + len(body)
        records.append(
            (
                kind,
                name,
                now + i,
                now + i,
                attrs,
                f"{rollout + 1:032x}",
                (7 << 32) + i + 1,
                (9 << 32) + rollout + 1,
                seq + 1,
                f"{tag}-rollout-{rollout}",
                "attempt-0",
                None,
                size,
            )
        )
    return records


def make_spans(n: int, tag: str, per_rollout: int = 1_000) -> list[Span]:
    """``n`` spans of the standard workload as the pipeline builds them, ``per_rollout`` to a rollout."""
    resource: Attributes = {"service.name": "agentemit-bench", "process.pid": 1}
    return [build_span(record, resource) for record in make_records(n, tag, per_rollout)]
