"""Tracers: the lifecycle, rollout contexts (``with`` / ``async with``, nesting), OpenTelemetry spans
collected with their links, rollout identity and sequence ids on every span, persistence across a
process restart, and the ``agentemit.testing`` helpers users test with.
"""

from __future__ import annotations

import asyncio
import dataclasses
import gc
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace as otel_trace
from opentelemetry.sdk.trace import TracerProvider

from agentemit import (
    OtelTracer,
    PipelineConfig,
    Span,
    Tracer,
    emit_exception,
    emit_message,
    emit_object,
    emit_reward,
    find_final_reward,
    get_message_value,
    semconv,
)
from agentemit.bench import workload
from agentemit.pipeline.builder import build_span
from agentemit.stores import InMemoryStore, SqliteStore
from agentemit.testing import CapturedSpans, capture_spans, sequential_ids
from agentemit.tracing.context import CURRENT, RawRecord, RolloutContext, counter

pytest_plugins = ["pytester"]  # the conftest guard is checked by running a small test file


def stored(tracer: OtelTracer, rollout_id: str) -> list[Span]:
    """Flush, then read one rollout back from the tracer's store."""
    report = tracer.force_flush(10.0)
    assert report is not None and report.completed, report
    assert tracer.store is not None
    return tracer.store.query_spans(rollout_id)


def messages(spans: list[Span]) -> list[str | None]:
    return [get_message_value(s) for s in spans if s.name == semconv.SPAN_MESSAGE]


# --- lifecycle -----------------------------------------------------------------------------------


def test_tracer_is_an_abstract_base_with_the_lifecycle_methods() -> None:
    with pytest.raises(TypeError):
        Tracer()  # type: ignore[abstract]
    for method in ("init", "init_worker", "trace_context", "get_last_trace", "teardown_worker", "teardown"):
        assert callable(getattr(Tracer, method))
    assert issubclass(OtelTracer, Tracer)


def test_init_installs_an_sdk_tracer_provider_and_is_idempotent() -> None:
    tracer = OtelTracer()
    tracer.init()
    tracer.init()
    assert isinstance(otel_trace.get_tracer_provider(), TracerProvider)


def test_init_worker_records_the_worker_and_stamps_it_on_stored_spans(
    tmp_path: Path, tmp_spool: PipelineConfig
) -> None:
    tracer = OtelTracer(config=tmp_spool)
    store = SqliteStore(tmp_path / "w.db")
    tracer.init_worker(3, store)
    try:
        assert tracer.worker_id == 3
        with tracer.trace_context(rollout_id="r-worker"):
            emit_message("from worker 3")
            with otel_trace.get_tracer("third.party").start_as_current_span("http.request"):
                pass
        spans = {s.name: s for s in stored(tracer, "r-worker")}
        assert spans[semconv.SPAN_MESSAGE].resource["agentemit.worker_id"] == "3"
        # OpenTelemetry spans (the root, third-party ones) keep the SDK provider's resource, with the
        # worker and process filled in, so every span says where it ran.
        for name in ("http.request", semconv.SPAN_ROLLOUT):
            assert spans[name].resource["agentemit.worker_id"] == "3"
            assert spans[name].resource["process.pid"] == os.getpid()
    finally:
        tracer.teardown_worker()
        store.close()


def test_teardown_worker_delivers_everything_still_queued(tmp_path: Path, tmp_spool: PipelineConfig) -> None:
    config = PipelineConfig(spool_dir=tmp_spool.spool_dir, flush_interval=3600.0, adaptive_sampling=False)
    store = SqliteStore(tmp_path / "t.db")
    tracer = OtelTracer(store, config=config)
    tracer.init_worker(0)
    with tracer.trace_context(rollout_id="r-teardown"):
        for i in range(50):
            emit_message(f"m{i}")
    tracer.teardown_worker()
    store.close()
    with SqliteStore(tmp_path / "t.db") as reader:
        assert messages(reader.query_spans("r-teardown")) == [f"m{i}" for i in range(50)]


