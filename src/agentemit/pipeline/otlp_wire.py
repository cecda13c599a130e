"""OTLP trace export requests written straight to protobuf wire bytes, without message objects.

Building ``opentelemetry.proto`` messages field by field from Python costs ~6 µs a span (each
assignment crosses into the protobuf runtime); the wire format is simple enough to write directly:
tags, varints, little-endian fixed-width numbers and length-prefixed bytes. Fields are written in
field-number order with proto3's rules (defaults left out, oneof members and present submessages
always written), so the bytes are the ones ``SerializeToString(deterministic=True)`` gives for the
same message; ``tests/test_otlp_sink.py`` checks that against the SDK's own encoder.

Field numbers are those of ``opentelemetry/proto/trace/v1/trace.proto`` and ``common/v1/common.proto``.
"""

from __future__ import annotations

import struct
from collections.abc import Mapping, Sequence
from typing import Any

from agentemit import semconv
from agentemit.span import AttributeValue, Span

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_UINT64 = (1 << 64) - 1
_DOUBLE = struct.Struct("<d")
_FIXED64 = struct.Struct("<Q")
_FIXED32 = struct.Struct("<I")
_STATUS_CODES = {"UNSET": 0, "OK": 1, "ERROR": 2}
_ONE_BYTE = [bytes((n,)) for n in range(128)]

# Span fields: 1 trace_id, 2 span_id, 4 parent_span_id, 5 name, 6 kind (INTERNAL = 1), 7/8 start/end
# (fixed64), 9 attributes, 11 events, 15 status, 16 flags (fixed32; parent known and local = 0x100).
_KIND_INTERNAL = b"\x30\x01"
_FLAGS = b"\x85\x01" + _FIXED32.pack(0x100)
_EMPTY_SCOPE = b"\x0a\x00"  # ScopeSpans.scope: present and empty, as the SDK writes it


