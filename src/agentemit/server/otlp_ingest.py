"""OTLP/HTTP trace ingest: decode an ``ExportTraceServiceRequest`` (protobuf or JSON) into our spans.

Any OpenTelemetry exporter can send here. Rollout identity comes from the span attributes
``agentlightning.rollout_id`` / ``attempt_id`` (else the resource's); a span with no rollout id cannot be
stored (every store requires one), so it is counted in the response's ``partial_success`` instead.
Span kind, links, scope and dropped counts have no place in :class:`~agentemit.span.Span` and are not kept.
"""

from __future__ import annotations

import base64
import contextlib
import enum
import threading
from collections import Counter, defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

import orjson
from google.protobuf import json_format
from google.protobuf.message import DecodeError
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue, KeyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan

from agentemit import codec, semconv
from agentemit.server.security import Reason, Rejected
from agentemit.span import Attributes, AttributeScalar, AttributeValue, Span, SpanEvent, StatusName
from agentemit.stores._rows import key_problem
from agentemit.stores.base import SpanStore

PROTOBUF = "application/x-protobuf"
JSON = "application/json"
_PROTOBUF_TYPES = frozenset((PROTOBUF, "application/protobuf"))
_STATUS_NAMES: dict[int, StatusName] = {0: "UNSET", 1: "OK", 2: "ERROR"}
_INT64_MAX = 2**63 - 1
_ID_FIELDS = ("traceId", "spanId", "parentSpanId", "trace_id", "span_id", "parent_span_id")
_MAX_MESSAGES = 3  # distinct rejection messages quoted in partial_success.error_message


class SpanRejection(str, enum.Enum):
    """Why one OTLP span was not stored (the keys of the server's ``spans_rejected`` counters)."""

    NO_ROLLOUT_ID = "no_rollout_id"
    INVALID_SPAN = "invalid_span"


# --- request decoding ------------------------------------------------------------------------------


def media_type(content_type: str | None) -> str:
    """``PROTOBUF`` or ``JSON`` for a request's Content-Type; 415 for anything else."""
    kind = (content_type or "").split(";", 1)[0].strip().lower()
    if kind in _PROTOBUF_TYPES:
        return PROTOBUF
    if kind == JSON:
        return JSON
    raise Rejected(415, Reason.UNSUPPORTED_MEDIA_TYPE, f"Content-Type {content_type!r} is not {PROTOBUF} or {JSON}")


def _hex_ids_to_base64(obj: Any) -> None:
    """OTLP JSON writes ids as hex, protobuf's JSON mapping expects base64: convert them in place."""
    if isinstance(obj, list):
        for item in obj:
            _hex_ids_to_base64(item)
        return
    if not isinstance(obj, dict):
        return
    for key, value in obj.items():
        if key in _ID_FIELDS and isinstance(value, str):
            with contextlib.suppress(ValueError):  # not hex: leave it to the parser (old exporters sent base64)
                obj[key] = base64.b64encode(bytes.fromhex(value)).decode("ascii")
        elif isinstance(value, (dict, list)) and key not in ("attributes", "resource", "scope"):
            _hex_ids_to_base64(value)


def parse_request(body: bytes, kind: str) -> ExportTraceServiceRequest:
    """Decode a request body of media type ``kind``; 400 naming the problem when it is not OTLP."""
    request = ExportTraceServiceRequest()
    if kind == PROTOBUF:
        try:
            request.ParseFromString(body)
        except DecodeError as exc:
            raise Rejected(400, Reason.BAD_REQUEST, f"body is not an OTLP ExportTraceServiceRequest: {exc}") from exc
        return request
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise Rejected(400, Reason.BAD_REQUEST, f"body is not valid JSON: {exc}") from exc
    if not isinstance(document, dict):
        got = type(document).__name__
        raise Rejected(400, Reason.BAD_REQUEST, f"body is not OTLP JSON: expected an object, got {got}")
    try:
        _hex_ids_to_base64(document)
        json_format.ParseDict(document, request, ignore_unknown_fields=True)
    except RecursionError as exc:  # orjson parses up to 1,024 levels; walking them recurses past Python's limit
        raise Rejected(400, Reason.BAD_REQUEST, "body is not OTLP JSON: nested too deeply") from exc
    except (json_format.ParseError, TypeError, ValueError) as exc:
        raise Rejected(400, Reason.BAD_REQUEST, f"body is not OTLP JSON: {exc}") from exc
    return request


# --- AnyValue -> our attributes ----------------------------------------------------------------------


