"""``OtelTracer``: installs an OpenTelemetry SDK TracerProvider and delivers rollouts to a store.

Spans from any other OpenTelemetry instrumentation started inside ``trace_context`` are collected
too, with parent/child links kept, because the context's root span is the current OTel span.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

from opentelemetry import context as otel_context
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider

from agentemit import semconv
from agentemit.pipeline.builder import build_span
from agentemit.pipeline.config import PipelineConfig
from agentemit.pipeline.factory import build_pipeline
from agentemit.pipeline.filters import SpanPredicate
from agentemit.pipeline.pipeline import FlushReport, Pipeline
from agentemit.pipeline.sink import Sink
from agentemit.span import Span
from agentemit.stores.base import SpanStore
from agentemit.tracing.base import Tracer
from agentemit.tracing.context import CURRENT, RawRecord, RolloutContext, counter
from agentemit.tracing.processor import RolloutSpanProcessor

logger = logging.getLogger("agentemit")
_PROVIDER_LOCK = threading.Lock()
_PROCESSOR = RolloutSpanProcessor()
_provider: TracerProvider | None = None


def install_provider() -> TracerProvider:
    """The process's SDK TracerProvider with our processor on it (created and set global if needed)."""
    global _provider
    with _PROVIDER_LOCK:
        if _provider is not None:
            return _provider
        current = otel_trace.get_tracer_provider()
        if isinstance(current, TracerProvider):
            provider = current
        else:
            provider = TracerProvider(resource=Resource.create({"service.name": "agentemit"}))
            otel_trace.set_tracer_provider(provider)  # ignored (with a warning) if another was set first
        provider.add_span_processor(_PROCESSOR)
        _provider = provider
        return provider


class _HighWater:
    """Next sequence id of recently closed attempts, so a rollout resumed before its spans reached the
    store does not reuse ids. Bounded: the oldest entries go first (the store knows those by then)."""

    def __init__(self, capacity: int = 10_000) -> None:
        self.capacity = capacity
        self._next: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, key: tuple[str, str]) -> int:
        with self._lock:
            return self._next.get(key, 0)

    def remember(self, key: tuple[str, str], next_id: int) -> None:
        with self._lock:
            self._next[key] = max(next_id, self._next.get(key, 0))
            self._next.move_to_end(key)
            while len(self._next) > self.capacity:
                self._next.popitem(last=False)


def attach_rollout_processor(provider: TracerProvider) -> None:
    """Collect spans of another SDK TracerProvider (e.g. one an SDK like AgentOps created) into rollouts."""
    provider.add_span_processor(_PROCESSOR)


def _discard(record: RawRecord) -> None:
    """Deliver function of a tracer with no store: spans are only kept for get_last_trace."""


