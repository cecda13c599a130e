"""Shared fixtures: a fast pipeline config, a tracer over a real SQLite file, and a guard that fails a
test when the library swallowed an error (it logs instead of raising into the host, so without this
guard a swallowed bug would pass silently).
"""

from __future__ import annotations

import logging
from collections.abc import Generator, Iterator
from pathlib import Path

import pytest

from agentemit import OtelTracer, PipelineConfig
from agentemit.pipeline.pipeline import Pipeline
from agentemit.stores import SqliteStore

ALLOW_ERRORS = "allow_agentemit_errors"
_GUARD_KEY = pytest.StashKey["_ErrorRecords"]()


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", f"{ALLOW_ERRORS}: the test expects agentemit to log errors (e.g. it provokes a failing spool)"
    )


class _ErrorRecords(logging.Handler):
    """Collects what the ``agentemit`` loggers report at ERROR or above (worker crashes included).

    The server's loggers are exempt: it logs an error alongside the 5xx it answers, so the error
    reaches its client (and the test asserting on that answer) instead of being swallowed.
    """

    def __init__(self) -> None:
        super().__init__(level=logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        if record.name == "agentemit.server" or record.name.startswith("agentemit.server."):
            return
        if record.levelno >= logging.ERROR or "worker crashed" in record.getMessage():
            self.records.append(record)

    def take_report(self) -> str | None:
        records, self.records = self.records, []
        if not records:
            return None
        lines = [f"  {r.name} {r.levelname}: {r.getMessage()}" for r in records]
        return (
            f"agentemit logged {len(records)} error(s) it swallowed "
            f"(mark the test @pytest.mark.{ALLOW_ERRORS} if they are expected):\n" + "\n".join(lines)
        )


@pytest.fixture(autouse=True)
def _fail_on_swallowed_agentemit_errors(request: pytest.FixtureRequest) -> Iterator[None]:
    """Fail the test if ``agentemit`` logged an error, unless it carries the opt-out marker."""
    if request.node.get_closest_marker(ALLOW_ERRORS) is not None:
        yield
        return
    guard = _ErrorRecords()
    logger = logging.getLogger("agentemit")
    logger.addHandler(guard)
    request.node.stash[_GUARD_KEY] = guard
    try:
        yield
    finally:
        logger.removeHandler(guard)
    report = guard.take_report()  # errors logged while fixtures tore down (e.g. a pipeline shutdown)
    if report is not None:
        pytest.fail(report, pytrace=False)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_call(item: pytest.Item) -> Generator[None, None, None]:
    """Turn errors logged during the test body into a failure of the test itself."""
    result = yield
    guard = item.stash.get(_GUARD_KEY, None)
    report = guard.take_report() if guard is not None else None
    if report is not None:
        pytest.fail(report, pytrace=False)
    return result


@pytest.fixture
def tmp_spool(tmp_path: Path) -> PipelineConfig:
    """A pipeline config for tests: private spool, fast flushes, redaction on.

    Adaptive shedding is off: under a busy CI machine it would drop messages and make exact counts flaky.
    """
    return PipelineConfig(
        spool_dir=tmp_path / "spool",
        flush_interval=0.02,
        retry_base_delay=0.0,
        redact=True,
        adaptive_sampling=False,
    )


@pytest.fixture
def sqlite_tracer(tmp_path: Path, tmp_spool: PipelineConfig) -> Iterator[OtelTracer]:
    """An initialised OtelTracer (worker 0) over ``SqliteStore(tmp_path / "t.db")``; torn down after.

    The store is ``tracer.store``; teardown flushes the tracer, then closes the store.
    """
    store = SqliteStore(tmp_path / "t.db")
    tracer = OtelTracer(store, config=tmp_spool)
    tracer.init_worker(0)
    try:
        yield tracer
    finally:
        try:
            tracer.teardown_worker()
        finally:
            store.close()


@pytest.fixture
def pipelines() -> Iterator[list[Pipeline]]:
    """Pipelines a test made; shut down afterwards so no worker outlives its test."""
    made: list[Pipeline] = []
    yield made
    for p in made:
        p.shutdown(5.0)
