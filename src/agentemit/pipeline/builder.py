"""Build full :class:`Span` records from raw records, on the worker thread (never the emitter's)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from agentemit import semconv
from agentemit.span import Attributes, Span, SpanEvent, StatusName, normalize_attributes
from agentemit.tracing.context import RawRecord


def build_span(record: RawRecord, resource: Mapping[str, Any]) -> Span:
    """One raw record (see ``tracing/context.py`` for its layout) as a Span."""
    kind = record[0]
    if kind == "otel":
        span = Span.from_readable_span(
            record[11], rollout_id=record[9], attempt_id=record[10], sequence_id=record[8]
        )
        _stamp_identity(span.attributes, span)
        return span
    attrs: Attributes = normalize_attributes(record[4])
    status: StatusName = "UNSET"
    description: str | None = None
    events: list[SpanEvent] = []
    if kind == "exception":
        status = "ERROR"
        description = str(attrs.get(semconv.EXCEPTION_MESSAGE, ""))
        events.append(
            SpanEvent(
                "exception",
                record[2],
                {k: v for k, v in attrs.items() if k.startswith("exception.")},
            )
        )
    parent = record[7]
    span = Span(
        trace_id=record[5],
        span_id=format(record[6], "016x"),
        parent_id=format(parent, "016x") if parent else None,
        name=record[1],
        start_time=record[2],
        end_time=record[3],
        rollout_id=record[9],
        attempt_id=record[10],
        sequence_id=record[8],
        attributes=attrs,
        status=status,
        status_description=description,
        events=events,
        resource=dict(resource),  # type: ignore[arg-type]
    )
    _stamp_identity(attrs, span)
    return span


def _stamp_identity(attrs: Attributes, span: Span) -> None:
    """Rollout identity also lives in the attributes, as Agent Lightning's readers expect."""
    attrs[semconv.ROLLOUT_ID] = span.rollout_id
    attrs[semconv.ATTEMPT_ID] = span.attempt_id
    attrs[semconv.SPAN_SEQUENCE_ID] = span.sequence_id


def estimate_bytes(record: RawRecord) -> int:
    """A cheap size estimate of a raw record in memory (used for the memory threshold)."""
    size = 400
    for value in record[4].values():
        if type(value) is str:
            size += 80 + len(value)
        else:
            size += 80
    if record[0] == "otel":
        size += 2000
    return size
