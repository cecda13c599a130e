"""Concurrent rollouts: threads and asyncio tasks each collect exactly their own spans, through a real
SQLite store and ``get_last_trace``, with exact counts, no cross-talk and gap-free sequence ids.
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Callable

from opentelemetry import trace as otel_trace

import agentemit
from agentemit import OtelTracer, Span, emit_message, emit_reward, get_message_value, get_reward_value, semconv

THREADS = 16
EMITS_PER_THREAD = 1_000
TASKS = 8
EMITS_PER_TASK = 300


def run_threads(count: int, target: Callable[[int], None]) -> None:
    """Run ``target(i)`` in ``count`` threads started together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            barrier.wait(timeout=30)
            target(i)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name=f"rollout-{i}") for i in range(count)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert not any(t.is_alive() for t in threads), "a rollout thread did not finish"
    if errors:
        raise errors[0]


def flushed_store_spans(tracer: OtelTracer, rollout_id: str) -> list[Span]:
    assert tracer.store is not None
    return tracer.store.query_spans(rollout_id)


def flush(tracer: OtelTracer) -> None:
    report = tracer.force_flush(30.0)
    assert report is not None and report.completed and not report.dropped, report


def assert_exactly_one_rollout(spans: list[Span], rollout_id: str, label: str, emits: int) -> None:
    """Root span first, then every emit of this rollout in order, with sequence ids 0..emits."""
    assert len(spans) == emits + 1
    assert {s.rollout_id for s in spans} == {rollout_id}
    assert {s.attributes[semconv.ROLLOUT_ID] for s in spans} == {rollout_id}
    assert [s.sequence_id for s in spans] == list(range(emits + 1))
    assert spans[0].name == semconv.SPAN_ROLLOUT
    bodies = [get_message_value(s) for s in spans if s.name == semconv.SPAN_MESSAGE]
    assert bodies == [f"{label}-{j}" for j in range(emits) if j % 100 != 99]
    rewards = [get_reward_value(s) for s in spans if s.name == semconv.SPAN_REWARD]
    assert rewards == [float(j) for j in range(emits) if j % 100 == 99]


def emit_numbered(label: str, j: int) -> None:
    """Emit number ``j`` of a rollout: a message, or every 100th a reward (the high-priority lane)."""
    if j % 100 == 99:
        emit_reward(float(j))
    else:
        emit_message(f"{label}-{j}")


def test_sixteen_threads_each_collect_exactly_their_own_thousand_spans(sqlite_tracer: OtelTracer) -> None:
    last_traces: dict[int, list[Span]] = {}

    def rollout(i: int) -> None:
        with sqlite_tracer.trace_context(rollout_id=f"thread-{i}"):
            for j in range(EMITS_PER_THREAD):
                emit_numbered(f"t{i}", j)
        last_traces[i] = sqlite_tracer.get_last_trace()

    run_threads(THREADS, rollout)
    flush(sqlite_tracer)
    for i in range(THREADS):
        assert_exactly_one_rollout(flushed_store_spans(sqlite_tracer, f"thread-{i}"), f"thread-{i}", f"t{i}", 1000)
        assert_exactly_one_rollout(last_traces[i], f"thread-{i}", f"t{i}", EMITS_PER_THREAD)
    stats = sqlite_tracer.stats()
    assert stats["dropped"] == {} and stats["pending"] == 0


def test_eight_asyncio_tasks_each_collect_exactly_their_own_spans(sqlite_tracer: OtelTracer) -> None:
    other = otel_trace.get_tracer("some.instrumentation")

    async def rollout(i: int) -> list[Span]:
        async with sqlite_tracer.trace_context(rollout_id=f"task-{i}"):
            for j in range(EMITS_PER_TASK):
                emit_numbered(f"a{i}", j)
                await asyncio.sleep(0)  # interleave with every other task
        return sqlite_tracer.get_last_trace()

    async def main() -> list[list[Span]]:
        return await asyncio.gather(*(rollout(i) for i in range(TASKS)))

    with other.start_as_current_span("outside any rollout"):
        last_traces = asyncio.run(main())
    flush(sqlite_tracer)
    for i in range(TASKS):
        assert_exactly_one_rollout(
            flushed_store_spans(sqlite_tracer, f"task-{i}"), f"task-{i}", f"a{i}", EMITS_PER_TASK
        )
        assert_exactly_one_rollout(last_traces[i], f"task-{i}", f"a{i}", EMITS_PER_TASK)


def test_concurrent_tasks_collect_their_own_opentelemetry_spans_with_links(sqlite_tracer: OtelTracer) -> None:
    other = otel_trace.get_tracer("some.instrumentation")

    async def rollout(i: int) -> None:
        async with sqlite_tracer.trace_context(rollout_id=f"otel-{i}"):
            for j in range(20):
                with other.start_as_current_span(f"call-{i}-{j}"):
                    await asyncio.sleep(0)
                    emit_message(f"o{i}-{j}")

    async def main() -> None:
        await asyncio.gather(*(rollout(i) for i in range(TASKS)))

    asyncio.run(main())
    flush(sqlite_tracer)
    for i in range(TASKS):
        spans = flushed_store_spans(sqlite_tracer, f"otel-{i}")
        assert len(spans) == 41 and len({s.trace_id for s in spans}) == 1
        calls = {s.span_id: s for s in spans if s.name.startswith("call-")}
        assert sorted(s.name for s in calls.values()) == sorted(f"call-{i}-{j}" for j in range(20))
        for message in (s for s in spans if s.name == semconv.SPAN_MESSAGE):
            parent = calls[message.parent_id]  # type: ignore[index]
            assert parent.name == f"call-{i}-{get_message_value(message).split('-')[1]}"  # type: ignore[union-attr]
        assert sorted(s.sequence_id for s in spans) == list(range(41))


def test_threads_sharing_one_rollout_through_copied_contexts_get_unique_sequence_ids(
    sqlite_tracer: OtelTracer,
) -> None:
    with sqlite_tracer.trace_context(rollout_id="shared"):
        contexts = [contextvars.copy_context() for _ in range(8)]

        def emit_500(i: int) -> None:
            for j in range(500):
                emit_message(f"s{i}-{j}")

        def emit_in(i: int) -> None:
            contexts[i].run(emit_500, i)

        run_threads(8, emit_in)
    flush(sqlite_tracer)
    spans = flushed_store_spans(sqlite_tracer, "shared")
    assert [s.sequence_id for s in spans] == list(range(4001))
    bodies = [get_message_value(s) for s in spans if s.name == semconv.SPAN_MESSAGE]
    for i in range(8):
        mine = [b for b in bodies if b is not None and b.startswith(f"s{i}-")]
        assert mine == [f"s{i}-{j}" for j in range(500)]  # each thread's emits keep their order
    assert len(sqlite_tracer.get_last_trace()) == 4001


def test_a_thread_outside_any_context_records_nothing_while_others_trace(sqlite_tracer: OtelTracer) -> None:
    before = agentemit.stats()["no_tracer"]

    def work(i: int) -> None:
        if i == 0:
            for j in range(100):
                emit_message(f"untraced-{j}")
            return
        with sqlite_tracer.trace_context(rollout_id=f"traced-{i}"):
            for j in range(100):
                emit_message(f"traced-{i}-{j}")

    run_threads(4, work)
    flush(sqlite_tracer)
    assert agentemit.stats()["no_tracer"] - before == 100
    for i in (1, 2, 3):
        spans = flushed_store_spans(sqlite_tracer, f"traced-{i}")
        assert [get_message_value(s) for s in spans[1:]] == [f"traced-{i}-{j}" for j in range(100)]
