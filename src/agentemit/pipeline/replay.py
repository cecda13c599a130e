"""Replaying the disk spool with memory bounded in bytes, one delivery batch at a time.

A spilled spool can hold gigabytes; draining it must not hold more than a small, fixed share of
``memory_threshold`` at once. Two bounds do that:

* each round asks :meth:`Spool.replay` for at most ``max_bytes`` of payloads (at least one record),
  and acknowledges the round's delivered records in one call (one cursor fsync per round); a round
  the sink fails releases the rest (:meth:`Spool.release`), so the spool's cap may evict them again;
* each record is decoded and delivered :func:`export_batch` events at a time, releasing what was delivered
  (:func:`spill_format.decode_batches`), so only one batch of built spans is alive at once.

Exactness when the sink fails part-way through a record: the record stays pending, and
:class:`RecordProgress` remembers how many of its events are done, so the retry resumes after them
(the sink is not sent them again by this process). A record's counts (exported, replayed, drops)
are committed only when it settles, and a failed batch's drops are discarded with it, so the
accounting invariant holds at every quiet moment and no drop is counted twice.
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol, cast

from agentemit.pipeline import spill_format
from agentemit.pipeline.config import PipelineConfig
from agentemit.pipeline.spool import Spool, SpoolEntry
from agentemit.pipeline.stats import DropReason
from agentemit.span import Span
from agentemit.tracing.context import RawRecord

logger = logging.getLogger("agentemit")

REPLAY_SHARE = 0.05  # of memory_threshold: what replaying may hold (payloads in hand plus one record decoding)
MIN_REPLAY_BYTES = 64 * 1024
# orjson parses a document with a transient peak of about 14x its size (measured with tracemalloc,
# orjson 3.13, 50 KB to 3 MB of raw rows); a record of 1/16 of the budget decodes within it.
DECODE_HEADROOM = 16


def export_batch(config: PipelineConfig) -> int:
    """Spans per export when a backlog is waiting (the queue past ``batch_size``, or a spool drain; at
    ``batch_size`` a drain ran ~20% slower end to end over OTLP/HTTP): ``max_export_batch``, never
    fewer than ``batch_size``. A spool record holds at most ``spool_record_bytes``, so replaying this
    many at a time stays inside the replay budget."""
    return max(config.batch_size, config.max_export_batch)


def replay_budget(config: PipelineConfig) -> int:
    """Bytes replaying may hold: a share of ``memory_threshold``, at least 64 KiB; split between the
    payloads a round has in hand (:func:`replay_hold_bytes`) and decoding one record
    (:func:`spool_record_bytes`).

    Replay runs when the queue is (nearly) empty, so this comes out of room the lanes leave.
    """
    return max(MIN_REPLAY_BYTES, int(config.memory_threshold * REPLAY_SHARE))


def replay_hold_bytes(config: PipelineConfig) -> int:
    """Payload bytes one replay round holds at once: half the replay budget, since decoding the record
    in hand (up to ~14/16 of the budget) comes on top; with the whole budget held, the overload
    benchmark's drain peaked ~1 MiB higher for a 4% faster drain (BENCHMARKS.md)."""
    return replay_budget(config) // 2


def spool_record_bytes(config: PipelineConfig) -> int:
    """The size a spool record is cut to when written, so that decoding one stays within the budget."""
    return replay_budget(config) // DECODE_HEADROOM


class DropCounter(Protocol):
    """Where a build or delivery step counts what it drops (the stats, or a batch's tally)."""

    def __call__(self, reason: DropReason, n: int = 1) -> None: ...


class Tally:
    """Drops counted provisionally, committed only if the work they belong to completes."""

    __slots__ = ("counts",)

    def __init__(self) -> None:
        self.counts: Counter[DropReason] = Counter()

    def __call__(self, reason: DropReason, n: int = 1) -> None:
        self.counts[reason] += n


@dataclass(slots=True)
class RecordProgress:
    """How far the replay of one spool record got; its counts wait here until the record settles."""

    directory: Path
    position: int
    done: int = 0  # events built and delivered or dropped
    taken: int = 0  # spans the sink took
    drops: Counter[DropReason] = field(default_factory=Counter)

    def advance(self, events: int, taken: int, tally: Tally) -> None:
        self.done += events
        self.taken += taken
        self.drops.update(tally.counts)

    def of(self, spool: Spool, entry: SpoolEntry) -> bool:
        """Whether this is the progress of ``entry`` of ``spool``."""
        return (self.directory, self.position) == (spool.directory, entry.position)