def test_teardown_worker_leaves_the_callers_store_open(tmp_path: Path, tmp_spool: PipelineConfig) -> None:
    store = SqliteStore(tmp_path / "shared.db")
    tracer = OtelTracer(config=tmp_spool)
    tracer.init_worker(0, store)
    with tracer.trace_context(rollout_id="r-shared"):
        emit_message("kept")
    tracer.teardown_worker()
    assert messages(store.query_spans("r-shared")) == ["kept"]
    store.close()


def test_a_failing_store_never_makes_trace_context_raise_and_the_failure_is_counted(
    tmp_path: Path, tmp_spool: PipelineConfig
) -> None:
    store = SqliteStore(tmp_path / "closed.db")
    store.close()  # every call now raises, as a database or server that is down would
    tracer = OtelTracer(store, config=dataclasses.replace(tmp_spool, shutdown_timeout=0.2), keep_last_trace=True)
    try:
        with tracer.trace_context(rollout_id="r-store-down"):
            emit_message("the agent keeps running")
        assert messages(tracer.get_last_trace()) == ["the agent keeps running"]
        assert [s.sequence_id for s in tracer.get_last_trace()] == [0, 1]
        assert tracer.stats()["sequence_lookup_failures"] == 1
    finally:
        tracer.teardown_worker()


# --- trace_context ---------------------------------------------------------------------------------


def test_trace_context_yields_the_rollout_and_sets_it_current_only_inside(sqlite_tracer: OtelTracer) -> None:
    assert Tracer.current() is None
    with sqlite_tracer.trace_context("my-task", rollout_id="r-1", attempt_id="a-1") as ctx:
        assert isinstance(ctx, RolloutContext)
        assert (ctx.rollout_id, ctx.attempt_id) == ("r-1", "a-1")
        assert Tracer.current() is ctx
    assert Tracer.current() is None
    root = stored(sqlite_tracer, "r-1")[0]
    assert root.name == "my-task" and root.parent_id is None


def test_trace_context_defaults_to_a_fresh_rollout_id_and_attempt_zero(sqlite_tracer: OtelTracer) -> None:
    with sqlite_tracer.trace_context() as first:
        pass
    with sqlite_tracer.trace_context() as second:
        pass
    assert first.rollout_id.startswith("rollout-") and first.rollout_id != second.rollout_id
    assert first.attempt_id == second.attempt_id == "attempt-0"
    assert [s.name for s in sqlite_tracer.get_last_trace()] == [semconv.SPAN_ROLLOUT]


def test_trace_context_works_with_async_with(sqlite_tracer: OtelTracer) -> None:
    async def rollout() -> list[Span]:
        async with sqlite_tracer.trace_context(rollout_id="r-async") as ctx:
            emit_message("before await")
            await asyncio.sleep(0)
            emit_reward(1.0)
            assert Tracer.current() is ctx
        assert Tracer.current() is None
        return sqlite_tracer.get_last_trace()

    last = asyncio.run(rollout())
    assert [s.name for s in last] == [semconv.SPAN_ROLLOUT, semconv.SPAN_MESSAGE, semconv.SPAN_REWARD]
    assert [s.span_id for s in stored(sqlite_tracer, "r-async")] == [s.span_id for s in last]


def test_an_exception_in_the_context_propagates_and_marks_the_root_span(sqlite_tracer: OtelTracer) -> None:
    error = RuntimeError("agent crashed")
    with pytest.raises(RuntimeError) as caught, sqlite_tracer.trace_context(rollout_id="r-crash"):
        emit_message("last words")
        raise error
    assert caught.value is error
    root, message = stored(sqlite_tracer, "r-crash")
    assert root.status == "ERROR" and root.status_description == "agent crashed"
    assert [e.name for e in root.events] == ["exception"]
    assert get_message_value(message) == "last words"
    assert Tracer.current() is None


