"""The store server: a FastAPI app that puts any :class:`SpanStore` behind HTTP.

Writers POST checksummed agentemit batches (``/v1/spans``) or standard OTLP/HTTP (``/v1/traces``);
readers list rollouts and query spans. Every refused request gets one error response and one audit
line, and a refused batch is never stored in part: the whole body is read, decompressed, verified and
decoded before one ``add_many_spans`` call writes it.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import threading
import time
from collections import Counter
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

from fastapi import Depends, FastAPI, Query, Request, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from pydantic import BaseModel, Field
from starlette.convertors import PathConvertor, register_url_convertor
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from agentemit import codec
from agentemit.server import otlp_ingest
from agentemit.server.security import (
    RateLimiter,
    Reason,
    Rejected,
    audit,
    check_bearer,
    decompress_bounded,
    read_body,
    validate_batch,
)
from agentemit.span import Span
from agentemit.stores._rows import INT64_MAX
from agentemit.stores.base import SpanStore

_log = logging.getLogger("agentemit.server")


class _AnyText(PathConvertor):
    """A path parameter of any characters: Starlette's ``path`` (``.*``) stops at a newline, so a
    rollout id holding one could be stored but never read back."""

    regex = r"[\s\S]*"


register_url_convertor("anytext", _AnyText())
T = TypeVar("T")

API_VERSION = "1"
_OTLP_PATH = "/v1/traces"


# --- documented shapes (responses are built directly; these models describe them in OpenAPI) ----------


class SpansAccepted(BaseModel):
    received: int = Field(description="spans in the batch")
    stored: int = Field(description="spans newly stored; the rest were already stored (same rollout, attempt, span id)")


class SpansPage(BaseModel):
    spans: list[dict[str, Any]] = Field(description="Span.to_dict() records ordered by sequence_id, then span_id")


class RolloutSummaryDoc(BaseModel):
    rollout_id: str
    attempt_ids: list[str]
    span_count: int
    spans_by_name: dict[str, int]
    final_reward: float | None
    first_time: int
    last_time: int


class NextSequenceId(BaseModel):
    next: int = Field(description="one more than the highest stored sequence_id of the attempt (0 when none)")


class Health(BaseModel):
    status: str


class ErrorBody(BaseModel):
    error: str = Field(description="what was wrong, naming the field or limit")


class StatusBody(BaseModel):
    """google.rpc.Status, as OTLP/HTTP specifies for a refused request (protobuf or JSON, as sent)."""

    code: int = Field(description="the gRPC status code")
    message: str = Field(description="what was wrong, naming the field or limit")


_ERROR_TEXTS = {
    400: "invalid request; the message names the field",
    401: "missing or wrong bearer token",
    413: "body (or decompressed body) over the size limit",
    415: "unsupported Content-Type or Content-Encoding",
    429: "over the per-client rate; see Retry-After",
    500: "the store failed, or an internal error",
}


def _error_responses(model: type[BaseModel], statuses: tuple[int, ...]) -> dict[int | str, dict[str, Any]]:
    return {status: {"model": model, "description": _ERROR_TEXTS[status]} for status in statuses}


_ERRORS = _error_responses(ErrorBody, (400, 401, 413, 429, 500))
_WRITE_ERRORS = _error_responses(ErrorBody, (400, 401, 413, 415, 429, 500))
_OTLP_ERRORS = _error_responses(StatusBody, (400, 401, 413, 415, 429, 500))
_BATCH_BODY = {
    "requestBody": {
        "required": True,
        "description": "agentemit.codec.encode_batch(spans): checksummed JSON; Content-Encoding gzip or zstd allowed",
        "content": {"application/json": {"schema": {"type": "object", "required": ["format", "version", "spans"]}}},
    }
}
_OTLP_BODY = {
    "requestBody": {
        "required": True,
        "description": "OTLP/HTTP ExportTraceServiceRequest; Content-Encoding gzip or zstd allowed",
        "content": {
            otlp_ingest.PROTOBUF: {"schema": {"type": "string", "format": "binary"}},
            otlp_ingest.JSON: {"schema": {"type": "object"}},
        },
    }
}


# --- counters ---------------------------------------------------------------------------------------


class ServerStats:
    """Counters behind ``GET /v1/stats``; thread-safe, since store work runs in worker threads."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.requests = 0
        self.spans_received = 0
        self.spans_stored = 0
        self.spans_duplicate = 0
        self.requests_rejected: Counter[str] = Counter()
        self.spans_rejected: Counter[str] = Counter()

    def request(self) -> None:
        with self._lock:
            self.requests += 1

    def rejected(self, reason: str) -> None:
        with self._lock:
            self.requests_rejected[reason] += 1

    def stored(self, received: int, new: int, rejected: Counter[otlp_ingest.SpanRejection] | None = None) -> None:
        with self._lock:
            self.spans_received += received
            self.spans_stored += new
            self.spans_duplicate += received - new - sum((rejected or {}).values())
            for reason, count in (rejected or {}).items():
                self.spans_rejected[reason.value] += count

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {
                "requests": self.requests,
                "spans_received": self.spans_received,
                "spans_stored": self.spans_stored,
                "spans_duplicate": self.spans_duplicate,
                "requests_rejected": dict(self.requests_rejected),
                "spans_rejected": dict(self.spans_rejected),
            }


