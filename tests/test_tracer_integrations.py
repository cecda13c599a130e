"""HttpTracer and AgentOpsTracer against real components: a loopback HTTP server (stdlib), httpx, urllib,
http.client, a SQLite store and an agentemit store server on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import http.client
import json
import logging
import sys
import threading
import types
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from _ports import free_port
from agentemit import Pipeline, PipelineConfig, find_final_reward, semconv
from agentemit.pipeline.sink import ExportResult
from agentemit.server.app import create_app
from agentemit.server.runner import ServerThread
from agentemit.span import Span
from agentemit.stores import SqliteStore
from agentemit.stores.http import HttpStore
from agentemit.tracing import http as http_tracing
from agentemit.tracing.agentops import AgentOpsTracer, import_agentops
from agentemit.tracing.http import HttpTracer, http_recording_paused, redact_url
from agentemit.tracing.otel import install_provider

# --- real components ------------------------------------------------------------------------------------


class _Handler(BaseHTTPRequestHandler):
    """``/status/<code>`` answers that code; anything else 200 with body ``ok``. Reads any request body."""

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        if length:
            self.rfile.read(length)
        parts = self.path.split("?")[0].strip("/").split("/")
        code = int(parts[1]) if len(parts) == 2 and parts[0] == "status" else 200
        body = b"ok"
        self.send_response(code)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    do_GET = do_POST = _answer

    def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
        pass


@pytest.fixture(scope="module")
def server() -> Iterator[str]:
    """Base URL of a stdlib HTTP server on 127.0.0.1 (ephemeral port), for this module."""
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    httpd.daemon_threads = True
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)


@pytest.fixture
def port(server: str) -> int:
    return int(server.rsplit(":", 1)[1])


@pytest.fixture(scope="module")
def _exporter() -> Iterator[InMemorySpanExporter]:
    """Every span the SDK provider finishes, as recorded (before the pipeline's Redactor)."""
    exporter = InMemorySpanExporter()
    install_provider().add_span_processor(SimpleSpanProcessor(exporter))
    yield exporter
    exporter.shutdown()  # the processor stays on the provider, but exports nothing from now on


@pytest.fixture
def finished(_exporter: InMemorySpanExporter) -> InMemorySpanExporter:
    _exporter.clear()
    return _exporter


@pytest.fixture
def tracer(tmp_path: Path, tmp_spool: PipelineConfig) -> Iterator[HttpTracer]:
    """An initialised HttpTracer (worker 0) over a real SQLite file; torn down (patches removed) after."""
    made = HttpTracer(SqliteStore(tmp_path / "t.db"), config=tmp_spool)
    made.init_worker(0)
    try:
        yield made
    finally:
        made.teardown()


def stored(tracer: HttpTracer, rollout_id: str) -> list[Span]:
    report = tracer.force_flush(10)
    assert report is not None and report.completed, report
    assert tracer.store is not None
    return tracer.store.query_spans(rollout_id)


def named(spans: list[Span], name: str) -> list[Span]:
    return [s for s in spans if s.name == name]


def http_spans(spans: list[ReadableSpan]) -> list[ReadableSpan]:
    return [s for s in spans if s.name.startswith("HTTP ")]


def test_sync_httpx_request_is_stored_as_a_child_of_the_current_span_with_semconv_attributes(
    tracer: HttpTracer, server: str, port: int
) -> None:
    with (
        tracer.trace_context("agent", rollout_id="r-sync"),
        install_provider().get_tracer("test").start_as_current_span("tool.call") as tool,
        httpx.Client() as client,
    ):
        response = client.get(f"{server}/data")
    assert response.status_code == 200
    spans = stored(tracer, "r-sync")
    [span] = named(spans, "HTTP GET")
    [tool_span] = named(spans, "tool.call")
    assert span.parent_id == tool_span.span_id == format(tool.get_span_context().span_id, "016x")
    assert span.trace_id == tool_span.trace_id
    assert span.status == "UNSET"
    assert span.attributes["http.request.method"] == "GET"
    assert span.attributes["url.full"] == f"{server}/data"
    assert span.attributes["server.address"] == "127.0.0.1"
    assert span.attributes["server.port"] == port
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["http.response.body.size"] == 2
    assert span.rollout_id == "r-sync" and span.sequence_id > tool_span.sequence_id


def test_async_httpx_request_is_stored_under_the_current_span_with_body_sizes(
    tracer: HttpTracer, server: str, port: int
) -> None:
    async def agent() -> int:
        async with tracer.trace_context("agent", rollout_id="r-async"):
            with install_provider().get_tracer("test").start_as_current_span("tool.call"):
                async with httpx.AsyncClient() as client:
                    response = await client.post(f"{server}/submit", content=b"x" * 10)
        return response.status_code

    assert asyncio.run(agent()) == 200
    spans = stored(tracer, "r-async")
    [span] = named(spans, "HTTP POST")
    [tool_span] = named(spans, "tool.call")
    assert span.parent_id == tool_span.span_id
    assert span.attributes["http.request.method"] == "POST"
    assert span.attributes["http.request.body.size"] == 10
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["server.port"] == port


def test_requests_outside_any_trace_context_are_not_recorded(
    tracer: HttpTracer, server: str, finished: InMemorySpanExporter
) -> None:
    with httpx.Client() as client:
        client.get(f"{server}/outside")
    urllib.request.urlopen(f"{server}/outside", timeout=5).read()
    assert http_spans(list(finished.get_finished_spans())) == []
    with tracer.trace_context(rollout_id="r-inside"), httpx.Client() as client:
        client.get(f"{server}/inside")
    assert [s.attributes["url.full"] for s in named(stored(tracer, "r-inside"), "HTTP GET")] == [f"{server}/inside"]


def test_requests_with_recording_paused_or_instrumentation_suppressed_are_not_recorded(
    tracer: HttpTracer, server: str
) -> None:
    with tracer.trace_context(rollout_id="r-quiet"), httpx.Client() as client:
        with http_recording_paused():
            client.get(f"{server}/paused")
        token = otel_context.attach(otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True))
        try:
            client.get(f"{server}/suppressed")
        finally:
            otel_context.detach(token)
        client.get(f"{server}/recorded")
    assert [s.attributes["url.full"] for s in named(stored(tracer, "r-quiet"), "HTTP GET")] == [f"{server}/recorded"]


