"""The disk spool: order, acknowledgement across restarts, corruption, crashes, the cap, threads.

All tests use real files under ``tmp_path``; the crash test SIGKILLs a real child process.

Throughput check (not a test; speed is not asserted). Run from the repo root::

    .venv/bin/python - <<'EOF'
    import tempfile, time
    from agentemit.pipeline.spool import Spool
    payload, n = b"x" * 1024, 20_000
    for durability in ("none", "batch"):
        for per_call in (1, 100):
            with tempfile.TemporaryDirectory() as d, Spool(d, durability=durability) as spool:
                t = time.perf_counter()
                for _ in range(n // per_call):
                    spool.append([payload] * per_call)
                rate = n / (time.perf_counter() - t)
            print(f"durability={durability:5} records/call={per_call:3}: {rate:10,.0f} records/s")
    EOF
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import tracemalloc
from pathlib import Path

import pytest

from _spool_crash_child import batch_payload
from agentemit.codec import decode_batch
from agentemit.compression import Compression
from agentemit.pipeline.spool import HEADER_SIZE, AppendResult, Spool, SpoolLockedError, SpoolLoss

CHILD = Path(__file__).with_name("_spool_crash_child.py")


def payloads(prefix: str, n: int, size: int = 0) -> list[bytes]:
    """``n`` distinct payloads, padded to ``size`` bytes when given."""
    return [f"{prefix}-{i}".encode().ljust(size, b".") for i in range(n)]


def drain(spool: Spool) -> list[bytes]:
    """Replay and acknowledge everything pending; the payloads in order."""
    entries = spool.replay()
    spool.ack(entries)
    return [e.payload for e in entries]


def segment_files(directory: Path) -> list[Path]:
    return sorted(directory.glob("seg-*.wal"))


# --- order, acknowledgement, restart ---------------------------------------------------------------


def test_replay_returns_records_in_append_order_across_calls_and_priorities(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        assert spool.append(payloads("a", 3), priority=2) == AppendResult(stored=3)
        spool.append(payloads("b", 2), priority=0)
        entries = spool.replay()
    assert [e.payload for e in entries] == [*payloads("a", 3), *payloads("b", 2)]
    assert [e.priority for e in entries] == [2, 2, 2, 0, 0]
    assert [e.position for e in entries] == sorted(e.position for e in entries)


@pytest.mark.parametrize("compression", ["none", "zstd"])
def test_replay_hands_out_at_most_max_bytes_of_payloads_and_always_one_record(
    tmp_path: Path, compression: Compression
) -> None:
    with Spool(tmp_path, compression=compression) as spool:
        spool.append(payloads("p", 10, size=100))
        assert [e.payload for e in spool.replay(max_bytes=350)] == payloads("p", 10, size=100)[:3]
        assert [e.payload for e in spool.replay(limit=2, max_bytes=350)] == payloads("p", 10, size=100)[:2]
        assert [e.payload for e in spool.replay(max_bytes=1)] == payloads("p", 1, size=100)  # progress


def test_replay_hands_out_unacked_records_again_and_acked_ones_never(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append(payloads("p", 5))
        first = spool.replay(limit=2)
        assert [e.payload for e in first] == payloads("p", 2)
        assert spool.replay(limit=2) == first  # not acked: the retry gets the same records
        assert spool.ack(first) == 2
        assert spool.ack(first) == 0  # acknowledging twice is harmless
        assert [e.payload for e in spool.replay()] == payloads("p", 5)[2:]
        assert spool.pending_records() == 3
        assert spool.pending_bytes() == sum(HEADER_SIZE + len(p) for p in payloads("p", 5)[2:])
        assert spool.stats.acked == 2


def test_out_of_order_ack_is_never_redelivered_in_process_or_after_restart(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append(payloads("p", 5))
        entries = spool.replay()
        spool.ack([entries[3], entries[1]])
        assert [e.payload for e in spool.replay()] == [b"p-0", b"p-2", b"p-4"]
    with Spool(tmp_path) as spool:
        assert [e.payload for e in spool.replay()] == [b"p-0", b"p-2", b"p-4"]


def test_restart_resumes_from_cursor_and_acked_records_are_not_redelivered(tmp_path: Path) -> None:
    with Spool(tmp_path, segment_bytes=100) as spool:
        spool.append(payloads("p", 10, size=40))
        spool.ack(spool.replay(limit=4))
    with Spool(tmp_path, segment_bytes=100) as spool:
        assert [e.payload for e in spool.replay()] == payloads("p", 10, size=40)[4:]
        spool.append([b"new"])
        assert drain(spool) == [*payloads("p", 10, size=40)[4:], b"new"]
    with Spool(tmp_path, segment_bytes=100) as spool:
        assert spool.replay() == []
        assert spool.pending_records() == 0
    assert segment_files(tmp_path) == []


def test_positions_are_stable_so_entries_from_before_a_restart_can_be_acked_after(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append(payloads("p", 3))
        entries = spool.replay()
    with Spool(tmp_path) as spool:
        assert spool.replay() == entries
        assert spool.ack(entries[:2]) == 2
    with Spool(tmp_path) as spool:
        assert [e.payload for e in spool.replay()] == [b"p-2"]


def test_fully_acked_segments_are_deleted_and_the_rest_kept(tmp_path: Path) -> None:
    size = 50 - HEADER_SIZE  # 50-byte records, 3 per 150-byte segment
    with Spool(tmp_path, segment_bytes=150) as spool:
        spool.append(payloads("p", 9, size=size))
        assert len(segment_files(tmp_path)) == 3
        spool.ack(spool.replay(limit=4))
        assert len(segment_files(tmp_path)) == 2  # the first segment was fully acked
        assert spool.stats.bytes_on_disk == 6 * 50
        drain(spool)
        assert len(segment_files(tmp_path)) == 1  # the active one stays open until rotated or closed
    assert segment_files(tmp_path) == []


def test_a_segment_copied_under_a_later_name_replays_each_record_once(tmp_path: Path) -> None:
    # Records out of place (here duplicates of another segment's) cannot enter the sequence-ordered
    # index twice; duplicates of pending records are not damage, so nothing is counted corrupt.
    with Spool(tmp_path) as spool:
        spool.append(payloads("p", 3))
    [original] = segment_files(tmp_path)
    (tmp_path / f"seg-{10**6:020d}.wal").write_bytes(original.read_bytes())
    with Spool(tmp_path) as spool:
        assert drain(spool) == payloads("p", 3)
        assert spool.stats.corrupt_records == 0
        spool.append(payloads("q", 1))
        assert drain(spool) == payloads("q", 1)


def test_the_index_of_pending_records_costs_a_few_dozen_bytes_each(tmp_path: Path) -> None:
    # A spool of many small records must not hold an object per record (that was ~250 bytes each,
    # outside any memory budget); tracemalloc counts the index's allocations exactly.
    with Spool(tmp_path, durability="none") as spool:
        spool.append(payloads("warm", 10))
        tracemalloc.start()
        try:
            before = tracemalloc.get_traced_memory()[0]
            for _ in range(20):
                spool.append([b"x" * 40] * 1_000)
            per_record = (tracemalloc.get_traced_memory()[0] - before) / 20_000
        finally:
            tracemalloc.stop()
        assert spool.pending_records() == 20_010
    assert per_record < 48, f"{per_record:.0f} bytes of index per pending record"


@pytest.mark.parametrize("durability", ["none", "batch", "always"])
def test_each_durability_mode_stores_and_recovers_every_record(tmp_path: Path, durability: str) -> None:
    with Spool(tmp_path, durability=durability, segment_bytes=200) as spool:  # type: ignore[arg-type]
        for i in range(5):
            assert spool.append(payloads(f"call{i}", 4, size=30)).stored == 4
        spool.ack(spool.replay(limit=3))
    with Spool(tmp_path, durability=durability) as spool:  # type: ignore[arg-type]
        expected = [p for i in range(5) for p in payloads(f"call{i}", 4, size=30)][3:]
        assert drain(spool) == expected
        assert spool.stats.corrupt_records == 0


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_each_compression_round_trips_and_old_records_read_under_another_setting(
    tmp_path: Path, compression: str
) -> None:
    data = [b"reward " * 200, b"", bytes(range(256)) * 4]
    with Spool(tmp_path, compression=compression) as spool:  # type: ignore[arg-type]
        spool.append(data)
        assert [e.payload for e in spool.replay()] == data
        on_disk = spool.stats.bytes_on_disk
    assert (on_disk < sum(map(len, data))) == (compression != "none")
    other = "zstd" if compression != "zstd" else "gzip"
    with Spool(tmp_path, compression=other) as spool:  # type: ignore[arg-type]
        spool.append([b"later"])
        assert drain(spool) == [*data, b"later"]


def test_real_encoded_batches_survive_the_spool_intact(tmp_path: Path) -> None:
    with Spool(tmp_path, compression="zstd") as spool:
        spool.append([batch_payload(7), batch_payload(8)])
    with Spool(tmp_path) as spool:
        batches = [decode_batch(e.payload) for e in spool.replay()]
    assert [b[0].attributes["batch"] for b in batches] == [7, 8]


# --- corruption ----------------------------------------------------------------------------------------


def test_truncated_last_record_is_skipped_counted_and_appends_after_it_recover(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append(payloads("p", 5, size=64))
    (seg,) = segment_files(tmp_path)
    with open(seg, "r+b") as f:
        f.truncate(seg.stat().st_size - 10)  # a crash mid-write of the last record
    with Spool(tmp_path) as spool:
        assert [e.payload for e in spool.replay()] == payloads("p", 5, size=64)[:4]
        assert spool.stats.corrupt_records == 1
        spool.append([b"after"])
    with Spool(tmp_path) as spool:
        assert drain(spool) == [*payloads("p", 5, size=64)[:4], b"after"]


@pytest.mark.parametrize(
    ("where", "offset"),
    [("magic", 1), ("flags", 4), ("sequence", 9), ("length", 17), ("crc", 21), ("payload", HEADER_SIZE + 5)],
)
def test_a_flipped_byte_mid_segment_skips_one_record_and_recovers_all_later_ones(
    tmp_path: Path, where: str, offset: int
) -> None:
    size = 40
    record = HEADER_SIZE + size
    with Spool(tmp_path, segment_bytes=5 * record) as spool:  # two segments of 5 records
        spool.append(payloads("p", 10, size=size))
    first = segment_files(tmp_path)[0]
    data = bytearray(first.read_bytes())
    data[2 * record + offset] ^= 0x40  # damage record p-2
    first.write_bytes(bytes(data))
    with Spool(tmp_path) as spool:
        expected = [p for i, p in enumerate(payloads("p", 10, size=size)) if i != 2]
        assert [e.payload for e in spool.replay()] == expected, where
        assert spool.stats.corrupt_records == 1


def test_a_segment_of_pure_garbage_and_a_garbled_cursor_do_not_raise(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append([b"keep"])
        spool.ack(spool.replay())
        spool.append([b"pending"])
    (tmp_path / f"seg-{99:020d}.wal").write_bytes(os.urandom(500) + b"AEW1" + os.urandom(100))
    (tmp_path / "cursor.json").write_bytes(b"{not json")
    with Spool(tmp_path) as spool:
        # Without a cursor everything still on disk replays again (at-least-once): never lost, never raised.
        assert [e.payload for e in spool.replay()] == [b"keep", b"pending"]
        assert spool.stats.corrupt_records == 1
    assert not (tmp_path / f"seg-{99:020d}.wal").exists()  # nothing recoverable in it: deleted


def test_recovery_deletes_only_the_spools_own_leftover_temp_files(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append([b"keep"])
    own = [tmp_path / "cursor.json.tmp", tmp_path / f"seg-{0:020d}.wal.tmp"]  # cut-short writes
    foreign = [tmp_path / "backup.tmp", tmp_path / "seg-1.wal.tmp", tmp_path / "notes.json.tmp"]
    for path in own + foreign:
        path.write_bytes(b"x")
    with Spool(tmp_path) as spool:
        assert drain(spool) == [b"keep"]
    assert [p.exists() for p in own + foreign] == [False, False, True, True, True]


def test_damage_found_on_replay_drops_that_record_and_returns_the_rest(tmp_path: Path) -> None:
    with Spool(tmp_path) as spool:
        spool.append(payloads("p", 3, size=40))
        (seg,) = segment_files(tmp_path)
        data = bytearray(seg.read_bytes())
        data[HEADER_SIZE + 3] ^= 0xFF  # p-0's payload, after the spool indexed it
        seg.write_bytes(bytes(data))
        assert [e.payload for e in spool.replay()] == payloads("p", 3, size=40)[1:]
        assert spool.stats.corrupt_records == 1
        assert spool.pending_records() == 2


def test_a_damaged_record_is_reported_lost_with_its_count_found_on_replay_or_at_open(tmp_path: Path) -> None:
    # Its own bytes are untrustworthy, so the count comes from the append; at open it is unknown (0).
    lost: list[SpoolLoss] = []
    record = HEADER_SIZE + 40

    def damage(index: int) -> None:
        (seg,) = segment_files(tmp_path)
        data = bytearray(seg.read_bytes())
        data[index * record + HEADER_SIZE + 3] ^= 0xFF
        seg.write_bytes(bytes(data))

    with Spool(tmp_path, on_loss=lost.append) as spool:
        spool.append(payloads("p", 3, size=40), counts=[10, 20, 30])
        damage(1)  # after the spool indexed it
        assert [e.payload for e in spool.replay()] == [b"p-0".ljust(40, b"."), b"p-2".ljust(40, b".")]
        assert lost == [SpoolLoss("damaged", 20, 1)]
    damage(2)
    with Spool(tmp_path, on_loss=lost.append) as spool:
        assert lost[1:] == [SpoolLoss("damaged", 0, None)]  # skipped while recovering
        assert [e.payload for e in spool.replay()] == [b"p-0".ljust(40, b".")]


def test_sigkill_mid_run_keeps_every_reported_batch_in_order_with_no_garbage(tmp_path: Path) -> None:
    directory = tmp_path / "spool"
    proc = subprocess.Popen(
        [sys.executable, str(CHILD), str(directory)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    reported: list[int] = []
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            reported.append(int(line.split()[1]))
            if len(reported) >= 300:
                os.kill(proc.pid, signal.SIGKILL)
                break
        rest, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"child did not run until killed: {err}"
    reported += [int(line.split()[1]) for line in rest.splitlines()]
    assert reported == list(range(len(reported)))

    with Spool(directory) as spool:
        entries = spool.replay()
        assert spool.stats.corrupt_records <= 1  # at most the record being written when killed
    indexes = [decode_batch(e.payload)[0].attributes["batch"] for e in entries]
    assert indexes == list(range(len(indexes)))  # in order, nothing missing, nothing doubled
    assert len(indexes) >= len(reported)  # every fsync'd batch; perhaps one more written but unreported
    assert all(e.payload == batch_payload(i) and e.priority == i % 4 for i, e in enumerate(entries))


# --- the cap -------------------------------------------------------------------------------------------

SIZE = 100  # payload bytes in cap tests
RECORD = HEADER_SIZE + SIZE


def test_at_the_cap_lowest_priority_goes_first_and_oldest_first_within_it(tmp_path: Path) -> None:
    lost: list[SpoolLoss] = []
    names = ["p3a", "p1a", "p3b", "p2a", "p1b", "p3c", "p2b", "p1c", "p3d", "p1d"]  # by sequence number
    with Spool(tmp_path, max_bytes=10 * RECORD, on_loss=lost.append) as spool:
        for i, name in enumerate(names):
            spool.append([name.encode().ljust(SIZE)], priority=int(name[1]), counts=[i + 1])
        assert spool.stats.bytes_on_disk == 10 * RECORD

        # One record is needed; a tenth of the cap (one more) is freed with it, of the same priority.
        assert spool.append(payloads("r", 1, SIZE), priority=0) == AppendResult(stored=1, evicted=2)
        assert lost[0] == SpoolLoss("evicted", 1, 0)  # p3a, with the count it was appended with
        # Five needed: the rest of priority 3, then priority 2 (all of it: no slack beyond it).
        assert spool.append(payloads("r", 5, SIZE), priority=0) == AppendResult(stored=5, evicted=4)
        assert spool.append(payloads("s", 1, SIZE), priority=0) == AppendResult(stored=1, evicted=2)

        evicted = ["p3a", "p3b", "p3c", "p3d", "p2a", "p2b", "p1a", "p1b"]
        assert [names[loss.position or 0] for loss in lost] == evicted
        assert {loss.reason for loss in lost} == {"evicted"}
        assert spool.stats.evicted_records == {0: 0, 1: 2, 2: 2, 3: 4}
        assert spool.stats.bytes_on_disk <= 10 * RECORD
        left = [b"p1c", b"p1d", b"r-0", b"r-0", b"r-1", b"r-2", b"r-3", b"r-4", b"s-0"]
        assert [e.payload.rstrip(b". ") for e in spool.replay()] == left
    with Spool(tmp_path, max_bytes=10 * RECORD) as spool:  # eviction is on disk, not only in memory
        assert [e.payload.rstrip(b". ") for e in spool.replay()] == left


def test_eviction_frees_a_tenth_of_the_cap_more_so_the_next_appends_rewrite_nothing(tmp_path: Path) -> None:
    # Compaction rewrites the segments eviction touched: freeing only what each append needed made
    # every append at the cap rewrite a segment (80x write amplification).
    with Spool(tmp_path, max_bytes=100 * RECORD) as spool:
        spool.append(payloads("old", 100, SIZE), priority=1)
        assert spool.append(payloads("new", 1, SIZE), priority=1) == AppendResult(stored=1, evicted=11)
        (segment,) = segment_files(tmp_path)
        compacted = segment.stat().st_ino
        for i in range(10):
            assert spool.append(payloads(f"more{i}", 1, SIZE), priority=1) == AppendResult(stored=1)
        assert segment.stat().st_ino == compacted  # appended in place, never rewritten
        assert spool.stats.bytes_on_disk == 100 * RECORD


def test_the_slack_never_reaches_a_priority_the_append_did_not_need(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=10 * RECORD) as spool:
        spool.append(payloads("low", 1, SIZE), priority=3)
        spool.append(payloads("mid", 9, SIZE), priority=1)
        assert spool.append(payloads("top", 1, SIZE), priority=0) == AppendResult(stored=1, evicted=1)
        assert spool.stats.evicted_records == {0: 0, 1: 0, 2: 0, 3: 1}


def test_append_is_refused_only_when_nothing_of_lower_or_equal_priority_remains(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=4 * RECORD) as spool:
        spool.append(payloads("high", 3, SIZE), priority=0)
        spool.append(payloads("low", 1, SIZE), priority=2)
        # Two priority-2 records: one fits by evicting the older priority-2 record, the other is refused.
        assert spool.append(payloads("new", 2, SIZE), priority=2) == AppendResult(stored=1, refused=1, evicted=1)
        assert spool.append(payloads("mid", 1, SIZE), priority=1) == AppendResult(stored=1, evicted=1)  # new-0
        assert spool.append(payloads("mid2", 1, SIZE), priority=1) == AppendResult(stored=1, evicted=1)  # mid
        assert spool.append(payloads("lower", 1, SIZE), priority=3).refused == 1
        assert spool.stats.refused == 2
        assert spool.append(payloads("top", 1, SIZE), priority=0) == AppendResult(stored=1, evicted=1)  # mid2
        assert spool.append(payloads("mid3", 1, SIZE), priority=1).refused == 1  # only priority 0 is left
        assert [e.priority for e in spool.replay()] == [0, 0, 0, 0]
        assert spool.stats.evicted_records == {0: 0, 1: 2, 2: 2, 3: 0}


def test_acked_space_is_reclaimed_before_anything_is_evicted(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=10 * RECORD) as spool:
        spool.append(payloads("old", 10, SIZE), priority=3)
        entries = spool.replay()
        spool.ack(entries[:3] + entries[6:8])  # 5 acked records still sit in the one segment
        assert spool.stats.bytes_on_disk == 10 * RECORD
        assert spool.append(payloads("new", 5, SIZE), priority=3) == AppendResult(stored=5)
        assert spool.stats.evicted_records[3] == 0
        assert spool.stats.bytes_on_disk == 10 * RECORD
        pending = [e.payload.rstrip(b".") for e in spool.replay()]
    assert pending == [b"old-3", b"old-4", b"old-5", b"old-8", b"old-9", *(f"new-{i}".encode() for i in range(5))]


def test_entries_handed_out_by_replay_are_never_evicted_before_they_are_acked(tmp_path: Path) -> None:
    """Evicting a record the replay is delivering would count it lost and deliver it anyway."""
    with Spool(tmp_path, max_bytes=4 * RECORD) as spool:
        spool.append(payloads("low", 2, SIZE), priority=3)
        spool.append(payloads("high", 2, SIZE), priority=0)
        in_flight = spool.replay()
        assert spool.append(payloads("new", 1, SIZE), priority=0) == AppendResult(stored=0, refused=1)
        assert spool.ack(in_flight) == 4
        assert spool.append(payloads("new", 1, SIZE), priority=0).stored == 1
    with Spool(tmp_path) as spool:
        assert [e.payload.rstrip(b".") for e in spool.replay()] == [b"new-0"]


def test_entries_released_after_a_failed_delivery_can_be_evicted_again(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=4 * RECORD) as spool:
        spool.append(payloads("old", 4, SIZE), priority=1)
        in_flight = spool.replay()
        assert spool.append(payloads("new", 1, SIZE), priority=1) == AppendResult(stored=0, refused=1)
        spool.release(in_flight)  # the sink failed: nothing is being delivered any more
        assert spool.append(payloads("new", 1, SIZE), priority=1) == AppendResult(stored=1, evicted=2)
        assert [e.payload.rstrip(b".") for e in spool.replay()] == [b"old-2", b"old-3", b"new-0"]


def test_entries_handed_out_survive_a_compaction_and_can_still_be_acked(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=4 * RECORD) as spool:
        spool.append(payloads("low", 2, SIZE), priority=3)
        spool.append(payloads("high", 2, SIZE), priority=0)
        in_flight = spool.replay(limit=3)  # low-0, low-1, high-0; high-1 is not handed out
        # Only high-1 may go (same priority, not handed out); evicting it rewrites the segment.
        assert spool.append(payloads("new", 1, SIZE), priority=0) == AppendResult(stored=1, evicted=1)
        assert spool.ack(in_flight) == 3
    with Spool(tmp_path) as spool:
        assert [e.payload.rstrip(b".") for e in spool.replay()] == [b"new-0"]


def test_a_record_larger_than_the_cap_is_refused_and_the_rest_of_the_call_with_it(tmp_path: Path) -> None:
    with Spool(tmp_path, max_bytes=3 * RECORD) as spool:
        result = spool.append([b"a".ljust(SIZE), b"b" * (3 * RECORD), b"c".ljust(SIZE)], priority=0)
        assert result == AppendResult(stored=1, refused=2, too_large=True)
        assert [e.payload for e in spool.replay()] == [b"a".ljust(SIZE)]


# --- threads, locking, arguments -----------------------------------------------------------------------


def test_four_threads_appending_get_every_record_replayed_exactly_once_in_per_thread_order(tmp_path: Path) -> None:
    spool = Spool(tmp_path, segment_bytes=4096)
    barrier = threading.Barrier(4)

    def worker(t: int) -> None:
        barrier.wait()
        for i in range(50):
            spool.append([f"t{t}-{i}-{j}".encode() for j in range(3)], priority=t)

    threads = [threading.Thread(target=worker, args=(t,)) for t in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=30)
    got: list[bytes] = []
    while batch := spool.replay(limit=64):
        got += [e.payload for e in batch]
        spool.ack(batch)
    spool.close()
    expected = {f"t{t}-{i}-{j}".encode() for t in range(4) for i in range(50) for j in range(3)}
    assert len(got) == len(expected) == len(set(got))
    assert set(got) == expected
    for t in range(4):
        mine = [p for p in got if p.startswith(f"t{t}-".encode())]
        assert mine == [f"t{t}-{i}-{j}".encode() for i in range(50) for j in range(3)]
    assert Spool(tmp_path).pending_records() == 0


def test_a_second_spool_on_the_same_directory_is_refused_until_the_first_closes(tmp_path: Path) -> None:
    first = Spool(tmp_path)
    with pytest.raises(SpoolLockedError, match="already open"):
        Spool(tmp_path)
    first.close()
    first.close()  # idempotent
    Spool(tmp_path).close()


def test_bad_arguments_and_use_after_close_raise_naming_the_culprit(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="durability 'sometimes'"):
        Spool(tmp_path, durability="sometimes")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="compression 'lz4'"):
        Spool(tmp_path, compression="lz4")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="max_bytes"):
        Spool(tmp_path, max_bytes=0)
    spool = Spool(tmp_path)
    with pytest.raises(ValueError, match="priority 4"):
        spool.append([b"x"], priority=4)
    with pytest.raises(TypeError, match="payload 1 is str"):
        spool.append([b"x", "y"])  # type: ignore[list-item]
    spool.close()
    with pytest.raises(RuntimeError, match="used after close"):
        spool.replay()
