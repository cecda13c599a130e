"""Events too large to ever be held or delivered: each is dropped alone, counted ``oversize`` and logged
(rate-limited, naming its kind and size), while the rest of its batch is queued, spooled or delivered.

The places: the queue's byte budget at emit, the spool's cap (failed exports and overflow spills), and
a sink that refuses one span as too large even alone (the store server's 413, an OTLP collector's 413),
directly or behind failover, and on replay from the spool.
"""

from __future__ import annotations

import logging
import secrets
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from _otlp_receiver import OtlpReceiver
from _pipeline_child import FakeClock, StoreBackedSink, rollout, stored_bodies
from _ports import closed_port_url
from agentemit import emit_message, emit_object, semconv
from agentemit.pipeline import stats as stats_module
from agentemit.pipeline.config import PipelineConfig
from agentemit.pipeline.failover import FailoverSink
from agentemit.pipeline.lanes import HIGH_RESERVE, QUEUE_SHARE
from agentemit.pipeline.otlp import OtlpHttpSink
from agentemit.pipeline.pipeline import Pipeline
from agentemit.pipeline.redact import Redactor
from agentemit.pipeline.sink import Sink, StoreSink
from agentemit.pipeline.spool import AppendResult, Spool
from agentemit.pipeline.stats import RateLimitedLogger, unaccounted
from agentemit.server.runner import ServerThread
from agentemit.span import Span
from agentemit.stores.base import SpanStore
from agentemit.stores.http import HttpStore
from agentemit.stores.sqlite import SqliteStore

pytest_plugins = ["_server_fixtures"]  # backend, serve_app
Serve = Callable[..., ServerThread]

THRESHOLD = 10_000  # memory_threshold: lanes get 8,500 bytes, bulk kinds 6,800 of them
EVENT_LIMIT = int(int(THRESHOLD * QUEUE_SHARE) * (1.0 - HIGH_RESERVE))
OVERHEAD = 700  # tracing.context.RECORD_OVERHEAD: a message's estimated size is this + len(body)
BODY_LIMIT = 4096  # the store server's max_body_bytes in the 413 tests


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SqliteStore]:
    """A real SQLite store behind the pipelines' sink (closed after them: see ``pipelines``)."""
    made = SqliteStore(tmp_path / "spans.db")
    yield made
    made.close()


@pytest.fixture
def pipelines(store: SqliteStore) -> Iterator[list[Pipeline]]:
    made: list[Pipeline] = []
    yield made
    for p in made:
        p.shutdown(5.0)


LossLog = Callable[[], list[str]]


