"""The delivery pipeline: bounded priority lanes, overflow policies, a batching worker, spill and replay.

Data flow (see docs/ARCHITECTURE.md)::

    emit -> RolloutContext.emit -> Pipeline.submit (hot path: admission, one len, one append)
         -> worker: take batch -> build Span -> stages (filters, redaction) -> sink.export
                    \\-> on failure: spool (built form) -> replayed when the sink answers again
         -> overflow "spill": spill thread -> spool (raw form) -> replayed by the worker

Accounting (exact at quiescence)::

    emitted + recovered == exported + pending + in_spool + sum(dropped)

An event too large to ever be held or delivered is dropped alone and counted ``oversize``: at emit, one
whose estimated size exceeds the bulk lanes' byte budget (``memory_threshold`` * 0.85 * 0.8, one int
comparison); a batch the spool cannot store, or a sink refuses as too large, is split until the
offending event stands alone, so the rest of the batch is still spooled or delivered.

This module admits, queues and schedules; exporting a batch (and bisecting a refusal) is
``delivery.Delivery``, writing to the spool and its counts ``spooling.SpoolWriter``, and reading the
spool back ``replay.Replayer``.
"""

from __future__ import annotations

import atexit
import dataclasses
import logging
import math
import os
import threading
import time
import weakref
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from agentemit.emit.events import HIGH_PRIORITY_EVENT_KINDS as _HIGH_EVENTS
from agentemit.emit.events import event_policies
from agentemit.pipeline.builder import build_span
from agentemit.pipeline.config import HIGH_PRIORITY_KINDS, PipelineConfig
from agentemit.pipeline.delivery import Delivery, exporting
from agentemit.pipeline.lanes import SPILL_SHARE, Lanes
from agentemit.pipeline.replay import (
    DropCounter,
    Replayer,
    export_batch,
    replay_hold_bytes,
)
from agentemit.pipeline.sampling import AdaptiveShedder, CpuMonitor, HeadSampler, TokenBucket
from agentemit.pipeline.sink import Sink
from agentemit.pipeline.spool import Spool
from agentemit.pipeline.spooling import SpoolWriter, by_priority
from agentemit.pipeline.stats import DropReason, PipelineStats, _AtomicCounter, flush_loss_log
from agentemit.span import Span, decode_attributes
from agentemit.tracing.context import RawRecord

logger = logging.getLogger("agentemit")

Stage = Callable[[Span], "Span | None"]
_STAGE_LOG_INTERVAL = 10.0  # seconds between log lines about a failing stage (it may fail on every span)
_SPILL_CHUNK = 2000  # records the spill thread takes at a time: one spool append, one fsync
_HIGH = HIGH_PRIORITY_KINDS


@dataclass(frozen=True, slots=True)
class FlushReport:
    """What a flush or shutdown achieved by its deadline (truthy only when nothing was left in memory)."""

    completed: bool
    delivered: int
    pending: int
    in_spool: int
    dropped: Mapping[str, int] = field(default_factory=dict)  # every drop so far, by reason (not this call's)
    elapsed: float = 0.0

    def __bool__(self) -> bool:
        return self.completed