class OtelTracer(Tracer):
    """The default tracer.

    Args:
        store: where spans go (through the pipeline); None keeps them in-process only.
        sink: a sink instead of a store (e.g. an OTLP/HTTP sink).
        config: pipeline settings (default from ``AGENTEMIT_*`` variables).
        keep_last_trace: keep each rollout's records in memory for :meth:`get_last_trace`.
        span_filter: a predicate; spans it rejects are dropped (counted as ``filtered``).
        id_generator: returns 64-bit span ids for emitted events (inject for deterministic tests).
    """

    def __init__(
        self,
        store: SpanStore | None = None,
        *,
        sink: Sink | None = None,
        config: PipelineConfig | None = None,
        keep_last_trace: bool = True,
        span_filter: SpanPredicate | None = None,
        stages: Sequence[Callable[[Span], Span | None]] | None = None,
        id_generator: Callable[[], int] | None = None,
        resource: dict[str, Any] | None = None,
    ) -> None:
        super().__init__()
        self.store = store
        self._sink = sink
        self.config = config
        self.keep_last_trace = keep_last_trace
        self.span_filter = span_filter
        self._stages = stages
        self.id_generator = id_generator
        self.resource: dict[str, Any] = {"service.name": "agentemit", **(resource or {})}
        self.pipeline: Pipeline | None = None
        self._otel_tracer: otel_trace.Tracer | None = None
        self._lock = threading.Lock()
        self.sequence_lookup_failures = 0
        self._sequence_high_water = _HighWater()

    # --- lifecycle ------------------------------------------------------------------------------

    def init(self) -> None:
        if self._otel_tracer is None:
            self._otel_tracer = install_provider().get_tracer("agentemit")

    def init_worker(self, worker_id: int | str, store: SpanStore | None = None) -> None:
        super().init_worker(worker_id, store)
        self.init()
        if store is not None:
            self.store = store
        self.resource["agentemit.worker_id"] = str(worker_id)
        self._ensure_pipeline()

    def _ensure_pipeline(self) -> Pipeline | None:
        if self.pipeline is None and (self.store is not None or self._sink is not None):
            with self._lock:
                if self.pipeline is None:
                    self.resource["process.pid"] = os.getpid()
                    self.pipeline = build_pipeline(
                        store=self.store,
                        sink=self._sink,
                        config=self.config,
                        span_filter=self.span_filter,
                        stages=self._stages,
                        resource=self.resource,
                    )
        return self.pipeline

    def force_flush(self, timeout: float = 5.0, *, drain_spool: bool = False) -> FlushReport | None:
        """Flush the pipeline (None when this tracer has no store or sink); see ``Pipeline.force_flush``."""
        return self.pipeline.force_flush(timeout, drain_spool=drain_spool) if self.pipeline else None

    def teardown_worker(self) -> None:
        if self.pipeline is not None:
            self.pipeline.shutdown()
            self.pipeline = None

    def teardown(self) -> None:
        self.teardown_worker()

    def stats(self) -> dict[str, Any]:
        """The pipeline's counters (see ``Pipeline.stats_snapshot``) plus this tracer's own."""
        snapshot = self.pipeline.stats_snapshot() if self.pipeline else {}
        snapshot["sequence_lookup_failures"] = self.sequence_lookup_failures
        return snapshot

    # --- contexts -------------------------------------------------------------------------------

    def _enter(self, name: str | None, rollout_id: str | None, attempt_id: str | None) -> tuple[RolloutContext, Any]:
        self.init()
        assert self._otel_tracer is not None
        parent = CURRENT.get()
        rollout, attempt, new_rollout = self._resolve_ids(rollout_id, attempt_id)
        pipeline = self._ensure_pipeline()
        otel_parent = otel_context.get_current() if not new_rollout else otel_context.Context()
        span = self._otel_tracer.start_span(name or semconv.SPAN_ROLLOUT, context=otel_parent)
        sc = span.get_span_context()
        if new_rollout or parent is None:
            sequence = counter(self._sequence_start(rollout, attempt))
            records: list[RawRecord] | None = [] if self.keep_last_trace else None
        else:
            sequence, records = parent.sequence, parent.records
        ctx = RolloutContext(
            rollout_id=rollout,
            attempt_id=attempt,
            trace_id=sc.trace_id,
            span_id=sc.span_id,
            sequence=sequence,
            deliver=pipeline.submit if pipeline is not None else _discard,
            records=records,
            sampled_out=pipeline.sampled_out(rollout) if pipeline is not None else frozenset(),
            on_sampled_out=pipeline.count_sampled_out if pipeline is not None else (lambda: None),
            new_span_id=self.id_generator,
            root_otel_span=span,
            parent=parent,
        )
        reserved = (getattr(span, "attributes", None) or {}).get(semconv.SPAN_SEQUENCE_ID)  # set by on_start if nested
        span.set_attributes(
            {
                semconv.ROLLOUT_ID: rollout,
                semconv.ATTEMPT_ID: attempt,
                semconv.SPAN_SEQUENCE_ID: reserved if isinstance(reserved, int) else next(sequence),
            }
        )
        owns_registration = new_rollout or parent is None
        if owns_registration:
            _PROCESSOR.register(ctx)
        otel_token = otel_context.attach(otel_trace.set_span_in_context(span, otel_parent))
        token = CURRENT.set(ctx)
        return ctx, (ctx, span, otel_token, token, owns_registration)

    def _sequence_start(self, rollout_id: str, attempt_id: str) -> int:
        """Where a rollout's sequence ids continue from; never raises into the agent.

        An unreachable store (a remote server that is down) must not stop a rollout from opening: the
        ids then start at 0, which is right for every new attempt, and the failure is logged and counted.
        """
        local = self._sequence_high_water.get((rollout_id, attempt_id))  # spans maybe not yet flushed
        if self.store is None:
            return local
        try:
            return max(local, self.store.get_next_span_sequence_id(rollout_id, attempt_id))
        except Exception as exc:
            self.sequence_lookup_failures += 1
            if self.sequence_lookup_failures == 1 or self.sequence_lookup_failures % 100 == 0:
                logger.warning(
                    "agentemit: could not ask the store where rollout %r continues (%s); its sequence ids "
                    "start at 0 (%d such failure(s) so far)",
                    rollout_id,
                    exc,
                    self.sequence_lookup_failures,
                )
            return local

    def _exit(self, state: Any, exc: BaseException | None) -> None:
        ctx, span, otel_token, token, owns_registration = state
        if exc is not None:
            span.record_exception(exc)
            span.set_status(otel_trace.Status(otel_trace.StatusCode.ERROR, str(exc)))
        span.end()
        try:
            CURRENT.reset(token)
        except ValueError:  # exited in another context (e.g. a generator closed elsewhere)
            CURRENT.set(ctx.parent)
        with contextlib.suppress(Exception):  # detaching in another context: never raise into the agent
            otel_context.detach(otel_token)
        if owns_registration:
            _PROCESSOR.unregister(ctx)
            self._sequence_high_water.remember((ctx.rollout_id, ctx.attempt_id), next(ctx.sequence))
            if ctx.records is not None:
                self._remember_last(self._build_trace(ctx.records))

    def _build_trace(self, records: list[RawRecord]) -> list[Span]:
        spans = [build_span(r, self.resource) for r in records]
        spans.sort(key=lambda s: s.sequence_id)
        return spans

    def get_last_trace(self) -> list[Span]:
        return super().get_last_trace()
