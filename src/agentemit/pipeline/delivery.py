"""Delivery of built batches to the pipeline's sink, and the sink's health.

A batch the sink refuses for good is bisected until each refused span stands alone, so one bad span
never costs the rest; a retryable failure sends the batch to the spool (unless it was read back from
it) and holds further exports until the sink's next probe is due. Probes back off exponentially with
jitter (``retry_base_delay`` doubling up to ``retry_max_delay``) and never come sooner than a
server's Retry-After: the spool is the retry queue, so a failing sink never holds up the worker.
Every export runs in :func:`exporting`, so it never produces spans of its own.
"""

from __future__ import annotations

import contextlib
import logging
import random
import threading
from collections.abc import Callable, Iterator

from opentelemetry import context as otel_context

from agentemit.codec import encode_span
from agentemit.pipeline.config import PipelineConfig
from agentemit.pipeline.replay import DropCounter
from agentemit.pipeline.sink import ExportResult, Sink
from agentemit.pipeline.spooling import SpoolWriter, describe_event
from agentemit.pipeline.stats import DropReason, PipelineStats
from agentemit.span import Span
from agentemit.tracing.context import CURRENT

logger = logging.getLogger("agentemit")

Loss = tuple[DropReason, int, str]  # (reason, events, what to log)

# A server's Retry-After is honoured up to this many seconds; a longer one (or a bogus 10**9) must not
# park the spool for days. Spooled events wait on disk meanwhile, and a restart replays them.
MAX_RETRY_AFTER = 300.0
_JITTER = 0.5  # a probe delay loses a random share of up to half of it, so clients do not retry in step


class Delivery:
    """Exports batches for a pipeline (its worker, its flushes and its spool replay).

    Args:
        sink: where batches go.
        config: ``retry_max_delay`` and ``flush_interval`` bound the wait before probing a failed sink.
        stats: export counters and latency, and losses.
        spooler: where a batch goes when the sink fails.
        clock: monotonic seconds.
        rng: a float in [0, 1), for the probe delay's jitter.
    """

    def __init__(
        self,
        sink: Sink,
        config: PipelineConfig,
        stats: PipelineStats,
        spooler: SpoolWriter,
        clock: Callable[[], float],
        rng: Callable[[], float] = random.random,
    ) -> None:
        self.sink = sink
        self.config = config
        self.stats = stats
        self.clock = clock
        self.rng = rng
        self._spooler = spooler
        self.healthy = True  # False after a retryable failure, until an export succeeds
        self.failures = 0  # retryable failures in a row: the exponent of the next probe's backoff
        self.next_probe = 0.0  # when a failed sink may be tried again

    def probe_delay(self, retry_after: float | None) -> float:
        """Seconds until the next try after the ``failures``-th retryable failure in a row: the server's
        Retry-After if it gave one (capped at :data:`MAX_RETRY_AFTER`), else capped exponential backoff
        less a random share of up to half of it."""
        if retry_after is not None:
            return min(max(0.0, retry_after), MAX_RETRY_AFTER)
        config = self.config
        exponent = min(self.failures - 1, 64)  # 2.0**64 * any base already exceeds any sane cap
        delay = min(config.retry_max_delay, config.retry_base_delay * 2.0**exponent)
        return delay * (1.0 - _JITTER * self.rng())

    def waiting_for_probe(self) -> bool:
        """The sink failed and its next try is not due yet."""
        return not self.healthy and self.clock() < self.next_probe

    def deliver(self, spans: list[Span], *, replaying: bool = False, drop: DropCounter | None = None) -> int | None:
        """Export one batch; returns how many spans the sink took.

        A batch the sink refuses for good is split until each refused span stands alone; those are
        counted ``oversize`` (refused for their size) or ``invalid``. None means a retryable failure:
        unless replaying, the batch (or the failed part of it) went to the spool. A replay that
        returns None leaves its spool record to be replayed whole, so its refusals are counted then,
        once, not now. Callers count what was taken as exported.
        """
        losses: list[Loss] = []
        taken = self._export_split(spans, replaying, losses)
        if taken is not None or not replaying:
            for reason, count, detail in losses:
                self._count_loss(reason, count, detail, drop)
        return taken

    def _count_loss(self, reason: DropReason, count: int, detail: str, drop: DropCounter | None) -> None:
        """Count on the stats (their loss log is rate-limited) or on ``drop``, a replayed record's tally
        that is committed when the record settles (logged here, as the stats would)."""
        if drop is None:
            self.stats.drop(reason, count, detail=detail)
        else:
            drop(reason, count)
            logger.warning("agentemit: %d event(s) dropped as %s: %s", count, reason.value, detail)

    def _export_split(
        self,
        spans: list[Span],
        replaying: bool,
        losses: list[Loss],
    ) -> int | None:
        """:meth:`deliver` without the counting: what the sink refused for good goes to ``losses``."""
        if not spans:
            return 0
        if not replaying and self.waiting_for_probe():
            self._spooler.spool_built(spans)
            return None
        started = self.clock()
        interrupt: BaseException | None = None
        try:
            with exporting():
                result = _checked_result(self.sink.export(spans), self.sink, len(spans))
        except BaseException as exc:  # sinks must not raise; one that does has failed, retryably
            result = ExportResult.failure(f"{type(self.sink).__name__} raised {type(exc).__name__}: {exc}")
            interrupt = _interrupt_to_reraise(exc)
        self.stats.export_latency.observe(self.clock() - started)
        self.stats.add("batches")
        if result.ok:
            self.healthy = True
            self.failures = 0
            if result.rejected:  # accepted, with some spans refused (the receiver does not say which)
                losses.append((DropReason.INVALID, result.rejected, result.error or "rejected by the sink"))
            return len(spans) - result.rejected
        self.stats.add("export_failed")
        if interrupt is not None:  # Ctrl-C while a flush exported from the main thread: keep the batch
            if not replaying:
                self._spooler.spool_built(spans)
            raise interrupt
        if not result.retryable:
            if len(spans) > 1:  # isolate the bad or oversize span(s): one never poisons a batch
                middle = len(spans) // 2
                left = self._export_split(spans[:middle], replaying, losses)
                right = self._export_split(spans[middle:], replaying, losses)
                if replaying and (left is None or right is None):
                    return None  # the record stays in the spool; what was taken is counted on its re-replay
                return (left or 0) + (right or 0)
            losses.append(_refusal(spans[0], result))
            return 0  # refused for good: counted by deliver, nothing to retry
        self.healthy = False
        self.failures += 1
        delay = self.probe_delay(result.retry_after)
        self.next_probe = self.clock() + delay
        if not replaying:
            self._spooler.spool_built(spans)
        logger.warning("agentemit: export failed (%s); batch kept in the spool, next try in %.1fs", result.error, delay)
        return None

    def redeliver(self, spans: list[Span], drop: DropCounter) -> int | None:
        """Deliver a batch read back from a spool (a failure leaves it there, not spooled again)."""
        return self.deliver(spans, replaying=True, drop=drop)