class Pipeline:
    """Delivers raw records from emitting threads to a sink without blocking or losing them.

    Args:
        sink: where batches go (wrap it for retries/failover; see ``pipeline/retry.py``).
        config: knobs; default ``PipelineConfig.from_env()``.
        stages: callables run on each built span in order (filters, redaction); None drops it.
        resource: OpenTelemetry resource attributes stamped on emitted spans.
        spool: an open :class:`Spool`; default one under ``config.resolved_spool_dir()``, opened on
            first use.
        clock: monotonic clock (injectable for tests).
        start: start the worker now (tests may drive :meth:`run_once` instead).
    """

    def __init__(
        self,
        sink: Sink,
        config: PipelineConfig | None = None,
        *,
        stages: Sequence[Stage] = (),
        resource: Mapping[str, Any] | None = None,
        spool: Spool | None = None,
        clock: Callable[[], float] = time.monotonic,
        start: bool = True,
        name: str = "default",
    ) -> None:
        self.config = config or PipelineConfig.from_env()
        self.sink = sink
        self.stages = list(stages)
        # Checked once here: a bad resource value would make every span of this pipeline unencodable.
        self.resource = decode_attributes(dict(resource or {}), "resource", empty_keys=False)
        self.clock = clock
        self.name = name
        self._base_config = self.config
        self._policy_key: object = None
        self.sampler = HeadSampler(self.config)
        self._batch_size = self.config.batch_size
        self._export_batch = export_batch(self.config)
        self._shedder = AdaptiveShedder() if self.config.adaptive_sampling else None
        self._cpu = CpuMonitor(clock=clock)
        self._start_threads = start
        self._apply_event_policies()
        self._init_runtime_state(spool)
        _live_pipelines.add(self)
        if start:
            self.start()

    def _init_runtime_state(self, spool: Spool | None) -> None:
        """Everything a forked child must rebuild: queues, locks, events, counters, threads, spool writer."""
        self.stats = PipelineStats()
        self._count_lock = threading.Lock()
        self._spooler = SpoolWriter(
            self.config, self.stats, name=self.name, resource=self.resource, count_lock=self._count_lock, spool=spool
        )
        self._delivery = Delivery(self.sink, self.config, self.stats, self._spooler, self.clock)
        self.lanes = Lanes(self.config)
        self._high = self.lanes.high
        self._low = self.lanes.low
        self._spill: deque[RawRecord] = deque()
        self._spill_capacity = max(_SPILL_CHUNK * 4, self.lanes.low_capacity)
        self._spill_bytes = 0  # estimated, like Lanes.queued_bytes
        self._spill_budget = max(_SPILL_CHUNK * 1024, int(self.config.memory_threshold * SPILL_SHARE))
        self._max_event_bytes = self.lanes.low_budget  # a bigger event could never be held: oversize
        self._last_oversize: tuple[str, int] | None = None  # (kind, size) of the latest refused at emit
        self._replayer = Replayer(
            build=self._build,
            deliver=self._delivery.redeliver,
            settle=self._spooler.settle,
            drop=self.stats.drop,
            batch_size=self._export_batch,
            max_bytes=replay_hold_bytes(self.config),
        )
        self._wake = threading.Event()
        self._spill_wake = threading.Event()
        self._room = threading.Event()
        self._stop = threading.Event()
        self._export_lock = threading.RLock()
        self._taken = 0  # records taken off the lanes or the spill deque
        self._inflight = 0
        self._flush_all = threading.Event()
        self._idle = threading.Condition()
        self._closed = False
        self._worker: threading.Thread | None = None
        self._spiller: threading.Thread | None = None
        self._orphans_left = False  # sibling spools of dead processes not yet delivered
        self._next_tick = math.inf  # set by the worker; run_once driven by hand never breaks for a tick
        self._tick_failed = self.stats.export_failed  # export counters at the last tick: the error
        self._tick_batches = self.stats.batches  # rate is judged over the interval since
        self._stage_errors_logged = 0
        self._stage_error_logged_at = -math.inf
        self._pid = os.getpid()
        self._admission_needed = bool(self._buckets) or self._shedder is not None

    # --- the hot path ---------------------------------------------------------------------------

    def submit(self, record: RawRecord) -> None:
        """Queue one raw record. Never blocks except under the ``block`` policy; never raises."""
        kind = record[0]
        if self._admission_needed and not self._admit(kind):
            return
        size = record[12]
        if size > self._max_event_bytes:  # could never be held: the one check this path adds
            self._refuse_oversize(record)
            return
        lanes = self.lanes
        if kind in _HIGH or kind in _HIGH_EVENTS:
            high, lane = True, self._high
            queued = len(lane) + len(self._low)
            room = queued < lanes.high_capacity and lanes.queued_bytes < lanes.high_budget
        else:
            high, lane = False, self._low
            queued = len(lane) + len(self._high)
            room = queued < lanes.low_capacity and lanes.queued_bytes < lanes.low_budget
        if room:  # Lanes.has_room, inlined: one Python call fewer on every emit
            lane.append(record)
            lanes.queued_bytes += size
            if queued + 1 == self._batch_size:  # both lanes together make a batch: wake the worker
                self._wake.set()
            return
        self._overflow(record, lane, high)

    def _refuse_oversize(self, record: RawRecord) -> None:
        """Count an event bigger than the queue's byte budget; the worker logs it (no I/O here)."""
        self._last_oversize = (record[0], record[12])
        self.stats.hot_drop(DropReason.OVERSIZE)

    def _admit(self, kind: str) -> bool:
        if self._closed:
            self.stats.hot_drop(DropReason.SHUTDOWN)
            _after_shutdown.incr()  # this pipeline has left agentemit.stats(): count it where it shows
            return False
        bucket = self._buckets.get(kind)
        if bucket is not None and not bucket.allow():
            self.stats.hot_drop(DropReason.RATE_LIMITED)
            return False
        shedder = self._shedder
        if shedder is not None and shedder.shedding and not shedder.admit(kind):
            self.stats.hot_drop(DropReason.SHED)
            return False
        return True

    def sampled_out(self, rollout_id: str) -> frozenset[str]:
        """Kinds a new rollout drops whole (head sampling); picks up newly registered event types."""
        self._apply_event_policies()
        return self.sampler.sampled_out(rollout_id)

    def _apply_event_policies(self) -> None:
        """Merge registered event types' sample rates and rate limits under the explicit config.

        Explicit ``kind_sample_rates`` / ``rate_limits`` win over a type's defaults. Called at start
        and whenever a rollout opens, so types registered later apply from their next rollout on.
        """
        policies = event_policies()
        key = tuple(sorted((k, p.sample_rate, p.rate_limit) for k, p in policies.items()))
        if key == self._policy_key:
            return
        self._policy_key = key
        base = self._base_config
        rates = {k: p.sample_rate for k, p in policies.items() if p.sample_rate is not None}
        limits = {k: p.rate_limit for k, p in policies.items() if p.rate_limit is not None}
        self.config = dataclasses.replace(
            base,
            kind_sample_rates={**rates, **base.kind_sample_rates},
            rate_limits={**limits, **base.rate_limits},
        )
        self.sampler = HeadSampler(self.config, kinds=policies)
        old = getattr(self, "_buckets", {})
        self._buckets = {
            k: old[k] if k in old and old[k].rate == r else TokenBucket(r, clock=self.clock)
            for k, r in self.config.rate_limits.items()
        }
        self._admission_needed = bool(self._buckets) or self._shedder is not None or getattr(self, "_closed", False)

    def count_sampled_out(self) -> None:
        """Called by a rollout context for an event of a kind its rollout sampled out."""
        self.stats.hot_drop(DropReason.SAMPLED_OUT)

    def _overflow(self, record: RawRecord, lane: deque[RawRecord], high: bool) -> None:
        policy = self.config.overflow_for(record[0])
        self._wake.set()
        if policy == "drop_newest":
            self.stats.hot_drop(DropReason.DROPPED_QUEUE_FULL)
        elif policy == "drop_oldest":
            self._drop_oldest_for(record, lane, high)
        elif policy == "block":
            if self._wait_for_room(lambda: self.lanes.has_room(high)):
                lane.append(record)
                self.lanes.queued_bytes += record[12]
            else:
                self.stats.hot_drop(DropReason.DROPPED_QUEUE_FULL)
        else:  # spill: the spill thread writes it to disk; wait only if the disk cannot keep up
            spill = self._spill
            if not self._spill_has_room() and not self._wait_for_room(self._spill_has_room):
                self.stats.hot_drop(DropReason.DROPPED_QUEUE_FULL)
                return
            spill.append(record)
            self._spill_bytes += record[12]
            if len(spill) % 256 == 1:
                self._spill_wake.set()

    def _drop_oldest_for(self, record: RawRecord, lane: deque[RawRecord], high: bool) -> None:
        """Drop the lane's oldest record, and more while ``record`` still does not fit in items and
        bytes (``Lanes.has_room``, inlined: every emit of an overflowing producer comes here); if the
        lane runs dry first (the other lane holds the memory), ``record`` itself is dropped."""
        lanes, drop = self.lanes, self.stats.hot_drop
        other = self._low if high else self._high
        capacity, budget = (lanes.high_capacity, lanes.high_budget) if high else (lanes.low_capacity, lanes.low_budget)
        while True:
            try:
                lanes.queued_bytes -= lane.popleft()[12]
            except IndexError:  # empty (or emptied by the worker meanwhile)
                if not lanes.has_room(high):
                    drop(DropReason.DROPPED_QUEUE_FULL)
                    return
                break
            drop(DropReason.DROPPED_QUEUE_FULL)
            if len(lane) + len(other) < capacity and lanes.queued_bytes < budget:
                break
        lane.append(record)
        lanes.queued_bytes += record[12]

    def _spill_has_room(self) -> bool:
        return len(self._spill) < self._spill_capacity and self._spill_bytes < self._spill_budget

    def _wait_for_room(self, has_room: Callable[[], bool]) -> bool:
        deadline = time.monotonic() + self.config.block_timeout
        while not has_room():
            remaining = deadline - time.monotonic()
            if remaining <= 0 or self._stop.is_set():
                return False
            self._room.clear()
            self._wake.set()
            self._spill_wake.set()
            self._room.wait(min(remaining, 0.005))
        return True

    # --- threads --------------------------------------------------------------------------------

    def start(self) -> None:
        """Start the worker and spill threads (idempotent)."""
        if self._worker is None or not self._worker.is_alive():
            self._worker = threading.Thread(target=self._run_worker, name=f"agentemit-{self.name}", daemon=True)
            self._worker.start()
        if self._spiller is None or not self._spiller.is_alive():
            self._spiller = threading.Thread(target=self._run_spiller, name=f"agentemit-{self.name}-spill", daemon=True)
            self._spiller.start()

    def _run_worker(self) -> None:
        with exporting():
            self._worker_loop()

    def _worker_loop(self) -> None:
        try:
            self._recover_at_start()
            self._next_tick = self.clock() + self.config.flush_interval
            while True:
                self._wake.wait(max(0.0, min(self._next_tick - self.clock(), self.config.flush_interval)))
                self._wake.clear()
                tick = self.clock() >= self._next_tick
                flush_all = tick or self._flush_all.is_set() or self._stop.is_set()
                if tick:
                    self._on_tick()
                    self._next_tick = self.clock() + self.config.flush_interval
                try:
                    self.run_once(flush_all=flush_all)
                except BaseException:  # one failed pass (even a SystemExit from user code) must not
                    logger.exception("agentemit: pipeline worker pass failed; retrying")  # stop delivery
                    self._stop.wait(0.05)
                if self._stop.is_set() and not len(self.lanes) and not self._spill:
                    break
        except Exception:  # the worker must never die silently
            logger.exception("agentemit pipeline worker crashed; events stay in the queue")

    def _recover_at_start(self) -> None:
        """Deliver what dead processes left in their spools; called again on ticks while any is left
        (the sink may have been down at start-up)."""
        try:
            with self._export_lock:
                recovered = self.recover_orphaned_spools()
                self._orphans_left = self._spooler.orphans_left
            if recovered:
                logger.warning("agentemit: delivered %d event(s) a previous process left in its spool", recovered)
        except Exception as exc:
            logger.warning("agentemit: spool recovery failed: %s", exc)

    def run_once(self, *, flush_all: bool = True) -> int:
        """Export what is queued (full batches only unless ``flush_all``); then replay the spool.

        Returns the number of records taken. Runs on the worker thread; tests may call it directly.
        """
        taken_total = 0
        with self._export_lock:
            while True:
                if not flush_all and len(self.lanes) < self._batch_size:
                    break
                records = self.lanes.take(self._export_batch)  # a backlog goes in bulk
                if not records:
                    break
                self._room.set()
                taken_total += len(records)
                self._process(records)
                if self.clock() >= self._next_tick:
                    break  # a sustained backlog must not starve the tick (CPU reading, logs, orphans)
            if not len(self.lanes):
                self._replay(flush_all)
            self._log_hot_drops()
        self._notify_idle()
        return taken_total

    def _log_hot_drops(self) -> None:
        """Log what the emitting threads refused since the last pass (they must not do the I/O)."""
        details: dict[str, str] = {}
        last = self._last_oversize
        if last is not None:
            details[DropReason.OVERSIZE.value] = (
                f"{last[0]} event of about {last[1]:,} bytes, more than the queue's "
                f"{self._max_event_bytes:,}-byte share of memory_threshold"
            )
        self.stats.log_hot_drops(details)

    def _process(self, records: list[RawRecord]) -> None:
        with self._count_lock:
            self._taken += len(records)
            self._inflight += len(records)
        try:
            spans = self._build(records)
            taken = self._delivery.deliver(spans)
            if taken:
                self.stats.add("exported", taken)
        finally:
            with self._count_lock:
                self._inflight -= len(records)

    def _build(self, records: Iterable[RawRecord | Span], drop: DropCounter | None = None) -> list[Span]:
        """Build and stage records; what is filtered or unbuildable is counted on ``drop`` (the stats)."""
        drop = self.stats.drop if drop is None else drop
        spans: list[Span] = []
        for record in records:
            try:
                span = record if isinstance(record, Span) else build_span(record, self.resource)
            except Exception as exc:
                drop(DropReason.INVALID)
                logger.warning("agentemit: could not build a span from a raw record: %s", exc)
                continue
            for stage in self.stages:
                try:
                    result = stage(span)
                except BaseException as exc:  # a broken stage keeps the span (unprocessed) and is counted
                    self.stats.add("stage_errors")
                    self._log_stage_error(stage, exc)
                    continue
                if result is None:
                    drop(DropReason.FILTERED)
                    break
                span = result
            else:
                spans.append(span)
        return spans

    def _log_stage_error(self, stage: Stage, exc: BaseException) -> None:
        """Log a failing stage at most once per ``_STAGE_LOG_INTERVAL``, with the failures since."""
        now = self.clock()
        if now - self._stage_error_logged_at < _STAGE_LOG_INTERVAL:
            return
        count = self.stats.stage_errors - self._stage_errors_logged
        self._stage_errors_logged = self.stats.stage_errors
        self._stage_error_logged_at = now
        logger.warning(
            "agentemit: pipeline stage %r failed (%d failure(s) since the last report; spans kept unprocessed): %s",
            stage,
            count,
            exc,
        )

    # --- spool --------------------------------------------------------------------------------

    def spool(self) -> Spool:
        """This pipeline's own spool (one directory per process, locked while open), opened on first use."""
        return self._spooler.spool()

    def recover_orphaned_spools(self) -> int:
        """Deliver what dead processes left in sibling spool directories; returns spans delivered."""
        return self._spooler.recover_orphans(lambda orphan: self._replay_from(orphan, flush_all=True))

    def _run_spiller(self) -> None:
        with exporting():
            while not (self._stop.is_set() and not self._spill):
                self._spill_wake.wait(0.05)
                self._spill_wake.clear()
                self._drain_spill()

    def _drain_spill(self) -> None:
        spill = self._spill
        while spill:
            chunk: list[RawRecord] = []
            popleft = spill.popleft
            while len(chunk) < _SPILL_CHUNK:
                try:
                    chunk.append(popleft())
                except IndexError:
                    break
            self._spill_bytes = 0 if not spill else self._spill_bytes - sum(r[12] for r in chunk)
            self._room.set()
            with self._count_lock:
                self._taken += len(chunk)
                self._inflight += len(chunk)
            try:
                for priority, part in by_priority(chunk, _record_is_high):
                    self._spill_part(part, priority)
            finally:
                with self._count_lock:
                    self._inflight -= len(chunk)
        self._notify_idle()

    def _spill_part(self, records: list[RawRecord], priority: int) -> None:
        try:
            self._spooler.spool_raw(records, priority)
        except Exception as exc:
            self.stats.drop(DropReason.INVALID, len(records))
            logger.error("agentemit: could not spill %d event(s): %s", len(records), exc)

    def _replay(self, flush_all: bool, deadline: float | None = None) -> None:
        """Replay spooled batches, oldest first, while the sink answers (worker thread)."""
        spool = self._spooler.current
        if self._closed or spool is None or spool.pending_records() == 0:
            return  # closed: shutdown() closed the spool; a worker outliving it must not touch it
        if self._delivery.waiting_for_probe():
            return  # a failed sink is tried again when its backoff (or Retry-After) is over, flush or not
        self._replay_from(spool, flush_all, deadline)

    def _replay_from(self, spool: Spool, flush_all: bool, deadline: float | None = None) -> int:
        """Replay ``spool`` (see ``pipeline/replay.py``); stops on a failure, when fresh events are
        waiting (unless ``flush_all``) or at ``deadline``. Returns the spans delivered."""

        def keep_going() -> bool:
            if not flush_all and len(self.lanes) >= self._batch_size:
                return False  # fresh events first; the rest waits for the next idle moment
            return deadline is None or time.monotonic() < deadline

        return self._replayer.replay(spool, keep_going)

    # --- ticks, flush, shutdown, stats ----------------------------------------------------------

    def _on_tick(self) -> None:
        if self._shedder is not None:
            was = self._shedder.shedding
            now = self._shedder.observe(self._cpu.utilisation())
            if now != was:
                logger.warning(
                    "agentemit: CPU %s 90%%; %s low-priority events",
                    "above" if now else "below",
                    "shedding" if now else "no longer shedding",
                )
        stats = self.stats
        batches, failed = stats.batches - self._tick_batches, stats.export_failed - self._tick_failed
        self._tick_batches, self._tick_failed = stats.batches, stats.export_failed
        if batches and failed / batches > 0.05:
            logger.warning(
                "agentemit: export error rate %.0f%% is above 5%% (%d of %d export attempts in the last %.0fs)",
                100.0 * failed / batches,
                failed,
                batches,
                self.config.flush_interval,
            )
        flush_loss_log()
        if self._orphans_left and not self._delivery.waiting_for_probe():
            self._recover_at_start()

    def _notify_idle(self) -> None:
        with self._idle:
            self._idle.notify_all()

    def pending(self) -> int:
        """Records in memory not yet delivered or spooled."""
        with self._count_lock:
            inflight = self._inflight
        return len(self.lanes) + len(self._spill) + inflight

    def force_flush(self, timeout: float = 5.0, *, drain_spool: bool = False) -> FlushReport:
        """Export everything queued, honouring ``timeout``; report what was delivered and what is left.

        With ``drain_spool`` it also keeps replaying the disk spool (retrying a failing sink) until the
        spool is empty or the deadline passes; ``completed`` then also requires an empty spool.
        """
        started = self.clock()
        exported_before = self.stats.exported
        deadline = time.monotonic() + timeout
        self._flush_all.set()
        try:
            with exporting():  # exports from the caller's thread must not be traced either
                self._flush_until(deadline, drain_spool)
        finally:
            self._flush_all.clear()
        return self._report(started, exported_before, drain_spool=drain_spool)

    def _flush_until(self, deadline: float, drain_spool: bool) -> None:
        while self.pending() and time.monotonic() < deadline:
            self._wake.set()
            self._spill_wake.set()
            if self._worker is None or not self._worker.is_alive():
                self._drain_spill()
                self.run_once(flush_all=True)
            with self._idle:
                self._idle.wait(min(0.01, max(0.0, deadline - time.monotonic())))
        while not self.pending() and self._spooler.current is not None and time.monotonic() < deadline:
            if self._export_lock.acquire(timeout=max(0.0, deadline - time.monotonic())):
                try:
                    self._replay(True, deadline)
                finally:
                    self._export_lock.release()
            if not drain_spool or self._spooler.pending_records() == 0:
                break
            time.sleep(min(0.05, max(0.0, deadline - time.monotonic())))

    def _report(self, started: float, exported_before: int, *, drain_spool: bool = False) -> FlushReport:
        pending = self.pending()
        with self._count_lock:
            in_spool = self._spooler.in_spool
        spool_empty = self._spooler.pending_records() == 0
        return FlushReport(
            completed=pending == 0 and (spool_empty or not drain_spool),
            delivered=self.stats.exported - exported_before,
            pending=pending,
            in_spool=in_spool,
            dropped=self.stats.drop_counts(),
            elapsed=self.clock() - started,
        )

    def shutdown(self, timeout: float | None = None) -> FlushReport:
        """Stop accepting, flush within ``timeout``, spool what is left, stop the threads. Idempotent."""
        timeout = self.config.shutdown_timeout if timeout is None else timeout
        started = self.clock()
        exported_before = self.stats.exported
        if self._closed:
            return self._report(started, exported_before)
        deadline = time.monotonic() + timeout
        report = self.force_flush(timeout * 0.8, drain_spool=True)
        self._closed = True
        self._admission_needed = True
        self._stop.set()
        self._wake.set()
        self._spill_wake.set()
        for thread in (self._worker, self._spiller):
            if thread is not None and thread is not threading.current_thread():
                thread.join(max(0.0, deadline - time.monotonic()))
        leftovers = self.lanes.take(len(self.lanes)) + list(self._spill)
        self._spill.clear()
        self._spool_leftovers(leftovers)
        self._shutdown_sink(deadline)
        self._spooler.close()
        _live_pipelines.discard(self)
        flush_loss_log(force=True)  # the last held-back loss lines: no tick will come to write them
        del report
        return self._report(started, exported_before)

    def _shutdown_sink(self, deadline: float) -> None:
        """``sink.shutdown`` on a daemon thread, waited for until ``deadline`` at most: a sink that
        ignores its timeout must not hold up the program's exit."""

        def run() -> None:
            try:
                with exporting():
                    self.sink.shutdown(max(0.0, deadline - time.monotonic()))
            except BaseException as exc:
                logger.warning("agentemit: sink shutdown failed: %s", exc)

        thread = threading.Thread(target=run, name=f"agentemit-{self.name}-sink-shutdown", daemon=True)
        thread.start()
        thread.join(max(0.0, deadline - time.monotonic()))
        if thread.is_alive():
            logger.warning("agentemit: sink %s did not shut down in time; left behind", type(self.sink).__name__)

    def _spool_leftovers(self, leftovers: list[RawRecord]) -> None:
        """Out of time at shutdown: keep what is still queued on disk rather than lose it (by priority,
        so queued messages never evict spooled rewards at the cap)."""
        with self._count_lock:
            self._taken += len(leftovers)
        for priority, part in by_priority(leftovers, _record_is_high):
            try:
                self._spooler.spool_raw(part, priority)
            except Exception:
                self.stats.drop(DropReason.SHUTDOWN, len(part))

    def stats_snapshot(self) -> dict[str, Any]:
        """Counters plus derived figures; ``emitted`` is exact when the pipeline is quiet."""
        drops = self.stats.drop_counts()
        with self._count_lock:
            taken, inflight = self._taken, self._inflight
            in_spool, recovered = self._spooler.in_spool, self._spooler.recovered
        queued = len(self.lanes) + len(self._spill)
        hot = sum(c.value for c in self.stats.hot_drops.values())
        stage_stats: dict[str, dict[str, Any]] = {}
        for stage in self.stages:  # stages that count (e.g. the Redactor) expose stats() -> dataclass
            stats_fn = getattr(stage, "stats", None)
            value = stats_fn() if callable(stats_fn) else None
            if dataclasses.is_dataclass(value) and not isinstance(value, type):
                stage_stats[type(stage).__name__] = dataclasses.asdict(value)
        return self.stats.snapshot(
            stages=stage_stats,
            redaction=stage_stats.get("Redactor", {}),
            emitted=taken + queued + hot,
            pending=queued + inflight,
            queue_depth=queued,
            queue_bytes=self.lanes.estimated_bytes(),
            in_spool=in_spool,
            recovered=recovered,
            spool=self._spooler.snapshot(),
            sink_healthy=self._delivery.healthy,
            stage_errors=self.stats.stage_errors,
            shedding=bool(self._shedder and self._shedder.shedding),
            dropped=drops,
        )

    def _after_fork_in_child(self) -> None:
        """The child starts empty: the parent still owns (and will deliver) what was queued."""
        self._spooler.abandon_after_fork()
        self._buckets = {kind: bucket.fresh() for kind, bucket in self._buckets.items()}
        self._init_runtime_state(None)
        if self._start_threads:
            self.start()


