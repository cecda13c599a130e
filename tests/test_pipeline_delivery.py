"""How the pipeline delivers to a sink that fails: when it tries again, and what it does with a sink
that breaks the contract (raises, or answers with something other than a sound ExportResult).

The retry schedule runs on the pipeline's injectable clock: tests step it and call ``run_once``, so
no test waits on real time.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

from _otlp_receiver import OtlpReceiver
from _pipeline_child import FakeClock, rollout
from agentemit import emit_message
from agentemit.pipeline.config import PipelineConfig
from agentemit.pipeline.delivery import MAX_RETRY_AFTER
from agentemit.pipeline.otlp import OtlpHttpSink
from agentemit.pipeline.pipeline import Pipeline
from agentemit.pipeline.sink import ExportResult
from agentemit.pipeline.stats import unaccounted
from agentemit.span import Span

Answer = Callable[[Sequence[Span]], Any]


class ScriptedSink:
    """Answers each export with the next scripted answer (a callable of the batch), then succeeds;
    records the clock time of every call and each span it took."""

    def __init__(self, clock: Callable[[], float], script: Sequence[Answer] = ()) -> None:
        self.clock = clock
        self.script = list(script)
        self.call_times: list[float] = []
        self.taken: list[str] = []

    def export(self, batch: Sequence[Span]) -> ExportResult:
        self.call_times.append(self.clock())
        if self.script:
            return self.script.pop(0)(batch)  # type: ignore[no-any-return]
        self.taken += [span.span_id for span in batch]
        return ExportResult.success(len(batch))

    def force_flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        pass


def failing(retry_after: float | None = None) -> Answer:
    return lambda batch: ExportResult.failure("down (scripted)", retry_after=retry_after)


def make(made: list[Pipeline], sink: Any, tmp_path: Path, clock: FakeClock | None = None, **settings: Any) -> Pipeline:
    config = PipelineConfig(spool_dir=tmp_path / "spool", adaptive_sampling=False, redact=False, **settings)
    extra: dict[str, Any] = {} if clock is None else {"clock": clock}
    p = Pipeline(sink, config, start=False, **extra)
    made.append(p)
    return p


def emit(p: Pipeline, n: int) -> None:
    with rollout(p, "r"):
        for i in range(n):
            emit_message(f"m{i}")


def run_for(p: Pipeline, clock: FakeClock, seconds: float, step: float) -> None:
    """Let ``seconds`` pass on the clock in ``step``s, running the worker's pass after each."""
    for _ in range(round(seconds / step)):
        clock.advance(step)
        p.run_once(flush_all=True)


def gaps(times: list[float]) -> list[float]:
    return [round(b - a, 6) for a, b in itertools.pairwise(times)]


