"""Failover wrapper: sends to the first healthy sink in priority order.

A sink that fails with a retryable error, or answers slower than ``slow_threshold``, is benched for
``cooldown`` seconds: later batches go to the next sink, and to the benched one again once its cooldown
ends. This keeps a struggling primary from adding its timeout to every batch while it recovers.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from agentemit.pipeline.sink import ExportResult, Sink
from agentemit.span import Span


@dataclass(frozen=True, slots=True)
class FailoverStats:
    """Counters per sink index (0 is the primary)."""

    served: tuple[int, ...]  # batches each sink accepted
    failures: tuple[int, ...]  # attempts that failed
    slow: tuple[int, ...]  # successes slower than slow_threshold
    all_failed: int  # batches no sink accepted
    preferred: int  # the sink the next batch will try first


class FailoverSink:
    """Tries sinks in order and returns the first success.

    Sinks not benched are tried first, in priority order, then benched ones as a last resort (so a
    batch is never refused just because every sink is cooling down). A retryable failure or a slow
    answer benches a sink for ``cooldown`` seconds; a non-retryable failure moves this batch on to the
    next sink but does not bench (it says the batch was refused, not that the endpoint is unhealthy).
    If every sink fails, the result is the last failure, with the errors of all attempts, and it is
    retryable if any attempt's failure was (another sink may take the batch later), unless a sink
    refused it as too large: then it is ``too_large``, so the pipeline splits it now and the parts
    that fit are delivered, instead of spooling the whole batch to wait for the other sinks.

    Args:
        sinks: in priority order; at least one.
        slow_threshold: seconds; a successful answer slower than this benches the sink.
        cooldown: seconds a benched sink is passed over.
        clock: monotonic seconds, for response times and cooldowns.

    Raises:
        ValueError: no sinks, or a negative threshold or cooldown.
    """

    def __init__(
        self,
        sinks: Sequence[Sink],
        *,
        slow_threshold: float = 1.0,
        cooldown: float = 30.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not sinks:
            raise ValueError("failover sink: needs at least one sink")
        if slow_threshold < 0 or cooldown < 0:
            raise ValueError(f"failover sink: slow_threshold {slow_threshold!r} and cooldown {cooldown!r} must be >= 0")
        self.sinks = tuple(sinks)
        self.slow_threshold = slow_threshold
        self.cooldown = cooldown
        self._clock = clock
        self._lock = threading.Lock()
        n = len(self.sinks)
        self._benched_until = [float("-inf")] * n
        self._served = [0] * n
        self._failures = [0] * n
        self._slow = [0] * n
        self._all_failed = 0
        self.last_response_times: list[float | None] = [None] * n

    def _order(self, now: float) -> list[int]:
        with self._lock:
            ready = [i for i, until in enumerate(self._benched_until) if until <= now]
            benched = [i for i, until in enumerate(self._benched_until) if until > now]
        return ready + benched

    def export(self, batch: Sequence[Span]) -> ExportResult:
        """Send to the first sink that accepts the batch; never raises."""
        failures: list[tuple[int, ExportResult]] = []
        for index in self._order(self._clock()):
            started = self._clock()
            result = self._attempt(index, batch)
            finished = self._clock()
            took = finished - started
            with self._lock:
                self.last_response_times[index] = took
                if result.ok:
                    self._served[index] += 1
                    if took > self.slow_threshold:
                        self._slow[index] += 1
                        self._benched_until[index] = finished + self.cooldown
                    else:
                        self._benched_until[index] = float("-inf")
                    return result
                self._failures[index] += 1
                if result.retryable:
                    self._benched_until[index] = finished + self.cooldown
            failures.append((index, result))
        with self._lock:
            self._all_failed += 1
        return _combine(failures)

    def _attempt(self, index: int, batch: Sequence[Span]) -> ExportResult:
        sink = self.sinks[index]
        try:
            return sink.export(batch)
        except Exception as exc:  # the contract says sinks never raise; a buggy one must not kill the worker
            return ExportResult.failure(f"{type(sink).__name__} raised {type(exc).__name__}: {exc}")

    def stats(self) -> FailoverStats:
        """A snapshot of which sinks served, failed and were slow."""
        now = self._clock()
        preferred = self._order(now)[0]
        with self._lock:
            return FailoverStats(
                served=tuple(self._served),
                failures=tuple(self._failures),
                slow=tuple(self._slow),
                all_failed=self._all_failed,
                preferred=preferred,
            )

    def force_flush(self, timeout: float) -> bool:
        """Flush every sink within one shared ``timeout``; True only if all flushed."""
        give_up_at = self._clock() + timeout
        flushed = True
        for sink in self.sinks:
            flushed = sink.force_flush(max(0.0, give_up_at - self._clock())) and flushed
        return flushed

    def shutdown(self, timeout: float) -> None:
        """Shut every sink down within one shared ``timeout``."""
        give_up_at = self._clock() + timeout
        for sink in self.sinks:
            sink.shutdown(max(0.0, give_up_at - self._clock()))


def _combine(failures: list[tuple[int, ExportResult]]) -> ExportResult:
    last = failures[-1][1]
    if len(failures) == 1:
        return last
    retryable = [r for _, r in failures if r.retryable]
    waits = [r.retry_after for r in retryable if r.retry_after is not None]
    error = f"all {len(failures)} sinks failed: " + "; ".join(f"[{i}] {r.error}" for i, r in failures)
    too_large = any(r.too_large for _, r in failures)
    return ExportResult.failure(
        error, retryable=bool(retryable), retry_after=min(waits) if waits else None, too_large=too_large
    )
