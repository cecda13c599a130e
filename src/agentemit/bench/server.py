"""Store server ingest: HttpStore clients POST batches of 1,000 spans to ``agentemit.server`` on loopback.

The server runs in its own process (``python -m agentemit.bench.server <store-url>``, uvicorn via
:class:`~agentemit.server.runner.ServerThread`), so client and server do not share a GIL. spans/s
is spans posted over wall time; lost is spans posted minus rows of that run found in the store.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from agentemit.bench import workload
from agentemit.bench._proc import Service, serve_until_stdin_closes
from agentemit.bench.options import Options
from agentemit.bench.report import Section, fmt_int, fmt_num, median
from agentemit.span import Span
from agentemit.stores.http import HttpStore

SERVER_TARGET = 50_000


def serve(store_url: str) -> None:
    """Child side: serve the store at ``store_url`` on an ephemeral loopback port until stdin closes."""
    from agentemit.server.app import create_app
    from agentemit.server.runner import ServerThread, tune_gc_for_serving
    from agentemit.stores import open_store

    store = open_store(store_url)
    try:
        app = create_app(store)
        tune_gc_for_serving()  # as `agentemit serve` does
        with ServerThread(app, "127.0.0.1", 0) as server:
            serve_until_stdin_closes(server.url)
    finally:
        store.close()


def post_all(url: str, batches: list[list[Span]], clients: int) -> dict[str, float]:
    """POST every batch, spread over ``clients`` threads with one HttpStore each; timing and counts."""
    stores = [HttpStore(url) for _ in range(clients)]
    stored = [0] * clients
    errors: list[str] = []
    start = threading.Barrier(clients + 1)

    def client(index: int) -> None:
        start.wait()
        try:
            for batch in batches[index::clients]:
                stored[index] += stores[index].add_many_spans(batch)
        except Exception as exc:  # reported, and the run's lost count shows the damage
            errors.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for thread in threads:
        thread.start()
    cpu = time.process_time()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - began
    cpu = time.process_time() - cpu
    for store in stores:
        store.close()
    if errors:
        print(f"bench server: {len(errors)} client error(s), first: {errors[0]}", file=sys.stderr)
    return {"seconds": seconds, "client_cpu": cpu, "stored": float(sum(stored)), "errors": float(len(errors))}


def _backends(options: Options, tmp: Path) -> list[tuple[str, str, Callable[[str], int], Callable[[], None]]]:
    """(label, store URL, rows-of-a-tag counter, cleanup) for SQLite, and PostgreSQL when a DSN is set."""
    db = tmp / "server.db"
    found: list[tuple[str, str, Callable[[str], int], Callable[[], None]]] = [
        (
            "SQLite",
            f"sqlite:///{db}",
            lambda tag: workload.count_rows(db, "WHERE rollout_id LIKE ?", (f"{tag}-%",)),
            lambda: None,
        )
    ]
    if options.pg_dsn:
        found.append(_postgres_backend(options.pg_dsn))
    return found


def _postgres_backend(dsn: str) -> tuple[str, str, Callable[[str], int], Callable[[], None]]:
    import psycopg
    from psycopg import sql

    schema = f"agentemit_bench_{uuid.uuid4().hex[:10]}"
    separator = "&" if "?" in dsn else "?"

    def count(tag: str) -> int:
        with psycopg.connect(dsn) as conn:
            query = sql.SQL("SELECT count(*) FROM {}.spans WHERE rollout_id LIKE %s").format(sql.Identifier(schema))
            row = conn.execute(query, (f"{tag}-%",)).fetchone()
        return int(row[0]) if row else 0

    def drop() -> None:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))

    return "PostgreSQL", f"{dsn}{separator}schema={schema}", count, drop


def run(options: Options) -> Section:
    results: list[dict[str, Any]] = []
    with tempfile.TemporaryDirectory(prefix="agentemit-bench-") as tmp:
        for label, store_url, count, cleanup in _backends(options, Path(tmp)):
            try:
                with Service(__name__, [store_url], timeout=60) as server:
                    for clients in options.server_clients:
                        runs = []
                        for repeat in range(options.repeats):
                            tag = f"c{clients}r{repeat}{uuid.uuid4().hex[:6]}"
                            spans = workload.make_spans(options.server_spans, tag, per_rollout=options.server_batch)
                            step = options.server_batch
                            batches = [spans[i : i + step] for i in range(0, len(spans), step)]
                            del spans
                            outcome = post_all(server.address, batches, clients)
                            outcome["lost"] = float(options.server_spans - count(tag))
                            runs.append(outcome)
                        results.append({"backend": label, "clients": clients, "runs": runs})
                results.append({"backend": label, "clients": 0, "runs": _store_alone(options, store_url, count)})
            finally:
                cleanup()
    return _section(options, results)


def _store_alone(options: Options, store_url: str, count: Callable[[str], int]) -> list[dict[str, float]]:
    """The baseline: the same batches written by ``add_many_spans`` in this process, with no HTTP,
    no server and no decoding; what the store itself sustains on this machine right now."""
    from agentemit.stores import open_store

    runs = []
    for repeat in range(options.repeats):
        tag = f"direct{repeat}{uuid.uuid4().hex[:6]}"
        spans = workload.make_spans(options.server_spans, tag, per_rollout=options.server_batch)
        step = options.server_batch
        store = open_store(store_url)
        try:
            started, cpu = time.perf_counter(), time.process_time()
            for i in range(0, len(spans), step):
                store.add_many_spans(spans[i : i + step])
            seconds, client_cpu = time.perf_counter() - started, time.process_time() - cpu
        finally:
            store.close()
        runs.append({"seconds": seconds, "client_cpu": client_cpu, "lost": float(len(spans) - count(tag))})
    return runs


def _section(options: Options, results: list[dict[str, Any]]) -> Section:
    n = options.server_spans
    section = Section(
        "server",
        f"server: {n:,} spans per run POSTed by HttpStore (zstd) in batches of {options.server_batch:,} to "
        f"agentemit.server (uvicorn, one process) on 127.0.0.1; median of {options.repeats} runs",
        ["store behind the server", "clients", "spans/s", "client CPU us/span", "seconds", "lost", "of store alone"],
    )
    best: dict[str, float] = {}
    alone = {r["backend"]: median([n / run["seconds"] for run in r["runs"]]) for r in results if r["clients"] == 0}
    lost_by: dict[str, int] = {}
    for result in results:
        runs = result["runs"]
        rate = median([n / r["seconds"] for r in runs])
        cpu = median([r["client_cpu"] / n * 1e6 for r in runs])
        lost = sum(int(r["lost"]) for r in runs)
        backend = result["backend"]
        baseline = result["clients"] == 0
        if not baseline:
            best[backend] = max(best.get(backend, 0.0), rate)
            lost_by[backend] = lost_by.get(backend, 0) + lost
        section.add_row(
            [
                f"  baseline: {backend} store alone, in-process" if baseline else backend,
                "-" if baseline else str(result["clients"]),
                fmt_int(rate),
                fmt_num(cpu, 2),
                fmt_num(median([r["seconds"] for r in runs]), 2),
                fmt_int(lost),
                "" if baseline or backend not in alone else f"{rate / alone[backend]:.0%}",
            ],
            backend=backend,
            clients=result["clients"],
            spans_per_s=rate,
            client_cpu_us_per_span=cpu,
            runs=runs,
            lost_total=lost,
        )
    for backend, rate in best.items():
        section.check(
            f"server on {backend} spans/s (best client count)",
            f">= {SERVER_TARGET:,}",
            fmt_int(rate),
            rate >= SERVER_TARGET,
        )
        section.check(f"server on {backend} lost", "0", fmt_int(lost_by[backend]), lost_by[backend] == 0)
    if not options.pg_dsn:
        section.notes.append("PostgreSQL not measured: set AGENTEMIT_PG_DSN to include it")
    section.notes.append("client CPU is the benchmark process's CPU time (encode, compress, HTTP) per span posted")
    section.notes.append(
        "baseline: the same batches written by add_many_spans in the benchmark process (no HTTP, no decoding), "
        "measured after the server runs; 'of store alone' is the server's rate as a share of it"
    )
    return section


if __name__ == "__main__":
    serve(sys.argv[1])