def test_a_refused_connection_is_recorded_as_error_and_the_original_exception_propagates(tracer: HttpTracer) -> None:
    url = f"http://127.0.0.1:{free_port()}/nothing?key=hunter2"
    with (
        tracer.trace_context(rollout_id="r-refused"),
        httpx.Client() as client,
        pytest.raises(httpx.ConnectError) as raised,
    ):
        client.get(url)
    [span] = named(stored(tracer, "r-refused"), "HTTP GET")
    assert span.status == "ERROR"
    assert span.attributes["error.type"] == "httpx.ConnectError"
    assert "http.response.status_code" not in span.attributes
    [event] = span.events
    assert event.name == "exception"
    assert event.attributes["exception.type"] == "httpx.ConnectError"
    assert event.attributes["exception.message"] == str(raised.value)
    assert "hunter2" not in json.dumps(span.to_dict())


def test_an_http_error_status_sets_error_without_raising(tracer: HttpTracer, server: str) -> None:
    with tracer.trace_context(rollout_id="r-404"), httpx.Client() as client:
        assert client.get(f"{server}/status/404").status_code == 404
    [span] = named(stored(tracer, "r-404"), "HTTP GET")
    assert span.status == "ERROR"
    assert span.attributes["http.response.status_code"] == 404
    assert span.attributes["error.type"] == "404"
    assert span.events == []


def test_query_values_and_userinfo_are_never_recorded(
    tracer: HttpTracer, server: str, port: int, finished: InMemorySpanExporter
) -> None:
    secret_url = f"http://alice:s3cr3t-pw@127.0.0.1:{port}/search?api_key=sk-live-abc123&q=private+words&flag"
    with tracer.trace_context(rollout_id="r-secret"), httpx.Client() as client:
        client.get(secret_url)
    expected = f"http://[REDACTED]:[REDACTED]@127.0.0.1:{port}/search?api_key=[REDACTED]&q=[REDACTED]&[REDACTED]"
    [recorded] = http_spans(list(finished.get_finished_spans()))  # as recorded, before the pipeline's Redactor
    assert recorded.attributes is not None and recorded.attributes["url.full"] == expected
    [span] = named(stored(tracer, "r-secret"), "HTTP GET")
    assert span.attributes["url.full"] == expected
    text = json.dumps(span.to_dict())
    for secret in ("alice", "s3cr3t-pw", "sk-live-abc123", "private"):
        assert secret not in text