class _CountRequests:
    """Pure ASGI middleware: counts every HTTP request before routing (cheaper than BaseHTTPMiddleware)."""

    def __init__(self, app: ASGIApp, stats: ServerStats) -> None:
        self.app = app
        self.stats = stats

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            self.stats.request()
        await self.app(scope, receive, send)


class _CatchAll:
    """Pure ASGI middleware: a bug that escapes a handler becomes one 500 in the server's error format
    and one audit line, like any refusal, instead of a plain-text 500 with the connection closed.

    An exception after the response has started cannot be answered any more and is re-raised.
    """

    def __init__(self, app: ASGIApp, respond: Callable[[Request, Exception], Response]) -> None:
        self.app = app
        self.respond = respond

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def send_tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, send_tracked)
        except Exception as exc:
            if started:
                raise
            await self.respond(Request(scope), exc)(scope, receive, send)


# --- helpers ------------------------------------------------------------------------------------------


def _client(request: Request) -> str:
    return request.client.host if request.client else "unknown"


def _json(obj: Any, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    return Response(codec.dumps(obj), status_code=status, media_type="application/json", headers=headers)


def _decode_batch(data: bytes) -> list[Span]:
    """Verify and decode a batch in one parse with the strict decoder.

    Only a refused batch is read again, by the field-by-field validator, to name the culprit by its
    JSON path (``$.spans[3].start_time: is str``); the happy path pays for one validation, not two.
    """
    try:
        return codec.decode_batch(data)
    except codec.CodecError as exc:
        _refuse_by_json_path(data)
        raise Rejected(400, Reason.BAD_REQUEST, str(exc)) from exc


def _refuse_by_json_path(data: bytes) -> None:
    """Raise a 400 naming the first bad field by JSON path, if the field-by-field validator finds one."""
    try:
        document = codec.loads(data)
    except codec.CodecError:
        return  # not JSON at all: the caller's own error says so
    validate_batch(document)


def _payload(body: bytes, encoding: str | None, limit: int) -> bytes:
    """The request body with its Content-Encoding undone (bounded: see ``decompress_bounded``)."""
    if not encoding or encoding.strip().lower() == "identity":
        return body
    return decompress_bounded(body, encoding, limit)


def _ingest_batch(store: SpanStore, body: bytes, encoding: str | None, limit: int) -> tuple[int, int]:
    """Decompress, verify, decode and store one batch: (spans received, spans newly stored).

    The whole request is one worker-thread call: every hop between the event loop and a thread
    retakes the GIL, which waits up to the switch interval (5 ms) while other requests run. A store
    rule the decoder does not know (an empty id, a NUL character) refuses the batch with the field
    named by JSON path, as a decoding error would.
    """
    data = _payload(body, encoding, limit)
    spans = _decode_batch(data)
    with _store_errors(store, "POST /v1/spans"):
        try:
            return len(spans), store.add_many_spans(spans)
        except ValueError:
            _refuse_by_json_path(data)
            raise


def _ingest_otlp(
    store: SpanStore, body: bytes, encoding: str | None, kind: str, limit: int, sequence_lock: threading.Lock
) -> tuple[otlp_ingest.Converted, int]:
    """Decompress, decode and store one OTLP request, in one worker-thread call as ``_ingest_batch``."""
    converted = otlp_ingest.decode(_payload(body, encoding, limit), kind)
    with _store_errors(store, f"POST {_OTLP_PATH}"):
        return converted, otlp_ingest.store_converted(converted, store, sequence_lock)


@contextlib.contextmanager
def _store_errors(store: SpanStore, what: str) -> Iterator[None]:
    """A refused input is a 400, any other store failure a 500 naming the store."""
    try:
        yield
    except Rejected:
        raise
    except ValueError as exc:
        raise Rejected(400, Reason.BAD_REQUEST, f"{what}: {exc}") from exc
    except Exception as exc:
        _log.exception("store %r failed in %s", store, what)
        raise Rejected(
            500, Reason.STORE_ERROR, f"{what}: {type(store).__name__} failed: {type(exc).__name__}: {exc}"
        ) from exc


async def _store_call(store: SpanStore, what: str, call: Awaitable[T]) -> T:
    """Await a store call, its failures mapped as by :func:`_store_errors`."""
    with _store_errors(store, what):
        return await call


# --- the app ------------------------------------------------------------------------------------------


def create_app(
    store: SpanStore,
    *,
    token: str | None = None,
    max_body_bytes: int = 32 << 20,
    rate_limit_per_s: float | None = None,
    rate_burst: int = 100,
    clock: Callable[[], float] = time.monotonic,
) -> FastAPI:
    """Build the server app around ``store`` (which the caller keeps owning and closes).

    Args:
        store: where spans are kept.
        token: when set, every ``/v1`` request needs ``Authorization: Bearer <token>``.
        max_body_bytes: limit of a request body, on the wire and again after decompression.
        rate_limit_per_s: per-client-address request rate (token bucket); None disables it.
        rate_burst: how many requests a client may make at once before the rate applies.
        clock: monotonic seconds for the rate limiter (injected in tests).

    Raises:
        ValueError: for a non-positive ``max_body_bytes`` or an invalid rate, or an empty token.
    """
    if type(max_body_bytes) is not int or max_body_bytes <= 0:
        raise ValueError(f"create_app: max_body_bytes {max_body_bytes!r} must be an int > 0")
    if token is not None and not token:
        raise ValueError("create_app: token is empty; pass None to disable authentication")
    limiter = None if rate_limit_per_s is None else RateLimiter(rate_limit_per_s, rate_burst, clock=clock)
    stats = ServerStats()
    sequence_lock = threading.Lock()

    # Declared for OpenAPI's security scheme; the check itself is check_bearer. (A default, not inside
    # Annotated[...]: string annotations cannot name this local.)
    credentials = Security(HTTPBearer(auto_error=False, description="the token the server was started with"))

    async def guard(request: Request, _credentials: HTTPAuthorizationCredentials | None = credentials) -> None:
        """Rate limit first (so token guessing is throttled too), then the bearer token."""
        if limiter is not None:
            limiter.check(_client(request))
        check_bearer(request.headers.get("authorization"), token)

    app = FastAPI(
        title="agentemit store server",
        version=API_VERSION,
        description="Stores agent spans (agentemit batches or OTLP/HTTP) and serves rollouts and spans back.",
    )
    app.state.stats = stats
    app.add_middleware(_CountRequests, stats=stats)
    guarded = [Depends(guard)]

    def refuse(request: Request, status: int, reason: str, message: str, headers: dict[str, str] | None) -> Response:
        stats.rejected(reason)
        audit(_client(request), request.method, request.url.path, status, reason, message)
        if request.url.path == _OTLP_PATH:
            try:
                kind = otlp_ingest.media_type(request.headers.get("content-type"))
            except Rejected:
                kind = otlp_ingest.JSON
            body = otlp_ingest.encode_status(status, message, kind)
            return Response(body, status_code=status, media_type=kind, headers=headers)
        return _json({"error": message}, status, headers)

    def on_bug(request: Request, exc: Exception) -> Response:
        _log.error("%s %s failed", request.method, request.url.path, exc_info=exc)
        message = f"internal error: {type(exc).__name__}: {exc}"
        return refuse(request, 500, Reason.INTERNAL_ERROR.value, message, None)

    app.add_middleware(_CatchAll, respond=on_bug)

    @app.exception_handler(Rejected)
    async def on_rejected(request: Request, exc: Rejected) -> Response:
        return refuse(request, exc.status, exc.reason.value, exc.message, exc.headers)

    @app.exception_handler(RequestValidationError)
    async def on_invalid(request: Request, exc: RequestValidationError) -> Response:
        problems = [f"{'.'.join(str(p) for p in e.get('loc', ()))}: {e.get('msg', 'invalid')}" for e in exc.errors()]
        return refuse(request, 400, Reason.BAD_REQUEST.value, "; ".join(problems), None)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(request: Request, exc: StarletteHTTPException) -> Response:
        reason = Reason.NOT_FOUND if exc.status_code == 404 else Reason.BAD_REQUEST
        return refuse(request, exc.status_code, reason.value, str(exc.detail), dict(exc.headers or {}))

    async def read_raw(request: Request) -> tuple[bytes, str | None]:
        body = await read_body(request.headers.get("content-length"), request.stream(), max_body_bytes)
        return body, request.headers.get("content-encoding")

    # --- writes ---------------------------------------------------------------------------------------

    @app.post(
        "/v1/spans",
        dependencies=guarded,
        response_model=SpansAccepted,
        responses=_WRITE_ERRORS,
        openapi_extra=_BATCH_BODY,
    )
    async def post_spans(request: Request) -> Response:
        """Store one agentemit batch whole, or nothing of it."""
        body, encoding = await read_raw(request)
        received, new = await asyncio.to_thread(_ingest_batch, store, body, encoding, max_body_bytes)
        stats.stored(received, new)
        return _json({"received": received, "stored": new})

    @app.post(_OTLP_PATH, dependencies=guarded, responses=_OTLP_ERRORS, openapi_extra=_OTLP_BODY)
    async def post_traces(request: Request) -> Response:
        """OTLP/HTTP traces (protobuf or JSON); spans without a rollout id are reported in partial_success."""
        kind = otlp_ingest.media_type(request.headers.get("content-type"))
        body, encoding = await read_raw(request)
        call = functools.partial(_ingest_otlp, store, body, encoding, kind, max_body_bytes, sequence_lock)
        converted, new = await asyncio.to_thread(call)
        received = len(converted.spans) + converted.rejected_count
        stats.stored(received, new, converted.rejected)
        if converted.rejected:
            _log.info(
                "otlp: %d of %d spans rejected: %s", converted.rejected_count, received, converted.error_message()
            )
        return Response(otlp_ingest.encode_response(converted, kind), media_type=kind)

    # --- reads ----------------------------------------------------------------------------------------

    limit_q = Query(None, ge=0, le=INT64_MAX, description="at most this many (all when omitted)")
    offset_q = Query(0, ge=0, le=INT64_MAX, description="skip this many first")

    @app.get("/v1/rollouts", dependencies=guarded, response_model=list[RolloutSummaryDoc], responses=_ERRORS)
    async def get_rollouts(limit: int | None = limit_q, offset: int = offset_q) -> Response:
        """Rollouts ordered by their first span's time, with counts and final reward."""
        summaries = await _store_call(store, "GET /v1/rollouts", store.alist_rollouts(limit=limit, offset=offset))
        return _json([s.to_dict() for s in summaries])

    @app.get(
        "/v1/rollouts/{rollout_id:anytext}/spans", dependencies=guarded, response_model=SpansPage, responses=_ERRORS
    )
    async def get_spans(
        rollout_id: str,
        attempt_id: str | None = Query(None, description='omitted: every attempt; "latest"; or an attempt id'),
        name: str | None = Query(None, description="only spans with exactly this name"),
        limit: int | None = limit_q,
        offset: int = offset_q,
    ) -> Response:
        """Spans of one rollout ordered by sequence_id, then span_id."""
        call = store.aquery_spans(rollout_id, attempt_id, name=name, limit=limit, offset=offset)
        spans = await _store_call(store, "GET spans", call)
        return _json({"spans": [s.to_dict() for s in spans]})

    @app.get(
        "/v1/rollouts/{rollout_id:anytext}/next_sequence_id",
        dependencies=guarded,
        response_model=NextSequenceId,
        responses=_ERRORS,
    )
    async def get_next_sequence_id(
        rollout_id: str, attempt_id: str = Query("", description="the attempt (empty for none)")
    ) -> Response:
        """The sequence_id the attempt's next span should carry."""
        call = store.aget_next_span_sequence_id(rollout_id, attempt_id)
        return _json({"next": await _store_call(store, "GET next_sequence_id", call)})

    @app.get("/v1/stats", dependencies=guarded, responses=_ERRORS)
    async def get_stats() -> dict[str, Any]:
        """Counters since start: requests, spans received/stored/duplicate, rejections by reason."""
        return stats.snapshot()

    @app.get("/healthz", response_model=Health)
    async def healthz() -> dict[str, str]:
        """Liveness, without authentication or rate limiting (for load balancers)."""
        return {"status": "ok"}

    return app
