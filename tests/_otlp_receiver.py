"""A real OTLP/HTTP trace receiver on 127.0.0.1, for tests and benchmarks.

It decodes each ``ExportTraceServiceRequest`` (gzip or plain) with ``opentelemetry.proto``, counts and
keeps the spans, and can be told to fail the next requests or to answer slowly, so sinks and their
wrappers are tested against a real socket instead of a mock.
"""

from __future__ import annotations

import gzip
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)
from opentelemetry.proto.common.v1.common_pb2 import AnyValue
from opentelemetry.proto.trace.v1.trace_pb2 import Span as PbSpan


@dataclass
class _Failure:
    remaining: int
    status: int
    retry_after: str | None
    body: bytes


@dataclass
class ReceivedRequest:
    """What the receiver saw of one request and how it answered."""

    path: str
    headers: dict[str, str]
    status: int
    span_count: int
    body_bytes: int


@dataclass
class _State:
    lock: threading.Lock = field(default_factory=threading.Lock)
    keep_spans: bool = True
    span_count: int = 0
    spans: list[PbSpan] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)  # resource attributes, one per span
    requests: list[ReceivedRequest] = field(default_factory=list)
    failures: list[_Failure] = field(default_factory=list)
    delay: float = 0.0
    reject_spans: int = 0
    closing: threading.Event = field(default_factory=threading.Event)


def any_value(value: AnyValue) -> Any:
    """A Python value from an OTLP ``AnyValue`` (arrays become tuples, like our attributes)."""
    kind = value.WhichOneof("value")
    if kind is None:
        return None
    if kind == "array_value":
        return tuple(any_value(v) for v in value.array_value.values)
    if kind == "kvlist_value":
        return {kv.key: any_value(kv.value) for kv in value.kvlist_value.values}
    return getattr(value, kind)


def attributes(span: PbSpan | Any) -> dict[str, Any]:
    """A span's (or event's) attributes as a plain dict."""
    return {kv.key: any_value(kv.value) for kv in span.attributes}


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as collectors serve it
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet: tests read the state instead
        return

    def _reply(self, status: int, body: bytes, headers: dict[str, str] | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/x-protobuf")
        self.send_header("Content-Length", str(len(body)))
        for name, value in (headers or {}).items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        state = self.server.state
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k.lower(): v for k, v in self.headers.items()}
        if state.delay:
            state.closing.wait(state.delay)
        with state.lock:
            failure = state.failures[0] if state.failures else None
            if failure is not None:
                failure.remaining -= 1
                if failure.remaining <= 0:
                    state.failures.pop(0)
        if failure is not None:
            extra = {"Retry-After": failure.retry_after} if failure.retry_after is not None else {}
            self._record(headers, failure.status, 0, len(raw))
            self._reply(failure.status, failure.body, extra)
            return
        request = ExportTraceServiceRequest()
        try:
            data = gzip.decompress(raw) if headers.get("content-encoding") == "gzip" else raw
            request.ParseFromString(data)
        except Exception:
            self._record(headers, 400, 0, len(raw))
            self._reply(400, b"")
            return
        count = 0
        with state.lock:
            for resource_spans in request.resource_spans:
                resource = attributes(resource_spans.resource)
                for scope_spans in resource_spans.scope_spans:
                    count += len(scope_spans.spans)
                    if state.keep_spans:
                        state.spans.extend(scope_spans.spans)
                        state.resources.extend([resource] * len(scope_spans.spans))
            state.span_count += count
            rejected, state.reject_spans = min(state.reject_spans, count), 0
        self._record(headers, 200, count, len(raw))
        response = ExportTraceServiceResponse()
        if rejected:
            response.partial_success.rejected_spans = rejected
            response.partial_success.error_message = "rejected by test receiver"
        self._reply(200, response.SerializeToString())

    def _record(self, headers: dict[str, str], status: int, count: int, size: int) -> None:
        with self.server.state.lock:
            self.server.state.requests.append(ReceivedRequest(self.path, headers, status, count, size))


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    state: _State


class OtlpReceiver:
    """An OTLP/HTTP receiver on an ephemeral loopback port, serving from a background thread.

    Use as a context manager; ``url`` is the traces endpoint. ``fail_next`` and ``delay`` script its
    behaviour; ``spans``, ``span_count`` and ``requests`` report what arrived (successful requests only
    are counted as spans).
    """

    def __init__(self, *, keep_spans: bool = True, path: str = "/v1/traces") -> None:
        self._path = path
        self._server = _Server(("127.0.0.1", 0), _Handler)
        self._server.state = _State(keep_spans=keep_spans)
        self._thread = threading.Thread(
            target=self._server.serve_forever, args=(0.02,), name="otlp-receiver", daemon=True
        )  # a short poll interval keeps close() fast
        self._started = False

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}{self._path}"

    def start(self) -> OtlpReceiver:
        if not self._started:
            self._thread.start()
            self._started = True
        return self

    def close(self) -> None:
        self._server.state.closing.set()  # cut any scripted delay short
        if self._started:
            self._server.shutdown()
            self._thread.join(timeout=5)
        self._server.server_close()

    def __enter__(self) -> OtlpReceiver:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    # --- scripting ---------------------------------------------------------------------------

    def fail_next(self, count: int, status: int = 503, *, retry_after: str | None = None, body: bytes = b"") -> None:
        """Answer the next ``count`` requests with ``status`` (queued after failures already scripted)."""
        with self._server.state.lock:
            self._server.state.failures.append(_Failure(count, status, retry_after, body))

    def delay(self, seconds: float) -> None:
        """Wait ``seconds`` before answering each request from now on (0 to stop)."""
        self._server.state.delay = seconds

    def reject_next_spans(self, count: int) -> None:
        """Report ``count`` spans of the next accepted request as rejected (OTLP partial success)."""
        with self._server.state.lock:
            self._server.state.reject_spans = count

    # --- what arrived --------------------------------------------------------------------------

    @property
    def span_count(self) -> int:
        with self._server.state.lock:
            return self._server.state.span_count

    @property
    def spans(self) -> list[PbSpan]:
        with self._server.state.lock:
            return list(self._server.state.spans)

    @property
    def resources(self) -> list[dict[str, Any]]:
        with self._server.state.lock:
            return list(self._server.state.resources)

    @property
    def requests(self) -> list[ReceivedRequest]:
        with self._server.state.lock:
            return list(self._server.state.requests)

    @property
    def span_ids(self) -> list[str]:
        return [s.span_id.hex() for s in self.spans]

    def iter_attributes(self) -> Iterator[dict[str, Any]]:
        for span in self.spans:
            yield attributes(span)

    def wait_for_spans(self, count: int, timeout: float = 5.0) -> bool:
        """Poll until ``count`` spans arrived (for asynchronous senders); False on timeout."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.span_count >= count:
                return True
            time.sleep(0.01)
        return self.span_count >= count
