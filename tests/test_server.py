"""The store server on a real uvicorn socket (127.0.0.1, ephemeral port) over the memory and SQLite stores."""

from __future__ import annotations

import dataclasses
import gzip
import logging
import math
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import orjson
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceResponse
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from agentemit import codec, semconv
from agentemit.compression import compress
from agentemit.pipeline.otlp import spans_to_otlp
from agentemit.server import app as app_module
from agentemit.server import otlp_ingest, runner
from agentemit.server.app import create_app
from agentemit.server.runner import ServerThread, is_loopback, serve
from agentemit.server.security import AUDIT_LOGGER, RateLimiter
from agentemit.span import AttributeValue, Span, SpanEvent
from agentemit.stores.base import SpanStore
from agentemit.stores.http import HttpStore

pytest_plugins = ["_server_fixtures"]  # backend, serve_app
Serve = Callable[..., ServerThread]  # what the serve_app fixture returns

TOKEN = "s3cret-token"
AUTH = {"Authorization": f"Bearer {TOKEN}"}
JSON_HEADERS = {"Content-Type": "application/json"}
TRACE = "0af7651916cd43dd8448eb211c80319c"


class FakeClock:
    """Monotonic seconds that move only when a test says so."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def make_span(seq: int, *, rollout: str = "r1", attempt: str = "a1", name: str = "step", **kw: Any) -> Span:
    return Span(
        trace_id=TRACE,
        span_id=f"{seq + 1:016x}",
        parent_id=None if seq == 0 else f"{1:016x}",
        name=name,
        start_time=1_700_000_000_000_000_000 + seq,
        end_time=1_700_000_000_000_000_500 + seq,
        rollout_id=rollout,
        attempt_id=attempt,
        sequence_id=seq,
        **kw,
    )


def rich_span() -> Span:
    """A span using every feature the wire format must carry losslessly."""
    return Span(
        trace_id=TRACE,
        span_id="b7ad6b7169203331",
        parent_id="00f067aa0ba902b7",
        name="agentlightning.message ✓",
        start_time=1_700_000_000_123_456_789,
        end_time=1_700_000_000_223_456_789,
        rollout_id="rollout/ünï 1",
        attempt_id="attempt-🙂",
        sequence_id=2**40,
        attributes={"nan": math.nan, "inf": math.inf, "t": (1, 2), "s": ("a", "β"), "b": True, "text": "x\x00y"},
        status="ERROR",
        status_description="boom",
        events=[SpanEvent("exception", 1_700_000_000_200_000_000, {"exception.type": "ValueError"})],
        resource={"service.name": "svc", "host.cores": 8},
    )


@pytest.fixture
def store(backend: SpanStore) -> SpanStore:
    """The server-side store (the shared ``backend`` fixture), by the name these tests use."""
    return backend


@pytest.fixture
def url(serve_app: Serve) -> str:
    return serve_app().url


def post_batch(
    url: str, spans: list[Span], *, body: bytes | None = None, headers: dict[str, str] | None = None
) -> httpx.Response:
    data = codec.encode_batch(spans) if body is None else body
    return httpx.post(f"{url}/v1/spans", content=data, headers={**JSON_HEADERS, **(headers or {})})


def stored_ids(store: SpanStore, rollout: str = "r1") -> list[str]:
    return [s.span_id for s in store.query_spans(rollout)]


# --- /v1/spans -----------------------------------------------------------------------------------------


def test_a_batch_round_trips_losslessly_through_http_store_and_the_read_endpoints(url: str, store: SpanStore) -> None:
    original = rich_span()
    with HttpStore(url) as client:
        assert client.add_many_spans([original, make_span(0), make_span(1)]) == 3
        [got] = client.query_spans(original.rollout_id)
        assert codec.encode_span(got) == codec.encode_span(original)
        assert codec.encode_span(store.query_spans(original.rollout_id)[0]) == codec.encode_span(original)
        assert [s.rollout_id for s in client.list_rollouts()] == [s.rollout_id for s in store.list_rollouts()]
        assert client.get_next_span_sequence_id(original.rollout_id, original.attempt_id) == 2**40 + 1
        assert client.get_next_span_sequence_id("r1", "a1") == 2


def test_posting_the_same_batch_twice_stores_it_once(url: str, store: SpanStore) -> None:
    spans = [make_span(i) for i in range(3)]
    first = post_batch(url, spans)
    second = post_batch(url, spans)
    assert (first.status_code, first.json()) == (200, {"received": 3, "stored": 3})
    assert (second.status_code, second.json()) == (200, {"received": 3, "stored": 0})
    assert len(stored_ids(store)) == 3
    stats = httpx.get(f"{url}/v1/stats").json()
    assert (stats["spans_received"], stats["spans_stored"], stats["spans_duplicate"]) == (6, 3, 3)


@pytest.mark.parametrize("encoding", ["gzip", "zstd"])
def test_gzip_and_zstd_bodies_are_decompressed_and_stored(url: str, store: SpanStore, encoding: str) -> None:
    body = compress(codec.encode_batch([make_span(0), make_span(1)]), encoding)  # type: ignore[arg-type]
    response = post_batch(url, [], body=body, headers={"Content-Encoding": encoding})
    assert response.status_code == 200, response.text
    assert len(stored_ids(store)) == 2


def test_a_batch_with_a_wrong_checksum_is_refused_whole(url: str, store: SpanStore) -> None:
    body = codec.encode_batch([make_span(0), make_span(1)])
    document = orjson.loads(body)
    document["spans"][1]["name"] = "tampered"
    response = post_batch(url, [], body=orjson.dumps(document))
    assert response.status_code == 400
    assert "$.checksum" in response.json()["error"]
    assert stored_ids(store) == []


def _with_checksum(spans: list[dict[str, Any]]) -> bytes:
    """A batch whose checksum is right for its (deliberately malformed) spans."""
    body = codec.dumps(spans)
    return codec.dumps(
        {
            "format": "agentemit.batch",
            "version": 1,
            "count": len(spans),
            "checksum": codec.checksum(body),
            "spans": spans,
        }
    )


MISSING = object()  # the field is left out of the span
MALFORMED: list[tuple[str, Any, str]] = [
    ("rollout_id", None, "$.spans[1].rollout_id: is null"),
    ("rollout_id", "", "$.spans[1].rollout_id: is empty"),
    ("name", None, "$.spans[1].name: is null"),
    ("start_time", "123", "$.spans[1].start_time: is str; expected an int"),
    ("sequence_id", True, "$.spans[1].sequence_id: is bool"),
    ("end_time", 2**63, "$.spans[1].end_time: is 9223372036854775808, outside the signed 64-bit range"),
    ("status", "FINE", "$.spans[1].status: is 'FINE'"),
    ("parent_id", 5, "$.spans[1].parent_id: is 5"),
    ("attributes", {"k": {"nested": 1}}, "$.spans[1].attributes['k']"),
    ("events", [{"name": "e", "timestamp": "soon"}], "$.spans[1].events[0].timestamp: is str"),
    ("span_id", "a\x00b", "$.spans[1].span_id: contains a NUL character"),
    ("trace_id", MISSING, "$.spans[1].trace_id: is missing; expected a str"),
    ("attempt_id", "a" * 600, "$.spans[1].attempt_id: is 600 characters long"),
]


def test_a_malformed_span_field_is_refused_naming_its_path_and_nothing_of_the_batch_is_stored(
    url: str, store: SpanStore
) -> None:
    # One server for every case (starting one per case would dominate the run time).
    with httpx.Client() as client:
        for field, value, message in MALFORMED:
            spans = [make_span(i).to_dict() for i in range(3)]
            spans[1][field] = value
            if value is MISSING:
                del spans[1][field]
            response = client.post(f"{url}/v1/spans", content=_with_checksum(spans), headers=JSON_HEADERS)
            assert response.status_code == 400, (field, value)
            error = response.json()["error"]
            assert error.startswith(message) and error.endswith(f"(span {spans[1]['span_id']!r})"), error
    assert stored_ids(store) == []


def test_a_body_that_is_not_a_batch_is_a_400_naming_the_problem(url: str) -> None:
    assert "not valid JSON" in post_batch(url, [], body=b"{nope").json()["error"]
    assert "agentemit.batch" in post_batch(url, [], body=b'{"spans": []}').json()["error"]
    response = post_batch(url, [], body=b"\x00garbage", headers={"Content-Encoding": "gzip"})
    assert response.status_code == 400 and "not valid gzip" in response.json()["error"]
    assert post_batch(url, [], body=b"{}", headers={"Content-Encoding": "br"}).status_code == 415


def test_a_store_failure_is_a_500_naming_the_store(url: str, store: SpanStore) -> None:
    store.close()
    response = post_batch(url, [make_span(0)])
    assert response.status_code == 500
    assert type(store).__name__ in response.json()["error"]
    assert httpx.get(f"{url}/v1/stats").json()["requests_rejected"] == {"store_error": 1}


def test_an_unexpected_error_is_a_500_in_the_error_format_with_an_audit_line_and_the_connection_kept(
    url: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    def boom(data: bytes) -> list[Span]:
        raise RuntimeError("boom")

    monkeypatch.setattr(app_module, "_decode_batch", boom)
    monkeypatch.setattr(otlp_ingest, "decode", lambda body, kind: boom(body))
    with caplog.at_level(logging.WARNING, logger=AUDIT_LOGGER), httpx.Client() as client:
        response = client.post(f"{url}/v1/spans", content=codec.encode_batch([make_span(0)]), headers=JSON_HEADERS)
        assert (response.status_code, response.json()) == (500, {"error": "internal error: RuntimeError: boom"})
        otlp = client.post(f"{url}/v1/traces", content=b"{}", headers=JSON_HEADERS)
        assert (otlp.status_code, otlp.json()) == (500, {"code": 13, "message": "internal error: RuntimeError: boom"})
        assert client.get(f"{url}/healthz").status_code == 200
    lines = [r.getMessage() for r in caplog.records if r.name == AUDIT_LOGGER]
    assert len(lines) == 2 and "path=/v1/spans status=500 reason=internal_error" in lines[0], lines


# --- security --------------------------------------------------------------------------------------------


def test_a_token_server_answers_401_without_or_with_a_wrong_token_and_serves_the_right_one(serve_app: Serve) -> None:
    url = serve_app(token=TOKEN).url
    assert post_batch(url, [make_span(0)]).status_code == 401
    wrong = post_batch(url, [make_span(0)], headers={"Authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.headers["www-authenticate"].startswith("Bearer")
    assert httpx.get(f"{url}/v1/rollouts", headers={"Authorization": "Basic " + TOKEN}).status_code == 401
    assert post_batch(url, [make_span(0)], headers=AUTH).status_code == 200
    assert httpx.get(f"{url}/v1/rollouts", headers=AUTH).json()[0]["rollout_id"] == "r1"
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}  # health needs no token


def test_a_body_over_the_limit_is_refused_with_413_by_length_while_streaming_and_after_decompression(
    serve_app: Serve, store: SpanStore
) -> None:
    url = serve_app(max_body_bytes=4096).url
    big = codec.encode_batch([make_span(i, attributes={"pad": "x" * 200}) for i in range(40)])
    assert len(big) > 4096
    assert post_batch(url, [], body=big).status_code == 413  # Content-Length says so up front

    def chunks() -> Iterator[bytes]:  # chunked transfer: no Content-Length, counted as it arrives
        for start in range(0, len(big), 1000):
            yield big[start : start + 1000]

    streamed = httpx.post(f"{url}/v1/spans", content=chunks(), headers=JSON_HEADERS)
    assert streamed.status_code == 413
    bomb = gzip.compress(b" " * 1_000_000)  # ~1 kB that would expand to 1 MB
    assert len(bomb) < 4096
    response = post_batch(url, [], body=bomb, headers={"Content-Encoding": "gzip"})
    assert response.status_code == 413 and "decompressed body" in response.json()["error"]
    zstd_bomb = compress(b" " * 1_000_000, "zstd")
    assert post_batch(url, [], body=zstd_bomb, headers={"Content-Encoding": "zstd"}).status_code == 413
    assert stored_ids(store) == []
    assert httpx.get(f"{url}/v1/stats").json()["requests_rejected"] == {"too_large": 4}


def test_a_client_over_its_rate_gets_429_with_retry_after_until_its_bucket_refills(serve_app: Serve) -> None:
    clock = FakeClock()
    url = serve_app(rate_limit_per_s=0.5, rate_burst=2, clock=clock).url
    with httpx.Client() as client:
        assert [client.get(f"{url}/v1/rollouts").status_code for _ in range(2)] == [200, 200]
        refused = client.get(f"{url}/v1/rollouts")
        assert refused.status_code == 429 and refused.headers["retry-after"] == "2"
        assert client.get(f"{url}/healthz").status_code == 200  # health checks are never rate limited
        clock.advance(2.0)
        assert client.get(f"{url}/v1/rollouts").status_code == 200
        assert client.get(f"{url}/v1/rollouts").status_code == 429


def test_the_rate_limiter_forgets_the_oldest_client_past_its_bound() -> None:
    clock = FakeClock()
    limiter = RateLimiter(1.0, 1, clock=clock, max_clients=2)
    assert limiter.acquire("a") is None and limiter.acquire("b") is None
    assert limiter.acquire("a") == pytest.approx(1.0)  # empty bucket: a token is due in 1 s
    assert limiter.acquire("c") is None  # a third client pushes out the least recent ("b")
    assert limiter.acquire("b") is None  # so "b" starts again with a full bucket
    clock.advance(0.5)
    assert limiter.acquire("c") == pytest.approx(0.5)


def test_every_refused_request_writes_an_audit_line_naming_client_path_status_and_reason(
    serve_app: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    url = serve_app(token=TOKEN).url
    with caplog.at_level(logging.WARNING, logger=AUDIT_LOGGER):
        post_batch(url, [make_span(0)])
        httpx.get(f"{url}/v1/rollouts?limit=-1", headers=AUTH)
        httpx.get(f"{url}/nowhere", headers=AUTH)
    lines = [r.getMessage() for r in caplog.records if r.name == AUDIT_LOGGER]
    assert len(lines) == 3, lines
    assert "client=127.0.0.1" in lines[0] and "path=/v1/spans status=401 reason=unauthorized" in lines[0]
    assert "path=/v1/rollouts status=400 reason=bad_request: query.limit" in lines[1]
    assert "path=/nowhere status=404 reason=not_found" in lines[2]


def test_serve_refuses_a_non_loopback_host_without_a_token(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTEMIT_TOKEN", raising=False)
    with pytest.raises(ValueError, match=r"refusing to listen on '0.0.0.0' without a token.*AGENTEMIT_TOKEN"):
        serve("memory", host="0.0.0.0")
    assert is_loopback("127.0.0.1") and is_loopback("localhost") and is_loopback("::1") and is_loopback("127.8.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("example.org") and not is_loopback("10.0.0.1")


GC_CHILD = """
import gc, sys
from agentemit.server.app import create_app
from agentemit.server.runner import SERVER_GC_THRESHOLD, tune_gc_for_serving
from agentemit.stores import open_store
create_app(open_store("memory"))
tune_gc_for_serving()
assert gc.get_freeze_count() > 10_000, gc.get_freeze_count()  # the app's heap is out of collections
assert gc.get_threshold()[0] == SERVER_GC_THRESHOLD
cycle = []; cycle.append(cycle); del cycle  # garbage made after the freeze is still collected
assert gc.collect() >= 1
"""


def test_the_server_process_freezes_its_startup_heap_and_still_collects_cycles() -> None:
    # In a child process: the collector's settings are process-wide, and the test runner's stay as they are.
    done = subprocess.run([sys.executable, "-c", GC_CHILD], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr


def test_serve_tunes_the_collector_after_building_the_app_and_before_serving(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[str] = []
    monkeypatch.setattr(runner, "tune_gc_for_serving", lambda: calls.append("tune"))
    monkeypatch.setattr(runner.uvicorn, "run", lambda app, **kw: calls.append(f"run {kw['host']}:{kw['port']}"))
    serve("memory", port=4799)
    assert calls == ["tune", "run 127.0.0.1:4799"]


def test_create_app_refuses_nonsense_limits(store: SpanStore) -> None:
    with pytest.raises(ValueError, match="max_body_bytes 0"):
        create_app(store, max_body_bytes=0)
    with pytest.raises(ValueError, match="rate -1"):
        create_app(store, rate_limit_per_s=-1)
    with pytest.raises(ValueError, match="token is empty"):
        create_app(store, token="")


# --- reads ----------------------------------------------------------------------------------------------


def test_span_queries_filter_by_attempt_latest_and_name_and_page(url: str, store: SpanStore) -> None:
    store.add_many_spans([make_span(0, attempt="a1"), make_span(1, attempt="a1", name="reward")])
    store.add_many_spans([make_span(2, attempt="a2"), make_span(3, attempt="a2", name="reward")])

    def ids(**params: Any) -> list[int]:
        spans = httpx.get(f"{url}/v1/rollouts/r1/spans", params=params).json()["spans"]
        return [s["sequence_id"] for s in spans]

    assert ids() == [0, 1, 2, 3]
    assert ids(attempt_id="a1") == [0, 1]
    assert ids(attempt_id="latest") == [2, 3]
    assert ids(name="reward") == [1, 3]
    assert ids(limit=2, offset=1) == [1, 2]
    assert ids(attempt_id="nobody") == []
    assert httpx.get(f"{url}/v1/rollouts/unknown/spans").json() == {"spans": []}
    assert httpx.get(f"{url}/v1/rollouts/r1/next_sequence_id", params={"attempt_id": "a2"}).json() == {"next": 4}
    rollouts = httpx.get(f"{url}/v1/rollouts", params={"limit": 1}).json()
    assert rollouts == [s.to_dict() for s in store.list_rollouts()]


def test_a_negative_or_non_numeric_page_parameter_is_a_400_naming_it(url: str) -> None:
    response = httpx.get(f"{url}/v1/rollouts/r1/spans", params={"offset": -1})
    assert response.status_code == 400 and response.json()["error"].startswith("query.offset")
    assert httpx.get(f"{url}/v1/rollouts", params={"limit": "many"}).json()["error"].startswith("query.limit")


@pytest.mark.parametrize("param", ["limit", "offset"])
def test_a_page_parameter_beyond_int64_is_a_400_naming_it(url: str, param: str) -> None:
    assert httpx.get(f"{url}/v1/rollouts/r1/spans", params={param: 2**63 - 1}).status_code == 200
    for path in ("/v1/rollouts", "/v1/rollouts/r1/spans"):
        response = httpx.get(f"{url}{path}", params={param: 2**63})
        assert response.status_code == 400 and response.json()["error"].startswith(f"query.{param}")


def test_healthz_and_the_openapi_document_list_every_route(url: str) -> None:
    assert httpx.get(f"{url}/healthz").json() == {"status": "ok"}
    paths = httpx.get(f"{url}/openapi.json").json()["paths"]
    assert set(paths) == {
        "/v1/spans",
        "/v1/traces",
        "/v1/rollouts",
        "/v1/rollouts/{rollout_id}/spans",
        "/v1/rollouts/{rollout_id}/next_sequence_id",
        "/v1/stats",
        "/healthz",
    }
    assert "application/x-protobuf" in paths["/v1/traces"]["post"]["requestBody"]["content"]


def test_the_openapi_document_describes_otlp_errors_as_google_rpc_status_and_lists_415(url: str) -> None:
    document = httpx.get(f"{url}/openapi.json").json()
    otlp, spans = document["paths"]["/v1/traces"]["post"], document["paths"]["/v1/spans"]["post"]
    assert {"400", "401", "413", "415", "429", "500"} <= set(otlp["responses"]) & set(spans["responses"])
    status_ref = otlp["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
    schema = document["components"]["schemas"][status_ref.rsplit("/", 1)[-1]]
    assert set(schema["properties"]) == {"code", "message"}
    error_ref = spans["responses"]["400"]["content"]["application/json"]["schema"]["$ref"]
    assert set(document["components"]["schemas"][error_ref.rsplit("/", 1)[-1]]["properties"]) == {"error"}


# --- /v1/traces (OTLP/HTTP) -------------------------------------------------------------------------------


def test_the_official_otlp_exporter_delivers_spans_queryable_with_ids_parents_and_attributes(
    serve_app: Serve, store: SpanStore
) -> None:
    url = serve_app(token=TOKEN).url
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", headers=AUTH, compression=Compression.Gzip)
    provider = TracerProvider(resource=Resource({"service.name": "agent", "worker": 3}))
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("test")
    identity = {semconv.ROLLOUT_ID: "ro-otlp", semconv.ATTEMPT_ID: "at-1"}
    child_attributes: dict[str, AttributeValue] = {**identity, "tags": ("a", "b"), "n": 7}
    with (
        tracer.start_as_current_span("root", attributes=identity) as root,
        tracer.start_as_current_span("child", attributes=child_attributes) as child,
    ):
        child.add_event("exception", {"exception.type": "ValueError"})
    provider.shutdown()

    spans = {s.name: s for s in store.query_spans("ro-otlp")}
    assert set(spans) == {"root", "child"}
    root_ctx, child_ctx = root.get_span_context(), child.get_span_context()
    assert spans["root"].span_id == format(root_ctx.span_id, "016x") and spans["root"].parent_id is None
    assert spans["child"].trace_id == format(child_ctx.trace_id, "032x")
    assert spans["child"].parent_id == spans["root"].span_id
    assert spans["child"].attributes["tags"] == ("a", "b") and spans["child"].attributes["n"] == 7
    assert spans["child"].events[0].attributes == {"exception.type": "ValueError"}
    assert spans["child"].attempt_id == "at-1" and spans["root"].resource == {"service.name": "agent", "worker": 3}
    # SimpleSpanProcessor sends the child first: ids follow arrival within the attempt.
    assert (spans["child"].sequence_id, spans["root"].sequence_id) == (0, 1)
    via_get = httpx.get(f"{url}/v1/rollouts/ro-otlp/spans", headers=AUTH).json()["spans"]
    assert {s["span_id"] for s in via_get} == {spans["root"].span_id, spans["child"].span_id}


def test_otlp_json_with_hex_ids_is_accepted_and_answered_in_json(url: str, store: SpanStore) -> None:
    body = {
        "resourceSpans": [
            {
                "resource": {"attributes": [{"key": semconv.ROLLOUT_ID, "value": {"stringValue": "ro-json"}}]},
                "scopeSpans": [
                    {
                        "spans": [
                            {
                                "traceId": TRACE,
                                "spanId": "eee19b7ec3c1b174",
                                "parentSpanId": "eee19b7ec3c1b173",
                                "name": "json-span",
                                "startTimeUnixNano": "1544712660000000000",
                                "endTimeUnixNano": "1544712661000000000",
                                "kind": 2,
                                "attributes": [
                                    {
                                        "key": "kv",
                                        "value": {
                                            "kvlistValue": {"values": [{"key": "a", "value": {"intValue": "1"}}]}
                                        },
                                    },
                                    {"key": "raw", "value": {"bytesValue": "AAE="}},
                                    {
                                        "key": "mixed",
                                        "value": {"arrayValue": {"values": [{"intValue": "1"}, {"arrayValue": {}}]}},
                                    },
                                ],
                                "status": {"code": 2, "message": "bad"},
                            }
                        ]
                    }
                ],
            }
        ]
    }
    response = httpx.post(f"{url}/v1/traces", content=orjson.dumps(body), headers=JSON_HEADERS)
    assert response.status_code == 200 and response.headers["content-type"] == "application/json"
    assert response.json() == {}
    [span] = store.query_spans("ro-json")
    assert (span.trace_id, span.span_id, span.parent_id) == (TRACE, "eee19b7ec3c1b174", "eee19b7ec3c1b173")
    assert (span.start_time, span.status, span.status_description) == (1544712660000000000, "ERROR", "bad")
    assert span.attributes == {"kv": '{"a":1}', "raw": "AAE=", "mixed": "[1,[]]"}
    assert span.attempt_id == "" and span.sequence_id == 0


def test_spans_without_a_rollout_id_are_reported_rejected_in_partial_success_and_the_rest_stored(
    url: str, store: SpanStore
) -> None:
    good = make_span(0, rollout="ro-p")
    request = spans_to_otlp([good, make_span(1, rollout="")])  # rollout "" is an empty attribute
    orphan = request.resource_spans[0].scope_spans[0].spans.add()
    orphan.trace_id, orphan.span_id, orphan.name = bytes.fromhex(TRACE), bytes.fromhex("ab" * 8), "orphan"
    response = httpx.post(
        f"{url}/v1/traces", content=request.SerializeToString(), headers={"Content-Type": "application/x-protobuf"}
    )
    assert response.status_code == 200 and response.headers["content-type"] == "application/x-protobuf"
    reply = ExportTraceServiceResponse.FromString(response.content)
    assert reply.partial_success.rejected_spans == 2
    assert "abababababababab ('orphan') has no agentlightning.rollout_id" in reply.partial_success.error_message
    assert [s.span_id for s in store.query_spans("ro-p")] == [good.span_id]
    assert httpx.get(f"{url}/v1/stats").json()["spans_rejected"] == {"no_rollout_id": 2}


def test_an_otlp_span_with_an_over_long_key_is_rejected_in_partial_success_and_the_rest_stored(
    url: str, store: SpanStore
) -> None:
    long_rollout = "r" * 600
    request = spans_to_otlp([make_span(0, rollout="ro-k"), make_span(1, rollout=long_rollout)])
    response = httpx.post(
        f"{url}/v1/traces", content=request.SerializeToString(), headers={"Content-Type": "application/x-protobuf"}
    )
    assert response.status_code == 200
    reply = ExportTraceServiceResponse.FromString(response.content)
    assert reply.partial_success.rejected_spans == 1
    assert "rollout_id is 600 characters long" in reply.partial_success.error_message
    assert [s.rollout_id for s in store.list_rollouts()] == ["ro-k"]
    assert httpx.get(f"{url}/v1/stats").json()["spans_rejected"] == {"invalid_span": 1}


@pytest.mark.parametrize("text", ["\u00b2", "\u0663", "9" * 5000])
def test_an_otlp_sequence_id_that_is_not_ascii_digits_gets_one_assigned(url: str, store: SpanStore, text: str) -> None:
    request = spans_to_otlp([make_span(0, rollout="ro-d", attributes={semconv.SPAN_SEQUENCE_ID: text})])
    response = httpx.post(
        f"{url}/v1/traces", content=request.SerializeToString(), headers={"Content-Type": "application/x-protobuf"}
    )
    assert response.status_code == 200, response.text
    assert [s.sequence_id for s in store.query_spans("ro-d")] == [0]


def test_otlp_spans_keep_their_sequence_ids_and_new_ones_continue_after_the_highest(url: str, store: SpanStore) -> None:
    store.add_span(make_span(4, rollout="ro-s"))
    explicit = make_span(9, rollout="ro-s")  # spans_to_otlp writes agentlightning.span_sequence_id = 9
    request = spans_to_otlp([explicit])
    bare = request.resource_spans[0].scope_spans[0].spans.add()
    bare.CopyFrom(request.resource_spans[0].scope_spans[0].spans[0])
    bare.span_id = bytes.fromhex("cd" * 8)
    del bare.attributes[-1]  # drop the sequence id attribute
    assert semconv.SPAN_SEQUENCE_ID not in [kv.key for kv in bare.attributes]
    body = gzip.compress(request.SerializeToString())
    headers = {"Content-Type": "application/x-protobuf", "Content-Encoding": "gzip"}
    assert httpx.post(f"{url}/v1/traces", content=body, headers=headers).status_code == 200
    assert {s.span_id: s.sequence_id for s in store.query_spans("ro-s")} == {
        make_span(4).span_id: 4,
        explicit.span_id: 9,
        "cd" * 8: 10,
    }


def test_otlp_spans_of_an_attempt_that_used_the_last_sequence_id_are_rejected_by_name(
    url: str, store: SpanStore
) -> None:
    last = dataclasses.replace(make_span(0, rollout="ro-max"), sequence_id=2**63 - 1)  # carried as an attribute
    request = spans_to_otlp([last, make_span(0, rollout="ro-other")])
    bare = request.resource_spans[0].scope_spans[0].spans.add()
    bare.CopyFrom(request.resource_spans[0].scope_spans[0].spans[0])
    bare.span_id = bytes.fromhex("cd" * 8)
    del bare.attributes[-1]  # no sequence id: the server must assign one, and none is left
    response = httpx.post(
        f"{url}/v1/traces", content=request.SerializeToString(), headers={"Content-Type": "application/x-protobuf"}
    )
    assert response.status_code == 200, response.text
    reply = ExportTraceServiceResponse.FromString(response.content)
    assert reply.partial_success.rejected_spans == 1
    assert "cdcdcdcdcdcdcdcd ('step'): attempt 'a1' of rollout 'ro-max' has no sequence id left" in (
        reply.partial_success.error_message
    )
    assert [s.sequence_id for s in store.query_spans("ro-max")] == [2**63 - 1]
    assert len(store.query_spans("ro-other")) == 1
    with HttpStore(url) as client:
        assert client.get_next_span_sequence_id("ro-max", "a1") == 2**63


def test_our_own_spans_survive_the_otlp_round_trip(url: str, store: SpanStore) -> None:
    original = make_span(3, rollout="ro-rt", attributes={"t": (1, 2), "x": 1.5}, resource={"service.name": "s"})
    request = spans_to_otlp([original])
    response = httpx.post(
        f"{url}/v1/traces", content=request.SerializeToString(), headers={"Content-Type": "application/x-protobuf"}
    )
    assert response.status_code == 200
    [got] = store.query_spans("ro-rt")
    identity = {semconv.ROLLOUT_ID: "ro-rt", semconv.ATTEMPT_ID: "a1", semconv.SPAN_SEQUENCE_ID: 3}
    assert got.attributes == {**original.attributes, **identity}
    assert (got.trace_id, got.span_id, got.parent_id, got.start_time, got.end_time, got.sequence_id) == (
        original.trace_id,
        original.span_id,
        original.parent_id,
        original.start_time,
        original.end_time,
        original.sequence_id,
    )
    assert got.resource == original.resource


def test_otlp_refuses_an_unknown_media_type_and_a_corrupt_body_with_a_status_message(url: str) -> None:
    assert httpx.post(f"{url}/v1/traces", content=b"x", headers={"Content-Type": "text/plain"}).status_code == 415
    corrupt = httpx.post(f"{url}/v1/traces", content=b"\xff\xff", headers={"Content-Type": "application/x-protobuf"})
    assert corrupt.status_code == 400
    assert b"not an OTLP ExportTraceServiceRequest" in corrupt.content  # a google.rpc.Status message
    bad_json = httpx.post(f"{url}/v1/traces", content=b'{"resourceSpans": 5}', headers=JSON_HEADERS)
    assert bad_json.status_code == 400 and "not OTLP JSON" in bad_json.json()["message"]


@pytest.mark.parametrize("depth", [990, 1020])
def test_deeply_nested_otlp_json_is_a_400(url: str, depth: int) -> None:
    body = '{"resourceSpans": ' + "[" * depth + "]" * depth + "}"
    response = httpx.post(f"{url}/v1/traces", content=body, headers=JSON_HEADERS)
    assert response.status_code == 400 and "not OTLP JSON" in response.json()["message"]


def test_the_otlp_exporter_is_refused_without_the_token_and_nothing_is_stored(
    serve_app: Serve, store: SpanStore
) -> None:
    url = serve_app(token=TOKEN).url
    exporter = OTLPSpanExporter(endpoint=f"{url}/v1/traces", timeout=5)
    span = make_span(0, rollout="ro").to_readable_span()
    assert exporter.export([span]) == SpanExportResult.FAILURE
    assert store.query_spans("ro") == []
    assert httpx.get(f"{url}/v1/stats", headers=AUTH).json()["requests_rejected"] == {"unauthorized": 1}
