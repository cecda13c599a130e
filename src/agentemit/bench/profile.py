"""Where the time goes: the worker's path and the server's ingest path, phase by phase, plus cProfile.

The worker is driven synchronously here (a pipeline built with ``start=False``, filled by the real
emit calls, then drained on this thread) so phases can be timed without the GIL contention of a live
producer; the end-to-end sections show what that contention adds on top.
"""

from __future__ import annotations

import cProfile
import os
import pstats
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any, TypeVar

from agentemit import OtelTracer, codec
from agentemit.bench import workload
from agentemit.bench.options import Options
from agentemit.bench.report import Section, fmt_int, fmt_num
from agentemit.compression import compress
from agentemit.pipeline.builder import build_span
from agentemit.pipeline.factory import build_pipeline
from agentemit.pipeline.pipeline import Pipeline
from agentemit.server.security import decompress_bounded
from agentemit.span import Span
from agentemit.stores import SqliteStore
from agentemit.stores._rows import iter_rows
from agentemit.tracing.context import RawRecord

T = TypeVar("T")
TOP_FUNCTIONS = 15
SERVER_BATCH = 1_000


def _queued_pipeline(directory: Path, n: int) -> tuple[OtelTracer, SqliteStore, Pipeline]:
    """A tracer over SQLite whose pipeline has no worker, holding ``n`` emitted events in its queue."""
    store = SqliteStore(directory / "bench.db")
    cfg = workload.config(directory / "spool", memory_threshold=4 << 30)  # everything fits: no overflow
    tracer = OtelTracer(store, config=cfg, keep_last_trace=False)
    pipeline = build_pipeline(store=store, config=cfg, resource=tracer.resource, start=False)
    tracer.pipeline = pipeline  # the tracer delivers into this unstarted pipeline instead of its own
    with tracer.trace_context("bench-profile"):
        workload.produce(n)
    return tracer, store, pipeline


def _time_each(fn: Callable[[T], object], items: Sequence[T]) -> tuple[float, list[Any]]:
    """Seconds to call ``fn`` on every item, and the results."""
    started = time.perf_counter()
    results = [fn(item) for item in items]
    return time.perf_counter() - started, results


def _drain(rows: Iterable[object]) -> None:
    for _ in rows:
        pass


def _encode_rows(batch: Sequence[Span]) -> None:
    _drain(iter_rows(batch, "sqlite"))  # streamed, as the store does: rows are not held


def _stage_name(stage: object) -> str:
    return str(getattr(stage, "__name__", type(stage).__name__))


def worker_phases(directory: Path, n: int) -> list[tuple[str, float]]:
    """Seconds per phase of the worker's path for ``n`` events, in pipeline order."""
    _, store, pipeline = _queued_pipeline(directory, n)
    try:
        records: list[RawRecord] = pipeline.lanes.take(len(pipeline.lanes))
        resource = pipeline.resource
        seconds, spans = _time_each(lambda r: build_span(r, resource), records)
        phases = [("build Span from raw record", seconds)]
        for stage in pipeline.stages:
            seconds, results = _time_each(stage, spans)
            spans = [s for s in results if s is not None]
            phases.append((f"stage {_stage_name(stage)}", seconds))
        size = pipeline.config.batch_size
        batches = [spans[i : i + size] for i in range(0, len(spans), size)]
        encode, _ = _time_each(_encode_rows, batches)
        export, _ = _time_each(pipeline.sink.export, batches)
        phases.append(("SqliteStore: validate and encode rows, one pass (orjson, sha256, reward)", encode))
        phases.append(
            (f"SqliteStore: INSERT, one autocommit statement per {size}, by difference", max(0.0, export - encode))
        )
        return phases
    finally:
        store.close()


def worker_profile(directory: Path, n: int) -> pstats.Stats:
    """cProfile of one synchronous drain of ``n`` queued events (build, stages, export)."""
    _, store, pipeline = _queued_pipeline(directory, n)
    profile = cProfile.Profile()
    try:
        profile.runcall(pipeline.run_once, flush_all=True)
    finally:
        store.close()
    return pstats.Stats(profile)


def server_phases(directory: Path, n: int) -> list[tuple[str, float]]:
    """Seconds per phase of one HttpStore -> server -> SqliteStore batch path, without the HTTP.

    The server's field-by-field JSON validator is not a phase: it runs only on a refused batch."""
    spans = workload.make_spans(n, "profile", per_rollout=SERVER_BATCH)
    batches = [spans[i : i + SERVER_BATCH] for i in range(0, n, SERVER_BATCH)]
    encode, bodies = _time_each(codec.encode_batch, batches)
    pack, packed = _time_each(lambda body: compress(body, "zstd"), bodies)
    unpack, _ = _time_each(lambda body: decompress_bounded(body, "zstd", 32 << 20), packed)
    decode, decoded = _time_each(codec.decode_batch, bodies)
    store = SqliteStore(directory / "server.db")
    try:
        insert, _ = _time_each(store.add_many_spans, decoded)
    finally:
        store.close()
    return [
        ("client: codec.encode_batch", encode),
        ("client: zstd compress", pack),
        ("server: zstd decompress (bounded)", unpack),
        ("server: codec.decode_batch (one parse, checksum, strict Span decoding)", decode),
        (f"server: SqliteStore.add_many_spans ({SERVER_BATCH} per call)", insert),
    ]


