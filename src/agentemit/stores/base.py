"""The one store interface every backend implements (memory, SQLite, PostgreSQL, HTTP).

Stores are synchronous; each I/O method has an async twin ``a<name>`` defined once here, which runs
the sync method in a worker thread, so the twins can never drift apart.
"""

from __future__ import annotations

import abc
import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Literal

from agentemit.span import Span

AttemptSelector = str | Literal["latest"] | None


@dataclass(slots=True)
class RolloutSummary:
    """What ``list_rollouts`` answers for one rollout."""

    rollout_id: str
    attempt_ids: list[str]
    span_count: int
    spans_by_name: dict[str, int] = field(default_factory=dict)
    final_reward: float | None = None
    first_time: int = 0
    last_time: int = 0

    def to_dict(self) -> dict[str, object]:
        return {
            "rollout_id": self.rollout_id,
            "attempt_ids": list(self.attempt_ids),
            "span_count": self.span_count,
            "spans_by_name": dict(self.spans_by_name),
            "final_reward": self.final_reward,
            "first_time": self.first_time,
            "last_time": self.last_time,
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> RolloutSummary:
        return cls(
            rollout_id=str(data["rollout_id"]),
            attempt_ids=[str(a) for a in data.get("attempt_ids") or []],  # type: ignore[attr-defined]
            span_count=int(data["span_count"]),  # type: ignore[call-overload]
            spans_by_name={str(k): int(v) for k, v in (data.get("spans_by_name") or {}).items()},  # type: ignore[attr-defined]
            final_reward=None if data.get("final_reward") is None else float(data["final_reward"]),  # type: ignore[arg-type]
            first_time=int(data.get("first_time") or 0),  # type: ignore[call-overload]
            last_time=int(data.get("last_time") or 0),  # type: ignore[call-overload]
        )


class SpanStore(abc.ABC):
    """Keeps spans; adding a span whose :attr:`Span.key` is already stored is a no-op.

    ``requires_rollout`` tells the pipeline to drop (and count) spans with no rollout context.
    """

    requires_rollout: bool = True

    @abc.abstractmethod
    def add_many_spans(self, spans: Sequence[Span]) -> int:
        """Store a batch in one transaction; returns how many were new (duplicates are skipped)."""

    def add_span(self, span: Span) -> bool:
        """Store one span; returns False when its key was already stored."""
        return self.add_many_spans([span]) == 1

    @abc.abstractmethod
    def query_spans(
        self,
        rollout_id: str,
        attempt_id: AttemptSelector = None,
        *,
        name: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Span]:
        """Spans of one rollout ordered by sequence_id (then span_id).

        ``attempt_id``: None for every attempt, ``"latest"`` for the attempt with the newest span,
        or an attempt id. ``name`` filters by exact span name.
        """

    @abc.abstractmethod
    def list_rollouts(self, *, limit: int | None = None, offset: int = 0) -> list[RolloutSummary]:
        """Every rollout with span counts and its final reward, ordered by first span time."""

    @abc.abstractmethod
    def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        """One more than the highest stored sequence_id of this attempt (0 when none).

        2**63 when the attempt holds the largest int64: no later span of it can be numbered (every
        store refuses a sequence_id beyond int64), which the caller must handle, not wrap.
        """

    def verify(self) -> list[tuple[tuple[str, str, str], str]]:
        """Re-check every stored row against its checksum: ``[(key, problem), ...]``, empty when intact."""
        raise NotImplementedError(f"{type(self).__name__} cannot verify its rows")

    def close(self) -> None:
        """Release connections and files; the default has nothing to release."""

    # --- async twins: one definition each, delegating to the sync method ---------------------

    async def aadd_many_spans(self, spans: Sequence[Span]) -> int:
        return await asyncio.to_thread(self.add_many_spans, spans)

    async def aadd_span(self, span: Span) -> bool:
        return await asyncio.to_thread(self.add_span, span)

    async def aquery_spans(
        self,
        rollout_id: str,
        attempt_id: AttemptSelector = None,
        *,
        name: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Span]:
        return await asyncio.to_thread(self.query_spans, rollout_id, attempt_id, name=name, limit=limit, offset=offset)

    async def alist_rollouts(self, *, limit: int | None = None, offset: int = 0) -> list[RolloutSummary]:
        return await asyncio.to_thread(self.list_rollouts, limit=limit, offset=offset)

    async def aget_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        return await asyncio.to_thread(self.get_next_span_sequence_id, rollout_id, attempt_id)

    async def aclose(self) -> None:
        await asyncio.to_thread(self.close)

    def __enter__(self) -> SpanStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
