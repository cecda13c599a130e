"""Emits with no active rollout: a cheap, counted no-op with one warning per process."""

from __future__ import annotations

import logging
import threading

from agentemit.pipeline.stats import _AtomicCounter

logger = logging.getLogger("agentemit")

_counter = _AtomicCounter()
_warned = threading.Event()


def count_no_tracer(kind: str) -> None:
    """Count an emit that had no trace context; warn the first time only."""
    _counter.incr()
    if not _warned.is_set():
        _warned.set()
        logger.warning(
            "agentemit: emit_%s called with no active trace_context; the event is not recorded "
            "(counted as no_tracer; this warning is shown once per process)",
            kind,
        )


def no_tracer_count() -> int:
    """How many emits had no active rollout in this process."""
    return _counter.value
