"""The server's guards: bearer token, body and decompressed-size limits, per-client rate limit, audit log.

Each guard raises :class:`Rejected` with the HTTP status and a reason; the app turns that into one
response and one audit line, so every refusal is visible and nothing of a refused request is stored.
"""

from __future__ import annotations

import enum
import gzip
import hmac
import io
import logging
import math
import threading
import zlib
from collections.abc import AsyncIterable, Callable
from typing import Protocol

import zstandard

from agentemit.stores._rows import key_problem

AUDIT_LOGGER = "agentemit.server.audit"
_audit = logging.getLogger(AUDIT_LOGGER)

_READ_CHUNK = 256 * 1024
_MAX_TRACKED_CLIENTS = 10_000


class Reason(str, enum.Enum):
    """Why a request was refused (the keys of the server's ``requests_rejected`` counters)."""

    UNAUTHORIZED = "unauthorized"
    RATE_LIMITED = "rate_limited"
    TOO_LARGE = "too_large"
    BAD_REQUEST = "bad_request"
    UNSUPPORTED_MEDIA_TYPE = "unsupported_media_type"
    NOT_FOUND = "not_found"
    STORE_ERROR = "store_error"
    INTERNAL_ERROR = "internal_error"


class Rejected(Exception):
    """A request the server refuses; ``message`` is sent to the client and written to the audit log."""

    def __init__(self, status: int, reason: Reason, message: str, *, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status = status
        self.reason = reason
        self.message = message
        self.headers = headers or {}


def audit(client: str, method: str, path: str, status: int, reason: str, message: str) -> None:
    """One WARNING line per refused request, so an operator can see who was refused and why."""
    _audit.warning(
        "rejected client=%s method=%s path=%s status=%d reason=%s: %s", client, method, path, status, reason, message
    )


# --- bearer token ----------------------------------------------------------------------------------


def check_bearer(authorization: str | None, token: str | None) -> None:
    """Refuse (401) a request whose ``Authorization: Bearer`` value is missing or wrong.

    With no token configured every request passes. The comparison is constant-time
    (``hmac.compare_digest``) so response timing does not leak how much of a guess was right.
    """
    if token is None:
        return
    headers = {"WWW-Authenticate": 'Bearer realm="agentemit"'}
    if not authorization:
        raise Rejected(401, Reason.UNAUTHORIZED, "missing Authorization: Bearer token", headers=headers)
    scheme, _, supplied = authorization.partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(supplied.strip().encode(), token.encode()):
        raise Rejected(401, Reason.UNAUTHORIZED, "wrong bearer token", headers=headers)


# --- rate limit ------------------------------------------------------------------------------------


class RateLimiter:
    """A token bucket per client: ``rate`` requests per second on average, bursts of up to ``burst``.

    Thread-safe. At most ``max_clients`` buckets are kept; past that the oldest is forgotten (that
    client starts again with a full bucket), so a flood of addresses cannot exhaust memory.

    Args:
        rate: tokens added per second (> 0).
        burst: bucket size (>= 1).
        clock: monotonic seconds, injected so tests never sleep.
    """

    def __init__(
        self,
        rate: float,
        burst: int,
        *,
        clock: Callable[[], float],
        max_clients: int = _MAX_TRACKED_CLIENTS,
    ) -> None:
        if not (isinstance(rate, (int, float)) and math.isfinite(rate) and rate > 0):
            raise ValueError(f"rate limiter: rate {rate!r} must be a finite number > 0")
        if type(burst) is not int or burst < 1:
            raise ValueError(f"rate limiter: burst {burst!r} must be an int >= 1")
        self.rate = float(rate)
        self.burst = burst
        self._clock = clock
        self._max_clients = max_clients
        self._lock = threading.Lock()
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, last refill time)

    def acquire(self, client: str) -> float | None:
        """Take one token for ``client``; None when allowed, else the seconds until a token is due."""
        now = self._clock()
        with self._lock:
            tokens, last = self._buckets.pop(client, (float(self.burst), now))
            tokens = min(float(self.burst), tokens + max(0.0, now - last) * self.rate)
            allowed = tokens >= 1.0
            if allowed:
                tokens -= 1.0
            self._buckets[client] = (tokens, now)  # re-inserted last: dict order is recency order
            while len(self._buckets) > self._max_clients:
                del self._buckets[next(iter(self._buckets))]
        return None if allowed else (1.0 - tokens) / self.rate

    def check(self, client: str) -> None:
        """Refuse (429, with Retry-After in whole seconds) a client over its rate."""
        wait = self.acquire(client)
        if wait is not None:
            seconds = max(1, math.ceil(wait))
            raise Rejected(
                429,
                Reason.RATE_LIMITED,
                f"client {client} is over {self.rate:g} requests/s (burst {self.burst}); retry in {seconds}s",
                headers={"Retry-After": str(seconds)},
            )