def _spin(stop: threading.Event, counter: list[int]) -> None:
    """Busy Python work (an agent's own threads) that wants the GIL whenever the store lets it go."""
    n = 0
    while not stop.is_set():
        for _ in range(1_000):
            n += 1
        counter[0] = n


def store_under_load(directory: Path, n: int) -> list[tuple[str, float, float]]:
    """SqliteStore.add_many_spans of 1,000-span batches alone and beside a busy Python thread:
    (label, spans/s, the busy thread's share of its solo progress). SQLite releases the GIL inside a
    statement; each time it wants it back it may wait the interpreter's switch interval."""
    spans = workload.make_spans(n, "load", per_rollout=SERVER_BATCH)
    batches = [spans[i : i + SERVER_BATCH] for i in range(0, n, SERVER_BATCH)]
    results: list[tuple[str, float, float]] = []
    for label, busy in (("alone", False), ("beside a busy Python thread", True)):
        store = SqliteStore(directory / f"load-{busy}.db")
        stop, counter = threading.Event(), [0]
        spinner = threading.Thread(target=_spin, args=(stop, counter), daemon=True)
        try:
            if busy:
                spinner.start()
                time.sleep(0.2)
                solo_rate = counter[0] / 0.2
                before = counter[0]
            seconds, _ = _time_each(store.add_many_spans, batches)
            share = (counter[0] - before) / seconds / solo_rate if busy else 0.0
        finally:
            stop.set()
            if busy:
                spinner.join()
            store.close()
        results.append((label, n / seconds, share))
    return results


def _load_section(n: int, rows: list[tuple[str, float, float]]) -> Section:
    section = Section(
        "profile-store-load",
        f"SqliteStore.add_many_spans, {n:,} spans in batches of {SERVER_BATCH:,}, alone and beside busy Python",
        ["SqliteStore writes", "spans/s", "busy thread's progress"],
    )
    for label, rate, share in rows:
        section.add_row([label, fmt_int(rate), f"{share:.0%}" if share else ""], spans_per_s=rate, busy_share=share)
    section.notes.append(
        "busy thread's progress: its rate while the store writes, as a share of its rate alone; a batch of up "
        "to 1,000 spans is one statement (no BEGIN/COMMIT), so the store takes the GIL back once per batch"
    )
    return section


def _phase_section(key: str, title: str, n: int, phases: Sequence[tuple[str, float]]) -> Section:
    section = Section(key, title, ["phase", "us/span", "share"])
    total = sum(s for _, s in phases)
    for label, seconds in phases:
        section.add_row([label, fmt_num(seconds / n * 1e6, 2), f"{seconds / total:.0%}"], us_per_span=seconds / n * 1e6)
    section.add_row(["total", fmt_num(total / n * 1e6, 2), "100%"], us_per_span=total / n * 1e6)
    section.notes.append(f"a path that costs T us/span on one core caps throughput at 1e6/T spans/s ({n:,} spans)")
    return section


def _where(key: tuple[str, int, str]) -> str:
    filename, line, name = key
    if filename == "~":
        return name
    parts = Path(filename).parts
    short = "/".join(parts[parts.index("agentemit") :]) if "agentemit" in parts else os.path.basename(filename)
    return f"{name} ({short}:{line})"


def _top_section(stats: pstats.Stats, n: int) -> Section:
    section = Section(
        "profile-top",
        f"cProfile of the worker draining {n:,} events into SQLite: top {TOP_FUNCTIONS} functions by own time",
        ["function", "calls", "own us/span", "cumulative us/span"],
    )
    table: dict[tuple[str, int, str], tuple[int, int, float, float, Any]] = stats.stats  # type: ignore[attr-defined]
    ranked = sorted(table.items(), key=lambda item: item[1][2], reverse=True)[:TOP_FUNCTIONS]
    for key, (_, calls, own, cumulative, _) in ranked:
        section.add_row(
            [_where(key), f"{calls:,}", fmt_num(own / n * 1e6, 2), fmt_num(cumulative / n * 1e6, 2)],
            function=_where(key),
            calls=calls,
            own_us_per_span=own / n * 1e6,
            cumulative_us_per_span=cumulative / n * 1e6,
        )
    section.notes.append("profiler overhead inflates small functions; read the ranking, not the absolute figures")
    return section


def run(options: Options) -> list[Section]:
    n = options.profile_events
    with tempfile.TemporaryDirectory(prefix="agentemit-bench-") as tmp:
        root = Path(tmp)
        for name in ("worker", "profiled", "server"):
            (root / name).mkdir()
        worker = worker_phases(root / "worker", n)
        top = worker_profile(root / "profiled", n)
        server = server_phases(root / "server", n)
        load = store_under_load(root / "server", n)
    return [
        _phase_section(
            "profile-worker",
            f"worker path per span, driven synchronously ({n:,} events of the standard workload, default stages)",
            n,
            worker,
        ),
        _top_section(top, n),
        _phase_section("profile-server", f"server ingest path per span, without HTTP ({n:,} spans)", n, server),
        _load_section(n, load),
    ]
