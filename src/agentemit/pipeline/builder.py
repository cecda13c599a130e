"""Build full :class:`Span` records from raw records, on the worker thread (never the emitter's)."""

from __future__ import annotations

from typing import Any

from agentemit import semconv
from agentemit.span import Attributes, Span, SpanEvent, StatusName
from agentemit.tracing.context import RawRecord, as_attributes


def build_span(record: RawRecord, resource: Attributes) -> Span:
    """One raw record (see ``tracing/context.py`` for its layout) as a Span."""
    kind = record[0]
    if kind == "otel":
        span = Span.from_readable_span(record[11], rollout_id=record[9], attempt_id=record[10], sequence_id=record[8])
        _stamp_identity(span.attributes, span.rollout_id, span.attempt_id, span.sequence_id)
        for key, value in resource.items():  # the SDK provider's resource wins; ours fills in the worker and pid
            span.resource.setdefault(key, value)
        return span
    rollout_id, attempt_id, sequence_id = record[9], record[10], record[8]
    attrs = _span_attributes(record[4], rollout_id, attempt_id, sequence_id)
    parent = record[7]
    status: StatusName = "UNSET"
    description: str | None = None
    events: list[SpanEvent] = []
    if kind == "exception":  # status and an OpenTelemetry exception event, as the SDK records them
        resolve_deferred(attrs)
        status = "ERROR"
        description = str(attrs.get(semconv.EXCEPTION_MESSAGE, ""))
        events.append(SpanEvent("exception", record[2], {k: v for k, v in attrs.items() if k.startswith("exception.")}))
    return Span(
        record[5],
        f"{record[6]:016x}",  # span ids as 16 hex digits, formatted inline (no call per id)
        f"{parent:016x}" if parent else None,
        record[1],
        record[2],
        record[3],
        rollout_id,
        attempt_id,
        sequence_id,
        attrs,
        status,
        description,
        events,
        resource,  # shared, read-only by convention: every span of a pipeline has the same resource
    )


_ROLLOUT_ID, _ATTEMPT_ID, _SEQUENCE_ID = semconv.ROLLOUT_ID, semconv.ATTEMPT_ID, semconv.SPAN_SEQUENCE_ID


def _span_attributes(
    attrs: Attributes | tuple[Any, ...], rollout_id: str, attempt_id: str, sequence_id: int
) -> Attributes:
    """The span's attributes: the record's, then the rollout identity Agent Lightning's readers expect.

    Emitted attributes are already normalized (flatten_attributes makes tuples) and the record owns
    its dict, so a dict becomes the span's without a copy. The flat pairs of a reward or a message
    are built into the final dict in one step (no resize for the identity keys).
    """
    if type(attrs) is tuple:
        size = len(attrs)
        if size == 6:  # a reward
            return {
                attrs[0]: attrs[1],
                attrs[2]: attrs[3],
                attrs[4]: attrs[5],
                _ROLLOUT_ID: rollout_id,
                _ATTEMPT_ID: attempt_id,
                _SEQUENCE_ID: sequence_id,
            }
        if size == 4:  # a message, or an object's type and JSON
            return {
                attrs[0]: attrs[1],
                attrs[2]: attrs[3],
                _ROLLOUT_ID: rollout_id,
                _ATTEMPT_ID: attempt_id,
                _SEQUENCE_ID: sequence_id,
            }
    out = as_attributes(attrs)
    _stamp_identity(out, rollout_id, attempt_id, sequence_id)
    return out


def _stamp_identity(attrs: Attributes, rollout_id: str, attempt_id: str, sequence_id: int) -> None:
    """Rollout identity also lives in the attributes, as Agent Lightning's readers expect."""
    attrs[_ROLLOUT_ID] = rollout_id
    attrs[_ATTEMPT_ID] = attempt_id
    attrs[_SEQUENCE_ID] = sequence_id


def resolve_deferred(attrs: Attributes) -> None:
    """Format values the emitter deferred to the worker (an exception's stack trace), in place.

    The deferred trace is a ``functools.partial`` (emit/api.py), which can carry attributes: its text
    is kept on it, so a record built twice (by the worker, and by the tracer for its last trace) is
    formatted once.
    """
    trace: Any = attrs.get(semconv.EXCEPTION_STACKTRACE)
    if trace is not None and type(trace) is not str:
        text = getattr(trace, "text", None)
        if text is None:
            text = trace.text = trace()
        attrs[semconv.EXCEPTION_STACKTRACE] = text
