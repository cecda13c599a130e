"""RetryingSink and FailoverSink wrapped around real OtlpHttpSinks talking to real loopback receivers.

Waits are recorded by an injected sleep and time comes from an injected clock, so no test sleeps
through a backoff; the one real delay (a slow primary) is bounded well under a second and a half.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator, Sequence

import pytest

from _otlp_receiver import OtlpReceiver
from _ports import closed_port_url
from agentemit.pipeline.failover import FailoverSink
from agentemit.pipeline.otlp import OtlpHttpSink
from agentemit.pipeline.retry import RetryingSink
from agentemit.pipeline.sink import ExportResult
from agentemit.span import Span


def make_spans(n: int, start: int = 0) -> list[Span]:
    return [
        Span(
            trace_id="0af7651916cd43dd8448eb211c80319c",
            span_id=f"{i + 1:016x}",
            parent_id=None,
            name="agentlightning.message",
            start_time=1_700_000_000_000_000_000 + i,
            end_time=1_700_000_000_000_000_100 + i,
            rollout_id="rollout-1",
            attempt_id="attempt-1",
            sequence_id=i,
            attributes={"i": i},
        )
        for i in range(start, start + n)
    ]


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingSleep:
    """Records each requested wait instead of sleeping; advances a fake clock when given one."""

    def __init__(self, clock: FakeClock | None = None, on_call: threading.Event | None = None) -> None:
        self.delays: list[float] = []
        self.clock = clock
        self.on_call = on_call

    def __call__(self, seconds: float) -> None:
        self.delays.append(seconds)
        if self.clock is not None:
            self.clock.advance(seconds)
        if self.on_call is not None:
            self.on_call.set()


class RaisingSink:
    """A sink that breaks the never-raise contract, to check the wrappers contain it."""

    def export(self, batch: Sequence[Span]) -> ExportResult:
        raise RuntimeError("sink bug")

    def force_flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        return None


@pytest.fixture
def receiver() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


@pytest.fixture
def backup() -> Iterator[OtlpReceiver]:
    with OtlpReceiver() as r:
        yield r


def statuses(receiver: OtlpReceiver) -> list[int]:
    return [r.status for r in receiver.requests]


# --- RetryingSink ------------------------------------------------------------------------------


def test_retries_503_until_success_with_doubling_backoff(receiver: OtlpReceiver) -> None:
    receiver.fail_next(3, 503)
    sleep = RecordingSleep()
    sink = RetryingSink(OtlpHttpSink(receiver.url), base_delay=0.1, jitter=0.5, rng=lambda: 0.0, sleep=sleep)
    result = sink.export(make_spans(20))
    sink.shutdown(1.0)
    assert result.ok and result.stored == 20
    assert sleep.delays == pytest.approx([0.1, 0.2, 0.4])
    assert statuses(receiver) == [503, 503, 503, 200]
    assert receiver.span_count == 20 and sink.retries == 3


def test_backoff_never_exceeds_max_delay(receiver: OtlpReceiver) -> None:
    receiver.fail_next(5, 503)
    sleep = RecordingSleep()
    sink = RetryingSink(
        OtlpHttpSink(receiver.url), max_attempts=6, base_delay=1.0, max_delay=3.0, rng=lambda: 0.0, sleep=sleep
    )
    assert sink.export(make_spans(1)).ok
    sink.shutdown(1.0)
    assert sleep.delays == pytest.approx([1.0, 2.0, 3.0, 3.0, 3.0])


def test_jitter_removes_a_random_share_of_at_most_jitter_from_each_wait(receiver: OtlpReceiver) -> None:
    receiver.fail_next(3, 503)
    draws = iter([0.0, 0.5, 0.999])
    sleep = RecordingSleep()
    sink = RetryingSink(
        OtlpHttpSink(receiver.url), base_delay=1.0, max_delay=10.0, jitter=0.5, rng=lambda: next(draws), sleep=sleep
    )
    assert sink.export(make_spans(1)).ok
    sink.shutdown(1.0)
    assert sleep.delays == pytest.approx([1.0, 2.0 * 0.75, 4.0 * (1 - 0.4995)])
    for retry, delay in enumerate(sleep.delays, start=1):
        full = 1.0 * 2 ** (retry - 1)
        assert 0.5 * full <= delay <= full


def test_backoff_stays_within_jitter_bounds_for_any_draw() -> None:
    draws = iter([i / 100 for i in range(100)])
    sink = RetryingSink(RaisingSink(), base_delay=0.2, max_delay=1.0, jitter=0.3, rng=lambda: next(draws))
    for i in range(100):
        retry = i % 6 + 1
        full = min(1.0, 0.2 * 2 ** (retry - 1))
        assert 0.7 * full <= sink.backoff(retry) <= full


def test_retry_after_from_the_server_replaces_the_backoff(receiver: OtlpReceiver) -> None:
    receiver.fail_next(1, 503, retry_after="2")
    receiver.fail_next(1, 429, retry_after="0")
    sleep = RecordingSleep()
    sink = RetryingSink(OtlpHttpSink(receiver.url), base_delay=0.1, rng=lambda: 0.0, sleep=sleep)
    assert sink.export(make_spans(4)).ok
    sink.shutdown(1.0)
    assert sleep.delays == [2.0, 0.0]
    assert statuses(receiver) == [503, 429, 200]


def test_a_retry_after_beyond_max_delay_is_returned_not_retried_early(receiver: OtlpReceiver) -> None:
    """The server asked for 120 s: retrying after max_delay (5 s) would break its request. The failure
    goes back with its retry_after, for the pipeline to keep the batch in its spool that long."""
    receiver.fail_next(1, 503, retry_after="120")
    sleep = RecordingSleep()
    sink = RetryingSink(OtlpHttpSink(receiver.url), max_delay=5.0, sleep=sleep)
    result = sink.export(make_spans(1))
    sink.shutdown(1.0)
    assert (result.ok, result.retryable, result.retry_after) == (False, True, 120.0)
    assert sleep.delays == []
    assert statuses(receiver) == [503]


def test_waits_are_capped_by_the_deadline_and_none_starts_after_it(receiver: OtlpReceiver) -> None:
    receiver.fail_next(10, 503)
    clock = FakeClock()
    sleep = RecordingSleep(clock)
    sink = RetryingSink(
        OtlpHttpSink(receiver.url),
        max_attempts=10,
        base_delay=0.4,
        deadline=1.0,
        rng=lambda: 0.0,
        sleep=sleep,
        clock=clock,
    )
    result = sink.export(make_spans(1))
    sink.shutdown(1.0)
    assert not result.ok and result.retryable
    assert sleep.delays == pytest.approx([0.4, 0.6])  # the second wait (0.8) is cut to the 0.6 left
    assert statuses(receiver) == [503, 503, 503]


def test_non_retryable_failure_is_returned_without_retrying(receiver: OtlpReceiver) -> None:
    receiver.fail_next(1, 400)
    sleep = RecordingSleep()
    sink = RetryingSink(OtlpHttpSink(receiver.url), sleep=sleep)
    result = sink.export(make_spans(2))
    sink.shutdown(1.0)
    assert not result.ok and not result.retryable and "HTTP 400" in (result.error or "")
    assert sleep.delays == [] and statuses(receiver) == [400]


def test_connection_refused_is_retried_up_to_max_attempts_then_the_last_failure_returned() -> None:
    sleep = RecordingSleep()
    sink = RetryingSink(
        OtlpHttpSink(closed_port_url("/v1/traces"), timeout=2.0), max_attempts=3, rng=lambda: 0.0, sleep=sleep
    )
    result = sink.export(make_spans(2))
    sink.shutdown(1.0)
    assert not result.ok and result.retryable and "ConnectError" in (result.error or "")
    assert len(sleep.delays) == 2 and sink.retries == 2


def test_stop_set_during_a_wait_ends_retrying_with_the_last_result(receiver: OtlpReceiver) -> None:
    receiver.fail_next(5, 503)
    stop = threading.Event()
    sleep = RecordingSleep(on_call=stop)
    sink = RetryingSink(OtlpHttpSink(receiver.url), sleep=sleep, stop=stop)
    result = sink.export(make_spans(1))
    sink.shutdown(1.0)
    assert not result.ok and result.retryable
    assert len(sleep.delays) == 1 and statuses(receiver) == [503]


def test_shutdown_interrupts_a_long_real_retry_after_wait(receiver: OtlpReceiver) -> None:
    receiver.fail_next(1, 503, retry_after="30")
    sink = RetryingSink(OtlpHttpSink(receiver.url), max_delay=60.0, deadline=60.0)  # waits on its stop event
    results: list[ExportResult] = []
    worker = threading.Thread(target=lambda: results.append(sink.export(make_spans(1))))
    worker.start()
    give_up = time.monotonic() + 5.0
    while not receiver.requests and time.monotonic() < give_up:
        time.sleep(0.01)
    sink.shutdown(1.0)
    worker.join(timeout=10.0)
    assert not worker.is_alive(), "export still waiting 10 s after shutdown"
    assert not results[0].ok and statuses(receiver) == [503]


def test_an_inner_sink_that_raises_becomes_a_retryable_failure() -> None:
    sleep = RecordingSleep()
    sink = RetryingSink(RaisingSink(), max_attempts=2, sleep=sleep)
    result = sink.export(make_spans(1))
    assert not result.ok and result.retryable and "RuntimeError: sink bug" in (result.error or "")
    assert len(sleep.delays) == 1


def test_retrying_shutdown_and_force_flush_reach_the_inner_sink(receiver: OtlpReceiver) -> None:
    inner = OtlpHttpSink(receiver.url)
    sink = RetryingSink(inner)
    assert sink.force_flush(1.0)
    sink.shutdown(1.0)
    assert sink.stop.is_set()
    assert "shut down" in (inner.export(make_spans(1)).error or "")


@pytest.mark.parametrize(
    ("kwargs", "culprit"),
    [({"max_attempts": 0}, "max_attempts"), ({"jitter": 1.5}, "jitter"), ({"deadline": 0}, "deadline")],
)
def test_retrying_sink_rejects_out_of_range_settings_naming_them(kwargs: dict[str, float], culprit: str) -> None:
    with pytest.raises(ValueError, match=culprit):
        RetryingSink(RaisingSink(), **kwargs)  # type: ignore[arg-type]


# --- FailoverSink ------------------------------------------------------------------------------


def test_failover_uses_the_backup_while_the_primary_cools_down_then_returns(
    receiver: OtlpReceiver, backup: OtlpReceiver
) -> None:
    receiver.fail_next(1, 503)
    clock = FakeClock()
    sink = FailoverSink([OtlpHttpSink(receiver.url), OtlpHttpSink(backup.url)], cooldown=30.0, clock=clock)
    assert sink.export(make_spans(3, 0)).ok  # primary 503 -> backup
    assert sink.stats().preferred == 1
    assert sink.export(make_spans(3, 3)).ok  # primary still cooling down: straight to the backup
    clock.advance(30.0)
    assert sink.export(make_spans(3, 6)).ok  # cooldown over: primary again
    stats = sink.stats()
    sink.shutdown(1.0)
    assert stats.served == (1, 2) and stats.failures == (1, 0) and stats.preferred == 0
    assert statuses(receiver) == [503, 200]
    assert sorted(receiver.span_ids) == [s.span_id for s in make_spans(3, 6)]
    assert sorted(backup.span_ids) == [s.span_id for s in make_spans(6, 0)]


def test_failover_leaves_a_slow_primary_for_the_cooldown(receiver: OtlpReceiver, backup: OtlpReceiver) -> None:
    offset = [0.0]  # real time, so the real delay is measured, plus a jump we control for the cooldown
    receiver.delay(0.4)
    sink = FailoverSink(
        [OtlpHttpSink(receiver.url), OtlpHttpSink(backup.url)],
        slow_threshold=0.2,
        cooldown=30.0,
        clock=lambda: time.monotonic() + offset[0],
    )
    assert sink.export(make_spans(2, 0)).ok  # served by the primary, but slowly
    assert sink.export(make_spans(2, 2)).ok  # so this goes to the backup
    receiver.delay(0)
    offset[0] += 31.0
    assert sink.export(make_spans(2, 4)).ok  # cooldown over: back to the primary
    stats = sink.stats()
    sink.shutdown(1.0)
    assert stats.served == (2, 1) and stats.slow[0] >= 1 and stats.failures == (0, 0)
    assert sorted(backup.span_ids) == [s.span_id for s in make_spans(2, 2)]
    assert receiver.span_count == 4


def test_a_refused_batch_moves_on_without_benching_the_primary(receiver: OtlpReceiver, backup: OtlpReceiver) -> None:
    receiver.fail_next(1, 400)
    clock = FakeClock()
    sink = FailoverSink([OtlpHttpSink(receiver.url), OtlpHttpSink(backup.url)], clock=clock)
    assert sink.export(make_spans(1, 0)).ok
    assert sink.export(make_spans(1, 1)).ok
    stats = sink.stats()
    sink.shutdown(1.0)
    assert stats.served == (1, 1) and statuses(receiver) == [400, 200] and backup.span_count == 1


def test_when_every_sink_fails_the_last_failure_is_returned_retryable_if_any_was(backup: OtlpReceiver) -> None:
    backup.fail_next(1, 400)
    sink = FailoverSink(
        [OtlpHttpSink(closed_port_url("/v1/traces"), timeout=2.0), OtlpHttpSink(backup.url)], clock=FakeClock()
    )
    result = sink.export(make_spans(1))
    stats = sink.stats()
    sink.shutdown(1.0)
    assert not result.ok and result.retryable
    assert "[0]" in (result.error or "") and "ConnectError" in (result.error or "")
    assert "[1]" in (result.error or "") and "HTTP 400" in (result.error or "")
    assert stats.all_failed == 1 and stats.failures == (1, 1) and stats.served == (0, 0)


def test_when_every_sink_refuses_the_batch_the_failure_is_not_retryable(
    receiver: OtlpReceiver, backup: OtlpReceiver
) -> None:
    receiver.fail_next(1, 400)
    backup.fail_next(1, 413, retry_after="3")
    sink = FailoverSink([OtlpHttpSink(receiver.url), OtlpHttpSink(backup.url)], clock=FakeClock())
    result = sink.export(make_spans(1))
    sink.shutdown(1.0)
    assert not result.ok and not result.retryable and result.retry_after is None


def test_benched_sinks_are_still_tried_when_no_sink_is_ready(receiver: OtlpReceiver, backup: OtlpReceiver) -> None:
    receiver.fail_next(1, 503)
    backup.fail_next(1, 503, retry_after="4")
    clock = FakeClock()
    sink = FailoverSink([OtlpHttpSink(receiver.url), OtlpHttpSink(backup.url)], cooldown=30.0, clock=clock)
    first = sink.export(make_spans(1, 0))
    assert not first.ok and first.retryable and first.retry_after == 4.0
    assert sink.export(make_spans(1, 1)).ok  # both benched: the primary is tried first all the same
    stats = sink.stats()
    sink.shutdown(1.0)
    assert stats.served == (1, 0) and stats.preferred == 0 and receiver.span_count == 1


def test_a_sink_that_raises_is_failed_over(backup: OtlpReceiver) -> None:
    sink = FailoverSink([RaisingSink(), OtlpHttpSink(backup.url)], clock=FakeClock())
    assert sink.export(make_spans(2)).ok
    stats = sink.stats()
    sink.shutdown(1.0)
    assert stats.failures == (1, 0) and stats.served == (0, 1)


def test_retrying_around_failover_delivers_once_the_backup_recovers(backup: OtlpReceiver) -> None:
    backup.fail_next(1, 503, retry_after="0")
    sleep = RecordingSleep()
    failover = FailoverSink(
        [OtlpHttpSink(closed_port_url("/v1/traces"), timeout=2.0), OtlpHttpSink(backup.url)], clock=FakeClock()
    )
    sink = RetryingSink(failover, sleep=sleep)
    result = sink.export(make_spans(5))
    sink.shutdown(1.0)
    assert result.ok and sleep.delays == [0.0]
    assert backup.span_count == 5 and failover.stats().served == (0, 1)


def test_failover_shutdown_reaches_every_sink(receiver: OtlpReceiver, backup: OtlpReceiver) -> None:
    sinks = [OtlpHttpSink(receiver.url), OtlpHttpSink(backup.url)]
    failover = FailoverSink(sinks)
    assert failover.force_flush(1.0)
    failover.shutdown(1.0)
    assert all("shut down" in (s.export(make_spans(1)).error or "") for s in sinks)


def test_failover_needs_at_least_one_sink() -> None:
    with pytest.raises(ValueError, match="at least one sink"):
        FailoverSink([])
