"""A pipeline's side of its disk spool: writing events to it, and the spool's share of the accounting.

Raw records (queue overflow, shutdown leftovers) and built spans (a failed export) are written as spool
records of at most ``record_bytes`` each, so that replaying one stays inside the replay budget, and
of one priority each (:func:`by_priority`): at the cap, the bulk is evicted before rewards. A record
the spool can never hold is split until the offending event stands alone; that one is dropped and
counted ``oversize``, the rest are stored. ``in_spool`` counts this pipeline's events on disk;
``recovered`` the events of other processes' spools that this one delivered or lost.

A record lost on disk (evicted at the cap, counted ``spool_full``; or damaged, counted ``corrupt``)
is counted with the event count this writer gave the spool when it appended it: the record's own
bytes are gone or untrustworthy. A record some other process wrote (an orphaned spool's) has no known
count: it is counted as one event, the least it held, and joins ``recovered``.
"""

from __future__ import annotations

import logging
import os
import shutil
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from agentemit.codec import encode_span
from agentemit.emit.events import HIGH_PRIORITY_EVENT_KINDS, KIND_PREFIX
from agentemit.pipeline import spill_format
from agentemit.pipeline.config import PipelineConfig
from agentemit.pipeline.replay import RecordProgress, spool_record_bytes
from agentemit.pipeline.spool import Spool, SpoolLockedError, SpoolLoss
from agentemit.pipeline.stats import DropReason, PipelineStats
from agentemit.semconv import SPAN_EVENT_PREFIX, SPAN_EXCEPTION, SPAN_REWARD
from agentemit.span import Span
from agentemit.tracing.context import RawRecord

logger = logging.getLogger("agentemit")

_Item = TypeVar("_Item", RawRecord, Span)  # what a spool record holds: raw records or built spans
_HIGH_NAMES = frozenset({SPAN_REWARD, SPAN_EXCEPTION})
HIGH, BULK = 0, 1  # the spool priorities of the high lane's events (rewards, exceptions) and the rest


