"""OtlpHttpSink against a real OTLP receiver on loopback, and the OTLP encoding itself."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
from opentelemetry.exporter.otlp.proto.http import Compression
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
from opentelemetry.sdk.trace.export import SpanExportResult

from _otlp_receiver import OtlpReceiver, attributes
from _pipeline_child import rollout
from _ports import closed_port_url
from agentemit import emit_message, semconv
from agentemit.pipeline.config import PipelineConfig
from agentemit.pipeline.otlp import OtlpHttpSink, parse_retry_after, spans_to_otlp, spans_to_otlp_via_sdk
from agentemit.pipeline.otlp_wire import encode_request
from agentemit.pipeline.pipeline import Pipeline
from agentemit.pipeline.stats import unaccounted
from agentemit.span import Attributes, Span, SpanEvent

TRACE = "0af7651916cd43dd8448eb211c80319c"


def make_span(i: int, *, resource: Attributes | None = None) -> Span:
    return Span(
        trace_id=TRACE,
        span_id=f"{i + 1:016x}",
        parent_id=None if i == 0 else f"{1:016x}",
        name=semconv.SPAN_MESSAGE if i % 2 else semconv.SPAN_REWARD,
        start_time=1_700_000_000_000_000_000 + i,
        end_time=1_700_000_000_000_500_000 + i,
        rollout_id="rollout-7",
        attempt_id="attempt-2",
        sequence_id=i,
        attributes={
            "text": f"span {i} ✓",
            "count": i,
            "ratio": i / 4,
            "flag": i % 3 == 0,
            "tags": ("a", "b"),
            "numbers": (1, 2, 3),
        },
        status="ERROR" if i % 5 == 0 else "OK",
        status_description="boom" if i % 5 == 0 else None,
        events=[SpanEvent("exception", 1_700_000_000_000_100_000, {"exception.type": "ValueError"})]
        if i % 4 == 0
        else [],
        resource=resource if resource is not None else {"service.name": "agent", "worker": 3},
    )


def make_spans(n: int) -> list[Span]:
    return [make_span(i) for i in range(n)]


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


# --- encoding ----------------------------------------------------------------------------------


def test_direct_encoding_is_identical_to_the_sdk_encoding_of_readable_spans() -> None:
    spans = [*make_spans(12), make_span(20, resource={"service.name": "other"}), make_span(21, resource={})]
    spans[3].attributes[semconv.ROLLOUT_ID] = "explicit-rollout"  # an explicit identity attribute wins
    direct = spans_to_otlp(spans)
    reference = spans_to_otlp_via_sdk(spans)
    assert direct == reference
    assert direct.SerializeToString(deterministic=True) == reference.SerializeToString(deterministic=True)
    assert len(direct.resource_spans) == 3


def _unusual_spans() -> list[Span]:
    """Values at the edges of proto3's encoding: defaults it leaves out, oneof members it keeps."""
    first = make_span(0, resource={})
    first.name = ""  # a default: no name field at all
    first.start_time = 0  # likewise
    first.attributes = {
        "negative": -5,  # a 10-byte varint
        "most": 2**63 - 1,
        "least": -(2**63),
        "false": False,  # a oneof member keeps its default
        "empty": "",
        "": "an empty key",  # the key field is left out
        "none_here": (),  # an empty array is still an array
        "mixed": (1, -2, 3),
        "floats": (1.5, -0.0, float("inf")),
        "long": "x" * 300,  # a two-byte length
        "unicode": "ünï 🙂",
    }
    first.events = [SpanEvent("", 0), SpanEvent("e", 7, {"n": 1, "s": "t"})]
    second = make_span(1, resource={"service.name": "other", "host.cores": 8, "tags": ("x", "y")})
    second.status, second.status_description = "OK", "kept only on errors"
    return [first, second, make_span(2), make_span(5)]


def test_the_wire_encoder_writes_the_bytes_the_sdk_does() -> None:
    # encode_request writes protobuf by hand; byte equality with the SDK's own encoding (of the same
    # spans as ReadableSpans, deterministic field order) checks every tag, length and default rule.
    for spans in (make_spans(30), _unusual_spans()):
        expected = spans_to_otlp_via_sdk(spans).SerializeToString(deterministic=True)
        assert encode_request(spans) == expected
        assert spans_to_otlp(spans).SerializeToString(deterministic=True) == expected


def test_the_wire_encoder_refuses_what_otlp_cannot_carry_and_names_the_span() -> None:
    before = make_span(3)
    before.start_time = -1
    with pytest.raises(ValueError, match=r"'0000000000000004'.*start_time -1"):
        encode_request([before])
    surrogate = make_span(4)
    surrogate.attributes["bad"] = "lone \ud800"
    with pytest.raises(ValueError, match="surrogate"):
        encode_request([surrogate])