# --- body size -------------------------------------------------------------------------------------


def _too_large(what: str, limit: int) -> Rejected:
    return Rejected(413, Reason.TOO_LARGE, f"{what} is larger than the {limit}-byte limit")


async def read_body(content_length: str | None, stream: AsyncIterable[bytes], limit: int) -> bytes:
    """Read a request body, refusing (413) one over ``limit`` bytes.

    Content-Length is checked first, and the bytes are counted as they arrive as well, since a
    chunked body has no Content-Length and a client may lie about it.
    """
    if content_length is not None:
        try:
            declared = int(content_length)
        except ValueError:
            raise Rejected(400, Reason.BAD_REQUEST, f"Content-Length {content_length!r} is not a number") from None
        if declared > limit:
            raise _too_large(f"body (Content-Length {declared})", limit)
    chunks: list[bytes] = []
    size = 0
    async for chunk in stream:
        size += len(chunk)
        if size > limit:
            raise _too_large("body", limit)
        chunks.append(chunk)
    return b"".join(chunks)


class _Reader(Protocol):
    def read(self, size: int = -1, /) -> bytes: ...


def _read_bounded(reader: _Reader, limit: int) -> bytes:
    out = bytearray()
    while True:
        chunk = reader.read(_READ_CHUNK)
        if not chunk:
            return bytes(out)
        out += chunk
        if len(out) > limit:
            raise _too_large("decompressed body", limit)


def decompress_bounded(data: bytes, encoding: str | None, limit: int) -> bytes:
    """Undo a Content-Encoding (identity, gzip or zstd) without ever holding more than ``limit`` bytes.

    A tiny compressed body can expand to gigabytes (a "zip bomb"); decompressing in chunks and
    stopping past the limit refuses it (413) before it costs memory. Other failures are 400s.
    """
    name = (encoding or "identity").strip().lower()
    try:
        if name in ("identity", "none", ""):
            return data
        if name == "gzip":
            with gzip.GzipFile(fileobj=io.BytesIO(data)) as reader:
                return _read_bounded(reader, limit)
        if name == "zstd":
            dctx = zstandard.ZstdDecompressor()
            with dctx.stream_reader(io.BytesIO(data), read_across_frames=True) as zreader:
                return _read_bounded(zreader, limit)
    except (OSError, EOFError, zlib.error, zstandard.ZstdError) as exc:
        raise Rejected(400, Reason.BAD_REQUEST, f"body is not valid {name}: {exc}") from exc
    raise Rejected(
        415, Reason.UNSUPPORTED_MEDIA_TYPE, f"Content-Encoding {encoding!r} is not one of identity, gzip, zstd"
    )


# --- strict batch validation -----------------------------------------------------------------------

_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1
_STATUSES = ("UNSET", "OK", "ERROR")
_FLOAT_TAGS = frozenset(("nan", "inf", "-inf"))


class _Missing:
    """Marks a field absent from the JSON (as opposed to present and null)."""


_MISSING = _Missing()


def _type_name(value: object) -> str:
    if value is _MISSING:
        return "missing"
    return "null" if value is None else type(value).__name__


def _text_problem(value: object, *, nonempty: bool) -> str | None:
    if not isinstance(value, str):
        return f"is {_type_name(value)}; expected a {'non-empty ' if nonempty else ''}str"
    if nonempty and not value:
        return "is empty"
    if "\x00" in value:
        return "contains a NUL character"
    return None


def _int_problem(value: object) -> str | None:
    if type(value) is not int:
        return f"is {_type_name(value)}; expected an int"
    if not _INT64_MIN <= value <= _INT64_MAX:
        return f"is {value}, outside the signed 64-bit range"
    return None