def _is_high(kind: str) -> bool:
    """Whether a raw record kind rides the high-priority lane (built-in or registered custom kind)."""
    return kind in _HIGH or kind in _HIGH_EVENTS


def _record_is_high(record: RawRecord) -> bool:
    return _is_high(record[0])


_live_pipelines: weakref.WeakSet[Pipeline] = weakref.WeakSet()
_after_shutdown = _AtomicCounter()


def after_shutdown_count() -> int:
    """Events emitted into a rollout whose pipeline had already shut down (e.g. after
    ``teardown_worker``), in this process: lost, and counted here since the pipeline's own stats
    are no longer listed."""
    return _after_shutdown.value


def _after_fork() -> None:
    for pipeline in list(_live_pipelines):
        pipeline._after_fork_in_child()


def _shutdown_all() -> None:
    """At interpreter exit: every pipeline within one shared deadline (the longest shutdown_timeout),
    not one after another each with its own."""
    pipelines = list(_live_pipelines)
    if not pipelines:
        return
    deadline = time.monotonic() + max(p.config.shutdown_timeout for p in pipelines)
    for pipeline in pipelines:
        try:
            pipeline.shutdown(max(0.0, deadline - time.monotonic()))
        except Exception:  # interpreter exit: never raise
            logger.exception("agentemit: pipeline shutdown at exit failed")


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork)
atexit.register(_shutdown_all)
