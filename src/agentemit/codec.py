"""The one codec for spans and batches, used by the pipeline, spool, stores and server.

A batch on the wire or on disk is JSON (orjson)::

    {"format": "agentemit.batch", "version": 1, "count": N, "checksum": "<sha256 of spans JSON>",
     "spans": [<Span.to_dict()>, ...]}

The checksum covers the exact bytes of the ``spans`` array so a receiver can verify a batch before it
stores any of it: a damaged batch is refused whole, never stored in part. ``checksum`` and ``count``
are required: a batch without them (say, a flipped byte in a key name) is refused, not trusted.

What :func:`encode_span` writes, :func:`decode_span` reads back as the same span. So encoding refuses,
with a :class:`CodecError` naming the culprit, the values a span can hold but decoding refuses: ints
outside the signed 64-bit range (OTLP cannot carry them), strings holding lone surrogates (they are
not UTF-8), attribute values that are not attribute values, and an empty resource key.
"""

from __future__ import annotations

import hashlib
import json
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final

import orjson

from agentemit.span import INT64_MAX, INT64_MIN, Span, decode_plain, is_utf8

BATCH_FORMAT = "agentemit.batch"
BATCH_VERSION = 1


class CodecError(ValueError):
    """Bytes that are not a valid span or batch, or a span that cannot be encoded; the message names what."""


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


# --- encoding -----------------------------------------------------------------------------------

_isfinite = math.isfinite


def _plain(attrs: Mapping[str, Any]) -> bool:
    """True when orjson may write ``attrs`` as they are: no value needs a NaN/infinity tag, no int is
    above ``INT64_MAX`` (orjson would write it as a uint64), no value has an unexpected type.

    Ints below ``INT64_MIN`` or beyond 64 bits and lone surrogates need no check here: orjson raises
    for them, and :func:`encode_span` then names the culprit.
    """
    for value in attrs.values():
        cls = type(value)
        if cls is str or cls is bool:
            continue
        if cls is float:
            if not _isfinite(value):
                return False
        elif cls is int:
            if value > INT64_MAX:
                return False
        elif cls is not tuple or not _plain_items(value):
            return False
    return True


_TEXT_KINDS: Final = frozenset({str, bool})
_INT_KIND: Final = frozenset({int})
_FLOAT_KIND: Final = frozenset({float})


def _plain_items(items: tuple[Any, ...]) -> bool:
    """:func:`_plain` for a tuple's items, at C speed for the usual homogeneous tuple (token ids ...)."""
    kinds = set(map(type, items))
    if kinds <= _TEXT_KINDS:
        return True
    if kinds == _INT_KIND:
        top: int = max(items)
        return top <= INT64_MAX
    if kinds == _FLOAT_KIND:
        return all(map(_isfinite, items))
    return False  # mixed numbers or other types: the careful path decides


def is_plain_span(span: Span, *, resource_known_plain: bool = False) -> bool:
    """True when orjson may write the whole span directly (see :func:`_plain`).

    ``resource_known_plain`` skips the resource, for a caller that checked this very dict already
    (the spans of one pipeline share theirs). May raise ``TypeError`` for a field of the wrong type.
    """
    if span.start_time > INT64_MAX or span.end_time > INT64_MAX or span.sequence_id > INT64_MAX:
        return False
    if not _plain(span.attributes):
        return False
    if not resource_known_plain and ("" in span.resource or not _plain(span.resource)):
        return False
    events = span.events
    return not events or all(e.timestamp <= INT64_MAX and _plain(e.attributes) for e in events)


def encode_span(span: Span, *, known_plain: bool = False) -> bytes:
    """One span as JSON bytes (the same document as ``dumps(span.to_dict())``, written faster).

    ``known_plain`` says the caller found :func:`is_plain_span` true just now, so it is not asked again.

    Raises:
        CodecError: a value decoding would refuse (see the module docstring), named by its path.
    """
    try:
        plain = known_plain or is_plain_span(span)
    except TypeError:  # a field of the wrong type (say, a str sequence_id): the careful path names it
        plain = False
    if plain:
        try:
            return orjson.dumps(span)  # orjson writes slotted dataclasses natively, tuples as lists
        except orjson.JSONEncodeError as exc:
            raise _unencodable(span, exc) from exc
    problem = _span_problem(span)
    if problem is not None:
        raise CodecError(f"span {span.span_id!r}: {problem}")
    try:
        return dumps(span.to_dict())
    except orjson.JSONEncodeError as exc:
        raise _unencodable(span, exc) from exc


def _unencodable(span: Span, exc: Exception) -> CodecError:
    return CodecError(f"span {span.span_id!r}: {_span_problem(span) or f'cannot be encoded as JSON: {exc}'}")