@contextlib.contextmanager
def exporting() -> Iterator[None]:
    """The context every export runs in, on any thread: no active rollout (emits inside a sink are
    no-ops) and an empty OpenTelemetry context with instrumentation suppressed, so exporting never
    produces spans of its own."""
    rollout_token = CURRENT.set(None)
    otel_token = otel_context.attach(
        otel_context.set_value(otel_context._SUPPRESS_INSTRUMENTATION_KEY, True, otel_context.Context())
    )
    try:
        yield
    finally:
        otel_context.detach(otel_token)
        CURRENT.reset(rollout_token)


def _checked_result(result: object, sink: Sink, count: int) -> ExportResult:
    """``result`` if it is a sound :class:`ExportResult` for a batch of ``count``; otherwise a retryable
    failure naming the fault, so a buggy sink's answer never loses or double-counts a batch."""
    if not isinstance(result, ExportResult):
        return ExportResult.failure(f"{type(sink).__name__}.export returned {result!r}, not an ExportResult")
    if result.ok and (type(result.rejected) is not int or not 0 <= result.rejected <= count):
        return ExportResult.failure(
            f"{type(sink).__name__}.export reported {result.rejected!r} of {count} spans rejected"
        )
    return result


def _interrupt_to_reraise(exc: BaseException) -> BaseException | None:
    """A KeyboardInterrupt or SystemExit on the main thread is the user stopping the program: it goes on
    (after the batch is kept). Anything else a sink raises, on any thread, is only a failed export."""
    if isinstance(exc, (KeyboardInterrupt, SystemExit)) and threading.current_thread() is threading.main_thread():
        return exc
    return None


def _refusal(span: Span, result: ExportResult) -> Loss:
    """How to count a span the sink refused alone: ``oversize`` when refused for its size."""
    if result.too_large:
        detail = f"{describe_event(span)} ({_encoded_size(span)} encoded), refused alone by the sink: {result.error}"
        return DropReason.OVERSIZE, 1, detail
    return DropReason.INVALID, 1, f"{describe_event(span)} refused by the sink: {result.error}"


def _encoded_size(span: Span) -> str:
    try:
        return f"{len(encode_span(span)):,} bytes"
    except Exception:  # it reached the sink, so it encodes; this is a loss message, never a crash
        return "size unknown"