def _varint(value: int) -> bytes:
    """An unsigned varint (``value`` >= 0)."""
    if value < 0x80:
        return _ONE_BYTE[value]
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field: tag, length, payload."""
    size = len(payload)
    return tag + (_ONE_BYTE[size] if size < 0x80 else _varint(size)) + payload


def _any_value(value: Any) -> bytes | None:
    """An AnyValue message body, or None for a value that carries nothing (``None``)."""
    kind = type(value)
    if kind is str:
        return _field(b"\x0a", value.encode())  # 1 string_value
    if kind is bool:
        return b"\x10\x01" if value else b"\x10\x00"  # 2 bool_value
    if kind is int:
        if _INT64_MIN <= value <= _INT64_MAX:
            return b"\x18" + _varint(value & _UINT64)  # 3 int_value; negatives as 10-byte two's complement
        return _field(b"\x0a", str(value).encode())  # OTLP ints are 64-bit; a string keeps it
    if kind is float:
        return b"\x21" + _DOUBLE.pack(value)  # 4 double_value
    if kind is tuple or kind is list:
        items = [_any_value(item) for item in value]
        return _field(b"\x2a", b"".join(_field(b"\x0a", b"" if item is None else item) for item in items))
    if isinstance(value, str):  # subclasses, e.g. enums
        return _any_value(str.__str__(value))
    if isinstance(value, int):  # bool is final, so this is an int subclass such as IntEnum
        return _any_value(int(value))
    if isinstance(value, float):
        return _any_value(float(value))
    if isinstance(value, bytes):
        return _field(b"\x3a", value)  # 7 bytes_value
    if value is not None:
        return _any_value(str(value))
    return None


def _key_value(key: str, value: Any) -> bytes:
    """A KeyValue message body: 1 key (left out when empty, as proto3 does), 2 value."""
    out = _field(b"\x0a", key.encode()) if key else b""
    if type(value) is str:  # the common case, inline
        return out + _field(b"\x12", _field(b"\x0a", value.encode()))
    encoded = _any_value(value)
    return out if encoded is None else out + _field(b"\x12", encoded)


_CACHE_LIMIT = 4096
_CACHE_VALUE_CHARS = 64
_encoded_pairs: dict[tuple[bytes, str, str], bytes] = {}  # short texts repeat: identity, reward names


def _attributes(tag: bytes, attributes: Mapping[str, AttributeValue]) -> list[bytes]:
    out = []
    cache = _encoded_pairs
    for key, value in attributes.items():
        if type(value) is str and len(value) <= _CACHE_VALUE_CHARS:
            entry = (tag, key, value)
            encoded = cache.get(entry)
            if encoded is None:
                if len(cache) >= _CACHE_LIMIT:
                    cache.clear()
                encoded = cache[entry] = _field(tag, _key_value(key, value))
            out.append(encoded)
        else:
            out.append(_field(tag, _key_value(key, value)))
    return out


def _ids(span: Span) -> tuple[bytes, bytes, bytes | None]:
    try:
        trace_id = bytes.fromhex(span.trace_id)
        span_id = bytes.fromhex(span.span_id)
        parent_id = bytes.fromhex(span.parent_id) if span.parent_id else None
    except ValueError as exc:
        raise ValueError(f"otlp: span {span.span_id!r} has an id that is not hex: {exc}") from exc
    if len(trace_id) != 16 or len(span_id) != 8 or (parent_id is not None and len(parent_id) != 8):
        raise ValueError(
            f"otlp: span {span.span_id!r} ids must be 32/16 hex digits "
            f"(trace_id {span.trace_id!r}, parent_id {span.parent_id!r})"
        )
    return trace_id, span_id, parent_id


def _fixed64(tag: bytes, value: int, what: str, span: Span) -> bytes:
    if not value:
        return b""
    if not 0 <= value <= _UINT64:
        raise ValueError(f"otlp: span {span.span_id!r}: {what} {value} is not a uint64 of nanoseconds")
    return tag + _FIXED64.pack(value)


_name_fields: dict[str, bytes] = {}  # span names repeat: "agentlightning.message", ...


def _span(span: Span) -> bytes:
    """One Span message body."""
    trace_id, span_id, parent_id = _ids(span)
    parts = [b"\x0a\x10" + trace_id, b"\x12\x08" + span_id]
    if parent_id is not None:
        parts.append(b"\x22\x08" + parent_id)
    name = span.name
    name_field = _name_fields.get(name)
    if name_field is None:
        if len(_name_fields) >= _CACHE_LIMIT:
            _name_fields.clear()
        name_field = _name_fields[name] = (_field(b"\x2a", name.encode()) if name else b"") + _KIND_INTERNAL
    parts.append(name_field)
    start, end = span.start_time, span.end_time
    if 0 < start <= _UINT64 and 0 < end <= _UINT64:  # the usual span: both times set
        parts.append(b"\x39" + _FIXED64.pack(start) + b"\x41" + _FIXED64.pack(end))
    else:
        parts.append(_fixed64(b"\x39", start, "start_time", span))
        parts.append(_fixed64(b"\x41", end, "end_time", span))
    attrs = span.attributes
    parts += _attributes(b"\x4a", attrs)
    # Same identity keys, in the same order, as Span.to_readable_span (existing attributes win).
    if semconv.ROLLOUT_ID not in attrs:
        parts.append(_field(b"\x4a", _key_value(semconv.ROLLOUT_ID, span.rollout_id)))
    if semconv.ATTEMPT_ID not in attrs:
        parts.append(_field(b"\x4a", _key_value(semconv.ATTEMPT_ID, span.attempt_id)))
    if semconv.SPAN_SEQUENCE_ID not in attrs:
        parts.append(_field(b"\x4a", _key_value(semconv.SPAN_SEQUENCE_ID, span.sequence_id)))
    for event in span.events:  # Event: 1 time_unix_nano (fixed64), 2 name, 3 attributes
        body = [_fixed64(b"\x09", event.timestamp, "event timestamp", span)]
        if event.name:
            body.append(_field(b"\x12", event.name.encode()))
        body += _attributes(b"\x1a", event.attributes)
        parts.append(_field(b"\x5a", b"".join(body)))
    code = _STATUS_CODES[span.status]  # Status: 2 message, 3 code; written even when empty
    status = b""
    if code == 2 and span.status_description:  # OpenTelemetry keeps a description only on errors
        status = _field(b"\x12", span.status_description.encode())
    if code:
        status += b"\x18" + _ONE_BYTE[code]
    parts.append(_field(b"\x7a", status))
    parts.append(_FLAGS)
    return b"".join(parts)


def encode_request(spans: Sequence[Span]) -> bytes:
    """An ``ExportTraceServiceRequest`` of ``spans``, grouped by resource in order of first appearance.

    Raises:
        ValueError: a span's ids are not 32/16 hex digits, a time is not a uint64, or a text is not
            valid UTF-8 (a lone surrogate); the message names the span where it can.
    """
    groups: dict[frozenset[tuple[str, AttributeValue]], tuple[bytes, list[bytes]]] = {}
    last_resource: object = None
    group: list[bytes] | None = None
    for span in spans:
        if span.resource is not last_resource or group is None:
            last_resource = span.resource
            key = frozenset(span.resource.items())
            found = groups.get(key)
            if found is None:
                found = groups[key] = (b"".join(_attributes(b"\x0a", span.resource)), [])
            group = found[1]
        group.append(_field(b"\x12", _span(span)))  # ScopeSpans.spans
    out = []
    for resource, encoded_spans in groups.values():
        # ResourceSpans: 1 resource (present even when empty), 2 scope_spans (1 scope, 2 spans)
        scope_spans = _field(b"\x12", _EMPTY_SCOPE + b"".join(encoded_spans))
        out.append(_field(b"\x0a", _field(b"\x0a", resource) + scope_spans))
    return b"".join(out)
