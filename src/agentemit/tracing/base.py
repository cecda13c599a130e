"""The tracer contract: set up a process and its workers, and open rollout contexts.

Unlike Agent Lightning (one process-global active tracer; a second context raises), the active
rollout lives in a contextvar, so concurrent rollouts in threads or asyncio tasks each collect
exactly their own spans, and contexts nest.
"""

from __future__ import annotations

import abc
import uuid
from contextlib import AbstractAsyncContextManager, AbstractContextManager
from contextvars import ContextVar
from typing import Any

from agentemit.span import Span
from agentemit.stores.base import SpanStore
from agentemit.tracing.context import CURRENT, RolloutContext

_LAST_TRACE: ContextVar[tuple[Tracer, list[Span]] | None] = ContextVar("agentemit_last_trace", default=None)


class TraceContext(AbstractContextManager["RolloutContext"], AbstractAsyncContextManager["RolloutContext"]):
    """``trace_context(...)``: usable as ``with`` and ``async with``; yields the RolloutContext."""

    def __init__(self, tracer: Tracer, name: str | None, rollout_id: str | None, attempt_id: str | None) -> None:
        self._tracer = tracer
        self._args = (name, rollout_id, attempt_id)
        self._state: Any = None

    def __enter__(self) -> RolloutContext:
        ctx, self._state = self._tracer._enter(*self._args)
        return ctx

    def __exit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self._tracer._exit(self._state, exc)

    async def __aenter__(self) -> RolloutContext:
        return self.__enter__()

    async def __aexit__(self, exc_type: Any, exc: Any, tb: Any) -> None:
        self.__exit__(exc_type, exc, tb)


class Tracer(abc.ABC):
    """Base of every tracer. Subclasses implement :meth:`_enter` and :meth:`_exit`."""

    def __init__(self) -> None:
        self._last_trace: list[Span] = []
        self.worker_id: int | str | None = None

    def init(self) -> None:
        """Process-level set-up (idempotent)."""

    def init_worker(self, worker_id: int | str, store: SpanStore | None = None) -> None:
        """Per-worker set-up: remember the worker id and, optionally, the store to deliver to."""
        self.worker_id = worker_id

    def teardown_worker(self) -> None:
        """Flush and stop what :meth:`init_worker` started."""

    def teardown(self) -> None:
        """Undo :meth:`init`."""

    def trace_context(
        self, name: str | None = None, *, rollout_id: str | None = None, attempt_id: str | None = None
    ) -> TraceContext:
        """Open a rollout: every span emitted or started inside it is collected under its ids.

        Nested without ``rollout_id``: a child span of the enclosing rollout. With a new
        ``rollout_id``: a separate rollout. Ids default to fresh UUIDs (attempt: ``attempt-0``).
        """
        return TraceContext(self, name, rollout_id, attempt_id)

    def get_last_trace(self) -> list[Span]:
        """Spans of the context most recently closed in this thread/task (else in the process)."""
        last = _LAST_TRACE.get()
        if last is not None and last[0] is self:
            return list(last[1])
        return list(self._last_trace)

    def _remember_last(self, spans: list[Span]) -> None:
        self._last_trace = spans
        _LAST_TRACE.set((self, spans))

    @abc.abstractmethod
    def _enter(
        self, name: str | None, rollout_id: str | None, attempt_id: str | None
    ) -> tuple[RolloutContext, Any]: ...

    @abc.abstractmethod
    def _exit(self, state: Any, exc: BaseException | None) -> None: ...

    @staticmethod
    def current() -> RolloutContext | None:
        """The active rollout of this thread or task."""
        return CURRENT.get()

    @staticmethod
    def _resolve_ids(rollout_id: str | None, attempt_id: str | None) -> tuple[str, str, bool]:
        """(rollout_id, attempt_id, is_new_rollout) for a new context, inheriting from the current one."""
        parent = CURRENT.get()
        if rollout_id is None and parent is not None:
            return parent.rollout_id, attempt_id or parent.attempt_id, attempt_id not in (None, parent.attempt_id)
        return rollout_id or f"rollout-{uuid.uuid4().hex[:12]}", attempt_id or "attempt-0", True
