"""End-to-end throughput: a producer emits N events, then ``force_flush`` waits until all are delivered.

events/s is N over the time from the first emit until the flush completed; lost is N minus what
arrived (rows counted in the SQLite file; spans counted by the OTLP receiver). A baseline puts the
SQLite figure in context: the same rows inserted again with nothing but ``executemany``.
"""

from __future__ import annotations

import functools
import json
import random
import sqlite3
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentemit import OtelTracer
from agentemit.bench import workload
from agentemit.bench._proc import Service
from agentemit.bench.options import Options
from agentemit.bench.report import Section, fmt_int, fmt_num, fmt_ratio, median
from agentemit.pipeline.otlp import OtlpHttpSink
from agentemit.stores import SqliteStore
from agentemit.stores._rows import COLUMNS

SQLITE_TARGET = 100_000
OTLP_TARGET = 50_000
FLUSH_TIMEOUT = 600.0
BASELINE_CHUNK = 1_000


def timed_run(tracer: OtelTracer, n: int, delivered: Callable[[], int]) -> dict[str, float]:
    """Emit ``n`` events in a fresh rollout and flush: wall time of both phases, the flush outcome and
    the loss, counted by ``delivered`` while the rollout is still open (so its root span is not yet sent)."""
    with tracer.trace_context("bench-e2e"):
        started = time.perf_counter()
        workload.produce(n)
        emitted = time.perf_counter()
        report = tracer.force_flush(FLUSH_TIMEOUT, drain_spool=True)
        done = time.perf_counter()
        stats = tracer.stats()
        lost = n - delivered()
    return {
        "seconds": done - started,
        "emit_seconds": emitted - started,
        "flush_completed": float(bool(report)),
        "spilled": float(stats.get("spilled", 0)),
        "lost": float(lost),
    }


def lost_and_extra(runs: list[dict[str, float]]) -> tuple[int, int]:
    """(events lost, events delivered more than once) summed over runs; a negative loss is a duplicate."""
    return sum(max(0, int(r["lost"])) for r in runs), sum(max(0, -int(r["lost"])) for r in runs)


def _throughput_row(section: Section, label: str, n: int, runs: list[dict[str, float]], extra: str = "") -> float:
    """Add the pipeline's row; returns the median events/s."""
    rate = median([n / r["seconds"] for r in runs])
    lost, duplicated = lost_and_extra(runs)
    emit_us = median([r["emit_seconds"] / n * 1e6 for r in runs])
    seconds = median([r["seconds"] for r in runs])
    section.add_row(
        [label, fmt_int(rate), fmt_num(emit_us, 2), fmt_num(seconds, 2), fmt_int(lost), extra],
        events_per_s=rate,
        emit_us_per_event=emit_us,
        runs=runs,
        lost_total=lost,
        duplicated_total=duplicated,
    )
    if duplicated:
        section.notes.append(
            f"{duplicated:,} events arrived more than once (at-least-once delivery), not counted as lost"
        )
    return rate


# --- SQLite --------------------------------------------------------------------------------------


def run_sqlite(options: Options) -> Section:
    n = options.events
    runs: list[dict[str, float]] = []
    with tempfile.TemporaryDirectory(prefix="agentemit-bench-") as tmp:
        for repeat in range(options.repeats):
            directory = Path(tmp) / f"run{repeat}"
            directory.mkdir()
            tracer, store = workload.sqlite_tracer(directory)
            try:
                runs.append(timed_run(tracer, n, functools.partial(workload.count_events, directory / "bench.db")))
            finally:
                tracer.teardown_worker()
                store.close()
        rows = _stored_rows(Path(tmp) / "run0" / "bench.db")
        random_ids = _with_random_span_ids(rows)
        sequential: list[float] = []
        shuffled: list[float] = []
        for repeat in range(options.repeats):
            sequential.append(_executemany_seconds(Path(tmp) / f"base{repeat}.db", rows))
            shuffled.append(_executemany_seconds(Path(tmp) / f"rand{repeat}.db", random_ids))

    section = Section(
        "sqlite",
        f"SQLite end to end: {n:,} events (9 messages : 1 reward) into OtelTracer over SqliteStore, "
        f"then force_flush; median of {options.repeats} runs",
        ["path", "events/s", "emit us/event", "seconds", "lost", "vs pipeline"],
    )
    rate = _throughput_row(section, "emit -> pipeline -> SqliteStore", n, runs)
    for label, seconds in (
        ("baseline: executemany, same rows, 1,000/txn", sequential),
        ("  same rows with random span ids", shuffled),
    ):
        base_rate = median([len(rows) / s for s in seconds])
        section.add_row(
            [label, fmt_int(base_rate), "", fmt_num(median(seconds), 2), "", fmt_ratio(base_rate / rate)],
            events_per_s=base_rate,
            seconds=seconds,
            rows=len(rows),
        )
    lost = lost_and_extra(runs)[0]
    section.check("SQLite events/s", f">= {SQLITE_TARGET:,}", fmt_int(rate), rate >= SQLITE_TARGET)
    section.check("SQLite lost", "0", fmt_int(lost), lost == 0)
    section.notes.append(
        "events/s counts from the first emit until force_flush returned; 'emit us/event' is the producer's "
        "own time; 'vs pipeline' is how many times faster the bare insert is"
    )
    if any(r["spilled"] for r in runs):
        section.notes.append(
            f"the queue overflowed to the spool in some runs (median {fmt_int(median([r['spilled'] for r in runs]))} "
            "events spilled), which the flush then replayed"
        )
    return section


