"""A disk spool (write-ahead log) so batches a sink cannot take right now are never lost.

The pipeline appends opaque payloads (an encoded batch each) when its queue overflows or a sink keeps
failing, and replays them, oldest first, when the sink recovers or at start-up. Delivery is
at-least-once: the store is idempotent on the span key, so a record may come out twice (a crash
between export and :meth:`Spool.ack`), but an acknowledged record is never handed out again, not even
after a restart.

On disk, a directory holds:

* ``seg-<20-digit sequence>.wal``: append-only segments named after the first sequence number they
  were opened for. A record is a 24-byte header (magic ``AEW1``, flags, 3 zero bytes, sequence u64,
  payload length u32, CRC32) followed by the stored payload, little-endian. The CRC covers the header
  fields after the magic and the payload, so a damaged length or sequence is caught like a damaged
  payload. Flags: bits 0-1 the compression (none/gzip/zstd), bits 2-3 the priority (0 = highest,
  e.g. rewards); higher bits must be zero.
* ``cursor.json``: every sequence below ``cursor`` is done, plus the (normally empty) list of
  sequences acknowledged out of order above it. Written to a temp file, fsynced and ``os.replace``\\ d.
* ``spool.lock``: an ``flock`` so two spools never write one directory.

A compaction or cursor write cut short leaves ``seg-<sequence>.wal.tmp`` or ``cursor.json.tmp``, deleted
at the next open; any other file in the directory is not the spool's and is left alone.

Why sequence numbers rather than file offsets as positions: eviction compacts segments (rewrites
them without the evicted and already acknowledged records), which moves offsets. A sequence number
travels with its record, so an entry handed out before a compaction can still be acknowledged after.

Recovery scans every segment once at open, checking each CRC; a torn tail or a damaged record is
skipped and counted, and scanning resumes at the next offset where a whole valid record starts.
An in-memory index makes replay, eviction and the pending counters cheap afterwards: per segment,
parallel arrays of sequence numbers, offsets, sizes, priorities, item counts and a live flag, about
30 bytes a record (one object per record took about 250, which a spool of a million small records
would turn into a quarter of a gigabyte outside any memory budget). Appends after a restart go to a
new segment, never after a torn tail.

Every record dropped undelivered is reported to ``on_loss`` (:class:`SpoolLoss`) with the item count
its appender gave: evicted at the cap, or damaged (found on replay or while recovering). The count
lives only in memory, since a damaged record's own bytes cannot be trusted to say what it held.
"""

from __future__ import annotations

import contextlib
import logging
import os
import re
import struct
import sys
import threading
import time
import zlib
from array import array
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import BinaryIO, Literal, NamedTuple, TypeAlias

import orjson

from agentemit.compression import COMPRESSIONS, Compression, CompressionError, check_compression, compress, decompress

if sys.platform != "win32":
    import fcntl

logger = logging.getLogger("agentemit")

Durability: TypeAlias = Literal["none", "batch", "always"]
DURABILITIES: tuple[Durability, ...] = ("none", "batch", "always")
PRIORITIES = range(4)  # 0 is the highest: evicted last

_MAGIC = b"AEW1"
_HEADER = struct.Struct("<4sB3xQII")  # magic, flags, pad, sequence, payload length, crc32
HEADER_SIZE = _HEADER.size
_MAX_PAYLOAD = 0xFFFFFFFF
_MAX_COUNT = 0xFFFFFFFF  # counts are indexed as u32
_SEGMENT_RE = re.compile(r"seg-(\d{20})\.wal")
_CURSOR_FILE = "cursor.json"
# The temp files a compaction or cursor write leaves if cut short; nothing else in the directory is ours.
_TMP_RE = re.compile(r"(?:seg-\d{20}\.wal|cursor\.json)\.tmp")
_LOCK_FILE = "spool.lock"
_CURSOR_FORMAT = "agentemit.spool.cursor"
_WARN_INTERVAL = 60.0  # seconds between two warnings of the same kind
_EVICT_SLACK = 10  # eviction frees a tenth of the cap beyond what an append needs (see Spool._victims)
# The spill thread must keep up with a producer flat out: zstd's fastest standard level. Levels 1 and
# 3 measured within noise of each other on spilled rows (BENCHMARKS.md, spool section).
_ZSTD_LEVEL = 1


class SpoolLockedError(RuntimeError):
    """Another :class:`Spool` (in this or another process) has the directory open."""


