"""Durability through the pipeline: spill and replay, recovery after a SIGKILL, a damaged spool, fork.

The crash tests run ``_pipeline_child.py`` in a real child process with a real spool directory,
SIGKILL it after it has confirmed events on disk, and let a new pipeline recover them into a real
SQLite store. The fork test forks this process mid-run. Every wait is bounded.
"""

from __future__ import annotations

import math
import os
import queue
import re
import signal
import struct
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from _pipeline_child import (
    PER_ROUND,
    RecordingSink,
    StoreBackedSink,
    message_body,
    rollout,
    stored_bodies,
)
from agentemit import OtelTracer, emit_message, emit_object, emit_reward, semconv
from agentemit.emit.readers import get_message_value
from agentemit.pipeline import spill_format
from agentemit.pipeline.config import PipelineConfig
from agentemit.pipeline.pipeline import Pipeline
from agentemit.pipeline.sink import StoreSink
from agentemit.pipeline.spool import Spool
from agentemit.pipeline.stats import unaccounted
from agentemit.stores.sqlite import SqliteStore

CHILD = Path(__file__).with_name("_pipeline_child.py")
_SPOOL_RECORD = struct.Struct("<4sB3xQII")  # the spool's record header (see pipeline/spool.py)


def config(root: Path, **settings: Any) -> PipelineConfig:
    settings.setdefault("adaptive_sampling", False)
    settings.setdefault("redact", False)
    settings.setdefault("flush_interval", 60.0)
    return PipelineConfig(spool_dir=root, **settings)


# --- spill and replay --------------------------------------------------------------------------