def _span_problem(span: Span) -> str | None:
    """The first value of ``span`` that decoding would refuse, by path (error path only: not fast)."""
    for name in ("start_time", "end_time", "sequence_id"):
        problem = _int_problem(getattr(span, name))
        if problem is not None:
            return f"{name}: {problem}"
    for name in ("trace_id", "span_id", "parent_id", "name", "rollout_id", "attempt_id", "status_description"):
        value = getattr(span, name)
        if isinstance(value, str) and not is_utf8(value):
            return f"{name}: {_surrogate(value)}"
    problem = _attributes_problem(span.attributes, "attributes", empty_keys=True)
    if problem is None:
        problem = _attributes_problem(span.resource, "resource", empty_keys=False)
    if problem is not None:
        return problem
    for i, event in enumerate(span.events):
        where = f"events[{i}]"
        if isinstance(event.name, str) and not is_utf8(event.name):
            return f"{where}.name: {_surrogate(event.name)}"
        problem = _int_problem(event.timestamp)
        if problem is not None:
            return f"{where}.timestamp: {problem}"
        problem = _attributes_problem(event.attributes, f"{where}.attributes", empty_keys=True)
        if problem is not None:
            return problem
    return None


def _attributes_problem(attrs: Mapping[Any, Any], where: str, *, empty_keys: bool) -> str | None:
    for key, value in attrs.items():
        if not isinstance(key, str):
            return f"{where}: key {key!r} is {type(key).__name__}; expected a str"
        if not is_utf8(key):
            return f"{where}: key {key!r}: {_surrogate(key)}"
        if not key and not empty_keys:
            return f"{where}['']: an empty key is not allowed here"
        if isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                problem = _scalar_problem(item)
                if problem is not None:
                    return f"{where}[{key!r}][{i}]: {problem}"
        else:
            problem = _scalar_problem(value)
            if problem is not None:
                return f"{where}[{key!r}]: {problem}"
    return None


def _scalar_problem(value: object) -> str | None:
    if isinstance(value, str):
        return None if is_utf8(value) else _surrogate(value)
    if isinstance(value, (bool, float)):
        return None
    if isinstance(value, int):
        return _int_problem(value)
    return f"{type(value).__name__} {value!r} is not an attribute value (a str, bool, int, float or a tuple of them)"


def _int_problem(value: object) -> str | None:
    if not isinstance(value, int) or isinstance(value, bool):
        return f"is {type(value).__name__}; expected an int"
    if not INT64_MIN <= value <= INT64_MAX:
        return f"{value} is outside the signed 64-bit range"
    return None


def _surrogate(text: str) -> str:
    return f"{text!r} holds a lone surrogate, which is not valid UTF-8"


# --- decoding -----------------------------------------------------------------------------------

# orjson reads an integer literal beyond 64 bits as a float, silently. Such a literal has at least 20
# digits (19 after a minus sign) in number position: after ``:``, ``,`` or ``[`` and optional
# whitespace. A regex over the whole document is slow (every 19-digit timestamp is a near miss it
# backtracks over), so a byte table first maps those three to ":", digits to "0", "-" to itself and
# everything else to a space, deleting whitespace; two substring searches then rule out nearly every
# document. Only a candidate (which may sit inside a string: that costs an exact re-parse, never a
# wrong answer) gets the exact regex.
_SHAPES: Final = bytes(58 if b in b":,[" else 48 if 48 <= b <= 57 else 45 if b == 45 else 32 for b in range(256))
_JSON_WHITESPACE: Final = b" \t\r\n"
_WIDE_CANDIDATES: Final = (b":" + b"0" * 20, b":-" + b"0" * 19)
_WIDE_INT: Final = re.compile(rb"[:,\[]\s*(?:-?[0-9]{20,}|-[0-9]{19})")  # also below int64's minimum


def _may_hold_wide_int(data: bytes | str) -> bool:
    raw = data.encode("utf-8", "surrogatepass") if isinstance(data, str) else data
    shapes = raw.translate(_SHAPES, _JSON_WHITESPACE)
    if not any(candidate in shapes for candidate in _WIDE_CANDIDATES):
        return False
    return _WIDE_INT.search(raw) is not None


def _loads_exact(data: bytes | str) -> Any:
    """Decode with exact ints (stdlib ``json``), for the rare document that may hold a wide int."""
    return json.loads(data)