@dataclass(frozen=True, slots=True)
class SpoolEntry:
    """A record handed out by :meth:`Spool.replay`; ``position`` is its sequence number (stable)."""

    payload: bytes
    priority: int
    position: int


@dataclass(frozen=True, slots=True)
class AppendResult:
    """What one :meth:`Spool.append` did: the first ``stored`` payloads are on disk, the rest refused.

    ``evicted`` counts older, lower- or equal-priority records dropped to make room; ``error`` names
    an I/O failure when one caused the refusal. ``too_large``: the first refused payload is bigger
    (as stored, after compression) than this spool can ever hold, so no eviction could make room;
    a caller may split what it encodes and try again.
    """

    stored: int
    refused: int = 0
    evicted: int = 0
    error: str | None = None
    too_large: bool = False

    @property
    def ok(self) -> bool:
        return self.refused == 0


@dataclass(frozen=True, slots=True)
class SpoolLoss:
    """A record dropped undelivered, as reported to ``on_loss``: ``"evicted"`` at the cap, or ``"damaged"``.

    ``count`` is what :meth:`Spool.append` was told the record holds; 0 when it was not told, e.g. for
    records found at open, whose counts only the process that wrote them knew. ``position`` is None for
    a damaged region found while recovering: its sequence number cannot be trusted.
    """

    reason: Literal["evicted", "damaged"]
    count: int
    position: int | None = None


@dataclass(slots=True)
class SpoolStats:
    """Counters of one :class:`Spool` instance (a snapshot; ``bytes_on_disk`` counts segment files)."""

    appended: int = 0
    replayed: int = 0  # entries handed out by replay, repeats included
    acked: int = 0
    corrupt_records: int = 0  # damaged regions skipped, one per run of bad bytes
    evicted_records: dict[int, int] = field(default_factory=lambda: dict.fromkeys(PRIORITIES, 0))
    refused: int = 0
    bytes_on_disk: int = 0
    io_errors: int = 0


_Pending: TypeAlias = tuple[int, int, int, int, int]  # written, not indexed: seq, offset, size, priority, items


class _Record(NamedTuple):
    """A view of one indexed record, made on demand; valid until its segment is next rewritten."""

    seq: int
    segment: _Segment
    slot: int  # its index in the segment's arrays
    offset: int
    size: int  # header + stored payload
    priority: int
    items: int  # how many the appender said it holds; 0 if unknown


def _u64s() -> array[int]:
    return array("Q")


def _u32s() -> array[int]:
    return array("I")


@dataclass(eq=False, slots=True)
class _Segment:
    """One segment file and the index of its records, in file order (so in sequence order).

    Dead entries (acknowledged or evicted) keep their slots until the segment is rewritten or
    deleted, so the arrays of the segment being appended to are bounded by ``segment_bytes``.
    """

    path: Path
    first: int  # the sequence number it was opened for; its records' are this or higher
    size: int = 0
    live_count: int = 0
    live_bytes: int = 0
    seqs: array[int] = field(default_factory=_u64s)
    offsets: array[int] = field(default_factory=_u64s)
    sizes: array[int] = field(default_factory=_u64s)
    priorities: bytearray = field(default_factory=bytearray)
    counts: array[int] = field(default_factory=_u32s)
    alive: bytearray = field(default_factory=bytearray)  # 1 while pending

    def append(self, seq: int, offset: int, size: int, priority: int, count: int) -> None:
        self.seqs.append(seq)
        self.offsets.append(offset)
        self.sizes.append(size)
        self.priorities.append(priority)
        self.counts.append(count)
        self.alive.append(1)
        self.live_count += 1
        self.live_bytes += size

    def record(self, index: int) -> _Record:
        return _Record(
            self.seqs[index],
            self,
            index,
            self.offsets[index],
            self.sizes[index],
            self.priorities[index],
            self.counts[index],
        )

    def live(self, priority: int | None = None) -> Iterator[_Record]:
        """Pending records in order, all or of one priority (found by a C-speed search of the flags)."""
        flags, wanted = (self.alive, 1) if priority is None else (self.priorities, priority)
        alive = self.alive
        index = flags.find(wanted)
        while index != -1:
            if alive[index]:
                yield self.record(index)
            index = flags.find(wanted, index + 1)

    def find(self, seq: int) -> int:
        """The slot of the pending record with sequence number ``seq``, or -1."""
        slot = bisect_left(self.seqs, seq)
        if slot < len(self.seqs) and self.seqs[slot] == seq and self.alive[slot]:
            return slot
        return -1