def test_direct_encoding_keeps_integers_beyond_64_bits_as_strings() -> None:
    span = make_span(1)
    span.attributes["huge"] = 2**70
    encoded = spans_to_otlp([span]).resource_spans[0].scope_spans[0].spans[0]
    assert attributes(encoded)["huge"] == str(2**70)


def test_direct_encoding_refuses_a_span_whose_id_is_not_hex_and_names_it() -> None:
    span = make_span(1)
    span.span_id = "not-hex-at-all!!"
    with pytest.raises(ValueError, match="not-hex-at-all"):
        spans_to_otlp([span])


# --- delivery ----------------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["gzip", "none"])
def test_delivers_every_span_once_with_ids_attributes_and_rollout_identity(
    receiver: OtlpReceiver, compression: str
) -> None:
    spans = make_spans(300)
    sink = OtlpHttpSink(receiver.url, compression=compression)  # type: ignore[arg-type]
    try:
        first = sink.export(spans[:150])
        second = sink.export(spans[150:])
    finally:
        sink.shutdown(1.0)
    assert first.ok and second.ok and first.stored == 150 and second.stored == 150
    assert sorted(receiver.span_ids) == sorted(s.span_id for s in spans)
    assert [r.headers.get("content-encoding") for r in receiver.requests] == (
        ["gzip", "gzip"] if compression == "gzip" else [None, None]
    )
    by_id = {s.span_id: s for s in spans}
    for pb, resource in zip(receiver.spans, receiver.resources, strict=True):
        original = by_id[pb.span_id.hex()]
        attrs = attributes(pb)
        assert attrs[semconv.ROLLOUT_ID] == "rollout-7"
        assert attrs[semconv.ATTEMPT_ID] == "attempt-2"
        assert attrs[semconv.SPAN_SEQUENCE_ID] == original.sequence_id
        assert {k: attrs[k] for k in original.attributes} == original.attributes
        assert pb.trace_id.hex() == TRACE and pb.name == original.name
        assert (pb.parent_span_id.hex() or None) == original.parent_id
        assert (pb.start_time_unix_nano, pb.end_time_unix_nano) == (original.start_time, original.end_time)
        assert [e.name for e in pb.events] == [e.name for e in original.events]
        assert resource == {"service.name": "agent", "worker": 3}


def test_sends_configured_headers_and_protobuf_content_type(receiver: OtlpReceiver) -> None:
    sink = OtlpHttpSink(receiver.url, headers={"Authorization": "Bearer t0k"})
    assert sink.export(make_spans(2)).ok
    sink.shutdown(1.0)
    (request,) = receiver.requests
    assert request.headers["authorization"] == "Bearer t0k"
    assert request.headers["content-type"] == "application/x-protobuf"
    assert request.path == "/v1/traces"


def test_empty_batch_succeeds_without_a_request(receiver: OtlpReceiver) -> None:
    sink = OtlpHttpSink(receiver.url)
    assert sink.export([]).ok
    sink.shutdown(1.0)
    assert receiver.requests == []


def test_records_the_response_time_of_each_export(receiver: OtlpReceiver) -> None:
    ticks = iter([10.0, 10.25])
    sink = OtlpHttpSink(receiver.url, clock=lambda: next(ticks))
    assert sink.last_response_time is None
    assert sink.export(make_spans(1)).ok
    sink.shutdown(1.0)
    assert sink.last_response_time == pytest.approx(0.25)


# --- status mapping ----------------------------------------------------------------------------


@pytest.mark.parametrize("status", [429, 502, 503, 504])
def test_throttling_and_gateway_statuses_are_retryable_with_retry_after(receiver: OtlpReceiver, status: int) -> None:
    receiver.fail_next(1, status, retry_after="7")
    sink = OtlpHttpSink(receiver.url)
    result = sink.export(make_spans(3))
    sink.shutdown(1.0)
    assert not result.ok and result.retryable and result.retry_after == 7.0
    assert str(status) in (result.error or "") and receiver.url in (result.error or "")
    assert receiver.span_count == 0


@pytest.mark.parametrize("status", [400, 413, 422])
def test_a_refusal_of_the_content_is_not_retryable(receiver: OtlpReceiver, status: int) -> None:
    receiver.fail_next(1, status)
    sink = OtlpHttpSink(receiver.url)
    result = sink.export(make_spans(3))
    sink.shutdown(1.0)
    assert not result.ok and not result.retryable and f"HTTP {status}" in (result.error or "")
    assert result.too_large is (status == 413)