Build = Callable[[Sequence["RawRecord | Span"], DropCounter], list[Span]]
Deliver = Callable[[list[Span], DropCounter], "int | None"]
Settle = Callable[[spill_format.SpillHeader, RecordProgress], None]


class Replayer:
    """Replays spool records through the pipeline's build and delivery steps, bounded in bytes.

    Args:
        build: raw records (form ``R``) to spans, running the stages; counts drops on the counter.
        deliver: exports one batch while replaying; spans taken, or None on a retryable failure.
        settle: commits a finished record's counts (:class:`RecordProgress`) to the pipeline.
        drop: the pipeline's own drop counter, for records that are not ours to decode.
        batch_size: events decoded and delivered at a time.
        max_bytes: payload bytes one round hands out (see :func:`replay_hold_bytes`).
    """

    def __init__(
        self, *, build: Build, deliver: Deliver, settle: Settle, drop: DropCounter, batch_size: int, max_bytes: int
    ) -> None:
        self._build = build
        self._deliver = deliver
        self._settle = settle
        self._drop = drop
        self.batch_size = batch_size
        self.max_bytes = max_bytes
        self._interrupted: RecordProgress | None = None  # the record a sink failure stopped in

    def replay(self, spool: Spool, keep_going: Callable[[], bool]) -> int:
        """Replay ``spool`` oldest first until it is empty, the sink fails or ``keep_going()`` is false.

        Returns the spans delivered.
        """
        delivered = 0
        while True:
            outcome = self._round(spool)
            if outcome is None:
                return delivered
            count, failed = outcome
            delivered += count
            if failed or not keep_going():
                return delivered

    def _round(self, spool: Spool) -> tuple[int, bool] | None:
        """Hand out up to ``max_bytes`` of records, deliver them, acknowledge the delivered ones in one
        call. None when the spool is empty, else (spans delivered, whether the sink failed).

        A function of its own so that a round's payloads are released before the next is read.
        """
        entries = spool.replay(max_bytes=self.max_bytes)
        if not entries:
            return None
        delivered = 0
        done: list[SpoolEntry] = []
        try:
            for entry in entries:
                count = self._replay_record(spool, entry)
                if count is None:
                    break
                delivered += count
                done.append(entry)
        finally:
            if done:
                spool.ack(done)
            self._release(spool, entries[len(done) :])
        return delivered, len(done) < len(entries)

    def _release(self, spool: Spool, undelivered: list[SpoolEntry]) -> None:
        """Make a failed round's undelivered records evictable again, except one a failure interrupted
        after delivering part of it: evicting that one would count delivered events as lost."""
        interrupted = self._interrupted
        if undelivered and interrupted is not None and interrupted.done and interrupted.of(spool, undelivered[0]):
            undelivered = undelivered[1:]
        if undelivered:
            spool.release(undelivered)

    def _replay_record(self, spool: Spool, entry: SpoolEntry) -> int | None:
        """Deliver one record batch by batch; the spans delivered, or None when the sink failed."""
        header = spill_format.read_header(entry.payload)
        if header is None:
            self._drop(DropReason.INVALID)
            logger.warning("agentemit: skipped a spool record that is not an agentemit payload")
            return 0
        progress = self._progress(spool, entry)
        try:
            for batch in spill_format.decode_batches(header, entry.payload, self.batch_size, skip=progress.done):
                tally = Tally()
                spans = self._build(batch, tally) if header.form == b"R" else cast("list[Span]", batch)
                taken = self._deliver(spans, tally)
                if taken is None:
                    self._interrupted = progress  # resume after the delivered batches; drop this tally
                    return None
                progress.advance(len(batch), taken, tally)
        except Exception as exc:  # undecodable: what was not yet delivered is lost, counted
            lost = max(0, header.count - progress.done)
            progress.drops[DropReason.INVALID] += lost
            logger.warning("agentemit: a spool record could not be decoded (%s); %d event(s) lost", exc, lost)
        self._interrupted = None
        self._settle(header, progress)
        return progress.taken

    def _progress(self, spool: Spool, entry: SpoolEntry) -> RecordProgress:
        """The interrupted progress of this very record, else a fresh start (a stale one is dropped:
        its record will be replayed whole, its uncommitted counts with it)."""
        interrupted = self._interrupted
        if interrupted is not None and interrupted.of(spool, entry):
            return interrupted
        return RecordProgress(spool.directory, entry.position)