def test_redact_url_keeps_scheme_host_path_and_query_keys_and_drops_the_fragment() -> None:
    assert (
        redact_url("https://example.com/a/b?x=1&y=&z#frag")
        == "https://example.com/a/b?x=[REDACTED]&y=[REDACTED]&[REDACTED]"
    )
    assert redact_url("http://token@example.com:8080/") == "http://[REDACTED]@example.com:8080/"
    assert redact_url("http://example.com/plain") == "http://example.com/plain"


def test_urllib_request_is_recorded_through_http_client(tracer: HttpTracer, server: str, port: int) -> None:
    request = urllib.request.Request(f"{server}/u?t=1", data=b"abcd")
    with tracer.trace_context(rollout_id="r-urllib"), urllib.request.urlopen(request, timeout=5) as answer:
        assert answer.read() == b"ok"
    [span] = named(stored(tracer, "r-urllib"), "HTTP POST")
    assert span.attributes["url.full"] == f"{server}/u?t=[REDACTED]"
    assert span.attributes["server.address"] == "127.0.0.1"
    assert span.attributes["server.port"] == port
    assert span.attributes["http.request.body.size"] == 4
    assert span.attributes["http.response.status_code"] == 200
    assert span.attributes["network.protocol.version"] in ("1.0", "1.1")


def test_http_client_failure_is_recorded_as_error_and_urllib_error_propagates(tracer: HttpTracer) -> None:
    with tracer.trace_context(rollout_id="r-urllib-fail"), pytest.raises(urllib.error.URLError):
        urllib.request.urlopen(f"http://127.0.0.1:{free_port()}/x", timeout=5)
    [span] = named(stored(tracer, "r-urllib-fail"), "HTTP GET")
    assert span.status == "ERROR"
    assert span.attributes["error.type"] == "builtins.ConnectionRefusedError"


