"""The pipeline's stages end to end: priority lanes, the memory bound, overflow policies, the batching
worker, flush and shutdown deadlines, export re-entry, and sinks that fail, recover or refuse a span.

Most tests drive the worker by hand (``Pipeline(start=False)`` + ``run_once``/``force_flush``); those
that need the real worker wait on Events, never on sleeps. A blocking sink waits on an Event that the
test releases (and that a bounded ``wait`` releases anyway), so no test can hang.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace as otel_trace

from _pipeline_child import FakeClock, RecordingSink, StoreBackedSink, rollout
from agentemit import emit_exception, emit_message, emit_object, emit_reward, semconv
from agentemit.pipeline.config import PipelineConfig
from agentemit.pipeline.pipeline import FlushReport, Pipeline
from agentemit.pipeline.sink import StoreSink
from agentemit.pipeline.stats import unaccounted
from agentemit.span import Span
from agentemit.stores.sqlite import SqliteStore
from agentemit.tracing.otel import OtelTracer

MB = 1024 * 1024


@pytest.fixture
def gate() -> Iterator[threading.Event]:
    """An Event a blocking sink waits on; always released at the end of the test."""
    event = threading.Event()
    yield event
    event.set()


def make(made: list[Pipeline], sink: Any, tmp_path: Path, *, start: bool = False, **settings: Any) -> Pipeline:
    settings.setdefault("adaptive_sampling", False)
    settings.setdefault("redact", False)
    clock = settings.pop("clock", None)
    stages = settings.pop("stages", ())
    config = PipelineConfig(spool_dir=tmp_path / "spool", **settings)
    kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
    p = Pipeline(sink, config, start=start, stages=stages, **kwargs)
    made.append(p)
    return p


def emit_messages(p: Pipeline, n: int, prefix: str = "m", rollout_id: str = "r") -> None:
    with rollout(p, rollout_id):
        for i in range(n):
            emit_message(f"{prefix}{i}")


# --- priority lanes and the memory bound ---------------------------------------------------------


def test_with_the_worker_stopped_rewards_and_exceptions_are_drained_first(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, batch_size=4, max_export_batch=4)
    with rollout(p, "r"):
        for i in range(5):
            emit_message(f"m{i}")
        emit_object({"o": 1})
        emit_reward(1.0)
        emit_message("m5")
        emit_exception(RuntimeError("x"))
        emit_reward(2.0)
    assert p.run_once() == 10
    names = [s.name for s in sink.spans]
    assert names[:3] == [semconv.SPAN_REWARD, semconv.SPAN_EXCEPTION, semconv.SPAN_REWARD]
    assert sink.batch_sizes == [4, 4, 2]
    assert sink.bodies() == [f"m{i}" for i in range(6)]  # bulk kinds keep their order


def test_a_backlog_is_exported_in_batches_of_up_to_max_export_batch(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, batch_size=4, max_export_batch=6)
    emit_messages(p, 15)
    assert p.run_once(flush_all=False) == 12  # 15 waiting: 6, then 6 more (9 >= batch_size); 3 wait
    assert sink.batch_sizes == [6, 6]
    assert p.run_once() == 3 and sink.batch_sizes == [6, 6, 3]
    assert sink.bodies() == [f"m{i}" for i in range(15)]


def test_a_flood_of_bulk_events_leaves_room_for_rewards(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, max_queue_size=10, overflow="drop_newest")
    emit_messages(p, 20)
    with rollout(p, "r"):
        emit_reward(1.0)
        emit_reward(2.0)
    assert p.force_flush(5.0).completed
    assert len([s for s in sink.spans if s.name == semconv.SPAN_REWARD]) == 2
    assert sink.bodies() == [f"m{i}" for i in range(8)]  # bulk kinds get 80% of the queue
    assert p.stats_snapshot()["dropped"] == {"dropped_queue_full": 12}


def test_the_queue_never_holds_more_than_memory_threshold_of_estimated_bytes(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    p = make(pipelines, RecordingSink(), tmp_path, memory_threshold=MB, overflow="drop_newest")
    with rollout(p, "big"):
        for _ in range(50):
            emit_message("x" * 100_000)
    queued_bytes = len(p.lanes) * 100_000
    assert queued_bytes <= 1.25 * MB
    assert p.stats_snapshot()["queue_bytes"] >= queued_bytes


# --- overflow policies ---------------------------------------------------------------------------


def test_drop_newest_keeps_what_was_queued_and_counts_the_rest(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, max_queue_size=10, overflow="drop_newest")
    emit_messages(p, 12)
    assert p.force_flush(5.0).completed
    assert sink.bodies() == [f"m{i}" for i in range(8)]
    assert p.stats_snapshot()["dropped"] == {"dropped_queue_full": 4}


def test_drop_oldest_keeps_the_newest_events(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, max_queue_size=10, overflow="drop_oldest")
    emit_messages(p, 12)
    assert p.force_flush(5.0).completed
    assert sink.bodies() == [f"m{i}" for i in range(4, 12)]
    snap = p.stats_snapshot()
    assert snap["dropped"] == {"dropped_queue_full": 4} and unaccounted(snap) == 0


def test_block_gives_up_after_block_timeout_when_nothing_drains(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, max_queue_size=10, overflow="block", block_timeout=0.05)
    emit_messages(p, 9)
    assert p.stats_snapshot()["dropped"] == {"dropped_queue_full": 1}
    assert p.force_flush(5.0).completed
    assert len(sink.spans) == 8


def test_block_waits_for_room_instead_of_dropping(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, max_queue_size=10, overflow="block", block_timeout=20.0)
    emit_messages(p, 8)  # the bulk share of the queue is full
    emitter = threading.Thread(target=emit_messages, args=(p, 1, "late"))
    emitter.start()
    p.run_once()  # makes room, whether the emitter is already waiting or not
    emitter.join(20.0)
    assert not emitter.is_alive()
    assert p.force_flush(5.0).completed
    assert sorted(sink.bodies()) == sorted([f"m{i}" for i in range(8)] + ["late0"])
    assert p.stats_snapshot()["dropped"] == {}


def test_spill_writes_the_overflow_to_disk_off_the_emitting_thread_and_replays_it(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, max_queue_size=10)  # overflow="spill" is the default
    emit_messages(p, 50)
    with rollout(p, "r"):
        emit_reward(1.0)
    assert not (tmp_path / "spool").exists()  # the emitting thread did no I/O: the spill thread will
    assert p.stats_snapshot()["pending"] == 51
    report = p.force_flush(5.0)
    assert report.completed and report.delivered == 51
    assert sorted(sink.bodies()) == sorted(f"m{i}" for i in range(50))
    assert sink.deliveries and set(sink.deliveries.values()) == {1}
    snap = p.stats_snapshot()
    assert snap["spilled"] == snap["replayed"] == 42
    assert snap["exported"] == 51 and snap["in_spool"] == 0 and unaccounted(snap) == 0


def test_overflow_policies_apply_per_kind(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, max_queue_size=10, kind_overflow={"object": "drop_newest"})
    emit_messages(p, 8)
    with rollout(p, "r"):
        for i in range(3):
            emit_object({"i": i})
            emit_message(f"spilled{i}")
    assert p.force_flush(5.0).completed
    assert len(sink.bodies()) == 11
    assert not [s for s in sink.spans if s.name == semconv.SPAN_OBJECT]
    assert p.stats_snapshot()["dropped"] == {"dropped_queue_full": 3}


# --- the batching worker -------------------------------------------------------------------------


def test_a_worker_pass_exports_only_full_batches_unless_told_to_flush(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, batch_size=10, max_export_batch=10)
    emit_messages(p, 9)
    assert p.run_once(flush_all=False) == 0
    emit_messages(p, 12, prefix="n")
    assert p.run_once(flush_all=False) == 20
    assert sink.batch_sizes == [10, 10]
    assert p.run_once(flush_all=True) == 1


def test_the_worker_exports_a_full_batch_without_waiting_for_the_interval(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    sink = RecordingSink()
    sink.notify_at = 10
    make(pipelines, sink, tmp_path, start=True, batch_size=10, flush_interval=60.0)
    emit_messages(pipelines[0], 10)
    assert sink.delivered_event.wait(10.0)
    assert sink.batch_sizes == [10]


def test_the_worker_flushes_a_partial_batch_when_the_interval_passes(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    sink = RecordingSink()
    sink.notify_at = 3
    make(pipelines, sink, tmp_path, start=True, batch_size=100, flush_interval=0.05)
    emit_messages(pipelines[0], 3)
    assert sink.delivered_event.wait(10.0)  # nobody called force_flush
    assert sink.bodies() == ["m0", "m1", "m2"]


# --- flush and shutdown deadlines -----------------------------------------------------------------


def test_force_flush_honours_its_deadline_against_a_sink_that_blocks(
    tmp_path: Path, pipelines: list[Pipeline], gate: threading.Event
) -> None:
    sink = RecordingSink(gate=gate)
    p = make(pipelines, sink, tmp_path, start=True, flush_interval=60.0)
    emit_messages(p, 5)
    started = time.monotonic()
    report = p.force_flush(0.2)
    assert time.monotonic() - started < 1.5  # generous: this is about the deadline, not speed
    assert not report.completed and not report
    assert report.pending == 5 and report.delivered == 0
    gate.set()
    final = p.force_flush(10.0)
    assert final.completed and final.delivered == 5


def test_a_flush_report_says_what_was_delivered_what_is_left_and_why_events_were_dropped(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    sink = RecordingSink(script=["fail"])
    p = make(pipelines, sink, tmp_path, max_queue_size=10, kind_overflow={"message": "drop_newest"})
    emit_messages(p, 10)  # 8 fit, 2 dropped; the first export fails, so the 8 are spooled
    report = p.force_flush(5.0)
    assert isinstance(report, FlushReport)
    assert report.completed and report.pending == 0
    assert report.delivered + report.in_spool == 8
    assert report.dropped == {"dropped_queue_full": 2}
    assert report.elapsed >= 0.0
    assert p.force_flush(5.0, drain_spool=True).in_spool == 0


def test_shutdown_returns_in_bounded_time_and_keeps_what_it_could_not_send_on_disk(
    tmp_path: Path, pipelines: list[Pipeline], gate: threading.Event
) -> None:
    sink = RecordingSink(gate=gate)
    p = make(pipelines, sink, tmp_path, start=True, batch_size=5, flush_interval=60.0)
    emit_messages(p, 5)
    assert sink.entered.wait(10.0)  # the worker is stuck in export with the first batch
    emit_messages(p, 7, prefix="n")
    started = time.monotonic()
    report = p.shutdown(0.5)
    assert time.monotonic() - started < 2.5
    assert not report.completed
    assert report.pending == 5 and report.in_spool == 7  # the stuck batch, and the rest spooled
    emit_messages(p, 2, prefix="late")  # after shutdown: refused and counted
    assert p.shutdown(0.1).in_spool == 7  # idempotent
    gate.set()  # the worker outlived shutdown: it finishes its batch (and must not touch the closed spool)
    assert p._worker is not None
    p._worker.join(10.0)
    snap = p.stats_snapshot()
    assert snap["exported"] == 5 and snap["dropped"] == {"shutdown": 2}
    assert unaccounted(snap) == 0
    assert p.force_flush(0.1).in_spool == 7  # flushing a shut-down pipeline is a harmless no-op


def test_force_flush_honours_its_deadline_while_the_worker_replays_into_a_hanging_sink(
    tmp_path: Path, pipelines: list[Pipeline], gate: threading.Event
) -> None:
    # A dead process's spool, for the new pipeline's worker to recover at start-up.
    dead = make(pipelines, RecordingSink(script=["fail"] * 1000), tmp_path)
    emit_messages(dead, 5, prefix="dead")
    assert dead.force_flush(5.0).in_spool == 5
    dead.shutdown(0.1)

    gate.set()
    sink = RecordingSink(script=["fail"], gate=gate)
    p = make(pipelines, sink, tmp_path)
    emit_messages(p, 3)
    p.run_once()  # fails: this pipeline now has a spool of its own too
    gate.clear()
    sink.entered.clear()
    p.start()  # the worker recovers the dead spool first and hangs in export
    assert sink.entered.wait(10.0)
    watchdog = threading.Timer(3.0, gate.set)
    watchdog.start()
    try:
        started = time.monotonic()
        p.force_flush(0.2)
        elapsed = time.monotonic() - started
    finally:
        watchdog.cancel()
        gate.set()
    assert elapsed < 1.5


# --- export never re-enters the pipeline ----------------------------------------------------------


def reentering_sink(limit: int = 3) -> RecordingSink:
    """A sink that, while exporting, emits a message and starts an OpenTelemetry span (``limit`` times)."""
    calls = {"n": 0}

    def reenter(batch: Sequence[Span]) -> None:
        if calls["n"] >= limit:
            return
        calls["n"] += 1
        emit_message("emitted by the sink")
        with otel_trace.get_tracer("sink.internals").start_as_current_span("span started by the sink"):
            pass

    return RecordingSink(on_export=reenter)


def test_exporting_on_the_worker_produces_no_spans_of_its_own(tmp_path: Path) -> None:
    sink = reentering_sink()
    config = PipelineConfig(spool_dir=tmp_path / "spool", adaptive_sampling=False, batch_size=2)
    tracer = OtelTracer(sink=sink, config=config)
    try:
        with tracer.trace_context(rollout_id="r"):
            for i in range(5):
                emit_message(f"agent {i}")
        assert tracer.force_flush(5.0)
        assert sorted(s.name for s in sink.spans) == [semconv.SPAN_ROLLOUT] + [semconv.SPAN_MESSAGE] * 5
        assert "emitted by the sink" not in sink.bodies()
    finally:
        tracer.teardown()


def test_exporting_on_the_callers_thread_produces_no_spans_of_its_own(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    sink = reentering_sink()
    p = make(pipelines, sink, tmp_path, batch_size=2)
    tracer = OtelTracer(sink=sink)
    tracer.pipeline = p  # the caller's thread exports: this pipeline has no worker
    with tracer.trace_context(rollout_id="r"):
        emit_message("agent")
        assert p.force_flush(5.0).completed
    assert p.force_flush(5.0).completed
    assert sorted(s.name for s in sink.spans) == sorted([semconv.SPAN_MESSAGE, semconv.SPAN_ROLLOUT])


# --- sinks that fail, recover, or refuse one span ------------------------------------------------


def test_a_sink_outage_is_spooled_then_replayed_and_everything_arrives_exactly_once(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    store = SqliteStore(tmp_path / "s.db")
    sink = StoreBackedSink(store, script=["fail"] * 3)
    clock = FakeClock()
    p = make(pipelines, sink, tmp_path, clock=clock, batch_size=10)
    for round_ in range(4):
        emit_messages(p, 10, prefix=f"r{round_}-", rollout_id=f"r{round_}")
        p.run_once(flush_all=False)  # no try of the sink until its backoff (>= 0.05 s) is over
        clock.advance(0.01)
    during = p.stats_snapshot()
    assert during["in_spool"] == 40 and during["sink_healthy"] is False and during["export_failed"] == 1
    for _ in range(3):  # each due probe: two more scripted failures, then the spool drains
        clock.advance(60.0)
        p.run_once(flush_all=True)
    report = p.force_flush(5.0, drain_spool=True)
    assert report.completed and report.in_spool == 0
    assert set(sink.deliveries.values()) == {1} and len(sink.deliveries) == 40
    assert sum(s.span_count for s in store.list_rollouts()) == 40
    snap = p.stats_snapshot()
    assert snap["spilled"] == snap["replayed"] > 0
    assert snap["exported"] == 40 and snap["export_failed"] == 3 and snap["sink_healthy"] is True
    assert unaccounted(snap) == 0
    store.close()


def corrupt_one(span: Span) -> Span:
    """A stage that makes one span malformed (an attribute no store accepts)."""
    if span.attributes.get(semconv.MESSAGE_BODY) == "m3":
        span.attributes["broken"] = None  # type: ignore[assignment]
    return span


def test_a_refused_malformed_span_does_not_lose_the_rest_of_its_batch(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    store = SqliteStore(tmp_path / "s.db")
    p = make(pipelines, StoreSink(store), tmp_path, batch_size=8, stages=[corrupt_one])
    emit_messages(p, 8)
    assert p.force_flush(5.0).completed
    stored = [s.attributes[semconv.MESSAGE_BODY] for s in store.query_spans("r")]
    assert stored == [f"m{i}" for i in range(8) if i != 3]
    snap = p.stats_snapshot()
    assert snap["dropped"] == {"invalid": 1} and snap["exported"] == 7
    assert unaccounted(snap) == 0
    store.close()


def test_a_refused_malformed_span_in_a_replayed_batch_is_counted_once(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    sink = RecordingSink(script=["fail"], refuse=lambda s: s.attributes.get(semconv.MESSAGE_BODY) == "m3")
    p = make(pipelines, sink, tmp_path, batch_size=8)
    emit_messages(p, 8)
    assert p.force_flush(5.0, drain_spool=True).completed  # spooled by the outage, then replayed
    assert sink.bodies() == [f"m{i}" for i in range(8) if i != 3]
    snap = p.stats_snapshot()
    assert snap["dropped"] == {"invalid": 1}
    assert snap["exported"] == 7 and unaccounted(snap) == 0


def test_an_unencodable_span_during_an_outage_is_counted_and_the_rest_are_kept(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    sink = RecordingSink(script=["fail"])
    p = make(pipelines, sink, tmp_path, batch_size=8, stages=[corrupt_one])
    emit_messages(p, 8)
    assert p.force_flush(5.0, drain_spool=True).completed
    assert sink.bodies() == [f"m{i}" for i in range(8) if i != 3]
    snap = p.stats_snapshot()
    assert snap["dropped"] == {"invalid": 1} and unaccounted(snap) == 0