def _plain(value: AnyValue) -> Any:
    """A JSON-able Python value; bytes become base64 text, as OTLP JSON writes them."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return [_plain(v) for v in value.array_value.values]
    if kind == "kvlist_value":
        return {kv.key: _plain(kv.value) for kv in value.kvlist_value.values}
    if kind == "bytes_value":
        return base64.b64encode(value.bytes_value).decode("ascii")
    return getattr(value, kind)


def _attribute(value: AnyValue) -> AttributeValue | None:
    """Our attribute value: scalars as is, arrays of scalars as tuples, anything nested as JSON text."""
    kind = value.WhichOneof("value")
    if kind in ("string_value", "bool_value", "int_value", "double_value"):
        scalar: AttributeScalar = getattr(value, kind)
        return scalar
    if kind is None:
        return None
    plain = _plain(value)
    if kind == "bytes_value":
        return str(plain)
    if kind == "array_value" and all(isinstance(v, (str, bool, int, float)) for v in plain):
        return tuple(plain)
    return orjson.dumps(plain).decode()


def _attributes(kvs: Iterable[KeyValue]) -> Attributes:
    out: Attributes = {}
    for kv in kvs:
        value = _attribute(kv.value)
        if value is not None:  # an empty AnyValue carries nothing to keep
            out[kv.key] = value
    return out


# --- spans ---------------------------------------------------------------------------------------------


@dataclass
class Converted:
    """The spans of one request that can be stored, and counts of those that cannot."""

    spans: list[Span] = field(default_factory=list)
    unsequenced: list[int] = field(default_factory=list)  # indexes into spans that need a sequence_id
    rejected: Counter[SpanRejection] = field(default_factory=Counter)
    messages: list[str] = field(default_factory=list)

    def reject(self, reason: SpanRejection, message: str) -> None:
        self.rejected[reason] += 1
        if len(self.messages) < _MAX_MESSAGES and message not in self.messages:
            self.messages.append(message)

    @property
    def rejected_count(self) -> int:
        return sum(self.rejected.values())

    def error_message(self) -> str:
        if not self.rejected:
            return ""
        more = self.rejected_count - len(self.messages)
        return "; ".join(self.messages) + (f" (and {more} more)" if more > 0 else "")


def _identity(attrs: Attributes, resource: Attributes, key: str) -> str:
    value = attrs.get(key)
    if value is None or value == "":
        value = resource.get(key)
    return "" if value is None else str(value)


def _sequence_id(value: AttributeValue | None) -> int | None:
    """The span's own sequence id, or None (one is assigned) for anything but an int64 >= 0.

    A str must be ASCII digits: ``str.isdigit`` also accepts "²", which ``int`` refuses, and more than
    19 digits is beyond int64 anyway (and ``int`` refuses over 4,300).
    """
    if type(value) is int and 0 <= value <= _INT64_MAX:
        return value
    if isinstance(value, str) and len(value) <= 19 and value.isascii() and value.isdigit() and int(value) <= _INT64_MAX:
        return int(value)
    return None


def _convert_span(pb: PbSpan, resource: Attributes, out: Converted) -> None:
    span_hex = pb.span_id.hex()
    if len(pb.trace_id) != 16 or len(pb.span_id) != 8 or len(pb.parent_span_id) not in (0, 8):
        out.reject(
            SpanRejection.INVALID_SPAN,
            f"span {pb.name!r} ({span_hex or 'no span id'}): ids must be 16/8 bytes "
            f"(trace_id {len(pb.trace_id)}, span_id {len(pb.span_id)}, parent_span_id {len(pb.parent_span_id)})",
        )
        return
    attrs = _attributes(pb.attributes)
    rollout_id = _identity(attrs, resource, semconv.ROLLOUT_ID)
    if not rollout_id:
        out.reject(
            SpanRejection.NO_ROLLOUT_ID,
            f"span {span_hex} ({pb.name!r}) has no {semconv.ROLLOUT_ID} attribute on the span or its resource",
        )
        return
    attempt_id = _identity(attrs, resource, semconv.ATTEMPT_ID)
    too_long = key_problem(rollout_id, attempt_id, span_hex)
    if too_long:
        out.reject(SpanRejection.INVALID_SPAN, f"span {span_hex} ({pb.name!r}): {too_long[0]} {too_long[1]}")
        return
    text = (rollout_id, attempt_id, pb.name)
    times = (pb.start_time_unix_nano, pb.end_time_unix_nano, *(e.time_unix_nano for e in pb.events))
    if any("\x00" in t for t in text) or any(t > _INT64_MAX for t in times):
        out.reject(
            SpanRejection.INVALID_SPAN,
            f"span {span_hex} ({pb.name!r}): NUL in rollout_id/attempt_id/name, or a time beyond int64",
        )
        return
    sequence_id = _sequence_id(attrs.get(semconv.SPAN_SEQUENCE_ID))
    if sequence_id is None:
        out.unsequenced.append(len(out.spans))
    out.spans.append(
        Span(
            trace_id=pb.trace_id.hex(),
            span_id=span_hex,
            parent_id=pb.parent_span_id.hex() or None,
            name=pb.name,
            start_time=pb.start_time_unix_nano,
            end_time=pb.end_time_unix_nano,
            rollout_id=rollout_id,
            attempt_id=attempt_id,
            sequence_id=-1 if sequence_id is None else sequence_id,
            attributes=attrs,
            status=_STATUS_NAMES.get(int(pb.status.code), "UNSET"),
            status_description=pb.status.message or None,
            events=[SpanEvent(e.name, e.time_unix_nano, _attributes(e.attributes)) for e in pb.events],
            resource=dict(resource),
        )
    )


def convert_request(request: ExportTraceServiceRequest) -> Converted:
    """Our spans from an OTLP request, with per-span rejections counted rather than failing the request."""
    out = Converted()
    for resource_spans in request.resource_spans:
        resource = _attributes(resource_spans.resource.attributes)
        for scope_spans in resource_spans.scope_spans:
            for pb in scope_spans.spans:
                _convert_span(pb, resource, out)
    return out


def decode(body: bytes, kind: str) -> Converted:
    """Parse and convert in one go (one worker-thread hop for the server)."""
    return convert_request(parse_request(body, kind))


# --- sequence ids ------------------------------------------------------------------------------------


def assign_sequence_ids(converted: Converted, store: SpanStore) -> None:
    """Give spans that carried no ``span_sequence_id`` the next ids of their attempt, by start time.

    Ids continue from the store's next id and from any explicit id in the same request, so an
    assigned id never repeats one already used by that attempt. Call it under one lock together with
    the store write (as :func:`store_converted` does), or two requests could be handed the same ids.
    """
    if not converted.unsequenced:
        return
    spans = converted.spans
    explicit_max: dict[tuple[str, str], int] = {}
    for span in spans:
        if span.sequence_id >= 0:
            key = (span.rollout_id, span.attempt_id)
            explicit_max[key] = max(explicit_max.get(key, -1), span.sequence_id)
    groups: defaultdict[tuple[str, str], list[int]] = defaultdict(list)
    for i in converted.unsequenced:
        groups[(spans[i].rollout_id, spans[i].attempt_id)].append(i)
    exhausted: list[int] = []
    for (rollout_id, attempt_id), indexes in groups.items():
        start = max(
            store.get_next_span_sequence_id(rollout_id, attempt_id), explicit_max.get((rollout_id, attempt_id), -1) + 1
        )
        for offset, i in enumerate(sorted(indexes, key=lambda i: (spans[i].start_time, i))):
            spans[i].sequence_id = start + offset
            if spans[i].sequence_id > _INT64_MAX:
                exhausted.append(i)
    converted.unsequenced = []  # every span has its id now (or is rejected below)
    if exhausted:
        _reject_exhausted(converted, exhausted)


def _reject_exhausted(converted: Converted, indexes: list[int]) -> None:
    """Reject spans whose attempt has no sequence id left (it used 2**63-1), rather than store a wrapped id."""
    for i in indexes:
        span = converted.spans[i]
        converted.reject(
            SpanRejection.INVALID_SPAN,
            f"span {span.span_id} ({span.name!r}): attempt {span.attempt_id!r} of rollout {span.rollout_id!r} "
            f"has no sequence id left (one span holds {_INT64_MAX}); send {semconv.SPAN_SEQUENCE_ID} explicitly",
        )
    dropped = set(indexes)
    converted.spans = [span for i, span in enumerate(converted.spans) if i not in dropped]


def store_converted(converted: Converted, store: SpanStore, lock: threading.Lock) -> int:
    """Assign missing sequence ids and store every convertible span in one ``add_many_spans`` call.

    ``lock`` serializes "read the next sequence id, then write" across requests that need ids assigned.
    """
    if not converted.spans:
        return 0
    if not converted.unsequenced:
        return store.add_many_spans(converted.spans)
    with lock:
        assign_sequence_ids(converted, store)
        return store.add_many_spans(converted.spans) if converted.spans else 0


# --- responses ---------------------------------------------------------------------------------------


def encode_response(converted: Converted, kind: str) -> bytes:
    """An ``ExportTraceServiceResponse`` in the request's media type, with partial_success when spans were rejected."""
    response = ExportTraceServiceResponse()
    if converted.rejected:
        response.partial_success.rejected_spans = converted.rejected_count
        response.partial_success.error_message = converted.error_message()
    if kind == PROTOBUF:
        data: bytes = response.SerializeToString()
        return data
    text: str = json_format.MessageToJson(response, indent=None)
    return text.encode()


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def encode_status(http_status: int, message: str, kind: str) -> bytes:
    """A ``google.rpc.Status`` error body, as OTLP/HTTP asks of a failed request.

    Encoded by hand (field 1 ``code``, field 2 ``message``) since it is two fields and the message
    classes live in a package this library does not otherwise need.
    """
    code = _GRPC_CODES.get(http_status, 2)  # 2 = UNKNOWN
    if kind == JSON:
        return codec.dumps({"code": code, "message": message})
    text = message.encode()
    return b"\x08" + _varint(code) + b"\x12" + _varint(len(text)) + text


# HTTP status -> gRPC code, for the Status body of a refused OTLP request.
_GRPC_CODES = {400: 3, 401: 16, 403: 7, 404: 5, 413: 8, 415: 3, 429: 8, 500: 13, 503: 14}
