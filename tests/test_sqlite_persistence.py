"""The SQLite store keeps spans across processes: one process writes and exits, another reads them back."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from agentemit.span import Span
from agentemit.stores import SqliteStore

WRITER = """
import json, math, sys
from agentemit.span import Span, SpanEvent
from agentemit.stores import SqliteStore

spans = [
    Span(
        trace_id=f"{i:032x}", span_id=f"{i:016x}", parent_id=None if i == 0 else f"{0:016x}",
        name="agentlightning.reward" if i == 2 else "step", start_time=1_000 + i, end_time=2_000 + i,
        rollout_id="r-persist", attempt_id="a1", sequence_id=i,
        attributes={"i": i, "t": ("x", "ü"), "nan": math.nan, "reward": 0.5} if i == 2 else {"i": i},
        events=[SpanEvent("e", 1_500, {"k": (1.5, -math.inf)})] if i == 1 else [],
        resource={"service.name": "writer"},
    )
    for i in range(3)
]
store = SqliteStore(sys.argv[1])
print(json.dumps({"added": store.add_many_spans(spans), "spans": [s.to_dict() for s in spans]}))
"""

READER = """
import json, sys
from agentemit.stores import SqliteStore

with SqliteStore(sys.argv[1]) as store:
    spans = store.query_spans("r-persist")
    print(json.dumps({
        "spans": [s.to_dict() for s in spans],
        "rollouts": [r.to_dict() for r in store.list_rollouts()],
        "next": store.get_next_span_sequence_id("r-persist", "a1"),
        "problems": store.verify(),
    }))
"""


def _run(code: str, path: Path) -> Any:
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def test_spans_written_by_one_process_read_back_identically_in_another(tmp_path: Path) -> None:
    path = tmp_path / "spans.db"
    written = _run(WRITER, path)
    read = _run(READER, path)
    assert written["added"] == 3
    assert read["spans"] == written["spans"]
    assert read["next"] == 3 and read["problems"] == []
    assert read["rollouts"] == [
        {
            "rollout_id": "r-persist",
            "attempt_ids": ["a1"],
            "span_count": 3,
            "spans_by_name": {"agentlightning.reward": 1, "step": 2},
            "final_reward": 0.5,
            "first_time": 1_000,
            "last_time": 2_002,
        }
    ]


def test_a_second_process_re_adding_the_same_spans_stores_nothing_new(tmp_path: Path) -> None:
    path = tmp_path / "spans.db"
    assert _run(WRITER, path)["added"] == 3
    assert _run(WRITER, path)["added"] == 0
    assert len(_run(READER, path)["spans"]) == 3


def test_the_database_file_is_in_wal_mode_with_a_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "spans.db"
    _run(WRITER, path)
    conn = sqlite3.connect(path)
    try:
        assert conn.execute("PRAGMA journal_mode").fetchone() == ("wal",)
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
    finally:
        conn.close()


def _page_size(path: Path) -> int:
    conn = sqlite3.connect(path)
    try:
        return int(conn.execute("PRAGMA page_size").fetchone()[0])
    finally:
        conn.close()


def test_a_new_file_gets_the_store_page_size_and_an_existing_file_keeps_its_own(tmp_path: Path) -> None:
    created = tmp_path / "new.db"
    store = SqliteStore(created)
    store.add_span(_span(0))
    store.close()
    assert _page_size(created) == 32768

    existing = tmp_path / "old.db"
    old = SqliteStore(existing, page_size=4096)
    old.add_span(_span(0))
    old.close()
    reopened = SqliteStore(existing)  # the default differs; the file's own page size stands
    reopened.add_span(_span(1))
    assert [s.sequence_id for s in reopened.query_spans("r-fork")] == [0, 1]
    reopened.close()
    assert _page_size(existing) == 4096


@pytest.mark.parametrize("page_size", [0, 1000, 131072, "4096", True])
def test_a_page_size_sqlite_cannot_use_is_refused_naming_it(tmp_path: Path, page_size: Any) -> None:
    with pytest.raises(ValueError, match="page_size"):
        SqliteStore(tmp_path / "x.db", page_size=page_size)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_a_forked_child_writes_through_its_own_connection_and_the_parent_keeps_working(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "forked.db")
    store.add_span(_span(0))
    pid = os.fork()
    if pid == 0:  # child: must not touch the parent's connection
        code = 2
        try:
            code = 0 if store.add_span(_span(1)) else 1
            store.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    assert store.add_span(_span(2))
    assert [s.sequence_id for s in store.query_spans("r-fork")] == [0, 1, 2]
    store.close()


def _span(seq: int) -> Span:
    return Span(
        trace_id=f"{7:032x}",
        span_id=f"{seq:016x}",
        parent_id=None,
        name="step",
        start_time=seq,
        end_time=seq + 1,
        rollout_id="r-fork",
        attempt_id="a1",
        sequence_id=seq,
    )


def test_a_span_without_a_reward_stores_null_and_its_data_reads_back_as_bytes(tmp_path: Path) -> None:
    # The store binds a missing reward as NaN and the data as a bytearray (both bind without sqlite3's
    # adapter protocol); the file must still hold SQL NULL and a BLOB.
    path = tmp_path / "spans.db"
    store = SqliteStore(path)
    store.add_span(_span(0))
    store.close()
    conn = sqlite3.connect(path)
    try:
        reward, kind, data = conn.execute("SELECT reward, typeof(data), data FROM spans").fetchone()
        assert conn.execute("SELECT COUNT(*) FROM spans WHERE reward IS NULL").fetchone() == (1,)
    finally:
        conn.close()
    assert reward is None and kind == "blob" and type(data) is bytes
    assert json.loads(data)["span_id"] == _span(0).span_id


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_children_forked_while_another_thread_writes_can_use_the_store(tmp_path: Path) -> None:
    """A fork while another thread was inside SQLite left the child holding SQLite's internal mutexes
    with no thread to release them: its first call hung (1 child in 20). The store now holds its lock
    across a fork, so no thread is inside SQLite when it happens."""
    store = SqliteStore(tmp_path / "s.db")
    stop = threading.Event()

    def write() -> None:
        batch = 0
        while not stop.is_set():
            store.add_many_spans([_span(batch * 50 + i) for i in range(50)])
            batch += 1

    writer = threading.Thread(target=write, daemon=True)
    writer.start()
    hung = 0
    try:
        for _ in range(30):
            pid = os.fork()
            if pid == 0:
                try:
                    store.get_next_span_sequence_id("r", "a")
                finally:
                    os._exit(0)
            deadline = time.monotonic() + 10.0
            while (done := os.waitpid(pid, os.WNOHANG))[0] == 0 and time.monotonic() < deadline:
                time.sleep(0.01)
            if done[0] == 0:
                hung += 1
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
    finally:
        stop.set()
        writer.join(10)
        store.close()
    assert hung == 0, f"{hung} of 30 forked children hung"
