"""The one codec for spans and batches, used by the pipeline, spool, stores and server.

A batch on the wire or on disk is JSON (orjson)::

    {"format": "agentemit.batch", "version": 1, "count": N, "checksum": "<sha256 of spans JSON>",
     "spans": [<Span.to_dict()>, ...]}

The checksum covers the exact bytes of the ``spans`` array so a receiver can verify a batch before it
stores any of it: a damaged batch is refused whole, never stored in part.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import Any

import orjson

from agentemit.span import Span, has_nonfinite

BATCH_FORMAT = "agentemit.batch"
BATCH_VERSION = 1


class CodecError(ValueError):
    """Bytes that are not a valid span or batch; the message names what is wrong."""


def dumps(obj: Any) -> bytes:
    """JSON-encode with orjson (non-str dict keys allowed)."""
    return orjson.dumps(obj, option=orjson.OPT_NON_STR_KEYS)


def loads(data: bytes | str) -> Any:
    """JSON-decode, raising :class:`CodecError` on malformed input."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise CodecError(f"not valid JSON: {exc}") from exc


def checksum(data: bytes) -> str:
    """Hex sha256 of ``data`` (batches and stored rows)."""
    return hashlib.sha256(data).hexdigest()


def _plain(span: Span) -> bool:
    """True when orjson can write the span directly (no NaN/inf anywhere needing a tag)."""
    if has_nonfinite(span.attributes) or has_nonfinite(span.resource):
        return False
    return not any(has_nonfinite(e.attributes) for e in span.events)


def encode_span(span: Span) -> bytes:
    """One span as JSON bytes (the same document as ``dumps(span.to_dict())``, written faster)."""
    if _plain(span):
        return orjson.dumps(span)  # orjson writes slotted dataclasses natively, tuples as lists
    return dumps(span.to_dict())


def decode_span(data: bytes | str) -> Span:
    """Inverse of :func:`encode_span`."""
    obj = loads(data)
    if not isinstance(obj, dict):
        raise CodecError(f"a span must be a JSON object, got {type(obj).__name__}")
    return span_from_obj(obj, "$")


def span_from_obj(obj: Any, path: str) -> Span:
    """Build a span from decoded JSON, naming the path of whatever is wrong."""
    if not isinstance(obj, dict):
        raise CodecError(f"{path}: a span must be a JSON object, got {type(obj).__name__}")
    try:
        return Span.from_dict(obj)
    except (KeyError, TypeError, ValueError) as exc:
        raise CodecError(f"{path}: {exc}") from exc


def encode_batch(spans: Sequence[Span]) -> bytes:
    """A checksummed batch document."""
    body = b"[" + b",".join(encode_span(s) for s in spans) + b"]"
    header = dumps({"format": BATCH_FORMAT, "version": BATCH_VERSION, "count": len(spans), "checksum": checksum(body)})
    # Splice the pre-encoded spans array into the header object without re-encoding it.
    return header[:-1] + b',"spans":' + body + b"}"


def decode_batch(data: bytes) -> list[Span]:
    """Verify and decode a batch; raises :class:`CodecError` naming the first problem."""
    obj = loads(data)
    if not isinstance(obj, dict) or obj.get("format") != BATCH_FORMAT:
        raise CodecError(f"not an {BATCH_FORMAT} document")
    if obj.get("version") != BATCH_VERSION:
        raise CodecError(f"batch version {obj.get('version')!r} is not supported (expected {BATCH_VERSION})")
    spans_obj = obj.get("spans")
    if not isinstance(spans_obj, list):
        raise CodecError("$.spans: expected a list")
    expected = obj.get("checksum")
    if expected is not None and checksum(dumps(spans_obj)) != expected:
        raise CodecError("$.checksum: batch checksum does not match its spans (damaged in transit or on disk)")
    if obj.get("count") is not None and obj["count"] != len(spans_obj):
        raise CodecError(f"$.count: says {obj['count']} spans, batch holds {len(spans_obj)}")
    return [span_from_obj(item, f"$.spans[{i}]") for i, item in enumerate(spans_obj)]
