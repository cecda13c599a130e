"""Loss accounting: counters by reason, always on.

The invariant the tests pin, per pipeline and exact when it is quiet (see :func:`unaccounted`)::

    emitted + recovered == exported + pending + in_spool + sum(dropped)

``emitted`` counts every record that reached the pipeline, including those refused at admission
(sampled out, rate limited, shed, after shutdown); ``recovered`` what it replayed from spools a dead
process left behind. Emits with no active rollout never reach a pipeline: they are counted once per
process as ``no_tracer`` (``agentemit.stats()``).
Counters are bumped under one lock except on the hot path, where the only writes are
``itertools.count`` increments (atomic in CPython) for the rare refusal reasons. The emitting thread
never logs (logging is I/O and takes locks): the worker logs those drops for it (:meth:`log_hot_drops`).

``oversize`` counts events too large to ever be held or delivered: one bigger than the queue's share
of ``memory_threshold`` (refused at emit), than the spool can store, or than a sink accepts alone
(e.g. the store server's 413). Each is dropped alone; the rest of its batch goes on. Values the
redaction stage cuts to its size limits are not drops: the span is delivered, marked truncated.

``corrupt`` counts the events of spool records damaged on disk, with the count the pipeline gave when
it spooled them; a damaged record of another process's spool counts as one (``pipeline/spooling.py``).
"""

from __future__ import annotations

import enum
import itertools
import logging
import math
import os
import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

logger = logging.getLogger("agentemit")


class DropReason(str, enum.Enum):
    """Why an event did not reach a sink. Every drop is counted under exactly one reason."""

    SAMPLED_OUT = "sampled_out"
    FILTERED = "filtered"
    RATE_LIMITED = "rate_limited"
    DROPPED_QUEUE_FULL = "dropped_queue_full"
    OVERSIZE = "oversize"
    NO_TRACER = "no_tracer"
    SHUTDOWN = "shutdown"
    SHED = "shed"  # adaptive sampling under CPU pressure
    INVALID = "invalid"  # refused by a sink as malformed, or failed to build
    SPOOL_FULL = "spool_full"  # spool at its cap evicted or refused
    CORRUPT = "corrupt"  # a spool record damaged on disk (a record of another process's: one event)


class _AtomicCounter:
    """A counter safe to bump from any thread without a lock (``next`` on itertools.count is atomic)."""

    __slots__ = ("_count",)

    def __init__(self) -> None:
        self._count = itertools.count()

    def incr(self) -> None:
        next(self._count)

    @property
    def value(self) -> int:
        # repr is "count(N)": the number of increments so far.
        return int(repr(self._count)[6:-1])


@dataclass
class _Latency:
    count: int = 0
    total: float = 0.0
    max: float = 0.0

    def observe(self, seconds: float) -> None:
        self.count += 1
        self.total += seconds
        self.max = max(self.max, seconds)


@dataclass
class PipelineStats:
    """Counters of one pipeline; snapshot with :meth:`snapshot`."""

    _lock: threading.Lock = field(default_factory=threading.Lock)
    exported: int = 0
    spilled: int = 0  # written to the spool (not yet exported)
    replayed: int = 0  # read back from the spool and exported
    export_failed: int = 0  # export attempts that failed (a batch may fail then succeed)
    batches: int = 0
    stage_errors: int = 0
    drops: dict[str, int] = field(default_factory=dict)
    hot_drops: dict[str, _AtomicCounter] = field(
        default_factory=lambda: {r.value: _AtomicCounter() for r in DropReason}
    )
    hot_logged: dict[str, int] = field(default_factory=dict)  # hot drops already logged, per reason
    export_latency: _Latency = field(default_factory=_Latency)
    redaction: dict[str, int] = field(default_factory=dict)

    def add(self, name: str, n: int = 1) -> None:
        with self._lock:
            setattr(self, name, getattr(self, name) + n)

    def drop(self, reason: DropReason, n: int = 1, detail: str | None = None) -> None:
        """Count a drop from the worker or another non-hot-path place; ``detail`` names what was lost."""
        if n <= 0:
            return
        with self._lock:
            self.drops[reason.value] = self.drops.get(reason.value, 0) + n
        _loss_logger.log(reason, n, detail)

    def hot_drop(self, reason: DropReason) -> None:
        """Count one drop on the emitting thread: lock-free, and logged later by :meth:`log_hot_drops`."""
        self.hot_drops[reason.value].incr()

    def log_hot_drops(self, details: Mapping[str, str] | None = None) -> None:
        """Log (rate-limited) the hot-path drops counted since the last call, with ``details`` by reason.

        Called by the worker (one caller at a time), so the emitting thread never does the I/O.
        """
        for reason, counter in self.hot_drops.items():
            value = counter.value
            new = value - self.hot_logged.get(reason, 0)
            if new > 0:
                self.hot_logged[reason] = value
                _loss_logger.log(DropReason(reason), new, (details or {}).get(reason))

    def drop_counts(self) -> dict[str, int]:
        with self._lock:
            counts = dict(self.drops)
        for reason, counter in self.hot_drops.items():
            value = counter.value
            if value:
                counts[reason] = counts.get(reason, 0) + value
        return counts

    def snapshot(self, **extra: Any) -> dict[str, Any]:
        drops = self.drop_counts()
        with self._lock:
            lat = self.export_latency
            snap: dict[str, Any] = {
                "exported": self.exported,
                "spilled": self.spilled,
                "replayed": self.replayed,
                "export_failed": self.export_failed,
                "batches": self.batches,
                "dropped": drops,
                "dropped_total": sum(drops.values()),
                "export_latency_ms": {
                    "count": lat.count,
                    "mean": (lat.total / lat.count * 1000.0) if lat.count else 0.0,
                    "max": lat.max * 1000.0,
                },
                "redaction": dict(self.redaction),
            }
        snap.update(extra)
        return snap