def test_a_failing_sink_is_tried_again_after_exponential_jittered_backoff_up_to_the_cap(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    clock = FakeClock()
    sink = ScriptedSink(clock, [failing()] * 5)
    p = make(pipelines, sink, tmp_path, clock, retry_base_delay=1.0, retry_max_delay=4.0)
    emit(p, 10)
    p.run_once()
    run_for(p, clock, 30.0, 0.125)
    # Waits of 1, 2, 4, 4, 4 s, each less a random share of up to half: never sooner, never much later
    # than the step. Then the sixth try succeeds and the spool drains.
    bounds = [(0.5, 1.0), (1.0, 2.0), (2.0, 4.0), (2.0, 4.0), (2.0, 4.0)]
    assert len(sink.call_times) == 6
    for gap, (low, high) in zip(gaps(sink.call_times), bounds, strict=True):
        assert low <= gap <= high + 0.125
    assert sorted(sink.taken) == sorted(set(sink.taken)) and len(sink.taken) == 10
    assert unaccounted(p.stats_snapshot()) == 0


@pytest.mark.parametrize(("retry_after", "wait"), [(30.0, 30.0), (10.0**9, MAX_RETRY_AFTER)])
def test_a_server_retry_after_is_honoured_and_capped(
    tmp_path: Path, pipelines: list[Pipeline], retry_after: float, wait: float
) -> None:
    clock = FakeClock()
    sink = ScriptedSink(clock, [failing(retry_after)])
    p = make(pipelines, sink, tmp_path, clock, retry_max_delay=5.0)
    emit(p, 5)
    p.run_once()
    run_for(p, clock, wait - 1.0, 1.0)
    emit(p, 5)  # fresh events while the sink waits go to the spool, not to the sink
    p.force_flush(1.0)
    assert len(sink.call_times) == 1
    run_for(p, clock, 2.0, 1.0)
    first, *then = sink.call_times  # then: the spool's records (both batches), replayed when due
    assert then and all(t - first == wait for t in then)
    assert len(sink.taken) == 10 and p.stats_snapshot()["dropped_total"] == 0


@pytest.mark.parametrize(
    "answer",
    [
        lambda batch: None,
        lambda batch: len(batch),
        lambda batch: ExportResult(ok=True, rejected=len(batch) + 5),
        lambda batch: ExportResult(ok=True, rejected=-3),
    ],
    ids=["None", "an int", "more rejected than sent", "negative rejected"],
)
def test_an_unsound_export_result_keeps_the_batch_for_a_later_try(
    tmp_path: Path, pipelines: list[Pipeline], answer: Answer
) -> None:
    clock = FakeClock()
    sink = ScriptedSink(clock, [answer])
    p = make(pipelines, sink, tmp_path, clock, retry_base_delay=0.0)
    emit(p, 10)
    p.run_once()  # the answer fails the batch into the spool; with no backoff, the replay takes it
    snap = p.stats_snapshot()
    assert len(sink.call_times) == 2 and snap["export_failed"] == 1
    assert len(sink.taken) == 10 and snap["exported"] == 10 and snap["dropped_total"] == 0
    assert unaccounted(snap) == 0


class RaisingOnceSink(ScriptedSink):
    def __init__(self, clock: Callable[[], float], error: BaseException) -> None:
        super().__init__(clock)
        self.error: BaseException | None = error

    def export(self, batch: Sequence[Span]) -> ExportResult:
        error, self.error = self.error, None
        if error is not None:
            raise error
        return super().export(batch)


@pytest.mark.parametrize("error", [asyncio.CancelledError(), SystemExit(3), KeyboardInterrupt()])
def test_a_sink_raising_a_base_exception_on_the_worker_thread_loses_nothing(
    tmp_path: Path, pipelines: list[Pipeline], error: BaseException
) -> None:
    sink = RaisingOnceSink(lambda: 0.0, error)
    p = make(pipelines, sink, tmp_path, retry_base_delay=0.0, batch_size=5)
    p.start()
    emit(p, 20)
    report = p.force_flush(5.0, drain_spool=True)
    assert report.completed and len(sink.taken) == 20 and not report.dropped
    assert p._worker is not None and p._worker.is_alive()


def test_ctrl_c_in_a_flush_on_the_main_thread_keeps_the_batch_and_goes_on(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    sink = RaisingOnceSink(lambda: 0.0, KeyboardInterrupt())
    p = make(pipelines, sink, tmp_path, retry_base_delay=0.0)
    emit(p, 10)
    with pytest.raises(KeyboardInterrupt):
        p.run_once()
    assert p.stats_snapshot()["in_spool"] == 10
    p.run_once()
    assert len(sink.taken) == 10 and unaccounted(p.stats_snapshot()) == 0


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.mark.parametrize("status", [401, 404, 500])
def test_a_collector_refusing_the_request_not_the_spans_gets_them_all_later(
    tmp_path: Path, pipelines: list[Pipeline], receiver: OtlpReceiver, status: int
) -> None:
    """A wrong token or URL says nothing about the spans: none is split off and dropped as invalid."""
    receiver.fail_next(2, status)
    p = make(pipelines, OtlpHttpSink(receiver.url), tmp_path, retry_base_delay=0.0)
    emit(p, 50)
    report = p.force_flush(5.0, drain_spool=True)
    assert report.completed and not report.dropped
    assert receiver.span_count == 50
    assert [r.status for r in receiver.requests] == [status, status, 200]


# --- the worker's tick, wake-ups and housekeeping ----------------------------------------------------


def test_a_sustained_backlog_does_not_starve_the_tick(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    """The tick reads the CPU (adaptive sampling), logs and retries orphans: a pass over a backlog
    that never empties must stop for it once it is due."""
    clock = FakeClock()
    sink = ScriptedSink(clock)
    p = make(pipelines, sink, tmp_path, clock, batch_size=10, max_export_batch=10)
    emit(p, 50)
    p._next_tick = clock() + 1.0  # as the worker sets it
    assert p.run_once(flush_all=True) == 50  # not due: the pass drains everything
    emit(p, 50)
    clock.advance(1.0)
    assert p.run_once(flush_all=True) == 10  # due: one batch, then back to the worker loop to tick


def test_the_worker_wakes_when_both_lanes_together_hold_a_batch(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    from agentemit import emit_reward

    sink = ScriptedSink(lambda: 0.0)
    p = make(pipelines, sink, tmp_path, batch_size=10, flush_interval=3600.0)
    p.start()
    with rollout(p, "r"):
        for i in range(5):  # five to each lane: neither lane alone reaches the batch size
            emit_reward(float(i))
            emit_message(f"m{i}")
    with p._idle:
        p._idle.wait_for(lambda: len(sink.taken) == 10, timeout=10.0)
    assert len(sink.taken) == 10


def test_drop_oldest_frees_bytes_not_just_one_record(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    threshold = 64 * 1024
    p = make(pipelines, ScriptedSink(lambda: 0.0), tmp_path, memory_threshold=threshold, overflow="drop_oldest")
    with rollout(p, "r"):
        for _ in range(40):
            emit_message("small")
        for i in range(40):
            emit_message(f"big{i} " + "x" * 6000)  # each needs room of several small ones
    assert p.lanes.queued_bytes <= threshold
    snap = p.stats_snapshot()
    assert snap["dropped"]["dropped_queue_full"] > 0 and unaccounted(snap) == 0
    p.run_once()
    sink = p.sink
    assert isinstance(sink, ScriptedSink) and len(sink.taken) == snap["pending"]


def test_a_failing_stage_is_counted_in_the_snapshot_and_logged_once_per_interval(
    tmp_path: Path, pipelines: list[Pipeline], caplog: pytest.LogCaptureFixture
) -> None:
    def broken(span: Span) -> Span:
        raise RuntimeError("stage bug")

    clock = FakeClock()
    sink = ScriptedSink(clock)
    config = PipelineConfig(spool_dir=tmp_path / "spool", adaptive_sampling=False, redact=False)
    p = Pipeline(sink, config, stages=[broken], start=False, clock=clock)
    pipelines.append(p)
    with caplog.at_level(logging.WARNING, logger="agentemit"):
        emit(p, 50)
        p.run_once()
        clock.advance(10.0)
        emit(p, 1)
        p.run_once()
    assert p.stats_snapshot()["stage_errors"] == 51 and len(sink.taken) == 51  # kept, unprocessed
    lines = [r.getMessage() for r in caplog.records if "stage" in r.getMessage()]
    assert len(lines) == 2 and "(1 failure(s)" in lines[0] and "(50 failure(s)" in lines[1]


def test_the_error_rate_warning_judges_the_last_interval_not_the_lifetime(
    tmp_path: Path, pipelines: list[Pipeline], caplog: pytest.LogCaptureFixture
) -> None:
    p = make(pipelines, ScriptedSink(lambda: 0.0), tmp_path)
    p.stats.add("batches", 3000)  # a long healthy past
    p._on_tick()
    p.stats.add("batches", 10)
    p.stats.add("export_failed", 10)  # then an outage
    with caplog.at_level(logging.WARNING, logger="agentemit"):
        p._on_tick()
    assert any("export error rate 100% is above 5%" in r.getMessage() for r in caplog.records)


def test_an_orphaned_spool_is_retried_on_ticks_when_the_sink_was_down_at_start_up(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    dead = make(pipelines, ScriptedSink(lambda: 0.0, [failing()] * 100), tmp_path, retry_base_delay=60.0)
    emit(dead, 10)
    dead.shutdown(0.5)  # its sink never came back: the spool directory is left, unlocked, as by a dead process
    clock = FakeClock()
    sink = ScriptedSink(clock, [failing()])
    p = make(pipelines, sink, tmp_path, clock, retry_base_delay=0.0)
    p._recover_at_start()  # the sink is down: nothing delivered
    assert sink.taken == [] and p._orphans_left
    p._on_tick()
    assert len(sink.taken) == 10 and not p._orphans_left
    assert p.stats_snapshot()["recovered"] == 10


class StuckShutdownSink(ScriptedSink):
    """A sink whose shutdown ignores its timeout (it waits on ``release``)."""

    def __init__(self, release: threading.Event) -> None:
        super().__init__(lambda: 0.0)
        self.release = release

    def shutdown(self, timeout: float) -> None:
        self.release.wait(30.0)


def test_shutdown_honours_its_deadline_when_the_sink_ignores_its_timeout(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    release = threading.Event()
    p = make(pipelines, StuckShutdownSink(release), tmp_path)
    emit(p, 10)
    started = time.monotonic()
    try:
        report = p.shutdown(0.5)
        took = time.monotonic() - started
    finally:
        release.set()
    assert report.completed and took < 5.0  # not the sink's 30 s
