"""Loss accounting: every event is counted under exactly one outcome, also under concurrency.

The invariant (per pipeline, exact when it is quiet)::

    emitted + recovered == exported + pending + in_spool + sum(dropped)

and, counted by the test itself: emit calls made == emitted + no_tracer.
"""

from __future__ import annotations

import logging
import threading
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace as otel_trace

import agentemit
from _pipeline_child import FakeClock, RecordingSink, rollout
from agentemit import OtelTracer, emit_exception, emit_message, emit_object, emit_reward, semconv
from agentemit.pipeline.config import PipelineConfig
from agentemit.pipeline.pipeline import Pipeline
from agentemit.pipeline.spool import HEADER_SIZE
from agentemit.pipeline.stats import DropReason, RateLimitedLogger, _AtomicCounter, unaccounted
from agentemit.span import Span
from agentemit.stores.sqlite import SqliteStore

THREADS = 8
ROLLOUTS_PER_THREAD = 12
EMITS_PER_ROLLOUT = 60


def test_every_loss_reason_of_the_spec_has_a_drop_reason() -> None:
    spec = {
        "sampled_out",
        "filtered",
        "rate_limited",
        "dropped_queue_full",
        "oversize",
        "no_tracer",
        "shutdown",
        "shed",
        "spool_full",
        "corrupt",
    }
    assert spec <= {r.value for r in DropReason}
    assert all(isinstance(r.value, str) and r == r.value for r in DropReason)


