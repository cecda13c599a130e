"""Many processes, one store server: every span lands exactly once, even across a server crash.

Real processes only: the server is a ``sys.executable`` child serving a SQLite file or a PostgreSQL
schema on 127.0.0.1; each worker is ``_mp_worker.py`` in its own interpreter, emitting rollouts through
``OtelTracer`` -> pipeline (disk spool) -> ``HttpStore``. The test then reads the store directly.

Every wait is bounded; nothing asserts on speed except the loose "no stall" bound, which separates
"never waits on the network" (milliseconds) from "blocked on a dead server" (seconds).
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from _mp_worker import MESSAGES_PER_ROLLOUT, emits_exception, final_reward, raises_out_of_context
from _ports import free_port
from agentemit import OtelTracer, PipelineConfig, emit_message, semconv
from agentemit.stores import SqliteStore
from agentemit.stores.base import SpanStore
from agentemit.stores.http import HttpStore

PG_DSN = os.environ.get("AGENTEMIT_PG_DSN")
PG_SKIP_REASON = "AGENTEMIT_PG_DSN is not set (e.g. postgresql://postgres@127.0.0.1:5432/test)"
WORKER_SCRIPT = Path(__file__).with_name("_mp_worker.py")
WORKERS = 4
ROLLOUTS = 25
STALL_BOUND = 0.5  # seconds; an agent call blocked on a dead server takes one HTTP round of retries or more
START_TIMEOUT = 20.0
WORKER_TIMEOUT = 45.0

pytestmark = pytest.mark.timeout(120)


# --- processes --------------------------------------------------------------------------------------


def child_env() -> dict[str, str]:
    """The environment minus ``AGENTEMIT_*``: a token or pipeline knob set in the shell must not leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("AGENTEMIT_")}


def server_command(store_url: str, port: int) -> list[str]:
    """``python -m agentemit serve`` when the CLI is installed, else the runner it wraps."""
    if importlib.util.find_spec("agentemit.__main__") is not None:
        return [sys.executable, "-m", "agentemit", "serve", "--store", store_url, "--port", str(port)]
    script = (
        "import sys\n"
        "from agentemit.server.runner import serve\n"
        "serve(sys.argv[1], host='127.0.0.1', port=int(sys.argv[2]), log_level='warning')\n"
    )
    return [sys.executable, "-c", script, store_url, str(port)]


