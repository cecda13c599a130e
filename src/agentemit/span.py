"""The one span record every stage shares: built off the hot path, stored, served and read back.

A :class:`Span` round-trips losslessly through a plain dict (and so JSON) and to/from an
OpenTelemetry :class:`~opentelemetry.sdk.trace.ReadableSpan`. Two rules make that hold:

* **A status description goes with ERROR only.** OpenTelemetry's ``Status`` drops a description on
  OK/UNSET, so a :class:`Span` built with one drops it too: every form of a span says the same.
* **Identity attributes added on the way out are removed on the way back.** ``to_readable_span`` puts
  the rollout identity into the attributes (``agentlightning.rollout_id`` / ``attempt_id`` /
  ``span_sequence_id``) when the span lacks them, because OpenTelemetry readers such as Agent
  Lightning's look there; ``from_readable_span`` removes exactly those again. Identity attributes a
  span already had (the pipeline's builder stamps them into every span) are kept.

:meth:`Span.from_dict` validates what it reads (it is the decoding half of the codec); building a
:class:`Span` directly does not, since the pipeline builds one per event on its hot path.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

from agentemit import semconv

AttributeScalar: TypeAlias = str | bool | int | float
AttributeValue: TypeAlias = AttributeScalar | tuple[AttributeScalar, ...]
Attributes: TypeAlias = dict[str, AttributeValue]
StatusName = Literal["UNSET", "OK", "ERROR"]

STATUS_NAMES: Final = ("UNSET", "OK", "ERROR")
INT64_MIN: Final = -(2**63)
INT64_MAX: Final = 2**63 - 1  # OTLP attribute ints, our sequence ids and times are all signed 64-bit

_NONFINITE = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


@dataclass(slots=True)
class SpanEvent:
    """A timestamped event inside a span (OpenTelemetry's span events, e.g. an exception)."""

    name: str
    timestamp: int
    attributes: Attributes = field(default_factory=dict)


@dataclass(slots=True)
class Span:
    """One finished span with its rollout identity; ids are lowercase hex (32 / 16 digits).

    ``status_description`` is kept only when ``status`` is ``"ERROR"`` (see the module docstring).
    """

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

    def __post_init__(self) -> None:
        if self.status_description is not None and self.status != "ERROR":
            self.status_description = None

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
        """Inverse of :meth:`to_dict`, refusing anything a :class:`Span` cannot hold.

        ``attributes``, ``status``, ``status_description``, ``events`` and ``resource`` may be absent
        (they take their defaults); every other field is required.

        Raises:
            KeyError: a required field is missing.
            TypeError: a field or attribute value has the wrong type (e.g. ``null`` or a nested array
                as an attribute value, an array where an object belongs).
            ValueError: a value is out of range: an int outside the signed 64-bit range, an unknown
                status, an empty resource key.

            Each message starts with the culprit's path: ``start_time``, ``attributes['x']``,
            ``events[0].timestamp``, ``resource['']``.
        """
        if type(data) is dict:
            span = _plain_span(cls, data)
            if span is not None:
                return span
        if not isinstance(data, Mapping):
            raise TypeError(f"span record: expected an object, got {_kind(data)}")
        status = data.get("status", "UNSET")
        if status not in STATUS_NAMES:
            raise ValueError(f"status: {status!r} is not one of {', '.join(STATUS_NAMES)}")
        return cls(
            trace_id=_text(data, "trace_id", ""),
            span_id=_text(data, "span_id", ""),
            parent_id=_optional_text(data, "parent_id"),
            name=_text(data, "name", ""),
            start_time=_int64(data, "start_time", ""),
            end_time=_int64(data, "end_time", ""),
            rollout_id=_text(data, "rollout_id", ""),
            attempt_id=_text(data, "attempt_id", ""),
            sequence_id=_int64(data, "sequence_id", ""),
            attributes=decode_attributes(data.get("attributes", {}), "attributes"),
            status=status,
            status_description=_optional_text(data, "status_description"),
            events=_decode_events(data.get("events", [])),
            resource=decode_attributes(data.get("resource", {}), "resource", empty_keys=False),
        )

    # --- OpenTelemetry -----------------------------------------------------------------------

    def to_readable_span(self) -> ReadableSpan:
        """An OpenTelemetry SDK span with the same ids, times, attributes, events and status.

        The rollout identity attributes the span lacks are added (see the module docstring).

        Raises:
            ValueError: the resource has an empty key (OpenTelemetry's ``Resource`` would drop it).
        """
        if "" in self.resource:
            raise ValueError(f"span {self.span_id!r}: resource[''] has an empty key, which OpenTelemetry drops")
        ctx = SpanContext(int(self.trace_id, 16), int(self.span_id, 16), False, TraceFlags(TraceFlags.SAMPLED))
        parent = (
            SpanContext(int(self.trace_id, 16), int(self.parent_id, 16), False, TraceFlags(TraceFlags.SAMPLED))
            if self.parent_id
            else None
        )
        attrs: dict[str, Any] = dict(self.attributes)
        added: list[str] = []
        for key, value in (
            (semconv.ROLLOUT_ID, self.rollout_id),
            (semconv.ATTEMPT_ID, self.attempt_id),
            (semconv.SPAN_SEQUENCE_ID, self.sequence_id),
        ):
            if key not in attrs:
                attrs[key] = value
                added.append(key)
        description = self.status_description if self.status == "ERROR" else None
        return _ConvertedSpan(
            (self.rollout_id, self.attempt_id, self.sequence_id),
            tuple(added),
            name=self.name,
            context=ctx,
            parent=parent,
            resource=Resource(dict(self.resource)),
            attributes=attrs,
            events=[Event(e.name, dict(e.attributes), e.timestamp) for e in self.events],
            kind=SpanKind.INTERNAL,
            status=Status(StatusCode[self.status], description),
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
        """Convert an SDK span.

        Rollout identity comes from the arguments; else, for a span made by :meth:`to_readable_span`,
        from the :class:`Span` it was made from; else from the span's identity attributes. Identity
        attributes that :meth:`to_readable_span` added are removed, so that round trip is lossless.
        """
        attrs = normalize_attributes(span.attributes or {})
        ctx = span.get_span_context()
        if ctx is None:
            raise ValueError(f"span {span.name!r} has no span context")
        if isinstance(span, _ConvertedSpan):
            source_rollout, source_attempt, source_sequence = span.source_identity
            rollout_id = source_rollout if rollout_id is None else rollout_id
            attempt_id = source_attempt if attempt_id is None else attempt_id
            sequence_id = source_sequence if sequence_id is None else sequence_id
            for key in span.added_identity_keys:
                attrs.pop(key, None)
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


class _ConvertedSpan(ReadableSpan):
    """A ReadableSpan made by :meth:`Span.to_readable_span`; remembers what OpenTelemetry cannot carry."""

    def __init__(
        self, source_identity: tuple[str, str, int], added_identity_keys: tuple[str, ...], **kwargs: Any
    ) -> None:
        super().__init__(**kwargs)
        self.source_identity = source_identity
        self.added_identity_keys = added_identity_keys


def is_utf8(text: str) -> bool:
    """True when ``text`` (an exact str) holds no lone surrogate: it is valid UTF-8, so JSON, SQL and
    protobuf can carry it. One C call for ASCII text, the usual case."""
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def normalize_attributes(attrs: Mapping[str, Any]) -> Attributes:
    """Copy OpenTelemetry attributes into our form: sequences become tuples.

    OpenTelemetry accepts two kinds of value a :class:`Span` cannot hold (the codec and the stores
    refuse them). Rather than lose them, they are kept as text: an int outside the signed 64-bit
    range becomes its decimal string (as the OTLP sink sends it), and a sequence holding ``None`` or
    such an int becomes its JSON text (``"[1, null]"``).
    """
    out: Attributes = {}
    for key, value in attrs.items():
        cls = type(value)
        if cls is int:
            if not INT64_MIN <= value <= INT64_MAX:
                value = str(value)
        elif isinstance(value, (list, tuple)):
            value = tuple(value)
            if not _holdable(value):
                value = json.dumps(list(value))
        out[str(key)] = value
    return out


def _holdable(items: tuple[Any, ...]) -> bool:
    """False for a sequence holding ``None`` or an int outside int64 (OpenTelemetry allows both)."""
    kinds = set(map(type, items))
    if type(None) in kinds:
        return False
    if int not in kinds:
        return True
    ints = items if len(kinds) == 1 else [item for item in items if type(item) is int]  # homogeneous: C speed
    return bool(min(ints) >= INT64_MIN and max(ints) <= INT64_MAX)


def _encode_value(value: AttributeValue) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return {"$float": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, tuple):
        return [_encode_value(v) for v in value]
    return value


def encode_attributes(attrs: Mapping[str, AttributeValue]) -> dict[str, Any]:
    """JSON-safe copy of attributes (tuples become lists, non-finite floats are tagged)."""
    return {k: _encode_value(v) for k, v in attrs.items()}


def decode_attributes(data: Any, where: str = "attributes", *, empty_keys: bool = True) -> Attributes:
    """Inverse of :func:`encode_attributes`, refusing what is not an attribute value.

    ``where`` starts every error message (e.g. ``resource``); ``empty_keys=False`` refuses ``""`` as
    a key. Raises ``TypeError`` / ``ValueError`` as :meth:`Span.from_dict` does.
    """
    if type(data) is dict and _plain_attributes(data, empty_keys):
        return dict(data)
    if not isinstance(data, Mapping):
        raise TypeError(f"{where}: expected an object, got {_kind(data)}")
    out: Attributes = {}
    for key, value in data.items():
        if not isinstance(key, str):
            raise TypeError(f"{where}: key {key!r} is {_kind(key)}; expected a str")
        if not key and not empty_keys:
            raise ValueError(f"{where}['']: an empty key is not allowed here")
        if isinstance(value, (list, tuple)):
            out[key] = tuple(_decode_scalar(item, f"{where}[{key!r}][{i}]") for i, item in enumerate(value))
        else:
            out[key] = _decode_scalar(value, f"{where}[{key!r}]")
    return out


def _plain_span(cls: type[Span], data: dict[str, Any]) -> Span | None:
    """:meth:`Span.from_dict` for the usual record, checked with exact type tests and no error paths;
    None sends anything unusual (a missing field, a wrong type, a list attribute) to the checked path,
    which accepts or refuses it by name. Decoding every span a server or a spool replay reads goes
    through here, so it is kept flat."""
    try:
        trace_id, span_id, name = data["trace_id"], data["span_id"], data["name"]
        rollout_id, attempt_id = data["rollout_id"], data["attempt_id"]
        start_time, end_time, sequence_id = data["start_time"], data["end_time"], data["sequence_id"]
    except KeyError:
        return None
    parent_id, description = data.get("parent_id"), data.get("status_description")
    status, events = data.get("status", "UNSET"), data.get("events", [])
    attributes, resource = data.get("attributes", {}), data.get("resource", {})
    if not (
        type(trace_id) is str
        and type(span_id) is str
        and type(name) is str
        and type(rollout_id) is str
        and type(attempt_id) is str
        and (parent_id is None or type(parent_id) is str)
        and (description is None or type(description) is str)
        and type(start_time) is int
        and type(end_time) is int
        and type(sequence_id) is int
        and INT64_MIN <= start_time <= INT64_MAX
        and INT64_MIN <= end_time <= INT64_MAX
        and INT64_MIN <= sequence_id <= INT64_MAX
        and status in STATUS_NAMES
        and type(events) is list
        and type(attributes) is dict
        and type(resource) is dict
        and _plain_attributes(attributes, True)
        and _plain_attributes(resource, False)
    ):
        return None
    decoded_events = _plain_events(events) if events else []
    if decoded_events is None:
        return None
    return cls(
        trace_id,
        span_id,
        parent_id,
        name,
        start_time,
        end_time,
        rollout_id,
        attempt_id,
        sequence_id,
        dict(attributes),
        status,
        description,
        decoded_events,
        dict(resource),
    )


def decode_plain(data: dict[str, Any]) -> Span | None:
    """A span decoded from a usual JSON record, or None for anything unusual (which
    :meth:`Span.from_dict` accepts or refuses by name).

    A record this accepts holds no float of magnitude 2**63 or more, so it cannot hold an integer
    literal too wide for 64 bits that the JSON parser read as a float: a batch whose every span
    decodes here needs no scan for such literals.
    """
    return _plain_span(Span, data)


def _plain_events(events: list[Any]) -> list[SpanEvent] | None:
    """:func:`_plain_span` for the events array; None sends the span to the checked path."""
    out: list[SpanEvent] = []
    for item in events:
        if type(item) is not dict:
            return None
        name, timestamp, attributes = item.get("name"), item.get("timestamp"), item.get("attributes", {})
        if not (
            type(name) is str
            and type(timestamp) is int
            and INT64_MIN <= timestamp <= INT64_MAX
            and type(attributes) is dict
            and _plain_attributes(attributes, True)
        ):
            return None
        out.append(SpanEvent(name, timestamp, dict(attributes)))
    return out


def _plain_attributes(data: dict[Any, Any], empty_keys: bool) -> bool:
    """True when every key is a str and every value a str, float, bool or int64: the usual case,
    decoded as a plain copy. Anything else takes the checked path, which names the culprit (building
    those error paths for every value cost more than the rest of decoding)."""
    for key, value in data.items():
        if type(key) is not str:
            return False
        cls = type(value)
        if cls is str or cls is bool:
            continue
        if cls is float:
            if -_WIDE_FLOAT < value < _WIDE_FLOAT:  # also False for NaN
                continue
            return False
        if cls is not int or not INT64_MIN <= value <= INT64_MAX:
            return False
    return empty_keys or "" not in data


# A float this large may be an integer literal beyond 64 bits that the JSON parser read as a float
# (see :func:`decode_plain`); such floats take the checked path, which keeps them as floats.
_WIDE_FLOAT = float(2**63)


def _decode_scalar(value: Any, where: str) -> AttributeScalar:
    cls = type(value)
    if cls is str or cls is float or cls is bool:
        return value  # type: ignore[no-any-return]
    if isinstance(value, int) and not isinstance(value, bool):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"{where}: {value} is outside the signed 64-bit range")
        return value
    if isinstance(value, (str, float)):
        return value
    if isinstance(value, dict) and len(value) == 1 and value.get("$float") in _NONFINITE:
        return _NONFINITE[value["$float"]]
    shown = "null" if value is None else f"{_kind(value)} {value!r}"
    raise TypeError(
        f"{where}: {shown} is not an attribute value (expected a str, bool, int, float or an array of them)"
    )


def _decode_events(data: Any) -> list[SpanEvent]:
    if not isinstance(data, (list, tuple)):
        raise TypeError(f"events: expected an array, got {_kind(data)}")
    out: list[SpanEvent] = []
    for i, item in enumerate(data):
        where = f"events[{i}]"
        if not isinstance(item, Mapping):
            raise TypeError(f"{where}: expected an object, got {_kind(item)}")
        name, timestamp = _text(item, "name", where), _int64(item, "timestamp", where)
        out.append(SpanEvent(name, timestamp, decode_attributes(item.get("attributes", {}), f"{where}.attributes")))
    return out


def _required(data: Mapping[str, Any], key: str, where: str) -> Any:
    try:
        return data[key]
    except KeyError:
        owner = where or "span record"
        raise KeyError(f"{owner} is missing field {key!r}") from None


def _text(data: Mapping[str, Any], key: str, where: str) -> str:
    value = _required(data, key, where)
    if not isinstance(value, str):
        raise TypeError(f"{_path(where, key)}: expected a str, got {_kind(value)}")
    return value


def _optional_text(data: Mapping[str, Any], key: str) -> str | None:
    value = data.get(key)
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{key}: expected a str or null, got {_kind(value)}")
    return value


def _int64(data: Mapping[str, Any], key: str, where: str) -> int:
    value = _required(data, key, where)
    if not isinstance(value, int) or isinstance(value, bool):
        raise TypeError(f"{_path(where, key)}: expected an int, got {_kind(value)}")
    if not INT64_MIN <= value <= INT64_MAX:
        raise ValueError(f"{_path(where, key)}: {value} is outside the signed 64-bit range")
    return value


def _path(where: str, key: str) -> str:
    return f"{where}.{key}" if where else key


_KINDS: Final[dict[type, str]] = {type(None): "null", dict: "object", list: "array", tuple: "array"}


def _kind(value: object) -> str:
    """A value's kind in JSON's words where it has one (``null``, ``object``, ``array``)."""
    return _KINDS.get(type(value), type(value).__name__)


def spans_to_dicts(spans: Sequence[Span]) -> list[dict[str, Any]]:
    """Convenience for batch serialization."""
    return [s.to_dict() for s in spans]