def test_a_snapshot_carries_every_counter_and_the_derived_figures(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    p = Pipeline(RecordingSink(), PipelineConfig(spool_dir=tmp_path, adaptive_sampling=False), start=False)
    pipelines.append(p)
    snap = p.stats_snapshot()
    for key in (
        "emitted",
        "recovered",
        "exported",
        "pending",
        "in_spool",
        "dropped",
        "dropped_total",
        "spilled",
        "replayed",
        "export_failed",
        "batches",
        "queue_depth",
        "queue_bytes",
        "export_latency_ms",
        "sink_healthy",
        "shedding",
        "spool",
    ):
        assert key in snap, key
    assert snap["spool"] == {"corrupt_records": 0, "evicted_records": 0, "bytes_on_disk": 0}
    assert unaccounted(snap) == 0


def test_agentemit_stats_lists_live_pipelines_and_counts_emits_with_no_rollout(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    p = Pipeline(RecordingSink(), PipelineConfig(spool_dir=tmp_path, adaptive_sampling=False), start=False, name="n1")
    pipelines.append(p)
    before = agentemit.stats()["no_tracer"]
    emit_message("nobody listens")
    emit_reward(1.0)
    emit_object(None)
    emit_exception(ValueError("x"))
    with rollout(p, "r"):
        emit_message("heard")
    stats = agentemit.stats()
    assert stats["no_tracer"] - before == 4
    assert stats["pipelines"][f"n1@{id(p):x}"]["emitted"] == 1
    p.shutdown(1.0)
    assert f"n1@{id(p):x}" not in agentemit.stats()["pipelines"]  # a shut-down pipeline leaves the list


def test_an_atomic_counter_counts_exactly_under_threads() -> None:
    counter = _AtomicCounter()

    def bump() -> None:
        for _ in range(20_000):
            counter.incr()

    threads = [threading.Thread(target=bump) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert counter.value == 160_000


def test_losses_are_logged_at_a_limited_rate_with_the_count_since_the_last_line(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    log = RateLimitedLogger(interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="agentemit"):
        log.log(DropReason.DROPPED_QUEUE_FULL, 3)
        log.log(DropReason.DROPPED_QUEUE_FULL, 4)  # within the interval: held back
        log.log(DropReason.SAMPLED_OUT, 100)  # configured drops are counted, never logged
        log.log(DropReason.FILTERED, 100)
        clock.advance(10.0)
        log.log(DropReason.DROPPED_QUEUE_FULL, 5)
        log.log(DropReason.SHED, 1)  # another reason has its own limit
    lines = [r.getMessage() for r in caplog.records]
    assert lines == [
        "agentemit lost 3 event(s): dropped_queue_full (see agentemit.stats())",
        "agentemit lost 9 event(s): dropped_queue_full (see agentemit.stats())",
        "agentemit lost 1 event(s): shed (see agentemit.stats())",
    ]


def test_every_refusal_on_the_hot_path_is_counted_once(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    clock = FakeClock()
    config = PipelineConfig(
        spool_dir=tmp_path,
        adaptive_sampling=False,
        kind_sample_rates={"object": 0.0},
        rate_limits={"exception": 1.0},
        max_queue_size=10,
        overflow="drop_newest",
    )
    p = Pipeline(RecordingSink(), config, start=False, clock=clock)
    pipelines.append(p)
    with rollout(p, "r"):
        emit_object(1)  # sampled out
        emit_exception(ValueError("a"))
        emit_exception(ValueError("b"))  # rate limited
        for i in range(10):
            emit_message(f"m{i}")  # 7 fit (the exception takes one of the bulk share's 8), 3 dropped
    p.shutdown(5.0)
    with rollout(p, "r"):
        emit_reward(1.0)  # after shutdown
    snap = p.stats_snapshot()
    assert snap["dropped"] == {"sampled_out": 1, "rate_limited": 1, "dropped_queue_full": 3, "shutdown": 1}
    assert snap["emitted"] == 14 and snap["exported"] == 8
    assert unaccounted(snap) == 0


def test_a_spool_record_damaged_on_disk_is_counted_corrupt_with_its_events(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    sink = RecordingSink(script=["fail"] * 100)
    p = Pipeline(sink, PipelineConfig(spool_dir=tmp_path, adaptive_sampling=False, redact=False), start=False)
    pipelines.append(p)
    for r in range(3):
        with rollout(p, f"r{r}"):
            for i in range(10):
                emit_message(f"{r}-{i}")
        p.run_once()  # the sink is down: one spool record of 10 events per round
    assert p.stats_snapshot()["in_spool"] == 30
    (segment,) = p.spool().directory.glob("seg-*.wal")
    data = bytearray(segment.read_bytes())
    data[HEADER_SIZE + 20] ^= 0xFF  # inside the first record's payload
    segment.write_bytes(bytes(data))
    sink.script.clear()  # the sink is back
    report = p.force_flush(5.0, drain_spool=True)
    assert report.completed and report.in_spool == 0 and report.dropped == {"corrupt": 10}
    snap = p.stats_snapshot()
    assert snap["exported"] == len(sink.spans) == 20
    assert snap["spool"]["corrupt_records"] == 1 and snap["spool"]["bytes_on_disk"] > 0
    assert unaccounted(snap) == 0


def test_the_invariant_holds_with_eight_threads_sampling_rate_limits_and_drop_policies(tmp_path: Path) -> None:
    """8 threads emit every kind through a tracer into SQLite while every loss path is active."""
    store = SqliteStore(tmp_path / "s.db")
    config = PipelineConfig(
        spool_dir=tmp_path / "spool",
        sample_rate=0.5,
        kind_sample_rates={"exception": 0.8},
        rate_limits={"object": 400.0},
        max_queue_size=64,
        batch_size=16,
        flush_interval=0.02,
        kind_overflow={"message": "drop_oldest", "object": "drop_newest"},  # the rest spill
        adaptive_sampling=True,  # may shed under this load: counted like the rest
    )

    def keep(span: Span) -> bool:  # rewards always reach the filter (never sampled out or dropped)
        if span.attributes.get(semconv.REWARD_LEGACY) == 9.0:
            return False
        return not str(span.attributes.get(semconv.MESSAGE_BODY, "")).endswith("7")

    tracer = OtelTracer(store, config=config, span_filter=keep)
    other = otel_trace.get_tracer("third.party")
    calls = [0] * THREADS  # emit_* calls plus OpenTelemetry spans that end inside a rollout
    barrier = threading.Barrier(THREADS)
    errors: list[BaseException] = []

    def work(t: int) -> None:
        try:
            barrier.wait(30)
            made = 0
            for r in range(ROLLOUTS_PER_THREAD):
                emit_message("outside any rollout")  # counted as no_tracer
                made += 1
                with tracer.trace_context(rollout_id=f"t{t}-r{r}"):
                    made += 1  # the rollout's own root span
                    for j in range(EMITS_PER_ROLLOUT):
                        if j % 15 == 14:
                            emit_exception(RuntimeError(f"e{j}"))
                        elif j % 10 == 9:
                            emit_reward(float(j))
                        elif j % 3 == 2:
                            emit_object({"t": t, "j": j})
                        elif j % 8 == 0:
                            with other.start_as_current_span(f"call-{j}"):
                                emit_message(f"inside call {t}-{r}-{j}")
                            made += 1
                        else:
                            emit_message(f"{t}-{r}-{j}")
                        made += 1
            calls[t] = made
        except BaseException as exc:
            errors.append(exc)

    no_tracer_before = agentemit.stats()["no_tracer"]
    threads = [threading.Thread(target=work, args=(t,)) for t in range(THREADS)]
    try:
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        assert not any(thread.is_alive() for thread in threads) and not errors, errors
        assert tracer.pipeline is not None
        report = tracer.pipeline.force_flush(30.0, drain_spool=True)
        assert report.completed and report.in_spool == 0, report
        snap: dict[str, Any] = tracer.stats()
        no_tracer = agentemit.stats()["no_tracer"] - no_tracer_before
    finally:
        tracer.teardown()
    assert unaccounted(snap) == 0, snap
    assert sum(calls) == snap["emitted"] + no_tracer
    assert no_tracer == THREADS * ROLLOUTS_PER_THREAD
    dropped = snap["dropped"]
    assert dropped.get("sampled_out", 0) > 0 and dropped.get("filtered", 0) > 0
    assert dropped.get("rate_limited", 0) + dropped.get("dropped_queue_full", 0) + dropped.get("shed", 0) > 0
    assert sum(s.span_count for s in store.list_rollouts()) == snap["exported"]
    store.close()


def test_losses_held_back_by_the_rate_limit_are_written_when_their_interval_ends_or_at_shutdown(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = FakeClock()
    log = RateLimitedLogger(interval=10.0, clock=clock)
    with caplog.at_level(logging.WARNING, logger="agentemit"):
        log.log(DropReason.DROPPED_QUEUE_FULL, 3)
        log.log(DropReason.DROPPED_QUEUE_FULL, 992)  # held back; then quiet: no later loss to carry it
        log.flush()  # interval not over
        clock.advance(10.0)
        log.flush()
        log.log(DropReason.SHED, 1)
        log.log(DropReason.SHED, 7)
        log.flush(force=True)  # shutdown: whatever is held back
    assert [r.getMessage() for r in caplog.records] == [
        "agentemit lost 3 event(s): dropped_queue_full (see agentemit.stats())",
        "agentemit lost 992 event(s): dropped_queue_full (see agentemit.stats())",
        "agentemit lost 1 event(s): shed (see agentemit.stats())",
        "agentemit lost 7 event(s): shed (see agentemit.stats())",
    ]


def test_events_emitted_after_the_pipeline_shut_down_show_in_agentemit_stats(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    tracer = OtelTracer(store, config=PipelineConfig(spool_dir=tmp_path / "spool"))
    tracer.init_worker("w")
    before = agentemit.stats()["after_shutdown"]
    with tracer.trace_context("r"):
        emit_message("kept")
        tracer.teardown_worker()
        for _ in range(5):
            emit_message("lost")
    assert agentemit.stats()["after_shutdown"] - before == 6  # the five and the rollout's own root span
    store.close()
