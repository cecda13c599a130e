"""A process-local store for tests and short scripts: a dict keyed by ``Span.key`` behind one lock.

It keeps the same encoded rows the SQL stores keep, so reads return fresh copies (mutating a span after
adding it changes nothing stored) and round trips are exactly as lossless as on disk.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Sequence

from agentemit import codec
from agentemit.span import Span
from agentemit.stores._rows import (
    Problem,
    SpanKey,
    SpanRow,
    StoreClosedError,
    assemble_summaries,
    build_rows,
    check_page,
    next_sequence_id,
    register_fork_aware,
    row_problem,
)
from agentemit.stores.base import AttemptSelector, RolloutSummary, SpanStore


def _newest(row: SpanRow) -> tuple[int, int, str]:
    return (row.start_time, row.sequence_id, row.attempt_id)


def _latest_attempt(rows: Sequence[SpanRow]) -> str:
    """The attempt holding the newest span: max start_time, then max sequence_id, then attempt_id."""
    return max(rows, key=_newest).attempt_id


def _order(row: SpanRow) -> tuple[int, str]:
    return (row.sequence_id, row.span_id)


class InMemoryStore(SpanStore):
    """Thread-safe in-memory :class:`SpanStore`; nothing survives the process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rollouts: dict[str, dict[SpanKey, SpanRow]] = {}
        self._closed = False
        register_fork_aware(self)

    def __repr__(self) -> str:
        return f"InMemoryStore(rollouts={len(self._rollouts)}, closed={self._closed})"

    def _after_fork_in_child(self) -> None:
        self._lock = threading.Lock()  # a fork may have copied the lock while another thread held it

    def _check_open(self) -> None:
        if self._closed:
            raise StoreClosedError("memory store: used after close(); open a new store")

    def _rows_of(self, rollout_id: str) -> list[SpanRow]:
        with self._lock:
            self._check_open()
            return list(self._rollouts.get(rollout_id, {}).values())

    def add_many_spans(self, spans: Sequence[Span]) -> int:
        self._check_open()
        rows = build_rows(spans, "memory")
        added = 0
        with self._lock:
            self._check_open()
            for row in rows:
                bucket = self._rollouts.setdefault(row.rollout_id, {})
                key = (row.rollout_id, row.attempt_id, row.span_id)
                if key not in bucket:
                    bucket[key] = row
                    added += 1
        return added

    def query_spans(
        self,
        rollout_id: str,
        attempt_id: AttemptSelector = None,
        *,
        name: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Span]:
        check_page(limit, offset, "memory")
        rows = self._rows_of(rollout_id)
        if not rows:
            return []
        if attempt_id == "latest":
            attempt_id = _latest_attempt(rows)
        if attempt_id is not None:
            rows = [r for r in rows if r.attempt_id == attempt_id]
        if name is not None:
            rows = [r for r in rows if r.name == name]
        selected = sorted(rows, key=_order)
        end = None if limit is None else offset + limit
        return [codec.decode_span(r.data) for r in selected[offset:end]]

    def list_rollouts(self, *, limit: int | None = None, offset: int = 0) -> list[RolloutSummary]:
        check_page(limit, offset, "memory")
        with self._lock:
            self._check_open()
            groups = [list(bucket.values()) for bucket in self._rollouts.values() if bucket]
        groups.sort(key=lambda rows: (min(r.start_time for r in rows), rows[0].rollout_id))
        end = None if limit is None else offset + limit
        heads: list[tuple[str, int, int, int, float | None]] = []
        attempts: list[tuple[str, str]] = []
        names: list[tuple[str, str, int]] = []
        for rows in groups[offset:end]:
            rollout_id = rows[0].rollout_id
            latest = _latest_attempt(rows)
            rewarded = [r for r in rows if r.attempt_id == latest and r.reward is not None]
            final = max(rewarded, key=_order).reward if rewarded else None
            first = min(r.start_time for r in rows)
            heads.append((rollout_id, len(rows), first, max(r.end_time for r in rows), final))
            first_seen: dict[str, tuple[int, int]] = {}
            for r in rows:
                start, seq = first_seen.get(r.attempt_id, (r.start_time, r.sequence_id))
                first_seen[r.attempt_id] = (min(start, r.start_time), min(seq, r.sequence_id))
            for attempt in sorted(first_seen, key=lambda a: (*first_seen[a], a)):
                attempts.append((rollout_id, attempt))
            names.extend((rollout_id, n, c) for n, c in Counter(r.name for r in rows).items())
        return assemble_summaries(heads, attempts, names)

    def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        seqs = [r.sequence_id for r in self._rows_of(rollout_id) if r.attempt_id == attempt_id]
        return next_sequence_id(max(seqs, default=None))

    def verify(self) -> list[Problem]:
        """Rows whose checksum does not match their data (or whose data does not match their key)."""
        with self._lock:
            self._check_open()
            rows = [row for bucket in self._rollouts.values() for row in bucket.values()]
        problems: list[Problem] = []
        for row in rows:
            key = (row.rollout_id, row.attempt_id, row.span_id)
            problem = row_problem(key, row.checksum, row.data)
            if problem is not None:
                problems.append((key, problem))
        return problems

    def close(self) -> None:
        """Drop every span; idempotent."""
        with self._lock:
            self._closed = True
            self._rollouts.clear()