class ServerProcess:
    """The store server as a child process on a fixed port, so it can be killed and started again."""

    def __init__(self, store_url: str, port: int, log_dir: Path) -> None:
        self.store_url = store_url
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_dir = log_dir
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0

    def start(self) -> ServerProcess:
        """Start it and wait (bounded) until ``/healthz`` answers."""
        self.starts += 1
        log = (self.log_dir / f"server-{self.starts}.log").open("wb")
        self.proc = subprocess.Popen(
            server_command(self.store_url, self.port), stdout=log, stderr=subprocess.STDOUT, env=child_env()
        )
        log.close()
        deadline = time.monotonic() + START_TIMEOUT
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"store server exited with {self.proc.returncode} before answering:\n{self.log()}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=0.5).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            time.sleep(0.02)
        self.stop()
        pytest.fail(f"store server not healthy on port {self.port} within {START_TIMEOUT}s:\n{self.log()}")

    def log(self) -> str:
        return (self.log_dir / f"server-{self.starts}.log").read_text(errors="replace")[-3000:]

    def stats(self) -> dict[str, Any]:
        answer: dict[str, Any] = httpx.get(f"{self.url}/v1/stats", timeout=2.0).json()
        return answer

    def kill(self) -> None:
        """SIGKILL: a crash, with requests possibly half-handled (stored but not acknowledged)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        """SIGTERM (uvicorn's graceful exit, which closes the store), SIGKILL if that hangs."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(10)


@dataclass
class Workers:
    procs: list[subprocess.Popen[bytes]]
    log_dir: Path

    def collect(self) -> list[dict[str, Any]]:
        """Wait (bounded) for every worker; their JSON summaries, in worker order."""
        summaries: list[dict[str, Any]] = []
        deadline = time.monotonic() + WORKER_TIMEOUT
        for i, proc in enumerate(self.procs):
            try:
                out, _ = proc.communicate(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                self.kill_all()
                pytest.fail(f"worker {i} did not finish within {WORKER_TIMEOUT}s:\n{self.log(i)}")
            if proc.returncode != 0:
                pytest.fail(f"worker {i} exited with {proc.returncode}:\n{self.log(i)}")
            summary = json.loads(out.decode().strip().splitlines()[-1])
            summary["log"] = self.log(i)  # its warnings (and thread stacks if its drain timed out)
            summaries.append(summary)
        return summaries

    def log(self, i: int) -> str:
        return (self.log_dir / f"worker-{i}.log").read_text(errors="replace")[-3000:]

    def kill_all(self) -> None:
        for proc in self.procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait(10)


def start_workers(url: str, work_dir: Path, **settings: Any) -> Workers:
    """``WORKERS`` worker processes, each with its own spool directory, emitting ``ROLLOUTS`` rollouts."""
    procs = []
    for i in range(WORKERS):
        args = {"url": url, "worker": i, "rollouts": ROLLOUTS, "spool_dir": str(work_dir / f"spool-{i}"), **settings}
        with (work_dir / f"worker-{i}.log").open("wb") as log:
            procs.append(
                subprocess.Popen(
                    [sys.executable, str(WORKER_SCRIPT), json.dumps(args)],
                    stdout=subprocess.PIPE,
                    stderr=log,
                    env=child_env(),
                )
            )
    return Workers(procs, work_dir)


# --- stores -----------------------------------------------------------------------------------------


@dataclass
class StoreTarget:
    """A store the server serves (``url``) and the test reads directly (``open``)."""

    url: str
    open: Callable[[], SpanStore]


def _drop_schema(schema: str) -> None:
    import psycopg
    from psycopg import sql

    assert PG_DSN is not None
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@contextlib.contextmanager
def store_target(kind: str, directory: Path) -> Iterator[StoreTarget]:
    """A SQLite file in ``directory``, or a fresh PostgreSQL schema dropped afterwards (skips without a DSN)."""
    if kind == "sqlite":
        path = directory / "spans.db"
        yield StoreTarget(f"sqlite:///{path}", lambda: SqliteStore(path))
        return
    if not PG_DSN:
        pytest.skip(PG_SKIP_REASON)
    from agentemit.stores.postgres import PostgresStore

    dsn, schema = PG_DSN, f"t_{uuid.uuid4().hex[:8]}"
    separator = "&" if "?" in dsn else "?"
    try:
        yield StoreTarget(f"{dsn}{separator}schema={schema}", lambda: PostgresStore(dsn, schema=schema))
    finally:
        _drop_schema(schema)


STORE_KINDS = ["sqlite", "postgresql"]


# --- checks -----------------------------------------------------------------------------------------


def assert_workers_clean(summaries: list[dict[str, Any]]) -> None:
    """Every rollout ran, nothing was dropped or left behind, and the library logged no error."""
    for s in summaries:
        who = f"worker {s['worker']}"
        assert s["errors"] == [], f"{who}: the agent saw errors: {s['errors'][:3]}"
        assert s["logged_errors"] == [], f"{who}: agentemit logged errors: {s['logged_errors'][:3]}"
        assert len(s["spans_emitted"]) == ROLLOUTS, f"{who}: ran {len(s['spans_emitted'])} of {ROLLOUTS} rollouts"
        flush = s["flush"]
        assert flush["completed"] and flush["pending"] == 0 and flush["in_spool"] == 0, (
            f"{who}: flush {flush}; its log:\n{s.get('log', '')}"
        )
        assert flush["dropped"] == {}, f"{who}: dropped {flush['dropped']}"
        total = sum(s["spans_emitted"].values())
        assert s["stats"]["emitted"] == s["stats"]["exported"] == total, f"{who}: {total} spans expected, {s['stats']}"


def assert_stored_exactly_once(store: SpanStore, summaries: list[dict[str, Any]]) -> None:
    """Per rollout: the emitted count plus the root, unique span ids, sequence ids 0..n-1, the rewards."""
    emitted: dict[str, int] = {}
    for s in summaries:
        emitted.update(s["spans_emitted"])
    assert len(emitted) == WORKERS * ROLLOUTS
    summaries_by_id = {r.rollout_id: r for r in store.list_rollouts()}
    assert set(summaries_by_id) == set(emitted), "the store holds other rollouts than those emitted"
    for rollout_id, count in sorted(emitted.items()):
        worker, rollout = (int(part[1:]) for part in rollout_id.split("-"))
        spans = store.query_spans(rollout_id)
        assert len(spans) == count, f"{rollout_id}: stored {len(spans)} spans, emitted {count}"
        assert len({s.span_id for s in spans}) == count, f"{rollout_id}: duplicate span ids"
        assert [s.sequence_id for s in spans] == list(range(count)), f"{rollout_id}: sequence ids not 0..{count - 1}"
        assert {s.attempt_id for s in spans} == {"attempt-0"}
        names = Counter(s.name for s in spans)
        assert names == {
            semconv.SPAN_MESSAGE: MESSAGES_PER_ROLLOUT,
            semconv.SPAN_OBJECT: 1,
            semconv.SPAN_REWARD: 2,
            **({semconv.SPAN_EXCEPTION: 1} if emits_exception(rollout) else {}),
            "rollout": 1,
        }, f"{rollout_id}: span names {dict(names)}"
        root = next(s for s in spans if s.name == "rollout")
        assert root.sequence_id == 0 and root.parent_id is None
        assert root.status == ("ERROR" if raises_out_of_context(rollout) else "UNSET"), f"{rollout_id}: root status"
        summary = summaries_by_id[rollout_id]
        assert summary.span_count == count
        assert summary.final_reward == final_reward(worker, rollout), f"{rollout_id}: final reward"


# --- 1. many processes, one server ------------------------------------------------------------------


@pytest.mark.parametrize("kind", STORE_KINDS)
def test_four_worker_processes_store_every_span_exactly_once_through_one_server(kind: str, tmp_path: Path) -> None:
    with store_target(kind, tmp_path) as target:
        server = ServerProcess(target.url, free_port(), tmp_path).start()
        try:
            summaries = start_workers(server.url, tmp_path, mode="store", flush_interval=0.1).collect()
            stored = server.stats()["spans_stored"]
        finally:
            server.stop()
        assert_workers_clean(summaries)
        assert stored == sum(sum(s["spans_emitted"].values()) for s in summaries)
        with target.open() as store:
            assert_stored_exactly_once(store, summaries)


# --- 2 and 3. the server crashes and comes back mid-run ---------------------------------------------


@dataclass
class RestartRun:
    summaries: list[dict[str, Any]]
    target: StoreTarget
    killed_at: float  # time.monotonic() (system-wide on Linux, so comparable with the workers')
    back_at: float
    stored_before_kill: int


@pytest.fixture(scope="module", params=STORE_KINDS)
def restart_run(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RestartRun]:
    """One run for both tests below: workers emit for a few seconds; the server is SIGKILLed after some
    spans arrived, stays down ~1 s, and is started again on the same port and store.

    Workers use ``mode="sink"`` so this run pins the pipeline's part alone; opening a rollout while
    the server is down is pinned by the test at the end.
    """
    work = tmp_path_factory.mktemp(f"restart-{request.param}")
    with store_target(request.param, work) as target:
        yield _crash_and_restart_the_server_mid_run(target, work)


def _crash_and_restart_the_server_mid_run(target: StoreTarget, work: Path) -> RestartRun:
    server = ServerProcess(target.url, free_port(), work).start()
    workers = start_workers(
        server.url, work, mode="sink", pause=0.12, flush_interval=0.2, retry_max_delay=0.5, drain_timeout=30.0
    )
    try:
        deadline = time.monotonic() + START_TIMEOUT
        while (stored := int(server.stats()["spans_stored"])) < 100:
            assert time.monotonic() < deadline, f"only {stored} spans reached the server in {START_TIMEOUT}s"
            time.sleep(0.02)
        server.kill()
        killed_at = time.monotonic()
        time.sleep(1.0)
        server.start()
        back_at = time.monotonic()
        summaries = workers.collect()
    finally:
        workers.kill_all()
        server.stop()
    return RestartRun(summaries, target, killed_at, back_at, stored)


def test_spans_emitted_while_the_server_is_killed_and_restarted_are_stored_exactly_once(
    restart_run: RestartRun,
) -> None:
    summaries = restart_run.summaries
    assert_workers_clean(summaries)
    spilled = sum(s["stats"]["spilled"] for s in summaries)
    replayed = sum(s["stats"]["replayed"] for s in summaries)
    assert spilled > 0 and replayed > 0, f"the outage never reached the spool (spilled {spilled}, replayed {replayed})"
    with restart_run.target.open() as store:
        assert_stored_exactly_once(store, summaries)


def test_agent_calls_never_stall_while_the_server_is_down(restart_run: RestartRun) -> None:
    """Every emit and rollout enter/exit during the outage returns at once (a loose correctness bound)."""
    for s in restart_run.summaries:
        during = [
            seconds
            for started, seconds in s["calls"]
            if restart_run.killed_at <= started + seconds and started <= restart_run.back_at
        ]
        assert during, f"worker {s['worker']} made no agent call while the server was down; the run proves nothing"
        assert max(during) < STALL_BOUND, (
            f"worker {s['worker']}: an agent call took {max(during):.3f}s during the outage"
        )


# --- known gap --------------------------------------------------------------------------------------


def test_opening_a_rollout_while_the_server_is_down_neither_raises_nor_stalls(tmp_path: Path) -> None:
    """The sequence-id lookup fails fast (one try, short timeout) and ids start at 0, counted."""
    dead = HttpStore(f"http://127.0.0.1:{free_port()}", max_retries=1, timeout=2.0)
    config = PipelineConfig(
        spool_dir=tmp_path / "spool", flush_interval=0.2, adaptive_sampling=False, shutdown_timeout=0.5
    )
    tracer = OtelTracer(dead, config=config)
    tracer.init_worker(0)
    try:
        started = time.monotonic()
        with tracer.trace_context("rollout", rollout_id="r-outage"):
            emit_message("the server is down")
        assert time.monotonic() - started < STALL_BOUND
        assert tracer.stats()["sequence_lookup_failures"] == 1
    finally:
        tracer.teardown_worker()