def test_every_span_carries_rollout_attempt_and_a_per_rollout_increasing_sequence_id(
    sqlite_tracer: OtelTracer,
) -> None:
    with sqlite_tracer.trace_context(rollout_id="r-ids", attempt_id="a-2"):
        emit_message("m")
        emit_reward(0.5)
        emit_object([1])
        emit_exception(ValueError("v"))
        with otel_trace.get_tracer("third.party").start_as_current_span("http.request"):
            emit_message("inside")
    spans = stored(sqlite_tracer, "r-ids")
    assert len(spans) == 7
    assert [s.sequence_id for s in spans] == list(range(7))
    for span in spans:
        assert (span.rollout_id, span.attempt_id) == ("r-ids", "a-2")
        assert span.attributes[semconv.ROLLOUT_ID] == "r-ids"
        assert span.attributes[semconv.ATTEMPT_ID] == "a-2"
        assert span.attributes[semconv.SPAN_SEQUENCE_ID] == span.sequence_id


# --- OpenTelemetry instrumentation inside a context ------------------------------------------------


def test_spans_of_other_opentelemetry_instrumentation_are_collected_with_parent_links(
    sqlite_tracer: OtelTracer,
) -> None:
    other = otel_trace.get_tracer("some.instrumentation")
    with sqlite_tracer.trace_context("rollout-root", rollout_id="r-otel"):
        with other.start_as_current_span("llm.chat") as chat:
            chat.set_attribute("gen_ai.request.model", "m-1")
            with other.start_as_current_span("http.post"):
                emit_message("inside http")
        emit_message("after")
    spans = {s.name: s for s in stored(sqlite_tracer, "r-otel")}
    assert set(spans) == {"rollout-root", "llm.chat", "http.post", semconv.SPAN_MESSAGE}
    root, chat_span, http = spans["rollout-root"], spans["llm.chat"], spans["http.post"]
    assert chat_span.parent_id == root.span_id
    assert http.parent_id == chat_span.span_id
    assert chat_span.attributes["gen_ai.request.model"] == "m-1"
    assert len({s.trace_id for s in spans.values()}) == 1
    inside, after = [s for s in stored(sqlite_tracer, "r-otel") if s.name == semconv.SPAN_MESSAGE]
    assert inside.parent_id == http.span_id
    assert after.parent_id == root.span_id


def test_opentelemetry_spans_outside_any_context_are_not_collected(sqlite_tracer: OtelTracer) -> None:
    other = otel_trace.get_tracer("some.instrumentation")
    with other.start_as_current_span("before"):
        pass
    with sqlite_tracer.trace_context(rollout_id="r-only-inside"):
        pass
    with other.start_as_current_span("after"):
        pass
    assert [s.name for s in stored(sqlite_tracer, "r-only-inside")] == [semconv.SPAN_ROLLOUT]
    assert [s.name for s in sqlite_tracer.get_last_trace()] == [semconv.SPAN_ROLLOUT]


# --- nesting ----------------------------------------------------------------------------------------


def test_a_nested_context_without_rollout_id_is_a_child_span_of_the_same_rollout(sqlite_tracer: OtelTracer) -> None:
    with sqlite_tracer.trace_context("outer", rollout_id="r-nest") as outer:
        emit_message("outer 1")
        with sqlite_tracer.trace_context("inner") as inner:
            assert (inner.rollout_id, inner.attempt_id, inner.trace_id) == ("r-nest", outer.attempt_id, outer.trace_id)
            emit_message("inner")
        assert Tracer.current() is outer
        emit_message("outer 2")
    spans = stored(sqlite_tracer, "r-nest")
    by_name = {s.name: s for s in spans}
    assert by_name["inner"].parent_id == by_name["outer"].span_id
    assert messages(spans) == ["outer 1", "inner", "outer 2"]
    inner_message = next(s for s in spans if get_message_value(s) == "inner")
    assert inner_message.parent_id == by_name["inner"].span_id
    sequence = [s.sequence_id for s in spans]
    assert sequence == sorted(sequence) and len(set(sequence)) == len(spans)
    assert [s.name for s in sqlite_tracer.get_last_trace()] == [s.name for s in spans]