def _stored_rows(db: Path) -> list[tuple[Any, ...]]:
    """The rows a run stored, in insertion order: exactly what the baseline inserts again."""
    conn = sqlite3.connect(db)
    try:
        return conn.execute(f"SELECT {', '.join(COLUMNS)} FROM spans ORDER BY rowid").fetchall()
    finally:
        conn.close()


def _with_random_span_ids(rows: list[tuple[Any, ...]]) -> list[tuple[Any, ...]]:
    index = COLUMNS.index("span_id")
    rng = random.Random(7)
    return [(*row[:index], f"{rng.getrandbits(64):016x}", *row[index + 1 :]) for row in rows]


def _executemany_seconds(db: Path, rows: list[tuple[Any, ...]]) -> float:
    """Insert ``rows`` into a fresh store file (the store's schema and pragmas), 1,000 per transaction."""
    store = SqliteStore(db)
    store.get_next_span_sequence_id("schema", "create")  # opens the file and creates the schema
    store.close()
    conn = sqlite3.connect(db, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = NORMAL")
        marks = ", ".join("?" for _ in COLUMNS)
        sql = f"INSERT INTO spans ({', '.join(COLUMNS)}) VALUES ({marks}) ON CONFLICT DO NOTHING"
        started = time.perf_counter()
        for start in range(0, len(rows), BASELINE_CHUNK):
            conn.execute("BEGIN")
            conn.executemany(sql, rows[start : start + BASELINE_CHUNK])
            conn.execute("COMMIT")
        return time.perf_counter() - started
    finally:
        conn.close()


# --- OTLP/HTTP -----------------------------------------------------------------------------------


def received_events(base_url: str) -> int:
    """Message and reward spans the receiver has decoded so far."""
    with urllib.request.urlopen(f"{base_url}/count", timeout=10) as response:
        return int(json.loads(response.read())["events"])


def _events_since(base_url: str, before: int) -> Callable[[], int]:
    return lambda: received_events(base_url) - before


def run_otlp(options: Options) -> Section:
    n = options.events
    runs: list[dict[str, float]] = []
    with (
        tempfile.TemporaryDirectory(prefix="agentemit-bench-") as tmp,
        Service("agentemit.bench.receiver", []) as receiver,
    ):
        for repeat in range(options.repeats):
            sink = OtlpHttpSink(f"{receiver.address}/v1/traces")
            tracer = OtelTracer(sink=sink, config=workload.config(Path(tmp) / f"spool{repeat}"), keep_last_trace=False)
            tracer.init_worker("bench")
            before = received_events(receiver.address)
            try:
                runs.append(timed_run(tracer, n, _events_since(receiver.address, before)))
            finally:
                tracer.teardown_worker()
    section = Section(
        "otlp",
        f"OTLP/HTTP end to end: {n:,} events into OtelTracer(sink=OtlpHttpSink) posting protobuf (gzip) to a "
        f"receiver in another process; median of {options.repeats} runs",
        ["path", "spans/s", "emit us/event", "seconds", "lost", ""],
    )
    rate = _throughput_row(section, "emit -> pipeline -> OTLP/HTTP -> receiver", n, runs)
    lost = lost_and_extra(runs)[0]
    section.check("OTLP/HTTP spans/s", f">= {OTLP_TARGET:,}", fmt_int(rate), rate >= OTLP_TARGET)
    section.check("OTLP/HTTP lost", "0", fmt_int(lost), lost == 0)
    section.notes.append("the receiver decodes every request fully (ExportTraceServiceRequest) and counts spans")
    return section