@pytest.mark.parametrize("status", [401, 403, 404, 415, 500, 501])
def test_a_failure_that_says_nothing_about_the_spans_is_retryable(receiver: OtlpReceiver, status: int) -> None:
    """A wrong token or URL, or a broken collector: the spans are fine, so they are kept and retried
    (splitting the batch would drop every one of them as invalid)."""
    receiver.fail_next(1, status)
    sink = OtlpHttpSink(receiver.url)
    result = sink.export(make_spans(3))
    sink.shutdown(1.0)
    assert not result.ok and result.retryable and f"HTTP {status}" in (result.error or "")


def test_partial_success_is_ok_but_reports_the_rejected_spans(receiver: OtlpReceiver) -> None:
    receiver.reject_next_spans(2)
    sink = OtlpHttpSink(receiver.url)
    result = sink.export(make_spans(5))
    sink.shutdown(1.0)
    assert result.ok and result.stored == 3 and "rejected 2 of 5" in (result.error or "")


def test_connection_refused_is_a_retryable_failure_not_an_exception() -> None:
    url = closed_port_url("/v1/traces")
    sink = OtlpHttpSink(url, timeout=2.0)
    result = sink.export(make_spans(2))
    sink.shutdown(1.0)
    assert not result.ok and result.retryable and "ConnectError" in (result.error or "")
    assert sink.last_response_time is not None


def test_read_timeout_is_a_retryable_failure(receiver: OtlpReceiver) -> None:
    receiver.delay(1.0)
    sink = OtlpHttpSink(receiver.url, timeout=0.1)
    result = sink.export(make_spans(2))
    sink.shutdown(1.0)
    assert not result.ok and result.retryable and "Timeout" in (result.error or "")


def test_unencodable_batch_is_a_non_retryable_failure_naming_the_span(receiver: OtlpReceiver) -> None:
    span = make_span(1)
    span.trace_id = "abc"
    sink = OtlpHttpSink(receiver.url)
    result = sink.export([span])
    sink.shutdown(1.0)
    assert not result.ok and not result.retryable and span.span_id in (result.error or "")


def test_parse_retry_after_reads_seconds_and_http_dates() -> None:
    now = datetime(2025, 1, 1, 12, 0, 0, tzinfo=timezone.utc).timestamp()
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(" 1.5 ") == 1.5
    assert parse_retry_after("Wed, 01 Jan 2025 12:00:30 GMT", now=now) == 30.0
    assert parse_retry_after("Wed, 01 Jan 2025 11:00:00 GMT", now=now) == 0.0
    assert parse_retry_after("-4") == 0.0
    assert parse_retry_after("soon") is None
    assert parse_retry_after(None) is None


# --- lifecycle and configuration ---------------------------------------------------------------


def test_after_shutdown_exports_fail_without_retry_and_a_shared_client_stays_open(receiver: OtlpReceiver) -> None:
    with httpx.Client() as client:
        sink = OtlpHttpSink(receiver.url, client=client)
        assert sink.force_flush(1.0)
        sink.shutdown(1.0)
        result = sink.export(make_spans(1))
        assert not result.ok and not result.retryable and "shut down" in (result.error or "")
        assert not client.is_closed
    assert receiver.requests == []


def test_rejects_a_non_http_endpoint_and_an_unknown_compression() -> None:
    with pytest.raises(ValueError, match="localhost:4318"):
        OtlpHttpSink("localhost:4318/v1/traces")
    with pytest.raises(ValueError, match="zstd"):
        OtlpHttpSink("http://127.0.0.1:4318/v1/traces", compression="zstd")  # type: ignore[arg-type]


# --- receiver sanity ---------------------------------------------------------------------------


@pytest.mark.parametrize("compression", [Compression.NoCompression, Compression.Gzip])
def test_official_otlp_exporter_delivers_to_the_test_receiver(receiver: OtlpReceiver, compression: Compression) -> None:
    spans = make_spans(10)
    exporter = OTLPSpanExporter(endpoint=receiver.url, compression=compression, timeout=5)
    try:
        assert exporter.export([s.to_readable_span() for s in spans]) == SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()  # type: ignore[no-untyped-call]
    assert sorted(receiver.span_ids) == sorted(s.span_id for s in spans)
    assert {attributes(pb)[semconv.ROLLOUT_ID] for pb in receiver.spans} == {"rollout-7"}


def test_spans_a_collector_rejects_in_an_accepted_batch_are_counted_invalid_not_exported(
    receiver: OtlpReceiver, tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    receiver.reject_next_spans(2)
    config = PipelineConfig(spool_dir=tmp_path / "spool", adaptive_sampling=False, redact=False)
    p = Pipeline(OtlpHttpSink(receiver.url), config, start=False)
    pipelines.append(p)
    with rollout(p, "r"):
        for i in range(5):
            emit_message(f"m{i}")
    assert p.force_flush(5.0).completed
    snap = p.stats_snapshot()
    assert snap["exported"] == 3 and snap["dropped"] == {"invalid": 2}
    assert unaccounted(snap) == 0