def _encode_record(seq: int, flags: int, stored: bytes) -> bytes:
    head = _HEADER.pack(_MAGIC, flags, seq, len(stored), 0)
    crc = zlib.crc32(stored, zlib.crc32(head[4:20]))
    return head[:20] + crc.to_bytes(4, "little") + stored


def _header_ok(magic: bytes, flags: int) -> bool:
    return magic == _MAGIC and not flags & 0xF0 and flags & 3 < len(COMPRESSIONS)


def _parse(view: memoryview, off: int) -> tuple[int, int, int] | None:
    """``(flags, seq, size)`` of the valid record starting at ``off``, else None."""
    if len(view) - off < HEADER_SIZE:
        return None
    magic, flags, seq, length, crc = _HEADER.unpack_from(view, off)
    end = off + HEADER_SIZE + length
    if not _header_ok(magic, flags) or end > len(view):
        return None
    if zlib.crc32(view[off + HEADER_SIZE : end], zlib.crc32(view[off + 4 : off + 20])) != crc:
        return None
    return flags, seq, end - off


def _scan(data: bytes) -> tuple[list[tuple[int, int, int, int]], int]:
    """Valid records ``(offset, size, flags, seq)`` in ``data`` and how many damaged regions were skipped."""
    view = memoryview(data)
    found: list[tuple[int, int, int, int]] = []
    corrupt = 0
    off = 0
    while off < len(data):
        rec = _parse(view, off)
        if rec is not None:
            flags, seq, size = rec
            found.append((off, size, flags, seq))
            off += size
            continue
        corrupt += 1
        off = data.find(_MAGIC, off + 1)
        while off != -1 and _parse(view, off) is None:
            off = data.find(_MAGIC, off + 1)
        if off == -1:
            break
    return found, corrupt


def _check_counts(counts: Sequence[int] | None, n: int) -> Sequence[int]:
    """``counts`` checked against ``n`` payloads, or n zeros (unknown)."""
    if counts is None:
        return [0] * n
    if len(counts) != n:
        raise ValueError(f"spool.append: {len(counts)} counts for {n} payloads")
    for i, count in enumerate(counts):
        if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= _MAX_COUNT:
            raise ValueError(f"spool.append: count {i} is {count!r}; expected an int in 0..{_MAX_COUNT}")
    return counts


def _first_seq(seg: _Segment) -> int:
    return seg.first