@pytest.fixture
def loss_log(monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> Iterator[LossLog]:
    """The loss lines logged so far, from a fresh rate-limited logger (the real one is global)."""
    monkeypatch.setattr(stats_module, "_loss_logger", RateLimitedLogger(clock=FakeClock()))
    with caplog.at_level(logging.WARNING, logger="agentemit"):
        yield lambda: [r.getMessage() for r in caplog.records if r.getMessage().startswith("agentemit lost")]


def make(made: list[Pipeline], sink: Sink, tmp_path: Path, **settings: Any) -> Pipeline:
    settings.setdefault("adaptive_sampling", False)
    settings.setdefault("redact", False)
    stages = settings.pop("stages", ())
    p = Pipeline(sink, PipelineConfig(spool_dir=tmp_path / "spool", **settings), start=False, stages=stages)
    made.append(p)
    return p


def emit_bodies(p: Pipeline, bodies: list[str], rollout_id: str = "r") -> None:
    with rollout(p, rollout_id):
        for body in bodies:
            emit_message(body)


def snapshot_of(p: Pipeline) -> dict[str, Any]:
    snap = p.stats_snapshot()
    assert unaccounted(snap) == 0, snap
    return snap


# --- the queue's byte budget, at emit -------------------------------------------------------------


@pytest.mark.parametrize("policy", ["spill", "block", "drop_oldest", "drop_newest"])
def test_an_event_bigger_than_the_queue_budget_is_never_queued_under_any_policy(
    policy: str, tmp_path: Path, store: SqliteStore, pipelines: list[Pipeline]
) -> None:
    p = make(pipelines, StoreBackedSink(store), tmp_path, memory_threshold=THRESHOLD, overflow=policy)
    fits = "f" * (EVENT_LIMIT - OVERHEAD)  # exactly the budget: kept
    emit_bodies(p, ["small", "x" * (EVENT_LIMIT - OVERHEAD + 1), fits, "y" * 1_000_000])
    assert len(p.lanes) == 2 and not p._spill  # neither oversize event is held, not even for a moment
    snap = snapshot_of(p)
    assert snap["dropped"] == {"oversize": 2} and snap["queue_bytes"] == 2 * OVERHEAD + len("small") + len(fits)
    assert p.force_flush(5.0).completed
    assert stored_bodies(store) == {"small": 1, fits: 1}
    assert snapshot_of(p)["exported"] == 2


@pytest.mark.parametrize(
    ("obj", "payload"),
    [
        ({"text": "j" * 5_000}, '{"text":"' + "j" * 5_000 + '"}'),  # JSON
        ("s" * 7_000, "s" * 7_000),  # a str literal
        ({1, 2}, None),  # a set: its JSON (via the walker)
    ],
    ids=["json", "literal", "walked"],
)
def test_an_object_event_is_accounted_by_the_size_of_its_text(
    obj: Any, payload: str | None, tmp_path: Path, store: SqliteStore, pipelines: list[Pipeline]
) -> None:
    p = make(pipelines, StoreBackedSink(store), tmp_path)
    with rollout(p, "r"):
        emit_object(obj)
        emit_object(obj, attributes={"note": "n" * 3_000})  # user attributes count too
    text = payload if payload is not None else "[1,2]"
    own = OVERHEAD + len(text)  # the short strings (the type name) are inside the overhead
    with_attributes = own + 3_000 + len(type(obj).__qualname__)  # every str value counted
    assert p.lanes.queued_bytes == own + with_attributes


def test_an_oversize_event_at_emit_is_logged_by_the_worker_naming_its_kind_and_size(
    tmp_path: Path, store: SqliteStore, pipelines: list[Pipeline], loss_log: LossLog, caplog: pytest.LogCaptureFixture
) -> None:
    p = make(pipelines, StoreBackedSink(store), tmp_path, memory_threshold=THRESHOLD)
    emit_bodies(p, [incompressible(100_000)])
    assert not caplog.records  # the emitting thread does no I/O: nothing logged yet
    p.run_once()
    p.run_once()  # a second pass logs nothing new
    assert loss_log() == [
        "agentemit lost 1 event(s): oversize, the last: message event of about 100,700 bytes, more than the "
        f"queue's {EVENT_LIMIT:,}-byte share of memory_threshold (see agentemit.stats())"
    ]


def test_queue_full_drops_on_the_emitting_thread_are_logged_by_the_worker_too(
    tmp_path: Path, store: SqliteStore, pipelines: list[Pipeline], loss_log: LossLog
) -> None:
    p = make(pipelines, StoreBackedSink(store), tmp_path, max_queue_size=5, overflow="drop_newest")
    emit_bodies(p, [f"m{i}" for i in range(10)])  # 4 fit (the bulk share of 5), 6 dropped
    p.run_once()
    assert loss_log() == ["agentemit lost 6 event(s): dropped_queue_full (see agentemit.stats())"]


# --- the spool's cap --------------------------------------------------------------------------------


def incompressible(chars: int) -> str:
    """Random hex: the spool compresses (zstd by default), and ``"x" * n`` would shrink to nothing."""
    return secrets.token_hex(chars // 2)


def test_a_span_too_big_for_the_spool_is_dropped_alone_and_the_rest_of_its_failed_batch_is_spooled(
    tmp_path: Path, store: SqliteStore, pipelines: list[Pipeline], loss_log: LossLog
) -> None:
    sink = StoreBackedSink(store, ["fail"])  # the first export fails (retryable): the batch goes to the spool
    p = make(pipelines, sink, tmp_path, spool_max_bytes=50_000, batch_size=10)
    bodies = [f"m{i}" for i in range(9)]
    emit_bodies(p, [*bodies[:4], incompressible(100_000), *bodies[4:]])
    p.run_once(flush_all=False)  # one full batch; the failed sink is not probed again yet
    snap = snapshot_of(p)
    assert snap["in_spool"] == 9 and snap["dropped"] == {"oversize": 1}
    assert p.force_flush(5.0, drain_spool=True).completed
    assert stored_bodies(store) == dict.fromkeys(bodies, 1)
    assert snapshot_of(p)["exported"] == 9
    (line,) = loss_log()
    assert line.startswith("agentemit lost 1 event(s): oversize, the last: agentlightning.message span ")
    assert "(200,6" in line and "bytes encoded), more than the spool can hold (spool_max_bytes=50,000)" in line


def test_a_spilled_event_too_big_for_the_spool_is_dropped_alone_and_the_rest_of_the_spill_is_kept(
    tmp_path: Path, store: SqliteStore, pipelines: list[Pipeline], loss_log: LossLog
) -> None:
    p = make(pipelines, StoreBackedSink(store), tmp_path, spool_max_bytes=50_000, max_queue_size=2)
    bodies = [f"m{i}" for i in range(12)]
    emit_bodies(p, [*bodies[:6], incompressible(100_000), *bodies[6:]])  # the bulk lanes hold 1: the rest spill
    assert len(p._spill) == 12
    p._drain_spill()
    snap = snapshot_of(p)
    assert snap["in_spool"] == 11 and snap["dropped"] == {"oversize": 1}
    assert p.force_flush(5.0, drain_spool=True).completed
    assert stored_bodies(store) == dict.fromkeys(bodies, 1)
    (line,) = loss_log()
    assert "oversize, the last: message event (200,2" in line and "(spool_max_bytes=50,000)" in line


def test_the_spool_refuses_a_payload_bigger_than_its_cap_as_too_large_without_evicting(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool", max_bytes=1_000) as spool:
        assert spool.append([b"a" * 100], priority=0) == AppendResult(stored=1)
        # Bigger than the cap: refused without evicting the older record of its priority.
        assert spool.append([b"b" * 2_000], priority=0) == AppendResult(stored=0, refused=1, too_large=True)
        # Fits the cap, but only by evicting a higher priority: refused, and not as too large.
        assert spool.append([b"c" * 900], priority=3) == AppendResult(stored=0, refused=1)
        assert [e.payload for e in spool.replay()] == [b"a" * 100]


def test_a_payload_that_fits_the_spool_only_compressed_is_stored(tmp_path: Path) -> None:
    with Spool(tmp_path / "spool", max_bytes=1_000, compression="gzip") as spool:
        assert spool.append([b"a" * 5_000]) == AppendResult(stored=1)


# --- a sink that refuses one span as too large ------------------------------------------------------


def http_pipeline(made: list[Pipeline], sink: Sink, tmp_path: Path, **settings: Any) -> Pipeline:
    return make(made, sink, tmp_path, batch_size=100, **settings)


def test_a_span_the_store_server_refuses_as_too_large_is_dropped_alone_and_the_rest_stored(
    serve_app: Serve, backend: SpanStore, tmp_path: Path, pipelines: list[Pipeline], loss_log: LossLog
) -> None:
    store = HttpStore(serve_app(max_body_bytes=BODY_LIMIT).url, compression="none")
    p = http_pipeline(pipelines, StoreSink(store), tmp_path)
    bodies = [f"m{i}" for i in range(6)]
    emit_bodies(p, [*bodies[:3], "x" * 2 * BODY_LIMIT, *bodies[3:]])
    assert p.force_flush(5.0).completed
    snap = snapshot_of(p)
    assert snap["exported"] == 6 and snap["in_spool"] == 0 and snap["dropped"] == {"oversize": 1}
    assert stored_bodies(backend) == dict.fromkeys(bodies, 1)
    (line,) = loss_log()
    assert "oversize, the last: agentlightning.message span" in line
    assert "bytes encoded), refused alone by the sink:" in line and "answered 413" in line
    assert f"{BODY_LIMIT}-byte limit" in line


def test_behind_failover_a_too_large_refusal_splits_the_batch_instead_of_spooling_it(
    serve_app: Serve, backend: SpanStore, tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    primary = HttpStore(serve_app(max_body_bytes=BODY_LIMIT).url, compression="none")
    down = HttpStore(closed_port_url(), max_retries=0)  # a backup that is down (retryable failures)
    sink = FailoverSink([StoreSink(primary), StoreSink(down)])
    p = http_pipeline(pipelines, sink, tmp_path)
    bodies = [f"m{i}" for i in range(6)]
    emit_bodies(p, [*bodies[:3], "x" * 2 * BODY_LIMIT, *bodies[3:]])
    p.run_once()
    snap = snapshot_of(p)
    assert snap["in_spool"] == 0 and snap["exported"] == 6 and snap["dropped"] == {"oversize": 1}
    assert stored_bodies(backend) == dict.fromkeys(bodies, 1)


def test_a_replayed_batch_counts_its_too_large_span_once_when_the_replay_is_retried(
    serve_app: Serve, backend: SpanStore, tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    """A replay that refuses one span and then meets a retryable failure is replayed again whole later:
    the refusal is counted when the record is done with, not on every attempt."""
    clock = FakeClock()
    url = serve_app(max_body_bytes=BODY_LIMIT, rate_limit_per_s=1.0, rate_burst=5, clock=clock).url
    store = HttpStore(url, compression="none", max_retries=0)
    p = http_pipeline(pipelines, StoreSink(store), tmp_path, max_queue_size=2)
    emit_bodies(p, ["x0", "m0", "x" * 2 * BODY_LIMIT, "m1", "m2"])  # x0 is queued; the other 4 spill
    p._drain_spill()
    # Requests: x0 (1); the spooled 4 (2: 413), [m0, big] (3: 413), m0 (4), big (5: 413); then [m1, m2]
    # is over the rate limit (a burst of 5): 429, retryable, so the spool record stays for a later replay.
    p.run_once()
    snap = snapshot_of(p)
    assert snap["in_spool"] == 4 and snap["dropped"] == {}
    clock.advance(60.0)  # the rate limit has passed
    assert p.force_flush(5.0, drain_spool=True).completed
    snap = snapshot_of(p)
    assert snap["in_spool"] == 0 and snap["exported"] == 4 and snap["dropped"] == {"oversize": 1}
    assert stored_bodies(backend) == {"x0": 1, "m0": 1, "m1": 1, "m2": 1}


@pytest.mark.parametrize(("status", "too_large"), [(413, True), (400, False)])
def test_the_otlp_sink_marks_a_413_as_too_large(status: int, too_large: bool) -> None:
    span = Span(
        trace_id="1" * 32,
        span_id="2" * 16,
        parent_id=None,
        name="step",
        start_time=1,
        end_time=2,
        rollout_id="r",
        attempt_id="a",
        sequence_id=0,
    )
    with OtlpReceiver() as receiver:
        sink = OtlpHttpSink(receiver.url)
        receiver.fail_next(1, status)
        result = sink.export([span])
        sink.shutdown(1.0)
    assert not result.ok and not result.retryable and result.too_large is too_large


# --- redaction's size limits are not drops ------------------------------------------------------------


def test_a_value_cut_by_redaction_is_delivered_truncated_and_not_counted_as_a_drop(
    tmp_path: Path, store: SqliteStore, pipelines: list[Pipeline]
) -> None:
    p = make(pipelines, StoreBackedSink(store), tmp_path, stages=[Redactor(max_value_len=1_000)])
    emit_bodies(p, ["x" * 5_000])
    assert p.force_flush(5.0).completed
    snap = snapshot_of(p)
    assert snap["exported"] == 1 and snap["dropped"] == {} and snap["redaction"]["truncated"] >= 1
    (body,) = stored_bodies(store)
    assert len(body) == 1_000 and body.endswith(semconv.TRUNCATED_SUFFIX)
