"""Helpers for users' tests: capture what an agent emits, in memory, with deterministic span ids.

::

    from agentemit import find_final_reward
    from agentemit.testing import capture_spans

    def test_the_agent_is_rewarded() -> None:
        with capture_spans() as captured:
            with captured.tracer.trace_context(rollout_id="r1"):
                run_agent()
        assert find_final_reward(captured.spans) == 1.0

A pytest fixture is three lines in your conftest::

    @pytest.fixture
    def captured() -> Iterator[CapturedSpans]:
        with capture_spans() as captured:
            yield captured

The capture has its own spool directory (removed afterwards), so it never replays spans another
process left in the default spool, and adaptive load shedding is off, so counts are exact.
"""

from __future__ import annotations

import dataclasses
import itertools
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from agentemit.pipeline.config import PipelineConfig
from agentemit.span import Span
from agentemit.stores.memory import InMemoryStore
from agentemit.tracing.otel import OtelTracer

__all__ = ["CapturedSpans", "capture_spans", "sequential_ids"]


def sequential_ids(start: int = 1) -> Callable[[], int]:
    """A thread-safe span-id generator counting up from ``start`` (1, 2, 3, ...).

    Pass it as ``OtelTracer(id_generator=...)`` so emitted events get predictable span ids. Spans
    started by OpenTelemetry itself (a context's root span, other instrumentation) keep the SDK's ids.

    Raises:
        ValueError: ``start`` is not a valid span id (1 to 2**64 - 1).
    """
    if not isinstance(start, int) or isinstance(start, bool) or not 0 < start < 2**64:
        raise ValueError(f"sequential_ids: start must be an int from 1 to 2**64 - 1, got {start!r}")
    return itertools.count(start).__next__  # next() on itertools.count is atomic in CPython


@dataclass
class CapturedSpans:
    """What :func:`capture_spans` yields: the tracer to trace with and, after a flush, the spans."""

    tracer: OtelTracer
    store: InMemoryStore
    spans: list[Span] = field(default_factory=list)

    def flush(self, timeout: float = 5.0) -> list[Span]:
        """Deliver everything emitted so far and return every stored span (also kept in ``spans``).

        Spans are grouped by rollout (in order of each rollout's first span), each rollout ordered by
        sequence id.

        Raises:
            RuntimeError: the pipeline did not deliver everything within ``timeout`` seconds.
        """
        report = self.tracer.force_flush(timeout)
        if report is not None and not report.completed:
            raise RuntimeError(
                f"capture_spans: {report.pending} span(s) still undelivered after {timeout}s "
                f"(dropped: {dict(report.dropped)})"
            )
        self.spans = [
            span for summary in self.store.list_rollouts() for span in self.store.query_spans(summary.rollout_id)
        ]
        return list(self.spans)

    def rollout(self, rollout_id: str) -> list[Span]:
        """The stored spans of one rollout, ordered by sequence id (flushes first)."""
        return [span for span in self.flush() if span.rollout_id == rollout_id]


@contextmanager
def capture_spans(
    *,
    config: PipelineConfig | None = None,
    id_generator: Callable[[], int] | None = None,
) -> Iterator[CapturedSpans]:
    """An initialised :class:`OtelTracer` over an :class:`InMemoryStore`; ``spans`` is filled on exit.

    Args:
        config: pipeline settings; default: fast flushes, redaction on, no adaptive shedding. A
            config without ``spool_dir`` gets a private temporary one.
        id_generator: span ids for emitted events; default :func:`sequential_ids`.

    Raises:
        RuntimeError: on a clean exit, when the flush could not deliver everything (see
            :meth:`CapturedSpans.flush`).
    """
    spool_dir = Path(tempfile.mkdtemp(prefix="agentemit-capture-"))
    if config is None:
        config = PipelineConfig(
            spool_dir=spool_dir, flush_interval=0.01, retry_base_delay=0.0, adaptive_sampling=False, redact=True
        )
    elif config.spool_dir is None:
        config = dataclasses.replace(config, spool_dir=spool_dir)
    store = InMemoryStore()
    tracer = OtelTracer(store, config=config, id_generator=id_generator or sequential_ids())
    tracer.init_worker("capture")
    captured = CapturedSpans(tracer=tracer, store=store)
    try:
        yield captured
        captured.flush()
    finally:
        try:
            tracer.teardown_worker()
        finally:
            store.close()  # ``spans`` holds decoded copies, so they outlive the store
            shutil.rmtree(spool_dir, ignore_errors=True)
