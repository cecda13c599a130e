"""Filter stages: each takes a span and returns it, or None to drop it (counted as ``filtered``)."""

from __future__ import annotations

from collections.abc import Callable

from agentemit.span import Span

SpanPredicate = Callable[[Span], bool]


def require_rollout(span: Span) -> Span | None:
    """Drop spans with no rollout context (for stores that key everything by rollout)."""
    return span if span.rollout_id else None


def predicate_filter(predicate: SpanPredicate) -> Callable[[Span], Span | None]:
    """A stage keeping only the spans ``predicate`` accepts."""

    def stage(span: Span) -> Span | None:
        return span if predicate(span) else None

    stage.__name__ = f"predicate_filter({getattr(predicate, '__name__', predicate)!s})"
    return stage
