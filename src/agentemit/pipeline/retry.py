"""Retry wrapper: re-sends a batch with capped exponential backoff and jitter.

Backoff spreads retries out so that many clients do not hammer a recovering collector in step; the
deadline bounds how long one batch can hold up the pipeline worker; the stop event lets shutdown cut a
wait short instead of sitting out a long Retry-After.
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Sequence

from agentemit.pipeline.sink import ExportResult, Sink
from agentemit.span import Span


class RetryingSink:
    """Wraps a sink and retries its retryable failures; returns the last result.

    The wait before retry ``n`` (1-based) is ``min(max_delay, base_delay * 2**(n-1))`` less a random share
    of up to ``jitter`` of it, so it lies in ``[(1 - jitter) * d, d]`` and never exceeds ``max_delay``. A
    failure carrying ``retry_after`` waits that long instead; one asking for longer than ``max_delay`` or
    the time left is returned at once, so the caller (the pipeline's spool) retries it no sooner than
    the server asked, instead of this wrapper retrying early. Every wait is also
    capped by what is left of ``deadline`` (seconds from the start of the export) and followed by one more
    attempt; once the deadline has passed no new wait starts. A non-retryable failure is returned at once.

    Args:
        inner: the sink to retry.
        max_attempts: attempts in all, the first included (1 disables retrying).
        base_delay: seconds before the first retry.
        max_delay: cap on any single wait.
        jitter: fraction (0..1) of each backoff wait that may be randomly removed.
        deadline: seconds an export may spend in all, waits included.
        sleep: how to wait; ``None`` waits on ``stop`` so shutdown interrupts it. An injected ``sleep``
            (tests) is called instead, and ``stop`` is checked after it returns.
        clock: monotonic seconds.
        rng: returns a float in [0, 1), for jitter.
        stop: set it (or call :meth:`shutdown`) to end waiting; the export then returns its last result.

    Raises:
        ValueError: a parameter is out of range (the message names it).
    """

    def __init__(
        self,
        inner: Sink,
        *,
        max_attempts: int = 5,
        base_delay: float = 0.1,
        max_delay: float = 5.0,
        jitter: float = 0.5,
        deadline: float = 30.0,
        sleep: Callable[[float], object] | None = None,
        clock: Callable[[], float] = time.monotonic,
        rng: Callable[[], float] = random.random,
        stop: threading.Event | None = None,
    ) -> None:
        if max_attempts < 1:
            raise ValueError(f"retrying sink: max_attempts {max_attempts!r} must be at least 1")
        if base_delay < 0 or max_delay < 0:
            raise ValueError(f"retrying sink: delays must be >= 0 (base_delay {base_delay!r}, max_delay {max_delay!r})")
        if not 0.0 <= jitter <= 1.0:
            raise ValueError(f"retrying sink: jitter {jitter!r} must be between 0 and 1")
        if deadline <= 0:
            raise ValueError(f"retrying sink: deadline {deadline!r} must be positive")
        self.inner = inner
        self.max_attempts = max_attempts
        self.base_delay = base_delay
        self.max_delay = max_delay
        self.jitter = jitter
        self.deadline = deadline
        self._sleep = sleep
        self._clock = clock
        self._rng = rng
        self.stop = stop if stop is not None else threading.Event()
        self.retries = 0  # retries made over the sink's life (attempts beyond each batch's first)

    def backoff(self, retry: int) -> float:
        """The jittered wait before retry number ``retry`` (1-based), without Retry-After or deadline."""
        delay = min(self.max_delay, self.base_delay * 2.0 ** (retry - 1))
        return delay * (1.0 - self.jitter * self._rng())

    def _wait(self, seconds: float) -> None:
        if self._sleep is None:
            self.stop.wait(seconds)
        else:
            self._sleep(seconds)

    def export(self, batch: Sequence[Span]) -> ExportResult:
        """Export, retrying retryable failures until success, ``max_attempts``, the deadline or stop."""
        give_up_at = self._clock() + self.deadline
        attempt = 1
        result = self._attempt(batch)
        while not result.ok and result.retryable and attempt < self.max_attempts and not self.stop.is_set():
            left = give_up_at - self._clock()
            if left <= 0:
                break
            if result.retry_after is not None:
                wait = max(0.0, result.retry_after)
                if wait > self.max_delay or wait > left:
                    break  # retrying sooner than the server asked would only be refused again
            else:
                wait = self.backoff(attempt)
            self._wait(min(wait, left))
            if self.stop.is_set():
                break
            attempt += 1
            self.retries += 1
            result = self._attempt(batch)
        return result

    def _attempt(self, batch: Sequence[Span]) -> ExportResult:
        try:
            return self.inner.export(batch)
        except Exception as exc:  # the contract says sinks never raise; a buggy one must not kill the worker
            return ExportResult.failure(f"{type(self.inner).__name__} raised {type(exc).__name__}: {exc}")

    def force_flush(self, timeout: float) -> bool:
        return self.inner.force_flush(timeout)

    def shutdown(self, timeout: float) -> None:
        """Cut any wait short, then shut the inner sink down."""
        self.stop.set()
        self.inner.shutdown(timeout)