class SpoolWriter:
    """Writes a pipeline's events to its own spool (opened on first use) and counts what is there.

    Args:
        config: spool directory, size cap, durability and compression.
        stats: where spilled events and spool losses are counted.
        name: the pipeline's name: its spools live under ``<spool_dir>/<name>/``.
        resource: stamped on raw records when they are built at replay.
        count_lock: the pipeline's lock over its event counts (``in_spool`` and ``recovered`` too).
        spool: an open spool to use instead of this process's own directory; unless it already has an
            ``on_loss``, this writer counts its losses (not those found before, while it was opened).
    """

    def __init__(
        self,
        config: PipelineConfig,
        stats: PipelineStats,
        *,
        name: str,
        resource: Mapping[str, Any],
        count_lock: threading.Lock,
        spool: Spool | None = None,
    ) -> None:
        self.config = config
        self.stats = stats
        self.name = name
        self.resource = resource
        self.owner = os.urandom(8)  # marks this process's records, to tell them from recovered ones
        self.in_spool = 0
        self.recovered = 0
        self.orphans_left = False  # the last recovery pass left records of a dead process undelivered
        self.lost_records = {"evicted": 0, "damaged": 0}  # spool records, this one's and orphans'
        self._count_lock = count_lock
        self._spool = spool
        if spool is not None and spool.on_loss is None:
            spool.on_loss = self._on_lost
        self._open_lock = threading.Lock()
        self._record_bytes = spool_record_bytes(config)  # small enough to decode within the replay budget

    @property
    def current(self) -> Spool | None:
        """The spool if it has been opened, without opening it."""
        return self._spool

    def spool(self) -> Spool:
        """This pipeline's own spool (one directory per process, locked while open).

        Opened under a lock: the spill thread and the worker may both need it first at once, and the
        loser of an unguarded race would find the directory locked and lose its events.
        """
        spool = self._spool
        if spool is None:
            with self._open_lock:
                if self._spool is None:
                    directory = self._root() / f"{os.getpid()}-{self.owner.hex()[:8]}"
                    self._spool = Spool(
                        directory,
                        max_bytes=self.config.spool_max_bytes,
                        durability=self.config.durability,
                        compression=self.config.compression,
                        on_loss=self._on_lost,
                    )
                spool = self._spool
        return spool

    def pending_records(self) -> int:
        """Records on disk not yet acknowledged (0 while the spool is unopened)."""
        return 0 if self._spool is None else self._spool.pending_records()

    def close(self) -> None:
        if self._spool is not None:
            self._spool.close()

    def abandon_after_fork(self) -> None:
        """In a forked child: the parent keeps its spool; never touch or close it here."""
        if self._spool is not None:
            self._spool.abandon_after_fork()
        self._spool = None

    # --- writing --------------------------------------------------------------------------------

    def spool_raw(self, records: list[RawRecord], priority: int) -> None:
        """Spool raw records as records of about ``record_bytes`` (estimated) each, in one append."""
        parts = [(part, self._encode_raw(part)) for part in _split_by_bytes(records, self._record_bytes)]
        self._store(parts, self._encode_raw, priority)

    def spool_built(self, spans: list[Span]) -> None:
        """Spool a batch a sink failed to take, its high-lane spans apart from the rest: at the cap
        the bulk must go first, and one record holds one priority."""
        for priority, part in by_priority(spans, _span_is_high):
            try:
                parts = self._built_parts(part)
            except Exception:  # one unencodable span must not cost the batch: keep the rest, count it
                part = [s for s in part if self._encodable(s)]
                if not part:
                    continue
                parts = self._built_parts(part)
            self._store(parts, self._encode_built, priority)

    def _encode_built(self, spans: Sequence[Span]) -> bytes:
        return spill_format.encode_built(spans, self.owner)

    def _encode_raw(self, records: Sequence[RawRecord]) -> bytes:
        return spill_format.encode_raw(records, self.owner, self.resource)

    def _built_parts(self, spans: Sequence[Span]) -> list[tuple[Sequence[Span], bytes]]:
        """``spans`` as spool records of at most ``record_bytes`` each (halved until they fit), so a
        record decodes within the replay budget."""
        payload = self._encode_built(spans)
        if len(payload) <= self._record_bytes or len(spans) == 1:
            return [(spans, payload)]
        middle = len(spans) // 2
        return self._built_parts(spans[:middle]) + self._built_parts(spans[middle:])

    def _store(
        self, parts: Sequence[tuple[Sequence[_Item], bytes]], encode: Callable[[Sequence[_Item]], bytes], priority: int
    ) -> None:
        """Append ``(items, payload)`` records in one call (one fsync) and count the outcome.

        A record too large for the spool to ever hold is split in halves, re-encoded, until the
        offending event stands alone: it is dropped as ``oversize`` and the rest are stored.
        """
        total = sum(len(items) for items, _ in parts)
        try:
            result = self.spool().append(
                [payload for _, payload in parts], priority=priority, counts=[len(items) for items, _ in parts]
            )
        except Exception as exc:
            self.stats.drop(DropReason.SPOOL_FULL, total)
            logger.error("agentemit: spool write failed (%s); %d event(s) lost", exc, total)
            return
        stored = sum(len(items) for items, _ in parts[: result.stored])
        self.stats.add("spilled", stored)
        with self._count_lock:
            self.in_spool += stored
        if not result.too_large:
            self.stats.drop(DropReason.SPOOL_FULL, total - stored)
            return
        (items, payload), rest = parts[result.stored], parts[result.stored + 1 :]
        if len(items) > 1:
            middle = len(items) // 2
            self._store([(half, encode(half)) for half in (items[:middle], items[middle:])], encode, priority)
        else:
            self.stats.drop(
                DropReason.OVERSIZE,
                detail=f"{describe_event(items[0])} ({len(payload):,} bytes encoded), more than the spool can "
                f"hold (spool_max_bytes={self.config.spool_max_bytes:,})",
            )
        if rest:
            self._store(rest, encode, priority)

    def _encodable(self, span: Span) -> bool:
        try:
            encode_span(span)
        except Exception as exc:
            self.stats.drop(DropReason.INVALID)
            logger.warning("agentemit: span %s (%s) cannot be encoded, dropped: %s", span.span_id, span.name, exc)
            return False
        return True

    # --- accounting -----------------------------------------------------------------------------

    def _on_lost(self, loss: SpoolLoss) -> None:
        """A spool record dropped undelivered: count its events (see the module docstring)."""
        count = loss.count or 1
        with self._count_lock:
            if loss.count:  # ours: only this writer gives the spool counts
                self.in_spool -= count
            else:
                self.recovered += count
            self.lost_records[loss.reason] += 1
        self.stats.drop(DropReason.SPOOL_FULL if loss.reason == "evicted" else DropReason.CORRUPT, count)

    def snapshot(self) -> dict[str, int]:
        """The spool's share of the pipeline's stats: records lost on disk, and the bytes it holds."""
        spool = self._spool
        with self._count_lock:
            lost = dict(self.lost_records)
        return {
            "corrupt_records": lost["damaged"],
            "evicted_records": lost["evicted"],
            "bytes_on_disk": 0 if spool is None else spool.disk_bytes(),
        }

    def settle(self, header: spill_format.SpillHeader, progress: RecordProgress) -> None:
        """A replayed record is done with: commit its counts; its events leave ``in_spool`` (ours) or
        join ``recovered``."""
        if progress.taken:
            self.stats.add("exported", progress.taken)
            self.stats.add("replayed", progress.taken)
        for reason, count in progress.drops.items():
            self.stats.drop(reason, count)
        with self._count_lock:
            if header.owner == self.owner:
                self.in_spool -= header.count
            else:
                self.recovered += header.count

    # --- other processes' spools ----------------------------------------------------------------

    def _root(self) -> Path:
        return self.config.resolved_spool_dir() / self.name

    def recover_orphans(self, replay: Callable[[Spool], int]) -> int:
        """Deliver, with ``replay``, what dead processes left in sibling spool directories; returns
        the spans delivered.

        A directory whose lock can be taken has no live owner. Its records are replayed to the sink
        (counted as ``recovered``) and the directory is removed once empty.
        """
        root = self._root()
        if not root.is_dir():
            return 0
        own = self._spool.directory if self._spool is not None else None
        delivered = 0
        left = False
        for directory in sorted(p for p in root.iterdir() if p.is_dir() and p != own):
            try:
                orphan = Spool(
                    directory,
                    max_bytes=self.config.spool_max_bytes,
                    durability=self.config.durability,
                    on_loss=self._on_lost,  # damage found while it opens is counted too
                )
            except SpoolLockedError:
                continue  # a live process owns it
            except Exception as exc:
                logger.warning("agentemit: cannot open spool %s: %s", directory, exc)
                continue
            try:
                delivered += replay(orphan)
                empty = orphan.pending_records() == 0
            finally:
                orphan.close()
            if empty:
                shutil.rmtree(directory, ignore_errors=True)
            else:
                left = True
        self.orphans_left = left
        return delivered


