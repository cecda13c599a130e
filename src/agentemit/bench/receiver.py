"""A minimal OTLP/HTTP trace receiver, run in its own process: ``python -m agentemit.bench.receiver``.

It decodes every ``ExportTraceServiceRequest`` (gzip or plain) and counts spans; ``GET /count``
answers ``{"spans": n, "events": e, "requests": m}`` where ``events`` counts only the spans of emitted
messages and rewards (not rollout root spans). It lives here, not in tests/, so the bench stands alone.
"""

from __future__ import annotations

import gzip
import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
    ExportTraceServiceRequest,
    ExportTraceServiceResponse,
)

from agentemit.bench._proc import serve_until_stdin_closes

_LOCK = threading.Lock()
_COUNTS = {"spans": 0, "events": 0, "requests": 0}
_EVENT_NAMES = frozenset({"agentlightning.message", "agentlightning.reward"})
_OK = ExportTraceServiceResponse().SerializeToString()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as a collector serves it

    def log_message(self, format: str, *args: object) -> None:
        """Silent: one line per request would cost more than decoding it."""

    def _answer(self, status: int, body: bytes, ctype: str) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        if (self.headers.get("Content-Encoding") or "").lower() == "gzip":
            body = gzip.decompress(body)
        request = ExportTraceServiceRequest()
        try:
            request.ParseFromString(body)
        except Exception as exc:
            self._answer(400, f"not an ExportTraceServiceRequest: {exc}".encode(), "text/plain")
            return
        spans = events = 0
        for resource_spans in request.resource_spans:
            for scope in resource_spans.scope_spans:
                spans += len(scope.spans)
                events += sum(1 for span in scope.spans if span.name in _EVENT_NAMES)
        with _LOCK:
            _COUNTS["spans"] += spans
            _COUNTS["events"] += events
            _COUNTS["requests"] += 1
        self._answer(200, _OK, "application/x-protobuf")

    def do_GET(self) -> None:
        with _LOCK:
            body = json.dumps(_COUNTS).encode()
        self._answer(200, body, "application/json")


def main() -> None:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        serve_until_stdin_closes(f"http://127.0.0.1:{server.server_address[1]}")
    finally:
        server.shutdown()
        server.server_close()


if __name__ == "__main__":
    main()
