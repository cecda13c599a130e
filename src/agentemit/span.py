"""The one span record every stage shares: built off the hot path, stored, served and read back.

A :class:`Span` round-trips losslessly through a plain dict (and so JSON) and to/from an
OpenTelemetry :class:`~opentelemetry.sdk.trace.ReadableSpan`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeAlias

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from agentemit import semconv

AttributeScalar: TypeAlias = str | bool | int | float
AttributeValue: TypeAlias = AttributeScalar | tuple[AttributeScalar, ...]
Attributes: TypeAlias = dict[str, AttributeValue]
StatusName = Literal["UNSET", "OK", "ERROR"]

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


@dataclass(slots=True)
class SpanEvent:
    """A timestamped event inside a span (OpenTelemetry's span events, e.g. an exception)."""

    name: str
    timestamp: int
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class Span:
    """One finished span with its rollout identity; ids are lowercase hex (32 / 16 digits)."""

    trace_id: str
    span_id: str
    parent_id: str | None
    name: str
    start_time: int
    end_time: int
    rollout_id: str
    attempt_id: str
    sequence_id: int
    attributes: Attributes = field(default_factory=dict)
    status: StatusName = "UNSET"
    status_description: str | None = None
    events: list[SpanEvent] = field(default_factory=list)
    resource: Attributes = field(default_factory=dict)

    @property
    def key(self) -> tuple[str, str, str]:
        """The idempotency key: a span with this key is stored at most once."""
        return (self.rollout_id, self.attempt_id, self.span_id)

    # --- dict / JSON -------------------------------------------------------------------------

    def to_dict(self) -> dict[str, Any]:
        """A JSON-safe dict; non-finite floats are tagged so JSON keeps them."""
        return {
            "trace_id": self.trace_id,
            "span_id": self.span_id,
            "parent_id": self.parent_id,
            "name": self.name,
            "start_time": self.start_time,
            "end_time": self.end_time,
            "rollout_id": self.rollout_id,
            "attempt_id": self.attempt_id,
            "sequence_id": self.sequence_id,
            "attributes": encode_attributes(self.attributes),
            "status": self.status,
            "status_description": self.status_description,
            "events": [
                {"name": e.name, "timestamp": e.timestamp, "attributes": encode_attributes(e.attributes)}
                for e in self.events
            ],
            "resource": encode_attributes(self.resource),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> Span:
        """Inverse of :meth:`to_dict`; raises ``KeyError``/``TypeError`` naming a missing field."""
        try:
            return cls(
                trace_id=str(data["trace_id"]),
                span_id=str(data["span_id"]),
                parent_id=data.get("parent_id"),
                name=str(data["name"]),
                start_time=int(data["start_time"]),
                end_time=int(data["end_time"]),
                rollout_id=str(data["rollout_id"]),
                attempt_id=str(data["attempt_id"]),
                sequence_id=int(data["sequence_id"]),
                attributes=decode_attributes(data.get("attributes") or {}),
                status=data.get("status", "UNSET"),
                status_description=data.get("status_description"),
                events=[
                    SpanEvent(str(e["name"]), int(e["timestamp"]), decode_attributes(e.get("attributes") or {}))
                    for e in data.get("events") or ()
                ],
                resource=decode_attributes(data.get("resource") or {}),
            )
        except KeyError as exc:
            raise KeyError(f"span record is missing field {exc.args[0]!r}") from exc

    # --- OpenTelemetry -----------------------------------------------------------------------

    def to_readable_span(self) -> ReadableSpan:
        """An OpenTelemetry SDK span with the same ids, times, attributes, events and status."""
        ctx = SpanContext(int(self.trace_id, 16), int(self.span_id, 16), False, TraceFlags(TraceFlags.SAMPLED))
        parent = (
            SpanContext(int(self.trace_id, 16), int(self.parent_id, 16), False, TraceFlags(TraceFlags.SAMPLED))
            if self.parent_id
            else None
        )
        attrs: dict[str, Any] = dict(self.attributes)
        attrs.setdefault(semconv.ROLLOUT_ID, self.rollout_id)
        attrs.setdefault(semconv.ATTEMPT_ID, self.attempt_id)
        attrs.setdefault(semconv.SPAN_SEQUENCE_ID, self.sequence_id)
        return ReadableSpan(
            name=self.name,
            context=ctx,
            parent=parent,
            resource=Resource(dict(self.resource)),
            attributes=attrs,
            events=[Event(e.name, dict(e.attributes), e.timestamp) for e in self.events],
            kind=SpanKind.INTERNAL,
            status=Status(StatusCode[self.status], self.status_description),
            start_time=self.start_time,
            end_time=self.end_time,
        )

    @classmethod
    def from_readable_span(
        cls,
        span: ReadableSpan,
        *,
        rollout_id: str | None = None,
        attempt_id: str | None = None,
        sequence_id: int | None = None,
    ) -> Span:
        """Convert an SDK span; rollout identity comes from the arguments or the span's attributes."""
        attrs = normalize_attributes(span.attributes or {})
        ctx = span.get_span_context()
        if ctx is None:
            raise ValueError(f"span {span.name!r} has no span context")
        status = span.status
        return cls(
            trace_id=format(ctx.trace_id, "032x"),
            span_id=format(ctx.span_id, "016x"),
            parent_id=format(span.parent.span_id, "016x") if span.parent else None,
            name=span.name,
            start_time=span.start_time or 0,
            end_time=span.end_time or span.start_time or 0,
            rollout_id=str(rollout_id if rollout_id is not None else attrs.get(semconv.ROLLOUT_ID, "")),
            attempt_id=str(attempt_id if attempt_id is not None else attrs.get(semconv.ATTEMPT_ID, "")),
            sequence_id=int(
                sequence_id if sequence_id is not None else attrs.get(semconv.SPAN_SEQUENCE_ID, 0)  # type: ignore[arg-type]
            ),
            attributes=attrs,
            status=status.status_code.name,  # type: ignore[arg-type]
            status_description=status.description,
            events=[SpanEvent(e.name, e.timestamp, normalize_attributes(e.attributes or {})) for e in span.events],
            resource=normalize_attributes(span.resource.attributes if span.resource else {}),
        )


def normalize_attributes(attrs: Mapping[str, Any]) -> Attributes:
    """Copy OpenTelemetry attributes into our form: sequences become tuples."""
    out: Attributes = {}
    for key, value in attrs.items():
        out[str(key)] = tuple(value) if isinstance(value, (list, tuple)) else value
    return out


def has_nonfinite(attrs: Mapping[str, AttributeValue]) -> bool:
    """True when a value (or an item of a tuple value) is NaN or infinite: JSON needs tags for those."""
    for value in attrs.values():
        cls = type(value)
        if cls is float:
            if not _isfinite(value):  # type: ignore[arg-type]
                return True
        elif cls is tuple and any(type(v) is float and not _isfinite(v) for v in value):  # type: ignore[union-attr]
            return True
    return False


_isfinite = math.isfinite


def _encode_value(value: AttributeValue) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, tuple):
        return [_encode_value(v) for v in value]
    return value


def _decode_value(value: Any) -> AttributeValue:
    if isinstance(value, list):
        return tuple(_decode_value(v) for v in value)  # type: ignore[misc]
    if isinstance(value, dict):
        tag = value.get("$float")
        if tag in _NONFINITE:
            return _NONFINITE[tag]
        raise TypeError(f"attribute value {value!r} is not an attribute value")
    return value  # type: ignore[no-any-return]


def encode_attributes(attrs: Mapping[str, AttributeValue]) -> dict[str, Any]:
    """JSON-safe copy of attributes (tuples become lists, non-finite floats are tagged)."""
    return {k: _encode_value(v) for k, v in attrs.items()}


def decode_attributes(data: Mapping[str, Any]) -> Attributes:
    """Inverse of :func:`encode_attributes`."""
    return {str(k): _decode_value(v) for k, v in data.items()}


def spans_to_dicts(spans: Sequence[Span]) -> list[dict[str, Any]]:
    """Convenience for batch serialization."""
    return [s.to_dict() for s in spans]