def _scalar_ok(value: object) -> bool:
    if isinstance(value, dict):  # a tagged non-finite float, as Span.to_dict writes it
        return len(value) == 1 and value.get("$float") in _FLOAT_TAGS
    return isinstance(value, (str, bool, int, float))


def _attributes_problem(value: object, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        return f"{path}: is {_type_name(value)}; expected an object"
    for key, item in value.items():
        ok = all(_scalar_ok(v) for v in item) if isinstance(item, list) else _scalar_ok(item)
        if not ok:
            return f"{path}[{key!r}]: {item!r} is not an attribute value (str, bool, int, float or a list of them)"
    return None


def _events_problem(value: object, path: str) -> str | None:
    if value is None:
        return None
    if not isinstance(value, list):
        return f"{path}: is {_type_name(value)}; expected a list"
    for i, event in enumerate(value):
        where = f"{path}[{i}]"
        if not isinstance(event, dict):
            return f"{where}: is {_type_name(event)}; expected an object"
        problem = _text_problem(event.get("name", _MISSING), nonempty=False)
        if problem:
            return f"{where}.name: {problem}"
        problem = _int_problem(event.get("timestamp", _MISSING))
        if problem:
            return f"{where}.timestamp: {problem}"
        problem = _attributes_problem(event.get("attributes"), f"{where}.attributes")
        if problem:
            return problem
    return None


def _span_problem(obj: dict[str, object], path: str) -> str | None:
    for name in ("rollout_id", "span_id"):
        problem = _text_problem(obj.get(name, _MISSING), nonempty=True)
        if problem:
            return f"{path}.{name}: {problem}"
    for name in ("attempt_id", "trace_id", "name"):
        problem = _text_problem(obj.get(name, _MISSING), nonempty=False)
        if problem:
            return f"{path}.{name}: {problem}"
    too_long = key_problem(str(obj["rollout_id"]), str(obj["attempt_id"]), str(obj["span_id"]))
    if too_long:
        return f"{path}.{too_long[0]}: {too_long[1]}"
    parent = obj.get("parent_id")
    if parent is not None and _text_problem(parent, nonempty=False):
        return f"{path}.parent_id: is {parent!r}; expected null or a str without NUL characters"
    for name in ("sequence_id", "start_time", "end_time"):
        problem = _int_problem(obj.get(name, _MISSING))
        if problem:
            return f"{path}.{name}: {problem}"
    status = obj.get("status", "UNSET")
    if status not in _STATUSES:
        return f"{path}.status: is {status!r}; expected one of {', '.join(_STATUSES)}"
    description = obj.get("status_description")
    if description is not None and not isinstance(description, str):
        return f"{path}.status_description: is {_type_name(description)}; expected null or a str"
    return (
        _attributes_problem(obj.get("attributes"), f"{path}.attributes")
        or _events_problem(obj.get("events"), f"{path}.events")
        or _attributes_problem(obj.get("resource"), f"{path}.resource")
    )


def validate_batch(document: object) -> None:
    """Refuse (400) a decoded batch document whose spans hold a field of the wrong type or range.

    Decoding alone would coerce (``str(None)`` becomes ``"None"``), so the raw JSON is checked first,
    field by field, with the same rules the stores apply. The message names the JSON path and span,
    e.g. ``$.spans[3].rollout_id: is empty (span 'ab12')``.
    """
    if not isinstance(document, dict):
        raise Rejected(400, Reason.BAD_REQUEST, f"$: is {_type_name(document)}; expected a batch object")
    spans = document.get("spans")
    if not isinstance(spans, list):
        raise Rejected(400, Reason.BAD_REQUEST, f"$.spans: is {_type_name(spans)}; expected a list")
    for i, obj in enumerate(spans):
        path = f"$.spans[{i}]"
        if not isinstance(obj, dict):
            raise Rejected(400, Reason.BAD_REQUEST, f"{path}: is {_type_name(obj)}; expected a span object")
        problem = _span_problem(obj, path)
        if problem:
            span_id = obj.get("span_id")
            culprit = f" (span {span_id!r})" if isinstance(span_id, str) and span_id else ""
            raise Rejected(400, Reason.BAD_REQUEST, problem + culprit)