def test_sequence_ids_of_a_rollout_with_a_nested_context_have_no_gaps(sqlite_tracer: OtelTracer) -> None:
    with sqlite_tracer.trace_context(rollout_id="r-gap"):
        emit_message("a")
        with sqlite_tracer.trace_context("inner"):
            emit_message("b")
    assert [s.sequence_id for s in stored(sqlite_tracer, "r-gap")] == [0, 1, 2, 3]


def test_a_nested_context_with_a_new_rollout_id_is_a_separate_rollout(sqlite_tracer: OtelTracer) -> None:
    with sqlite_tracer.trace_context(rollout_id="r-parent") as parent:
        emit_message("parent 1")
        with sqlite_tracer.trace_context("sub", rollout_id="r-child") as child:
            assert child.trace_id != parent.trace_id
            emit_message("child")
        assert [s.rollout_id for s in sqlite_tracer.get_last_trace()] == ["r-child", "r-child"]
        emit_message("parent 2")
    parent_spans, child_spans = stored(sqlite_tracer, "r-parent"), stored(sqlite_tracer, "r-child")
    assert messages(parent_spans) == ["parent 1", "parent 2"]
    assert messages(child_spans) == ["child"]
    assert [s.sequence_id for s in child_spans] == [0, 1]
    assert child_spans[0].parent_id is None
    assert {s.rollout_id for s in sqlite_tracer.get_last_trace()} == {"r-parent"}


# --- sequence ids of a resumed rollout ---------------------------------------------------------------


def test_a_resumed_rollout_continues_from_the_stores_next_sequence_id(sqlite_tracer: OtelTracer) -> None:
    with sqlite_tracer.trace_context(rollout_id="r-resume", attempt_id="a"):
        emit_message("first run")
    assert sqlite_tracer.store is not None
    first = stored(sqlite_tracer, "r-resume")
    assert sqlite_tracer.store.get_next_span_sequence_id("r-resume", "a") == len(first) == 2
    with sqlite_tracer.trace_context(rollout_id="r-resume", attempt_id="a"):
        emit_message("second run")
    assert [s.sequence_id for s in sqlite_tracer.get_last_trace()] == [2, 3]
    assert [s.sequence_id for s in stored(sqlite_tracer, "r-resume")] == [0, 1, 2, 3]


def test_a_new_attempt_of_a_rollout_has_its_own_sequence(sqlite_tracer: OtelTracer) -> None:
    with sqlite_tracer.trace_context(rollout_id="r-attempts", attempt_id="a1"):
        emit_message("try 1")
    stored(sqlite_tracer, "r-attempts")
    with sqlite_tracer.trace_context(rollout_id="r-attempts", attempt_id="a2"):
        emit_message("try 2")
    assert [s.sequence_id for s in sqlite_tracer.get_last_trace()] == [0, 1]


def test_a_rollout_resumed_before_its_spans_were_flushed_still_gets_fresh_sequence_ids(
    tmp_path: Path, tmp_spool: PipelineConfig
) -> None:
    config = PipelineConfig(spool_dir=tmp_spool.spool_dir, flush_interval=3600.0, adaptive_sampling=False)
    store = SqliteStore(tmp_path / "t.db")
    tracer = OtelTracer(store, config=config)
    tracer.init_worker(0)
    try:
        for text in ("first", "second"):
            with tracer.trace_context(rollout_id="r-quick", attempt_id="a"):
                emit_message(text)
        sequence = [s.sequence_id for s in stored(tracer, "r-quick")]
        assert sorted(sequence) == list(range(4)), sequence
    finally:
        tracer.teardown_worker()
        store.close()


# --- get_last_trace ---------------------------------------------------------------------------------


def test_get_last_trace_returns_the_last_closed_rollouts_spans_in_sequence_order(sqlite_tracer: OtelTracer) -> None:
    with sqlite_tracer.trace_context(rollout_id="r-first"):
        emit_message("one")
    with sqlite_tracer.trace_context(rollout_id="r-second"):
        emit_message("two")
        emit_reward(0.5)
    last = sqlite_tracer.get_last_trace()
    assert {s.rollout_id for s in last} == {"r-second"}
    assert [s.sequence_id for s in last] == [0, 1, 2]
    assert find_final_reward(last) == 0.5
    last.clear()
    assert len(sqlite_tracer.get_last_trace()) == 3  # a copy each call


