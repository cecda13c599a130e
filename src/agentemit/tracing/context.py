"""The active rollout, held in a contextvar so threads and asyncio tasks each see their own.

This module is the emit hot path: :meth:`RolloutContext.emit` captures name, time, attributes and
ids into a tuple (a *raw record*) and hands it to the pipeline. Full :class:`~agentemit.span.Span`
records are built later, off the emitting thread (see ``pipeline/builder.py``).

Raw record layout (index: meaning)::

    0 kind        "message" | "reward" | "exception" | "object" | "event.<name>" | "otel"
    1 name        span name
    2 start_ns    3 end_ns
    4 attributes  dict (owned by the record from now on), or flat (key, value, key, value ...) pairs
    5 trace_id    32-digit hex of the rollout's trace
    6 span_id     int (64-bit)
    7 parent_id   int (64-bit) or 0
    8 sequence_id int, increasing per rollout
    9 rollout_id  10 attempt_id
    11 extra      None, or the OpenTelemetry ReadableSpan for kind "otel"
    12 size       estimated bytes in memory (RECORD_OVERHEAD + the big strings the emitter knows of)

The usual rewards, messages and objects carry flat pairs, not a dict: a tuple holding only plain values (and
tuples of them) is dropped from the garbage collector's lists the first times it survives a
collection, while one holding a dict is traversed by every collection until the worker takes it. A
backlog of 100,000 queued records would otherwise be walked again by each full collection. Exceptions
carry flat pairs too (no dict to build on the agent's thread), though their deferred stack trace keeps
them tracked.
"""

from __future__ import annotations

import itertools
import os
import random
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from typing import Any

from opentelemetry import context as _otel_context
from opentelemetry.trace.propagation import _SPAN_KEY

RawRecord = tuple[str, str, int, int, "dict[str, Any] | tuple[Any, ...]", str, int, int, int, str, str, Any, int]
RECORD_OVERHEAD = 700  # a raw record's tuple, attribute dict, ints and short strings, measured roughly
Deliver = Callable[[RawRecord], None]

_time_ns = time.time_ns


def _otel_context_getter() -> Callable[[], Any]:
    """OpenTelemetry's current context. With its default contextvars runtime (the only one it ships),
    the ContextVar's own ``get``: one C call on the hot path instead of two Python frames."""
    var = getattr(getattr(_otel_context, "_RUNTIME_CONTEXT", None), "_current_context", None)
    if isinstance(var, ContextVar):
        return var.get
    return _otel_context.get_current


_otel_current_context = _otel_context_getter()


class RolloutContext:
    """One active ``trace_context``: rollout identity, sequence counter and where records go."""

    __slots__ = (
        "attempt_id",
        "deliver",
        "new_span_id",
        "on_sampled_out",
        "parent",
        "records",
        "rollout_id",
        "root_otel_span",
        "sampled_out",
        "sequence",
        "span_id",
        "trace_hex",
        "trace_id",
    )

    def __init__(
        self,
        *,
        rollout_id: str,
        attempt_id: str,
        trace_id: int,
        span_id: int,
        sequence: Iterator[int],
        deliver: Deliver,
        records: list[RawRecord] | None = None,
        sampled_out: frozenset[str] = frozenset(),
        on_sampled_out: Callable[[], None] = lambda: None,
        new_span_id: Callable[[], int] | None = None,
        root_otel_span: Any = None,
        parent: RolloutContext | None = None,
    ) -> None:
        self.rollout_id = rollout_id
        self.attempt_id = attempt_id
        self.trace_id = trace_id
        self.trace_hex = format(trace_id, "032x")
        self.span_id = span_id
        self.sequence = sequence
        self.deliver = deliver
        self.records = records
        self.sampled_out = sampled_out
        self.on_sampled_out = on_sampled_out
        self.new_span_id = new_span_id  # None: the process-wide generator (looked up per call: fork-safe)
        self.root_otel_span = root_otel_span
        self.parent = parent

    def emit(self, kind: str, name: str, attrs: dict[str, Any] | tuple[Any, ...], size: int = 0) -> None:
        """Record one event span; the hot path. Never blocks except under the ``block`` policy."""
        if kind in self.sampled_out:
            self.on_sampled_out()
            return
        now = _time_ns()
        parent_id = self.span_id
        current: Any = _otel_current_context().get(_SPAN_KEY)
        if current is not None and current is not self.root_otel_span:
            ctx = current.get_span_context()
            if ctx.trace_id == self.trace_id:
                parent_id = ctx.span_id
        record: RawRecord = (
            kind,
            name,
            now,
            now,
            attrs,
            self.trace_hex,
            _span_ids.next_id() if self.new_span_id is None else self.new_span_id(),  # C call, no frame
            parent_id,
            next(self.sequence),
            self.rollout_id,
            self.attempt_id,
            None,
            RECORD_OVERHEAD + size,
        )
        records = self.records
        if records is not None:
            records.append(record)
        self.deliver(record)


def as_attributes(attrs: dict[str, Any] | tuple[Any, ...]) -> dict[str, Any]:
    """A record's attributes as a dict: emitters may pass flat ``(key, value, key, value ...)`` pairs."""
    if type(attrs) is not tuple:
        return attrs  # type: ignore[return-value]
    return dict(zip(attrs[::2], attrs[1::2], strict=True))


class SpanIdGenerator:
    """64-bit span ids: a random 32-bit prefix per process plus a counter.

    Ids stay unique (the prefix is random per process and re-drawn after fork) but consecutive ids
    are adjacent, so stores insert them at one end of their primary-key B-tree instead of at random
    places: with random ids a SQLite batch insert runs 2-4x slower (see BENCHMARKS.md).
    """

    def __init__(self) -> None:
        self.reseed()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self.reseed)

    def reseed(self) -> None:
        prefix = (random.getrandbits(32) or 1) << 32
        self.next_id = itertools.count(prefix + 1).__next__

    def __call__(self) -> int:
        return self.next_id()


_span_ids = SpanIdGenerator()


def counter(start: int = 0) -> Iterator[int]:
    """A thread-safe increasing sequence (``next`` on itertools.count is atomic in CPython)."""
    return itertools.count(start)


CURRENT: ContextVar[RolloutContext | None] = ContextVar("agentemit_rollout", default=None)
"""The rollout this thread or task is emitting into, or None."""