def unaccounted(snapshot: Mapping[str, Any]) -> int:
    """``emitted + recovered - (exported + pending + in_spool + sum(dropped))`` of a stats snapshot.

    Zero when every event is accounted for; only meaningful when the pipeline is quiet (no emit or
    export in progress), since the counters are read one after another.
    """
    incoming = snapshot["emitted"] + snapshot["recovered"]
    outgoing = snapshot["exported"] + snapshot["pending"] + snapshot["in_spool"] + snapshot["dropped_total"]
    return int(incoming - outgoing)


class RateLimitedLogger:
    """Logs losses at most once per ``interval`` per reason, with the count since the last line.

    A loss may carry a ``detail`` (what was lost and why, e.g. an oversize event's kind and size); a
    line quotes the latest detail of its reason since the previous line.
    """

    def __init__(self, interval: float = 10.0, clock: Callable[[], float] = time.monotonic) -> None:
        self.interval = interval
        self.clock = clock
        self._lock = threading.Lock()
        self._last: dict[str, float] = {}
        self._pending: dict[str, int] = {}
        self._details: dict[str, str] = {}

    def log(self, reason: DropReason, n: int, detail: str | None = None) -> None:
        if reason in (DropReason.SAMPLED_OUT, DropReason.FILTERED):
            return  # deliberate, configured drops are counted but not worth a warning
        now = self.clock()
        with self._lock:
            self._pending[reason.value] = self._pending.get(reason.value, 0) + n
            if detail is not None:
                self._details[reason.value] = detail
            last = self._last.get(reason.value)
            if last is not None and now - last < self.interval:
                return
            self._last[reason.value] = now
            count = self._pending.pop(reason.value)
            latest = self._details.pop(reason.value, None)
        self._write(reason.value, count, latest)

    def flush(self, *, force: bool = False) -> None:
        """Log the losses held back by the rate limit once their interval is over (or now, with
        ``force``): without it, a burst of losses followed by quiet would never be reported in full."""
        now = self.clock()
        with self._lock:
            due = [r for r in self._pending if force or now - self._last.get(r, -math.inf) >= self.interval]
            lines = [(r, self._pending.pop(r), self._details.pop(r, None)) for r in due]
            for reason in due:
                self._last[reason] = now
        for reason, count, latest in lines:
            self._write(reason, count, latest)

    def reset_after_fork(self) -> None:
        """A forked child gets a new lock (a parent thread may have held the old one at the fork) and
        none of the parent's held-back counts (the parent reports those)."""
        self._lock = threading.Lock()
        self._pending.clear()
        self._details.clear()

    @staticmethod
    def _write(reason: str, count: int, latest: str | None) -> None:
        if latest is None:
            logger.warning("agentemit lost %d event(s): %s (see agentemit.stats())", count, reason)
        else:
            logger.warning(
                "agentemit lost %d event(s): %s, the last: %s (see agentemit.stats())", count, reason, latest
            )


_loss_logger = RateLimitedLogger()


def flush_loss_log(*, force: bool = False) -> None:
    """Write the loss lines the rate limit held back and whose interval is over (all, with ``force``)."""
    _loss_logger.flush(force=force)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_loss_logger.reset_after_fork)