def test_spilled_events_keep_non_finite_numbers_and_sequences(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    store = SqliteStore(tmp_path / "s.db")
    p = Pipeline(StoreSink(store), config(tmp_path / "spool", max_queue_size=4), start=False)
    pipelines.append(p)
    with rollout(p, "r"):
        for i in range(3):
            emit_message(f"queued{i}")
        emit_message("spilled", attributes={"score": math.nan, "limit": math.inf, "tags": ["a", "b"]})
        emit_object(-math.inf)
    assert p.force_flush(5.0).completed
    snap = p.stats_snapshot()
    assert snap["spilled"] == 2 and snap["dropped"] == {}
    spilled = store.query_spans("r", name=semconv.SPAN_MESSAGE)[-1]
    assert get_message_value(spilled) == "spilled"
    assert math.isnan(spilled.attributes["score"]) and spilled.attributes["limit"] == math.inf  # type: ignore[arg-type]
    assert spilled.attributes["tags"] == ("a", "b")
    assert store.query_spans("r", name=semconv.SPAN_OBJECT)[0].attributes[semconv.OBJECT_LITERAL] == -math.inf
    store.close()


def test_spilled_rewards_are_replayed_before_bulk_events(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    sink = RecordingSink()
    p = Pipeline(sink, config(tmp_path / "spool", max_queue_size=10), start=False)
    pipelines.append(p)
    with rollout(p, "r"):
        for i in range(20):
            emit_message(f"m{i}")
        for i in range(5):
            emit_reward(float(i))  # rewards fill the queue's last fifth...
        for i in range(5):
            emit_reward(float(10 + i))  # ...then spill, written as their own high-priority record
    assert p.force_flush(5.0).completed
    assert len(sink.spans) == 30 and set(sink.deliveries.values()) == {1}
    assert unaccounted(p.stats_snapshot()) == 0


# --- recovery after a crash -------------------------------------------------------------------


class Child:
    """A ``_pipeline_child.py`` process whose output lines are read by a thread (so reads can time out)."""

    def __init__(self, mode: str, root: Path, name: str) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, str(CHILD), mode, str(root), name],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            cwd=CHILD.parent,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for line in self.proc.stdout:
            self.lines.put(line.strip())
        self.lines.put(None)

    def wait_for(self, done: Callable[[str], bool], timeout: float = 30.0) -> str:
        """The first line for which ``done`` is true; fails on exit or timeout."""
        while True:
            try:
                line = self.lines.get(timeout=timeout)
            except queue.Empty:
                self.kill()
                pytest.fail(f"pipeline child printed nothing useful within {timeout}s")
            if line is None:
                stderr = self.proc.stderr.read() if self.proc.stderr else ""
                pytest.fail(f"pipeline child exited early ({self.proc.wait()}): {stderr[-2000:]}")
            if done(line):
                return line

    def kill(self) -> None:
        if self.proc.poll() is None:
            os.kill(self.proc.pid, signal.SIGKILL)
        self.proc.wait(10)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                stream.close()


def number(line: str) -> int:
    return int(line.split()[-1])


def orphan_dirs(root: Path, name: str) -> list[Path]:
    return [d for d in (root / name).iterdir() if d.is_dir()] if (root / name).is_dir() else []


def test_events_confirmed_on_disk_by_a_killed_process_are_recovered_exactly_once(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    root = tmp_path / "spool"
    child = Child("failing", root, "crashy")
    try:
        confirmed = number(child.wait_for(lambda line: line.startswith("confirmed") and number(line) >= 4))
    finally:
        child.kill()  # SIGKILL mid-run: it was already emitting the next round
    assert child.proc.returncode == -signal.SIGKILL
    assert len(orphan_dirs(root, "crashy")) == 1

    store = SqliteStore(tmp_path / "s.db")
    p = Pipeline(StoreSink(store), config(root), name="crashy", start=False)
    pipelines.append(p)
    delivered = p.recover_orphaned_spools()
    stored = stored_bodies(store)
    expected = {message_body(r, k) for r in range(confirmed + 1) for k in range(PER_ROUND)}
    assert expected <= set(stored)  # every confirmed event...
    assert set(stored.values()) == {1}  # ...exactly once
    assert all(re.fullmatch(r"crash-\d+-\d+", body) for body in stored)
    assert delivered == len(stored)
    snap = p.stats_snapshot()
    assert snap["recovered"] == snap["exported"] == snap["replayed"] == delivered
    assert unaccounted(snap) == 0
    assert orphan_dirs(root, "crashy") == []  # an emptied orphan spool is removed
    store.close()


def test_the_worker_recovers_a_killed_processes_spilled_overflow_at_start(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    root = tmp_path / "spool"
    child = Child("overflow", root, "stuck")
    try:
        spooled = number(child.wait_for(lambda line: line.startswith("spooled") and number(line) >= 100))
    finally:
        child.kill()
    store = SqliteStore(tmp_path / "s.db")
    sink = StoreBackedSink(store, notify_at=spooled)
    p = Pipeline(sink, config(root), name="stuck")  # recovery runs when the worker starts
    pipelines.append(p)
    assert sink.delivered_event.wait(30.0)
    p.shutdown(30.0)  # joins the worker, so recovery has finished
    stored = stored_bodies(store)
    assert len(stored) >= spooled and set(stored.values()) == {1}
    assert set(sink.deliveries.values()) == {1}
    assert all(re.fullmatch(r"crash-\d+-\d+", body) for body in stored)
    snap = p.stats_snapshot()
    assert snap["recovered"] == snap["exported"] == len(stored)
    assert unaccounted(snap) == 0
    store.close()


def test_a_live_processes_spool_is_left_alone(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    root = tmp_path / "spool"
    live = Pipeline(RecordingSink(script=["fail"] * 100), config(root), name="shared", start=False)
    pipelines.append(live)
    with rollout(live, "r"):
        emit_message("still mine")
    assert live.force_flush(5.0).in_spool == 1  # spooled; its directory is locked while open
    other = Pipeline(RecordingSink(), config(root), name="shared", start=False)
    pipelines.append(other)
    assert other.recover_orphaned_spools() == 0
    assert len(orphan_dirs(root, "shared")) == 1
    live.shutdown(0.1)  # its sink never recovers: do not spend the fixture's timeout retrying


def segment_records(path: Path) -> list[tuple[int, int]]:
    """(payload offset, payload length) of each record in a spool segment file."""
    data = path.read_bytes()
    out: list[tuple[int, int]] = []
    offset = 0
    while offset + _SPOOL_RECORD.size <= len(data):
        _, _, _, length, _ = _SPOOL_RECORD.unpack_from(data, offset)
        out.append((offset + _SPOOL_RECORD.size, length))
        offset += _SPOOL_RECORD.size + length
    return out


def test_a_damaged_spool_record_loses_only_itself(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    root = tmp_path / "spool"
    dead = Pipeline(RecordingSink(script=["fail"] * 100), config(root), name="damaged", start=False)
    for round_ in range(3):
        with rollout(dead, f"round-{round_}"):
            for k in range(PER_ROUND):
                emit_message(message_body(round_, k))
        dead.run_once()  # one spool record per round
    assert dead.stats_snapshot()["in_spool"] == 3 * PER_ROUND
    dead.shutdown(0.1)
    (segment,) = list((root / "damaged").glob("*/seg-*.wal"))
    records = segment_records(segment)
    assert len(records) == 3
    data = bytearray(segment.read_bytes())
    offset, length = records[1]
    data[offset + length // 2] ^= 0xFF
    segment.write_bytes(bytes(data))

    store = SqliteStore(tmp_path / "s.db")
    p = Pipeline(StoreSink(store), config(root), name="damaged", start=False)
    pipelines.append(p)
    assert p.recover_orphaned_spools() == 2 * PER_ROUND
    expected = {message_body(r, k) for r in (0, 2) for k in range(PER_ROUND)}
    assert set(stored_bodies(store)) == expected
    snap = p.stats_snapshot()
    # Its 20 events' count died with the process that wrote it: counted as the one event it surely held.
    assert snap["dropped"] == {"corrupt": 1} and snap["recovered"] == 2 * PER_ROUND + 1
    assert snap["spool"]["corrupt_records"] == 1
    assert unaccounted(snap) == 0
    store.close()


def test_an_undecodable_spool_record_is_counted_invalid_and_stays_accounted(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    root = tmp_path / "spool"
    header = struct.pack(">3sc8sI", spill_format.MAGIC, b"B", b"deadbeef", 5)
    with Spool(root / "undecodable" / "1-deadbeef") as spool:
        spool.append([header + b"{not json"])
    p = Pipeline(RecordingSink(), config(root), name="undecodable", start=False)
    pipelines.append(p)
    p.recover_orphaned_spools()
    snap = p.stats_snapshot()
    assert snap["dropped"] == {"invalid": 5}
    assert unaccounted(snap) == 0


# --- fork --------------------------------------------------------------------------------------


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_neither_loses_nor_duplicates_the_parents_events(tmp_path: Path) -> None:
    before, in_child, after = 30, 40, 50
    store = SqliteStore(tmp_path / "fork.db")
    tracer = OtelTracer(store, config=config(tmp_path / "spool", batch_size=1000))
    try:
        with tracer.trace_context(rollout_id="parent-before"):
            for i in range(before):
                emit_message(f"before-{i}")
        assert tracer.pipeline is not None and tracer.pipeline.pending() == before + 1  # queued at fork

        pid = os.fork()
        if pid == 0:  # the child: its own events only, then a hard exit (no pytest teardown here)
            code = 1
            try:
                with tracer.trace_context(rollout_id="child"):
                    for i in range(in_child):
                        emit_message(f"child-{i}")
                report = tracer.force_flush(10.0)
                snap = tracer.stats()
                exact = snap["emitted"] == snap["exported"] == in_child + 1
                code = 0 if report is not None and report.completed and exact else 2
            finally:
                os._exit(code)

        _, status = os.waitpid(pid, 0)
        assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, f"child failed: status {status}"
        with tracer.trace_context(rollout_id="parent-after"):
            for i in range(after):
                emit_message(f"after-{i}")
        report = tracer.force_flush(10.0)
        assert report is not None and report.completed
        snap = tracer.stats()
        assert snap["exported"] == before + after + 2  # the parent sent only its own (and both roots)
    finally:
        tracer.teardown()
    counts = {r.rollout_id: r.span_count for r in store.list_rollouts()}
    assert counts == {"parent-before": before + 1, "child": in_child + 1, "parent-after": after + 1}
    bodies = stored_bodies(store)
    assert len(bodies) == before + in_child + after and set(bodies.values()) == {1}
    store.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_does_not_keep_the_parents_spool_locked(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    root = tmp_path / "spool"
    parent = Pipeline(RecordingSink(script=["fail"] * 100), config(root), name="forked", start=False)
    pipelines.append(parent)
    with rollout(parent, "r"):
        emit_message("spooled by the parent")
    assert parent.force_flush(5.0).in_spool == 1  # the parent's spool is open (and locked)
    release_read, release_write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child lives on, doing nothing with the parent's spool
        try:
            os.close(release_write)
            os.read(release_read, 1)
        finally:
            os._exit(0)
    os.close(release_read)
    try:
        parent.shutdown(0.1)  # as if the parent died: it no longer holds its spool
        recovering = Pipeline(RecordingSink(), config(root), name="forked", start=False)
        pipelines.append(recovering)
        recovered = recovering.recover_orphaned_spools()
    finally:
        os.close(release_write)  # the child exits
        os.waitpid(pid, 0)
    assert recovered == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_child_forked_while_a_rate_limit_was_locked_can_still_emit(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    """Another thread inside the token bucket's ``allow`` at the fork leaves its lock held for good in
    the child, whose first emit of that kind would hang: the child must get fresh buckets."""
    p = Pipeline(RecordingSink(), config(tmp_path / "spool", rate_limits={"message": 1000.0}), start=False)
    pipelines.append(p)
    with p._buckets["message"]._lock:
        pid = os.fork()
        if pid == 0:
            code = 2  # an exception
            try:
                with rollout(p, "r"):
                    emit_message("from the child")
                code = 0 if p.stats_snapshot()["queue_depth"] >= 1 else 1
            finally:
                os._exit(code)
    deadline = time.monotonic() + 10.0
    while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
        time.sleep(0.02)
    if done[0] == 0:
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        pytest.fail("the forked child hung on its first rate-limited emit")
    assert os.waitstatus_to_exitcode(done[1]) == 0