def test_a_tracer_without_a_store_keeps_the_last_trace_in_memory() -> None:
    tracer = OtelTracer()
    with tracer.trace_context(rollout_id="r-memory-only"):
        emit_message("kept for get_last_trace")
    assert messages(tracer.get_last_trace()) == ["kept for get_last_trace"]
    assert tracer.force_flush() is None and tracer.pipeline is None


def test_get_last_trace_never_returns_another_tracers_spans() -> None:
    tracer_a, tracer_b = OtelTracer(), OtelTracer()
    with tracer_a.trace_context(rollout_id="r-of-a"):
        emit_message("a")
    assert tracer_b.get_last_trace() == []


def test_get_last_trace_is_per_thread(sqlite_tracer: OtelTracer) -> None:
    seen: dict[str, set[str]] = {}
    barrier = threading.Barrier(2)

    def worker(name: str) -> None:
        with sqlite_tracer.trace_context(rollout_id=f"r-{name}"):
            emit_message(name)
            barrier.wait(timeout=10)  # both contexts are open at once
        barrier.wait(timeout=10)  # both have closed before either reads
        seen[name] = {s.rollout_id for s in sqlite_tracer.get_last_trace()}

    threads = [threading.Thread(target=worker, args=(n,)) for n in ("x", "y")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert seen == {"x": {"r-x"}, "y": {"r-y"}}


# --- records ----------------------------------------------------------------------------------------


def test_stored_spans_round_trip_through_json_and_readable_span(sqlite_tracer: OtelTracer) -> None:
    with sqlite_tracer.trace_context(rollout_id="r-round"):
        emit_message("m", attributes={"tags": ["a", "b"], "n": 2})
        emit_reward({"acc": 1.0, "cost": -1}, primary_key="acc")
        emit_exception(ValueError("bad value"))
        emit_object({"k": [1, 2]})
    spans = stored(sqlite_tracer, "r-round")
    assert len(spans) == 5
    for span in spans:
        assert Span.from_dict(json.loads(json.dumps(span.to_dict()))) == span
        assert Span.from_readable_span(span.to_readable_span()) == span


# --- persistence across a process restart --------------------------------------------------------------

CHILD = """
import sys
from pathlib import Path
from agentemit import OtelTracer, PipelineConfig, emit_message, emit_reward
from agentemit.stores import SqliteStore

root, label = Path(sys.argv[1]), sys.argv[2]
config = PipelineConfig(spool_dir=root / "spool", flush_interval=3600.0, adaptive_sampling=False)
tracer = OtelTracer(SqliteStore(root / "t.db"), config=config)
tracer.init_worker(label)
with tracer.trace_context(rollout_id="r-restart", attempt_id="a"):
    for i in range(200):
        emit_message(f"{label}-{i}")
    emit_reward(0.5 if label == "first" else 1.0)
print(len(tracer.get_last_trace()))
# No force_flush, no teardown: the pipeline must deliver at interpreter exit (atexit).
"""


def _run_child(root: Path, label: str) -> int:
    done = subprocess.run(
        [sys.executable, "-c", CHILD, str(root), label], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return int(done.stdout.strip())


def test_spans_a_process_emitted_are_in_sqlite_after_it_exits_without_flushing(tmp_path: Path) -> None:
    assert _run_child(tmp_path, "first") == 202
    with SqliteStore(tmp_path / "t.db") as store:
        spans = store.query_spans("r-restart")
        assert [s.sequence_id for s in spans] == list(range(202))
        assert messages(spans) == [f"first-{i}" for i in range(200)]
        assert find_final_reward(spans) == 0.5
        assert store.verify() == []


def test_a_second_process_resuming_the_rollout_continues_its_sequence_ids(tmp_path: Path) -> None:
    _run_child(tmp_path, "first")
    _run_child(tmp_path, "second")
    with SqliteStore(tmp_path / "t.db") as store:
        spans = store.query_spans("r-restart", "a")
        assert [s.sequence_id for s in spans] == list(range(404))
        assert messages(spans) == [f"first-{i}" for i in range(200)] + [f"second-{i}" for i in range(200)]
        assert find_final_reward(spans) == 1.0
        assert store.get_next_span_sequence_id("r-restart", "a") == 404


# --- agentemit.testing ------------------------------------------------------------------------------


def test_capture_spans_returns_the_stored_spans_after_the_block() -> None:
    with capture_spans() as captured:
        assert isinstance(captured, CapturedSpans)
        assert isinstance(captured.tracer, OtelTracer) and isinstance(captured.store, InMemoryStore)
        with captured.tracer.trace_context(rollout_id="r-b"):
            emit_message("b")
        with captured.tracer.trace_context(rollout_id="r-a"):
            emit_message("a1")
            emit_reward(1.0)
        assert captured.spans == []  # filled by flush() or at exit
    assert [(s.rollout_id, s.sequence_id) for s in captured.spans] == [
        ("r-b", 0),
        ("r-b", 1),
        ("r-a", 0),
        ("r-a", 1),
        ("r-a", 2),
    ]
    assert find_final_reward(captured.spans) == 1.0


def test_capture_spans_gives_emitted_events_sequential_span_ids() -> None:
    with capture_spans() as captured, captured.tracer.trace_context(rollout_id="r-ids"):
        emit_message("one")
        emit_message("two")
        emit_reward(0.0)
    events = [s for s in captured.spans if s.name != semconv.SPAN_ROLLOUT]
    assert [s.span_id for s in events] == ["0000000000000001", "0000000000000002", "0000000000000003"]


def test_capture_spans_flush_and_rollout_read_mid_block() -> None:
    with capture_spans() as captured:
        with captured.tracer.trace_context(rollout_id="r-mid"):
            emit_message("so far")
        assert messages(captured.flush()) == ["so far"]
        assert [s.rollout_id for s in captured.rollout("r-mid")] == ["r-mid", "r-mid"]
        assert captured.rollout("r-unknown") == []


def test_capture_spans_uses_a_private_spool_and_removes_it() -> None:
    with capture_spans() as captured:
        config = captured.tracer.config
        assert config is not None and config.spool_dir is not None
        spool_dir = Path(config.spool_dir)
        assert spool_dir.is_dir() and spool_dir.name.startswith("agentemit-capture-")
        assert config.adaptive_sampling is False and config.redact is True
    assert not spool_dir.exists()


def test_capture_spans_gives_a_config_without_spool_dir_a_private_one(tmp_path: Path) -> None:
    with capture_spans(config=PipelineConfig(batch_size=7, adaptive_sampling=False)) as captured:
        assert captured.tracer.config is not None
        assert captured.tracer.config.batch_size == 7
        assert captured.tracer.config.spool_dir is not None
    with capture_spans(config=PipelineConfig(spool_dir=tmp_path, adaptive_sampling=False)) as captured:
        assert captured.tracer.config is not None and captured.tracer.config.spool_dir == tmp_path


def test_capture_spans_lets_an_error_in_the_block_propagate_and_still_tears_down() -> None:
    with pytest.raises(KeyError, match="inside"), capture_spans() as captured:
        raise KeyError("inside")
    assert captured.tracer.pipeline is None


def test_sequential_ids_count_up_from_start() -> None:
    ids = sequential_ids()
    assert [ids(), ids(), ids()] == [1, 2, 3]
    later = sequential_ids(100)
    assert [later(), later()] == [100, 101]


def test_sequential_ids_are_unique_across_threads() -> None:
    ids = sequential_ids()
    drawn: list[list[int]] = [[] for _ in range(8)]

    def draw(out: list[int]) -> None:
        for _ in range(1000):
            out.append(ids())

    threads = [threading.Thread(target=draw, args=(out,)) for out in drawn]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert sorted(i for out in drawn for i in out) == list(range(1, 8001))


@pytest.mark.parametrize("bad", [0, -1, 2**64, 1.5, True])
def test_sequential_ids_refuse_a_start_that_is_no_span_id(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"sequential_ids: start must be an int from 1 to 2\*\*64 - 1"):
        sequential_ids(bad)


# --- the shared conftest's guard against swallowed errors ---------------------------------------------

GUARDED_TESTS = """
import logging
import threading

import pytest

log = logging.getLogger("agentemit.pipeline")


def test_logs_an_error():
    log.error("agentemit: spool write failed; 3 event(s) lost")


def test_a_worker_thread_logs_an_error():
    t = threading.Thread(target=lambda: log.error("agentemit pipeline worker crashed"))
    t.start()
    t.join()


@pytest.mark.allow_agentemit_errors
def test_opted_out():
    log.error("expected by this test")


def test_warnings_are_fine():
    log.warning("agentemit: export failed; batch spooled")


def test_the_server_answering_500_is_not_swallowing():
    logging.getLogger("agentemit.server").error("store failed in POST /v1/spans")
"""


def test_the_conftest_guard_fails_tests_whose_agentemit_errors_were_swallowed(pytester: pytest.Pytester) -> None:
    pytester.makeconftest((Path(__file__).parent / "conftest.py").read_text())
    pytester.makepyfile(test_guarded=GUARDED_TESTS)
    result = pytester.runpytest_subprocess("-p", "no:cacheprovider", "-q")
    result.assert_outcomes(passed=3, failed=2)
    result.stdout.fnmatch_lines(["*agentemit logged 1 error(s) it swallowed*", "*spool write failed*"])
    result.stdout.fnmatch_lines(["*worker crashed*"])


def test_usual_reward_message_and_object_records_leave_the_collectors_lists_and_build_the_same_spans() -> None:
    # A queued record holding a dict is walked by every garbage collection until the worker takes
    # it; the usual rewards, messages and objects hold flat pairs of plain values, which CPython untracks.
    captured: list[RawRecord] = []
    ctx = RolloutContext(
        rollout_id="r-gc", attempt_id="a-0", trace_id=0xABC, span_id=0x1, sequence=counter(), deliver=captured.append
    )
    token = CURRENT.set(ctx)
    try:
        emit_reward(0.5)
        emit_message("hello")
        emit_object({"tool": "search", "hits": [1, 2]})
        emit_message("with attributes", attributes={"tool": "search"})  # a dict: tracked, and that is fine
    finally:
        CURRENT.reset(token)
    gc.collect()
    gc.collect()  # a record is untracked once its attribute tuple is (either may be examined first)
    assert [gc.is_tracked(r) for r in captured] == [False, False, False, True]
    assert captured[0][4] == workload.REWARD_PAIRS  # the benchmarks' synthetic records match the real ones
    assert captured[1][4] == (semconv.MESSAGE_BODY, "hello", semconv.MESSAGE_LEGACY, "hello")
    reward, message, obj, attributed = (build_span(r, {}).attributes for r in captured)
    assert obj[semconv.OBJECT_TYPE] == "dict" and obj[semconv.OBJECT_JSON] == '{"tool":"search","hits":[1,2]}'
    assert captured[2][12] > len(obj[semconv.OBJECT_JSON])  # the JSON counts toward the record's size
    assert reward == {
        semconv.REWARD_LEGACY: 0.5,
        semconv.reward_name_key(0): semconv.PRIMARY_REWARD_NAME,
        semconv.reward_value_key(0): 0.5,
        semconv.ROLLOUT_ID: "r-gc",
        semconv.ATTEMPT_ID: "a-0",
        semconv.SPAN_SEQUENCE_ID: 0,
    }
    assert message[semconv.MESSAGE_BODY] == message[semconv.MESSAGE_LEGACY] == "hello"
    assert attributed["tool"] == "search" and attributed[semconv.MESSAGE_BODY] == "with attributes"