def decode_span(data: bytes | str) -> Span:
    """Inverse of :func:`encode_span`; raises :class:`CodecError` naming the path of what is wrong."""
    obj = loads(data)
    if not isinstance(obj, dict):
        raise CodecError(f"a span must be a JSON object, got {type(obj).__name__}")
    span = decode_plain(obj)
    if span is not None:
        return span  # no float that could be a wide int: no scan needed (see decode_plain)
    if _may_hold_wide_int(data):
        obj = _loads_exact(data)  # so an int beyond 64 bits is refused by name, not read as a float
    return span_from_obj(obj, "$")


def span_from_obj(obj: Any, path: str) -> Span:
    """Build a span from decoded JSON, naming the path of whatever is wrong."""
    if not isinstance(obj, dict):
        raise CodecError(f"{path}: a span must be a JSON object, got {type(obj).__name__}")
    try:
        return Span.from_dict(obj)
    except KeyError as exc:
        raise CodecError(f"{path}: {exc.args[0]}") from exc
    except (TypeError, ValueError) as exc:
        raise CodecError(f"{path}: {exc}") from exc


def encode_batch(spans: Sequence[Span]) -> bytes:
    """A checksummed batch document; raises :class:`CodecError` as :func:`encode_span` does."""
    body = _plain_array(spans)
    if body is None:  # something unusual: span by span, so the culprit is named
        body = b"[" + b",".join(encode_span(s) for s in spans) + b"]"
    header = dumps({"format": BATCH_FORMAT, "version": BATCH_VERSION, "count": len(spans), "checksum": checksum(body)})
    # Splice the pre-encoded spans array into the header object without re-encoding it.
    return header[:-1] + b',"spans":' + body + b"}"


def _plain_array(spans: Sequence[Span]) -> bytes | None:
    """The spans as one JSON array written by a single orjson call (the bytes the span-by-span join
    writes, 3x faster for a batch of 1,000), or None when any span needs the careful path."""
    try:
        if not all(map(is_plain_span, spans)):
            return None
        return orjson.dumps(spans if type(spans) is list else list(spans))
    except (TypeError, orjson.JSONEncodeError):
        return None


def decode_batch(data: bytes) -> list[Span]:
    """Verify and decode a batch; raises :class:`CodecError` naming the first problem by its path."""
    obj = loads(data)
    if not isinstance(obj, dict) or obj.get("format") != BATCH_FORMAT:
        raise CodecError(f"not an {BATCH_FORMAT} document")
    version = obj.get("version")
    if type(version) is not int or version != BATCH_VERSION:
        raise CodecError(f"$.version: batch version {version!r} is not supported (expected {BATCH_VERSION})")
    spans_obj = obj.get("spans")
    if not isinstance(spans_obj, list):
        raise CodecError("$.spans: expected a list")
    expected = obj.get("checksum")
    if not isinstance(expected, str):
        raise CodecError(f"$.checksum: {_missing_or_kind(obj, 'checksum')}; expected the sha256 of the spans")
    if not _checksum_matches(data, spans_obj, expected):
        raise CodecError("$.checksum: batch checksum does not match its spans (damaged in transit or on disk)")
    count = obj.get("count")
    if type(count) is not int:
        raise CodecError(f"$.count: {_missing_or_kind(obj, 'count')}; expected the number of spans")
    if count != len(spans_obj):
        raise CodecError(f"$.count: says {count} spans, batch holds {len(spans_obj)}")
    spans = _decode_plain_all(spans_obj)
    if spans is not None:
        return spans  # no float that could be a wide int: no scan needed (see decode_plain)
    if _may_hold_wide_int(data):
        spans_obj = _loads_exact(data)["spans"]  # so an int beyond 64 bits is refused by name
    return [span_from_obj(item, f"$.spans[{i}]") for i, item in enumerate(spans_obj)]


def _decode_plain_all(items: list[Any]) -> list[Span] | None:
    """Every item decoded by :func:`~agentemit.span.decode_plain`, or None if any is unusual."""
    spans: list[Span] = []
    for item in items:
        span = decode_plain(item) if type(item) is dict else None
        if span is None:
            return None
        spans.append(span)
    return spans


_SPANS_KEY: Final = b',"spans":'


def _checksum_matches(data: bytes, spans_obj: list[Any], expected: str) -> bool:
    """Does the spans array hash to ``expected``? :func:`encode_batch` writes the array last, so its
    exact bytes are the tail of ``data`` and are hashed as received; a document laid out otherwise
    (another writer, whitespace) has its parsed array re-encoded compactly and hashed instead."""
    start = data.find(_SPANS_KEY)
    if start >= 0 and data.endswith(b"}") and checksum(data[start + len(_SPANS_KEY) : -1]) == expected:
        return True
    return checksum(dumps(spans_obj)) == expected


def _missing_or_kind(obj: Mapping[str, Any], key: str) -> str:
    return "missing" if key not in obj else f"is {type(obj[key]).__name__}"
