"""Collects spans from any OpenTelemetry instrumentation into the rollout they belong to.

One processor is registered on the SDK TracerProvider for the whole process. Rollout contexts
register their trace id while open; a span that ends in a registered trace becomes a raw record of
that rollout (kind ``"otel"``) with a sequence id reserved when it started.
"""

from __future__ import annotations

import threading

from opentelemetry import context as otel_context
from opentelemetry.sdk.trace import ReadableSpan, SpanProcessor
from opentelemetry.sdk.trace import Span as SdkSpan

from agentemit import semconv
from agentemit.tracing.context import RawRecord, RolloutContext

_SDK_SPAN_SIZE = 3000  # an SDK span object with a handful of attributes, roughly


class RolloutSpanProcessor(SpanProcessor):
    """Routes finished SDK spans to the rollout whose trace they are in."""

    def __init__(self) -> None:
        self._rollouts: dict[int, RolloutContext] = {}
        self._lock = threading.Lock()
        self.orphans = 0  # spans that ended outside any open rollout (not recorded)

    def register(self, ctx: RolloutContext) -> None:
        with self._lock:
            self._rollouts[ctx.trace_id] = ctx

    def unregister(self, ctx: RolloutContext) -> None:
        with self._lock:
            if self._rollouts.get(ctx.trace_id) is ctx:
                del self._rollouts[ctx.trace_id]

    def on_start(self, span: SdkSpan, parent_context: otel_context.Context | None = None) -> None:
        ctx = self._rollouts.get(span.context.trace_id)
        if ctx is None or (span.attributes and semconv.SPAN_SEQUENCE_ID in span.attributes):
            return
        span.set_attributes(
            {
                semconv.ROLLOUT_ID: ctx.rollout_id,
                semconv.ATTEMPT_ID: ctx.attempt_id,
                semconv.SPAN_SEQUENCE_ID: next(ctx.sequence),
            }
        )

    def on_end(self, span: ReadableSpan) -> None:
        sc = span.context
        ctx = self._rollouts.get(sc.trace_id) if sc is not None else None
        attrs = span.attributes or {}
        seq = attrs.get(semconv.SPAN_SEQUENCE_ID)
        if ctx is None or sc is None or not isinstance(seq, int):
            self.orphans += 1
            return
        if "otel" in ctx.sampled_out:
            ctx.on_sampled_out()
            return
        record: RawRecord = (
            "otel",
            span.name,
            span.start_time or 0,
            span.end_time or 0,
            {},
            ctx.trace_hex,
            sc.span_id,
            span.parent.span_id if span.parent else 0,
            seq,
            str(attrs.get(semconv.ROLLOUT_ID, ctx.rollout_id)),
            str(attrs.get(semconv.ATTEMPT_ID, ctx.attempt_id)),
            span,
            _SDK_SPAN_SIZE,
        )
        if ctx.records is not None:
            ctx.records.append(record)
        ctx.deliver(record)

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30000) -> bool:
        return True
