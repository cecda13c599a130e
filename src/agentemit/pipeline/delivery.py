"""Delivery of built batches to the pipeline's sink, and the sink's health.

A batch the sink refuses for good is bisected until each refused span stands alone, so one bad span
never costs the rest; a retryable failure sends the batch to the spool (unless it was read back from
it) and holds further exports until a probe interval has passed. Every export runs in
:func:`exporting`, so it never produces spans of its own.
"""

from __future__ import annotations

import contextlib
import logging
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


class Delivery:
    """Exports batches for a pipeline (its worker, its flushes and its spool replay).

    Args:
        sink: where batches go.
        config: ``retry_max_delay`` and ``flush_interval`` bound the wait before probing a failed sink.
        stats: export counters and latency, and losses.
        spooler: where a batch goes when the sink fails.
        clock: monotonic seconds.
    """

    def __init__(
        self, sink: Sink, config: PipelineConfig, stats: PipelineStats, spooler: SpoolWriter, clock: Callable[[], float]
    ) -> None:
        self.sink = sink
        self.config = config
        self.stats = stats
        self.clock = clock
        self._spooler = spooler
        self.healthy = True  # False after a retryable failure, until an export succeeds
        self.next_probe = 0.0  # when a failed sink may be tried again

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
        try:
            with exporting():
                result = self.sink.export(spans)
        except Exception as exc:  # sinks must not raise; if one does, treat it as a retryable failure
            result = ExportResult.failure(f"{type(exc).__name__}: {exc}")
        self.stats.export_latency.observe(self.clock() - started)
        self.stats.add("batches")
        if result.ok:
            self.healthy = True
            if result.rejected:  # accepted, with some spans refused (the receiver does not say which)
                losses.append((DropReason.INVALID, result.rejected, result.error or "rejected by the sink"))
            return len(spans) - result.rejected
        self.stats.add("export_failed")
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
        self.next_probe = self.clock() + min(self.config.retry_max_delay, self.config.flush_interval)
        if not replaying:
            self._spooler.spool_built(spans)
        logger.warning("agentemit: export failed (%s); batch spooled to disk for replay", result.error)
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