_T = TypeVar("_T")


def by_priority(items: Iterable[_T], is_high: Callable[[_T], bool]) -> list[tuple[int, list[_T]]]:
    """``items`` as ``(spool priority, part)``: the high ones (``HIGH``) first, then the rest (``BULK``),
    each in order; empty parts left out."""
    high: list[_T] = []
    bulk: list[_T] = []
    for item in items:
        (high if is_high(item) else bulk).append(item)
    return [(priority, part) for priority, part in ((HIGH, high), (BULK, bulk)) if part]


def _span_is_high(span: Span) -> bool:
    """A built span of a high-lane kind: a reward, an exception, or a custom event registered "high"."""
    name = span.name
    if name.startswith(SPAN_EVENT_PREFIX):
        return KIND_PREFIX + name.removeprefix(SPAN_EVENT_PREFIX) in HIGH_PRIORITY_EVENT_KINDS
    return name in _HIGH_NAMES


def describe_event(item: RawRecord | Span) -> str:
    """Names an event in a loss message: its kind (raw record) or span name, and span id."""
    if isinstance(item, Span):
        return f"{item.name} span {item.span_id}"
    return f"{item[0]} event"


def _split_by_bytes(records: list[RawRecord], max_bytes: int) -> list[list[RawRecord]]:
    """Consecutive parts of ``records``, each closed once its estimated bytes reach ``max_bytes``."""
    parts: list[list[RawRecord]] = []
    part: list[RawRecord] = []
    size = 0
    for record in records:
        part.append(record)
        size += record[12]
        if size >= max_bytes:
            parts.append(part)
            part, size = [], 0
    if part:
        parts.append(part)
    return parts