def test_http_client_requests_on_a_kept_alive_connection_are_each_recorded(tracer: HttpTracer, port: int) -> None:
    with tracer.trace_context(rollout_id="r-conn"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            for path in ("/one", "/status/500"):
                conn.request("GET", path)
                conn.getresponse().read()
        finally:
            conn.close()
    spans = named(stored(tracer, "r-conn"), "HTTP GET")
    assert [(s.attributes["url.full"], s.attributes["http.response.status_code"], s.status) for s in spans] == [
        (f"http://127.0.0.1:{port}/one", 200, "UNSET"),
        (f"http://127.0.0.1:{port}/status/500", 500, "ERROR"),
    ]


def test_a_request_the_instrumentation_cannot_read_still_runs_unrecorded(
    tracer: HttpTracer, port: int, caplog: pytest.LogCaptureFixture
) -> None:
    """An absolute-form target with a malformed IPv6 host makes the URL parser raise inside the
    instrumentation; with an explicit Host header http.client sends it as is, and the server answers."""
    with tracer.trace_context(rollout_id="r-unreadable"), caplog.at_level(logging.DEBUG, "agentemit.tracing.http"):
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
        try:
            conn.request("GET", "http://[bad/path", headers={"Host": "127.0.0.1"})
            answer = conn.getresponse()
            assert (answer.status, answer.read()) == (200, b"ok")
        finally:
            conn.close()
    assert named(stored(tracer, "r-unreadable"), "HTTP GET") == []
    assert any("could not read an http.client request" in r.getMessage() for r in caplog.records)


def _patched_methods() -> list[Any]:
    return [
        httpx.Client.__dict__["send"],
        httpx.AsyncClient.__dict__["send"],
        http.client.HTTPConnection.__dict__["request"],
        http.client.HTTPConnection.__dict__["getresponse"],
    ]


def test_teardown_restores_the_original_methods_exactly(tmp_spool: PipelineConfig) -> None:
    originals = _patched_methods()
    made = HttpTracer(config=tmp_spool)
    made.init()
    made.init()  # idempotent: one reference
    assert all(now is not before for now, before in zip(_patched_methods(), originals, strict=True))
    assert http_tracing.installed("httpx") == 1
    made.teardown()
    assert all(now is before for now, before in zip(_patched_methods(), originals, strict=True))
    assert http_tracing.installed("httpx") == 0


def test_two_http_tracers_share_the_patches_until_the_last_one_tears_down(
    tmp_path: Path, tmp_spool: PipelineConfig, server: str
) -> None:
    originals = _patched_methods()
    first = HttpTracer(config=tmp_spool, libraries=("httpx",))
    second = HttpTracer(SqliteStore(tmp_path / "second.db"), config=tmp_spool)
    first.init()
    second.init_worker(1)
    assert (http_tracing.installed("httpx"), http_tracing.installed("http.client")) == (2, 1)
    first.teardown()
    assert http_tracing.installed("httpx") == 1
    with second.trace_context(rollout_id="r-shared"), httpx.Client() as client:
        client.get(f"{server}/still-recorded")
    assert len(named(stored(second, "r-shared"), "HTTP GET")) == 1
    second.teardown()
    assert all(now is before for now, before in zip(_patched_methods(), originals, strict=True))


def test_http_tracer_rejects_an_unknown_library() -> None:
    with pytest.raises(ValueError, match="requests"):
        HttpTracer(libraries=("requests",))


def test_the_pipelines_own_exports_to_an_http_store_are_not_recorded(
    tmp_path: Path, tmp_spool: PipelineConfig, server: str
) -> None:
    backend = SqliteStore(tmp_path / "served.db")
    with ServerThread(create_app(backend)) as store_server:
        made = HttpTracer(HttpStore(store_server.url), config=tmp_spool)
        made.init_worker(0)
        try:
            with made.trace_context(rollout_id="r-outer"), httpx.Client() as client:
                client.get(f"{server}/agent-call")
                made.force_flush(10)  # exports from the caller's thread, inside the rollout
                with made.trace_context(rollout_id="r-nested"):  # asks the store for the next sequence id
                    client.get(f"{server}/nested-call")
            report = made.force_flush(10)
            assert report is not None and report.completed, report
        finally:
            made.teardown()
    urls = {
        rollout: [str(s.attributes["url.full"]) for s in backend.query_spans(rollout) if s.name.startswith("HTTP ")]
        for rollout in ("r-outer", "r-nested")
    }
    backend.close()
    assert urls == {"r-outer": [f"{server}/agent-call"], "r-nested": [f"{server}/nested-call"]}


# --- AgentOpsTracer ---------------------------------------------------------------------------------------


@pytest.fixture
def agentops_tracer(tmp_path: Path, tmp_spool: PipelineConfig) -> Iterator[AgentOpsTracer]:
    made = AgentOpsTracer(SqliteStore(tmp_path / "ao.db"), config=tmp_spool)
    made.init_worker(0)
    try:
        yield made
    finally:
        made.teardown()


def test_agentops_style_operation_outputs_are_rewards_in_readers_and_the_store(
    agentops_tracer: AgentOpsTracer,
) -> None:
    otel = install_provider().get_tracer("agentops-like")
    with agentops_tracer.trace_context("agent", rollout_id="r-ao"):
        with otel.start_as_current_span("compute.task") as task:
            task.set_attribute("agentops.task.output", json.dumps({"type": "reward", "value": 0.25}))
        with otel.start_as_current_span("grade.entity") as entity:
            entity.set_attribute("agentops.entity.output", json.dumps({"type": "reward", "value": 0.75}))
        with otel.start_as_current_span("other.task") as other:
            other.set_attribute("agentops.task.output", json.dumps({"type": "answer", "value": "42"}))
    assert find_final_reward(agentops_tracer.get_last_trace()) == 0.75
    report = agentops_tracer.force_flush(10)
    assert report is not None and report.completed
    store = agentops_tracer.store
    assert store is not None
    assert find_final_reward(store.query_spans("r-ao")) == 0.75
    [summary] = [r for r in store.list_rollouts() if r.rollout_id == "r-ao"]
    assert summary.final_reward == 0.75


def test_agentops_tracer_without_the_agentops_package_says_so_and_works_as_otel_tracer(
    tmp_spool: PipelineConfig, caplog: pytest.LogCaptureFixture
) -> None:
    if import_agentops() is not None:
        pytest.skip("the agentops package is installed here")
    made = AgentOpsTracer(config=tmp_spool)
    with caplog.at_level(logging.INFO, logger="agentemit.tracing.agentops"):
        made.init()
        made.init()
    assert [r.getMessage() for r in caplog.records if "not installed" in r.getMessage()] != []
    assert len(caplog.records) == 1
    assert made.agentops_active is False
    with made.trace_context(rollout_id="r-plain"), install_provider().get_tracer("t").start_as_current_span("step"):
        pass
    assert [s.name for s in made.get_last_trace()] == [semconv.SPAN_ROLLOUT, "step"]
    made.teardown()


class _StandInAgentOps:
    """A stand-in for the ``agentops`` package (which must not be installed here): the parts of its SDK
    AgentOpsTracer uses — ``init``, ``get_client().initialized`` and ``agentops.sdk.core.tracer.provider``,
    a real SDK TracerProvider that is not the global one, as AgentOps makes when another was set first.
    """

    def __init__(self) -> None:
        self.init_calls: list[dict[str, Any]] = []
        self.provider = TracerProvider()
        self.initialized = False
        self.root = types.ModuleType("agentops")
        self.root.init = self._init  # type: ignore[attr-defined]
        self.root.get_client = lambda: self  # type: ignore[attr-defined]
        self.sdk = types.ModuleType("agentops.sdk")
        self.core = types.ModuleType("agentops.sdk.core")
        self.core.tracer = types.SimpleNamespace(provider=None)  # type: ignore[attr-defined]

    def _init(self, **options: Any) -> None:
        self.init_calls.append(options)
        self.initialized = True
        self.core.tracer.provider = self.provider

    def install(self, monkeypatch: pytest.MonkeyPatch) -> None:
        for name, module in (("agentops", self.root), ("agentops.sdk", self.sdk), ("agentops.sdk.core", self.core)):
            monkeypatch.setitem(sys.modules, name, module)


def test_agentops_tracer_initializes_agentops_once_and_collects_spans_from_its_provider(
    tmp_path: Path, tmp_spool: PipelineConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    agentops = _StandInAgentOps()
    agentops.install(monkeypatch)
    made = AgentOpsTracer(SqliteStore(tmp_path / "ao.db"), config=tmp_spool, agentops_options={"api_key": "k"})
    made.init_worker(0)
    made.init()
    try:
        assert agentops.init_calls == [{"auto_start_session": False, "api_key": "k"}]
        assert made.agentops_active is True
        with (
            made.trace_context(rollout_id="r-agentops"),
            agentops.provider.get_tracer("agentops").start_as_current_span("openai.chat") as llm,
        ):
            llm.set_attribute("agentops.entity.output", json.dumps({"type": "reward", "value": 1}))
        report = made.force_flush(10)
        assert report is not None and report.completed
        assert made.store is not None
        spans = made.store.query_spans("r-agentops")
        assert [s.name for s in spans] == [semconv.SPAN_ROLLOUT, "openai.chat"]
        assert spans[1].parent_id == spans[0].span_id
        assert find_final_reward(spans) == 1.0
    finally:
        made.teardown()
        agentops.provider.shutdown()


# --- a pipeline gap found while testing HttpTracer ----------------------------------------------------------


class _SuppressionProbeSink:
    """A real in-process sink that notes, per export, whether OpenTelemetry instrumentation was suppressed."""

    def __init__(self) -> None:
        self.suppressed: list[bool] = []

    def export(self, batch: Sequence[Span]) -> ExportResult:
        self.suppressed.append(bool(otel_context.get_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY)))
        return ExportResult.success(len(batch))

    def force_flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        pass


def test_exports_run_from_the_callers_thread_suppress_instrumentation(tmp_spool: PipelineConfig) -> None:
    sink = _SuppressionProbeSink()
    pipeline = Pipeline(sink, tmp_spool, start=False)
    try:
        pipeline.submit(("message", "m", 1, 2, {}, f"{1:032x}", 5, 0, 0, "r-probe", "attempt-0", None, 0))
        assert pipeline.force_flush(5).completed
    finally:
        pipeline.shutdown(5)
    assert sink.suppressed == [True]