def _fsync_dir(path: Path) -> None:
    """Make a create/rename/unlink in ``path`` durable (POSIX only; Windows cannot open directories)."""
    if os.name != "posix":
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class Spool:
    """An on-disk FIFO of opaque payloads with acknowledgement, a byte cap and priorities.

    Args:
        directory: created if missing; one open Spool per directory (else :class:`SpoolLockedError`).
        max_bytes: cap on the segment files. An append that would pass it first reclaims space held by
            acknowledged records, then evicts unacknowledged ones, lowest priority (highest number)
            first and oldest first within a priority, down to the incoming priority: an equal-priority
            newer record wins over an older one, a higher-priority one is never evicted for it. If that
            is not enough the rest of the append is refused (see :class:`AppendResult`). Eviction
            rewrites the affected segments in place (temp file + fsync + rename): simple and always
            consistent on disk, and it only happens at the cap. It frees a tenth of the cap more than
            the append needs (within the lowest priority it had to reach), so those rewrites are
            amortized over many appends.
        segment_bytes: a segment is closed once the next record would take it past this size.
        durability: ``"none"`` (never fsync; survives a process crash, not a power cut), ``"batch"``
            (one fsync per :meth:`append` call) or ``"always"`` (one fsync per record).
        compression: how payloads are stored; each record says how it was stored, so a spool reopened
            with another setting still reads old records.
        clock: seconds, for rate-limiting warnings.
        on_loss: called (outside the lock, and during construction for damage found while
            recovering) with each record dropped undelivered, so the caller can count what was lost.
            Also settable later as the ``on_loss`` attribute.

    Raises:
        ValueError: a bad argument, named.
        SpoolLockedError: the directory is already in use.
        OSError: the directory cannot be created or locked.

    After construction no method raises for damaged data or I/O failures: they are counted in
    :attr:`stats` and logged at a limited rate. Thread-safe (one lock).
    """

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        max_bytes: int = 1 << 30,
        segment_bytes: int = 16 << 20,
        durability: Durability = "batch",
        compression: Compression = "none",
        clock: Callable[[], float] = time.monotonic,
        on_loss: Callable[[SpoolLoss], None] | None = None,
    ) -> None:
        for name, value in (("max_bytes", max_bytes), ("segment_bytes", segment_bytes)):
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ValueError(f"spool: {name} must be an int > 0, got {value!r}")
        if durability not in DURABILITIES:
            raise ValueError(f"spool: durability {durability!r} is not one of {', '.join(DURABILITIES)}")
        self.directory = Path(directory)
        self.max_bytes = max_bytes
        self.segment_bytes = segment_bytes
        self.durability: Durability = durability
        self.compression = check_compression(compression)
        self._clock = clock
        self.on_loss = on_loss
        self._sync = durability != "none"
        self._lock = threading.Lock()
        self._live_count = 0  # unacknowledged records, indexed by their segments
        self._live_bytes = [0] * len(PRIORITIES)
        self._segments: list[_Segment] = []  # oldest first
        self._active: _Segment | None = None
        self._fd: int | None = None  # append handle of the active segment
        self._cursor = 0
        self._acked_ahead: set[int] = set()
        self._handed_out: set[int] = set()  # sequence numbers replayed, not yet acked: never evicted
        self._next_seq = 0
        self._stats = SpoolStats()
        self._warned: dict[str, float] = {}
        self._closed = False
        self.directory.mkdir(parents=True, exist_ok=True)
        self._lock_fd = self._lock_directory()
        self._report([SpoolLoss("damaged", 0)] * self._recover())

    # --- public API ------------------------------------------------------------------------------

    def append(
        self, payloads: Sequence[bytes], priority: int = 1, *, counts: Sequence[int] | None = None
    ) -> AppendResult:
        """Store ``payloads`` in order, all with ``priority`` (0..3, 0 highest).

        ``counts[i]``, if given, is how many items (e.g. events) ``payloads[i]`` holds, in the caller's
        unit: kept in memory and reported with the record if it is lost (:class:`SpoolLoss`).
        Returns what was stored; payloads past ``stored`` were refused (cap reached or I/O error). A
        payload that alone would not fit in ``max_bytes`` is refused without evicting anything
        (``AppendResult.too_large``).
        Raises ``ValueError``/``TypeError`` only for a bad priority or count, or a payload that is not bytes.
        """
        if not isinstance(priority, int) or isinstance(priority, bool) or priority not in PRIORITIES:
            raise ValueError(f"spool.append: priority {priority!r} is not in 0..{len(PRIORITIES) - 1}")
        counts = _check_counts(counts, len(payloads))
        stored: list[bytes] = []
        too_large = False
        for i, payload in enumerate(payloads):
            if not isinstance(payload, (bytes, bytearray, memoryview)):
                raise TypeError(f"spool.append: payload {i} is {type(payload).__name__}; expected bytes")
            # Outside the lock: CPU, not shared state.
            data = compress(bytes(payload), self.compression, zstd_level=_ZSTD_LEVEL)
            if len(data) > min(_MAX_PAYLOAD, self.max_bytes - HEADER_SIZE):
                too_large = True
                break  # it and everything after it are refused, keeping order
            stored.append(data)
        flags = COMPRESSIONS.index(self.compression) | priority << 2
        with self._lock:
            self._check_open()
            fit, lost, error = self._make_room([HEADER_SIZE + len(s) for s in stored], priority)
            written, write_error = self._write(stored[:fit], counts, flags, priority)
            refused = len(payloads) - written
            self._stats.appended += written
            self._stats.refused += refused
            too_large = too_large and written == len(stored)  # the caller splits it: not a refusal to log
            if refused and not too_large:
                self._warn(
                    "refused", "spool %s: refused %d record(s) at priority %d", self.directory, refused, priority
                )
        self._report(lost)
        return AppendResult(written, refused, len(lost), error or write_error, too_large)

    def replay(self, limit: int | None = None, *, max_bytes: int | None = None) -> list[SpoolEntry]:
        """The oldest unacknowledged records, in append order, up to ``limit`` records and ``max_bytes``.

        ``max_bytes`` bounds the payload bytes handed out (decompressed), so a caller's memory is
        bounded by bytes whatever the record sizes; the first record is handed out even if it alone is
        larger, so replay always makes progress. Records stay pending until :meth:`ack`\\ ed, so calling
        again without acknowledging hands out the same records (the retry path). Damaged records are
        dropped and counted, never returned. With neither bound every pending payload is read into
        memory: the pipeline passes ``max_bytes``.
        """
        with self._lock:
            self._check_open()
            out, damaged = self._read_many(self._iter_live(), limit, max_bytes)
            lost = [self._drop_lost(rec, "damaged") for rec in damaged]
            if damaged:
                self._warn("corrupt", "spool %s: dropped %d damaged record(s) on replay", self.directory, len(damaged))
                self._advance_cursor()
            self._stats.replayed += len(out)
            self._handed_out.update(entry.position for entry in out)
        self._report(lost)
        return out

    def ack(self, entries: Iterable[SpoolEntry]) -> int:
        """Mark entries delivered (any order); returns how many were newly acknowledged.

        The cursor file is rewritten (durably unless durability is ``"none"``) before fully
        acknowledged segments are deleted, so a crash at any point never resurrects acked records.
        """
        with self._lock:
            self._check_open()
            count = 0
            for entry in entries:
                found = self._locate(entry.position)
                if found is None:
                    continue  # already acked, evicted, or not ours
                self._drop(*found)
                self._acked_ahead.add(entry.position)
                count += 1
            if count:
                self._stats.acked += count
                self._advance_cursor()
                self._persist_cursor()
                self._delete_dead_segments()
            return count

    def release(self, entries: Iterable[SpoolEntry]) -> None:
        """Hand back entries a replay will not deliver now (the sink failed): they stay pending, and
        may be evicted again. Handed-out records are protected from eviction only while a delivery
        is under way; kept protected after a failure, they made the cap refuse newer records."""
        with self._lock:
            self._handed_out.difference_update(entry.position for entry in entries)

    def pending_records(self) -> int:
        """Unacknowledged records (no lock: a read of one int)."""
        return self._live_count

    def pending_bytes(self) -> int:
        """On-disk bytes (headers included) of unacknowledged records."""
        return sum(self._live_bytes)

    def disk_bytes(self) -> int:
        """Bytes of the segment files, dead records included (no lock: a sum over a copy of a short list)."""
        return sum(seg.size for seg in list(self._segments))

    @property
    def stats(self) -> SpoolStats:
        with self._lock:
            return replace(
                self._stats,
                evicted_records=dict(self._stats.evicted_records),
                bytes_on_disk=self.disk_bytes(),
            )

    def close(self) -> None:
        """Close files and release the directory; idempotent. Pending records stay for the next open."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            self._close_active()
            self._delete_dead_segments()
            if self._lock_fd is not None:
                os.close(self._lock_fd)
                self._lock_fd = None

    def abandon_after_fork(self) -> None:
        """In a forked child: drop the inherited file descriptors without unlocking or flushing.

        ``flock`` locks belong to the open file description the child shares with its parent; closing
        the child's copies leaves the parent's lock in place, and the parent's spool recoverable when
        the parent exits. Touches no lock object (the parent may have held it at fork time).
        """
        self._closed = True
        for fd in (self._fd, self._lock_fd):
            if fd is not None:
                with contextlib.suppress(OSError):
                    os.close(fd)
        self._fd = None
        self._lock_fd = None

    def __enter__(self) -> Spool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # --- opening ---------------------------------------------------------------------------------

    def _lock_directory(self) -> int | None:
        if sys.platform == "win32":
            return None
        path = self.directory / _LOCK_FILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            raise SpoolLockedError(f"spool {self.directory}: already open elsewhere ({path} is locked)") from exc
        return fd

    def _recover(self) -> int:
        """Index the pending records on disk; returns the damaged regions skipped."""
        for tmp in self.directory.iterdir():
            if _TMP_RE.fullmatch(tmp.name):  # a compaction or cursor write cut short
                tmp.unlink(missing_ok=True)
        self._cursor, self._acked_ahead = self._read_cursor()
        highest = max(self._acked_ahead, default=self._cursor - 1)
        corrupt = 0
        seen = -1  # the highest sequence number scanned so far: the index needs them in order
        for path in sorted(p for p in self.directory.iterdir() if _SEGMENT_RE.fullmatch(p.name)):
            try:
                data = path.read_bytes()
            except OSError as exc:  # leave it on disk for a later open; never delete what we cannot read
                self._io_error("read", exc)
                continue
            seg = _Segment(path, int(path.name[4:24]), len(data))
            self._segments.append(seg)
            found, bad = _scan(data)
            corrupt += bad
            for off, size, flags, seq in found:
                highest = max(highest, seq)
                if seq < self._cursor or seq in self._acked_ahead:
                    continue
                if seq <= seen or seq < seg.first:  # not where this spool writes it: a duplicate or damage
                    if self._locate(seq) is None:
                        corrupt += 1
                    continue
                seen = seq
                self._add(seg, seq, off, size, flags >> 2 & 3, 0)  # its count died with its writer
        self._next_seq = highest + 1
        self._stats.corrupt_records += corrupt
        if corrupt:
            self._warn("corrupt", "spool %s: skipped %d damaged region(s) while recovering", self.directory, corrupt)
        self._advance_cursor()
        self._delete_dead_segments()
        return corrupt

    def _read_cursor(self) -> tuple[int, set[int]]:
        path = self.directory / _CURSOR_FILE
        try:
            doc = orjson.loads(path.read_bytes())
            if doc.get("format") != _CURSOR_FORMAT or doc.get("version") != 1:
                raise ValueError(f"not a {_CURSOR_FORMAT} v1 document")
            return int(doc["cursor"]), {int(s) for s in doc["acked"]}
        except FileNotFoundError:
            return 0, set()
        except (OSError, ValueError, TypeError, KeyError, AttributeError) as exc:
            # Replaying from the start re-delivers, never loses: the store is idempotent.
            self._warn("cursor", "spool %s: ignoring unreadable %s (%s); replaying all", self.directory, path, exc)
            return 0, set()

    # --- bookkeeping -----------------------------------------------------------------------------

    def _add(self, seg: _Segment, seq: int, offset: int, size: int, priority: int, count: int) -> None:
        seg.append(seq, offset, size, priority, count)
        self._live_count += 1
        self._live_bytes[priority] += size

    def _drop(self, seg: _Segment, slot: int) -> None:
        size = seg.sizes[slot]
        seg.alive[slot] = 0
        seg.live_count -= 1
        seg.live_bytes -= size
        self._live_count -= 1
        self._live_bytes[seg.priorities[slot]] -= size
        self._handed_out.discard(seg.seqs[slot])

    def _drop_lost(self, rec: _Record, reason: Literal["evicted", "damaged"]) -> SpoolLoss:
        """Drop a record that will never be delivered; counted, and returned for :meth:`_report`."""
        self._drop(rec.segment, rec.slot)
        if reason == "evicted":
            self._stats.evicted_records[rec.priority] += 1
        else:
            self._stats.corrupt_records += 1
        return SpoolLoss(reason, rec.items, rec.seq)

    def _report(self, lost: Iterable[SpoolLoss]) -> None:
        """Tell ``on_loss`` what was dropped; called outside the lock, so the callback may use the spool."""
        if self.on_loss is not None:
            for loss in lost:
                self.on_loss(loss)

    def _iter_live(self, priority: int | None = None) -> Iterator[_Record]:
        """Pending records, oldest first (segments are in sequence order, and so are their records)."""
        for seg in self._segments:
            if seg.live_count:
                yield from seg.live(priority)

    def _locate(self, seq: int) -> tuple[_Segment, int] | None:
        """The segment and slot of the pending record with sequence number ``seq``, or None."""
        at = bisect_right(self._segments, seq, key=_first_seq) - 1
        if at < 0:
            return None
        seg = self._segments[at]
        slot = seg.find(seq)
        return None if slot < 0 else (seg, slot)

    def _advance_cursor(self) -> None:
        first = next(self._iter_live(), None)
        self._cursor = self._next_seq if first is None else first.seq
        if self._acked_ahead:
            self._acked_ahead = {s for s in self._acked_ahead if s >= self._cursor}

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"spool {self.directory}: used after close()")

    def _warn(self, kind: str, msg: str, *args: object) -> None:
        now = self._clock()
        last = self._warned.get(kind)
        if last is None or now - last >= _WARN_INTERVAL:
            self._warned[kind] = now
            logger.warning(msg, *args)

    def _io_error(self, what: str, exc: OSError) -> None:
        self._stats.io_errors += 1
        self._warn(f"io-{what}", "spool %s: %s failed: %s", self.directory, what, exc)

    # --- writing ---------------------------------------------------------------------------------

    def _write(self, stored: list[bytes], counts: Sequence[int], flags: int, priority: int) -> tuple[int, str | None]:
        """Append records, rotating segments; returns how many are durable (per ``durability``)."""
        buf: list[bytes] = []
        batch: list[_Pending] = []  # indexed once written
        buffered = written = 0
        try:
            for data, count in zip(stored, counts, strict=False):
                size = HEADER_SIZE + len(data)
                seg = self._active
                if seg is None or (seg.size + buffered > 0 and seg.size + buffered + size > self.segment_bytes):
                    written += self._flush(buf, batch, self._sync)
                    buffered = 0
                    seg = self._rotate()
                buf.append(_encode_record(self._next_seq, flags, data))
                batch.append((self._next_seq, seg.size + buffered, size, priority, count))
                self._next_seq += 1
                buffered += size
                if self.durability == "always":
                    written += self._flush(buf, batch, True)
                    buffered = 0
            written += self._flush(buf, batch, self._sync)
        except OSError as exc:
            self._io_error("append", exc)
            self._close_active()  # its true size is unknown now; the next append opens a new segment
            return written, f"spool {self.directory}: append failed: {exc}"
        return written, None

    def _flush(self, buf: list[bytes], batch: list[_Pending], sync: bool) -> int:
        seg = self._active
        if not buf or seg is None or self._fd is None:
            return 0
        data = b"".join(buf)
        _write_all(self._fd, data)
        if sync:
            os.fsync(self._fd)
        seg.size += len(data)
        for seq, offset, size, priority, count in batch:
            self._add(seg, seq, offset, size, priority, count)
        count = len(batch)
        buf.clear()
        batch.clear()
        return count

    def _rotate(self) -> _Segment:
        self._close_active()
        self._delete_dead_segments()
        path = self.directory / f"seg-{self._next_seq:020d}.wal"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        seg = next((s for s in self._segments if s.path == path), None)
        if seg is None:
            seg = _Segment(path, self._next_seq)
            self._segments.append(seg)
        seg.size = os.fstat(fd).st_size
        self._active, self._fd = seg, fd
        if self._sync:
            _fsync_dir(self.directory)  # the new name must survive a power cut with its records
        return seg

    def _close_active(self) -> None:
        if self._fd is not None:
            try:
                os.close(self._fd)
            except OSError as exc:
                self._io_error("close", exc)
        if self._active is not None:
            with contextlib.suppress(OSError):  # already gone: it is deleted or about to be
                self._active.size = self._active.path.stat().st_size
        self._active, self._fd = None, None

    def _persist_cursor(self) -> None:
        doc = {"format": _CURSOR_FORMAT, "version": 1, "cursor": self._cursor, "acked": sorted(self._acked_ahead)}
        path = self.directory / _CURSOR_FILE
        tmp = path.with_name(_CURSOR_FILE + ".tmp")
        try:
            with open(tmp, "wb") as f:
                f.write(orjson.dumps(doc))
                if self._sync:
                    f.flush()
                    os.fsync(f.fileno())
            os.replace(tmp, path)
            if self._sync:
                _fsync_dir(self.directory)
        except OSError as exc:  # acks stay in memory; after a restart they are re-delivered, not lost
            self._io_error("cursor write", exc)

    def _delete_dead_segments(self) -> None:
        """Delete segments with nothing pending (not the one being appended to)."""
        for seg in [s for s in self._segments if s.live_count == 0 and s is not self._active]:
            try:
                seg.path.unlink(missing_ok=True)
            except OSError as exc:
                self._io_error("delete", exc)
                continue
            self._segments.remove(seg)

    # --- the cap ---------------------------------------------------------------------------------

    def _make_room(self, sizes: list[int], priority: int) -> tuple[int, list[SpoolLoss], str | None]:
        """How many of ``sizes`` fit, after evicting what must go.

        Returns ``(fit, the evicted records, error)``. Victims are never read: their counts are in the
        index, so eviction costs no reads and holds no payloads.
        """
        free = self.max_bytes - self.disk_bytes()
        live = sum(self._live_bytes)
        protected = 0  # handed out by replay and about to be acked: evicting them would count a loss
        for seq in self._handed_out:
            found = self._locate(seq)
            if found is not None and found[0].priorities[found[1]] >= priority:
                protected += found[0].sizes[found[1]]
        capacity = self.max_bytes - live + sum(self._live_bytes[priority:]) - protected  # free space at best
        fit = total = 0
        for size in sizes:
            if total + size > capacity:
                break
            total += size
            fit += 1
        if fit == 0 or total <= free:
            return fit, [], None
        victims = self._victims(total - (self.max_bytes - live), priority)
        lost = [self._drop_lost(rec, "evicted") for rec in victims]
        if victims:
            self._warn("evict", "spool %s: at its cap of %d bytes, evicting records", self.directory, self.max_bytes)
            self._advance_cursor()
        for seg in [s for s in self._segments if s.size > s.live_bytes]:
            try:
                self._rewrite(seg)
            except OSError as exc:
                self._io_error("compaction", exc)
                return 0, lost, f"spool {self.directory}: compaction failed: {exc}"
        return fit, lost, None

    def _victims(self, shortfall: int, priority: int) -> list[_Record]:
        """Records to evict for ``shortfall`` bytes (what reclaiming acknowledged space cannot give).

        Lowest priority first, oldest first within one, never above ``priority`` nor handed out. Once
        the shortfall is met, eviction goes on within the priority it reached (never into a higher one)
        until 1/``_EVICT_SLACK`` of the cap is free beyond it: each eviction compacts the segments it
        touched, and freeing only what one append needs made every append at the cap rewrite up to a
        segment (80x write amplification measured); with the slack the rewrites are amortized.
        """
        victims: list[_Record] = []
        target, freed = shortfall + self.max_bytes // _EVICT_SLACK, 0
        for p in reversed(PRIORITIES[priority:]):
            if freed >= shortfall:
                break
            for rec in self._iter_live(p):
                if freed >= target:
                    break
                if rec.seq not in self._handed_out:
                    victims.append(rec)
                    freed += rec.size
        return victims

    def _rewrite(self, seg: _Segment) -> None:
        """Rewrite ``seg`` with only its pending records (or delete it if none); offsets move."""
        keep = list(seg.live())
        was_active = seg is self._active
        if was_active:
            self._close_active()
        if not keep:
            seg.path.unlink(missing_ok=True)
            self._segments.remove(seg)
            return
        tmp = seg.path.with_name(seg.path.name + ".tmp")
        with open(seg.path, "rb") as src, open(tmp, "wb") as f:
            for r in keep:  # one record at a time: a segment is up to segment_bytes, far more than a record
                src.seek(r.offset)
                f.write(src.read(r.size))
            if self._sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, seg.path)
        if self._sync:
            _fsync_dir(self.directory)
        seg.seqs, seg.offsets, seg.sizes = _u64s(), _u64s(), _u64s()
        seg.priorities, seg.alive, seg.counts = bytearray(), bytearray(), _u32s()
        seg.live_count = seg.live_bytes = offset = 0
        for r in keep:
            seg.append(r.seq, offset, r.size, r.priority, r.items)
            offset += r.size
        seg.size = offset
        if was_active:
            self._fd = os.open(seg.path, os.O_WRONLY | os.O_APPEND)
            self._active = seg

    # --- reading ---------------------------------------------------------------------------------

    def _read(self, rec: _Record, files: dict[_Segment, BinaryIO]) -> SpoolEntry | None:
        """The entry for ``rec``, or None when its bytes no longer check out.

        Header and payload are read separately so the payload is never copied out of a larger buffer.
        """
        f = files.get(rec.segment)
        if f is None:
            f = files[rec.segment] = open(rec.segment.path, "rb")  # noqa: SIM115 - closed by replay
        f.seek(rec.offset)
        head = f.read(HEADER_SIZE)
        if len(head) < HEADER_SIZE:
            return None
        magic, flags, seq, length, crc = _HEADER.unpack(head)
        if not _header_ok(magic, flags) or seq != rec.seq or HEADER_SIZE + length != rec.size:
            return None
        stored = f.read(length)
        if len(stored) != length or zlib.crc32(stored, zlib.crc32(head[4:20])) != crc:
            return None
        try:
            payload = decompress(stored, COMPRESSIONS[flags & 3])
        except CompressionError:
            return None
        return SpoolEntry(payload, rec.priority, rec.seq)

    def _read_many(
        self, recs: Iterable[_Record], limit: int | None = None, max_bytes: int | None = None
    ) -> tuple[list[SpoolEntry], list[_Record]]:
        """Readable entries of ``recs`` within ``limit`` and ``max_bytes``, and the damaged records met.

        The first entry is returned whatever its size. A compressed record's payload size is known
        only once read: one that would pass ``max_bytes`` is read, then left for the next call. An
        I/O error stops early (and is counted): the unread records stay pending for a later try.
        """
        out: list[SpoolEntry] = []
        damaged: list[_Record] = []
        files: dict[_Segment, BinaryIO] = {}
        handed = 0
        room = max_bytes if max_bytes is not None else float("inf")
        try:
            for rec in recs:
                if (limit is not None and len(out) >= limit) or (out and handed + rec.size - HEADER_SIZE > room):
                    break  # the stored size is a lower bound of the payload's: no need to read it
                entry = self._read(rec, files)
                if entry is None:
                    damaged.append(rec)
                    continue
                if out and handed + len(entry.payload) > room:
                    break
                handed += len(entry.payload)
                out.append(entry)
        except OSError as exc:
            self._io_error("read", exc)
        finally:
            for f in files.values():
                f.close()
        return out, damaged
