"""Worker process for ``test_multiprocess.py``: one agent process emitting rollouts to a store server.

Usage: ``python _mp_worker.py '<settings as JSON>'`` (keys: see :class:`Settings`). The worker builds an
``OtelTracer`` over an ``HttpStore``, runs its rollouts, waits until its pipeline (spool included) is
drained, tears down, and prints one JSON line (:func:`main`) saying what it emitted, how its last flush
went, and how long each agent-facing call took, so the test can compare that with the store.

Kept free of pytest so it runs as a plain ``sys.executable`` child, like a real training worker.
"""

from __future__ import annotations

import faulthandler
import json
import logging
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from agentemit import OtelTracer, PipelineConfig, emit_exception, emit_message, emit_object, emit_reward
from agentemit.pipeline.sink import StoreSink
from agentemit.stores.http import HttpStore

MESSAGES_PER_ROLLOUT = 10
_STATS_KEYS = ("emitted", "exported", "export_failed", "spilled", "replayed", "in_spool", "dropped")


@dataclass(frozen=True, slots=True)
class Settings:
    """What the test asks of one worker.

    ``mode`` "store" hands the tracer the ``HttpStore`` (the documented setup); "sink" hands it only a
    store sink, so opening a rollout makes no request (see ``test_multiprocess.py`` for why).
    """

    url: str
    worker: int
    rollouts: int
    spool_dir: str
    mode: Literal["store", "sink"] = "store"
    flush_interval: float = 0.1
    retry_max_delay: float = 0.5
    http_timeout: float = 2.0
    http_max_retries: int = 1
    pause: float = 0.0  # seconds between rollouts, to spread emitting over a server outage
    drain_timeout: float = 30.0


def final_reward(worker: int, rollout: int) -> float:
    """The last reward of rollout ``rollout`` of ``worker``: distinct per rollout, exact in binary."""
    return worker + rollout / 64


def emits_exception(rollout: int) -> bool:
    return rollout % 5 == 0


def raises_out_of_context(rollout: int) -> bool:
    """Rollouts whose body raises through ``trace_context``: the root span must end with ERROR."""
    return rollout % 7 == 3


def expected_spans(rollout: int) -> int:
    """Spans one rollout stores: messages, one object, two rewards, maybe an exception, and the root."""
    return MESSAGES_PER_ROLLOUT + 1 + 2 + int(emits_exception(rollout)) + 1


class _Timer:
    """Records (monotonic start, seconds) of every agent-facing call: CLOCK_MONOTONIC is system-wide
    on Linux, so the test can place these against the moment it killed the server."""

    def __init__(self) -> None:
        self.calls: list[tuple[float, float]] = []

    def __enter__(self) -> None:
        self._start = time.monotonic()

    def __exit__(self, *exc: object) -> None:
        self.calls.append((self._start, time.monotonic() - self._start))


class _ErrorLog(logging.Handler):
    """Keeps what the ``agentemit`` loggers report at ERROR or above: the library swallows errors, so
    the worker hands them to the test (as ``conftest.py`` does in-process)."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(f"{record.name} {record.levelname}: {record.getMessage()}")


class _AgentFailure(RuntimeError):
    """The failure some rollouts raise out of their context on purpose."""


def _run_rollout(tracer: OtelTracer, worker: int, j: int, timer: _Timer) -> None:
    context = tracer.trace_context("rollout", rollout_id=f"w{worker}-r{j}")
    with timer:
        context.__enter__()
    failure: BaseException | None = None
    try:
        for k in range(MESSAGES_PER_ROLLOUT):
            with timer:
                emit_message(f"worker {worker} rollout {j} step {k}")
        with timer:
            emit_object({"worker": worker, "rollout": j, "plan": ["think", "act"]})
        with timer:
            emit_reward(0.25)
        if emits_exception(j):
            with timer:
                emit_exception(ValueError(f"tool failed in rollout {j}"))
        with timer:
            emit_reward(final_reward(worker, j))
        if raises_out_of_context(j):
            raise _AgentFailure(f"rollout {j} gave up")
    except _AgentFailure as exc:
        failure = exc
    finally:
        with timer:
            context.__exit__(type(failure) if failure else None, failure, None)


def _drain(tracer: OtelTracer, timeout: float) -> dict[str, Any]:
    """Flush until memory and spool are both empty, or ``timeout`` passes; the last report as a dict."""
    deadline = time.monotonic() + timeout
    rounds = 0
    while True:
        rounds += 1
        report = tracer.force_flush(max(0.1, deadline - time.monotonic()), drain_spool=True)
        assert report is not None, "worker: the tracer has no pipeline"
        if (report.completed and report.in_spool == 0) or time.monotonic() >= deadline:
            if not report.completed:  # where every thread is stuck, for the test's failure message
                faulthandler.dump_traceback(sys.stderr, all_threads=True)
            return {
                "completed": report.completed,
                "pending": report.pending,
                "in_spool": report.in_spool,
                "dropped": dict(report.dropped),
                "rounds": rounds,
            }


def main() -> None:
    """Run the worker; print its summary (emitted spans per rollout, flush, stats, call timings, errors)."""
    settings = Settings(**json.loads(sys.argv[1]))
    logged = _ErrorLog()
    logging.getLogger("agentemit").addHandler(logged)
    store = HttpStore(settings.url, timeout=settings.http_timeout, max_retries=settings.http_max_retries)
    config = PipelineConfig(
        spool_dir=Path(settings.spool_dir),
        flush_interval=settings.flush_interval,
        retry_max_delay=settings.retry_max_delay,
        retry_base_delay=0.05,
        adaptive_sampling=False,  # a busy test machine must not shed messages: counts are exact
        shutdown_timeout=10.0,
    )
    if settings.mode == "store":
        tracer = OtelTracer(store, config=config)
    else:
        tracer = OtelTracer(sink=StoreSink(store), config=config)
    tracer.init_worker(settings.worker)
    timer = _Timer()
    errors: list[str] = []
    spans_emitted: dict[str, int] = {}
    for j in range(settings.rollouts):
        try:
            _run_rollout(tracer, settings.worker, j, timer)
            spans_emitted[f"w{settings.worker}-r{j}"] = expected_spans(j)
        except Exception as exc:  # reported, not fatal: the test names what the agent saw
            errors.append(f"rollout {j}: {type(exc).__name__}: {exc}")
        if settings.pause:
            time.sleep(settings.pause)
    flush = _drain(tracer, settings.drain_timeout)
    stats = tracer.stats()
    tracer.teardown_worker()
    summary = {
        "worker": settings.worker,
        "spans_emitted": spans_emitted,
        "flush": flush,
        "stats": {
            k: stats.get(k)
            for k in ("emitted", "exported", "export_failed", "spilled", "replayed", "in_spool", "dropped")
        },
        "calls": timer.calls,
        "errors": errors,
        "logged_errors": logged.lines,
    }
    print(json.dumps(summary), flush=True)


if __name__ == "__main__":
    main()
