"""Per-call cost of the emit API against three baselines, with the pipeline running.

Each figure is timed in batches (``timeit`` with ``perf_counter_ns``, the garbage collector on) and
summarised by the median batch, so a batch that the worker thread's GIL turn or a collection inflated
moves the p99 column, not the median. Figures are net of the bare loop, whose cost is shown too.
Every timed batch of an emit case starts with the queue drained (the flush is not timed), so the
figures are of the normal path: 100,000 exceptions in a row would otherwise fill the queue's byte
budget and time the spill instead (an overflowing queue is what the overload section measures).
Adaptive load shedding is off here for the same reason: on a busy machine it would drop three
messages in four, which is cheaper than emitting them and would flatter the figures.
"""

from __future__ import annotations

import gc
import tempfile
import time
import timeit
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import BatchSpanProcessor, SpanExporter, SpanExportResult

from agentemit import emit_exception, emit_message, emit_object, emit_reward, reward, semconv
from agentemit.bench import workload
from agentemit.bench.options import Options
from agentemit.bench.report import Section, fmt_int, fmt_num, fmt_ratio, median, percentile

EMIT_TARGET_US = 1.5
DICT_DEQUE_TARGET = 8.0
SDK_TARGET = 10.0


@dataclass(frozen=True, slots=True)
class Case:
    label: str
    stmt: str
    kind: str  # "loop", "baseline", "emit" (judged against targets) or "part" (a piece of an emit)
    setup: str = ""


CASES = (
    Case("bare loop iteration (subtracted)", "pass", "loop"),
    Case("empty function call", "noop()", "baseline"),
    Case("dict + deque append", 'dq.append({"a": 1, "b": 2.0, "c": "x"})', "baseline", setup="dq.clear()"),
    Case(
        "  same, deque kept across batches (shown, not judged)",
        'dq.append({"a": 1, "b": 2.0, "c": "x"})',
        "baseline",
        setup="dq.clear() if len(dq) > 200_000 else None",
    ),
    Case(
        "raw OTel SDK span + BatchSpanProcessor",
        'with sdk_tracer.start_as_current_span("x") as s:\n    s.set_attribute("reward", 1.0)',
        "baseline",
    ),
    Case("emit_reward(0.5)", "emit_reward(0.5)", "emit"),
    Case("emit_message(str)", "emit_message(text)", "emit"),
    Case("emit_object(dict)", "emit_object(obj)", "emit"),
    Case("emit_exception(exc)", "emit_exception(exc)", "emit"),
    Case("@reward-decorated call", "score()", "emit"),
    Case("  of which RolloutContext.emit(...)", 'ctx.emit("reward", reward_name, reward_pairs)', "part"),
)


class _NullExporter(SpanExporter):
    """The baseline's exporter: takes batches and discards them, so only the SDK's own cost remains."""

    def export(self, spans: Sequence[ReadableSpan]) -> SpanExportResult:
        return SpanExportResult.SUCCESS

    def shutdown(self) -> None:
        pass

    def force_flush(self, timeout_millis: int = 30_000) -> bool:
        return True


def _noop() -> None:
    pass


@reward
def _score() -> float:
    return 0.75


def _failing_tool() -> None:
    raise ValueError("tool failed: timeout after 30 s")


def caught_exception() -> BaseException:
    try:
        _failing_tool()
    except ValueError as exc:
        return exc
    raise AssertionError("unreachable")


def batch_costs(
    stmt: str,
    setup: str,
    namespace: dict[str, Any],
    calls: int,
    batches: int,
    between: Callable[[], object] = lambda: None,
) -> list[float]:
    """Nanoseconds per call of each of ``batches`` timed batches of ``calls`` calls (after one warm-up);
    ``between`` runs, untimed, before each batch."""
    timer = timeit.Timer(stmt, setup="gc.enable()\n" + (setup or "pass"), timer=time.perf_counter_ns, globals=namespace)
    timer.timeit(calls)
    costs: list[float] = []
    for _ in range(batches):
        between()
        costs.append(timer.timeit(calls) / calls)
    return costs


def _overflowed(stats: dict[str, Any]) -> int:
    return int(stats.get("spilled", 0)) + int(stats.get("dropped_total", 0))


def run(options: Options) -> Section:
    provider = TracerProvider()
    provider.add_span_processor(BatchSpanProcessor(_NullExporter()))
    namespace: dict[str, Any] = {
        "gc": gc,
        "noop": _noop,
        "dq": deque(),
        "sdk_tracer": provider.get_tracer("bench"),
        "emit_reward": emit_reward,
        "emit_message": emit_message,
        "emit_object": emit_object,
        "emit_exception": emit_exception,
        "text": workload.MESSAGE,
        "obj": workload.OBJECT,
        "exc": caught_exception(),
        "score": _score,
        "reward_pairs": workload.REWARD_PAIRS,
        "reward_name": semconv.SPAN_REWARD,
    }
    medians: dict[str, list[float]] = {c.label: [] for c in CASES}
    p99s: dict[str, list[float]] = {c.label: [] for c in CASES}
    overflow: dict[str, int] = {c.label: 0 for c in CASES}
    with tempfile.TemporaryDirectory(prefix="agentemit-bench-") as tmp:
        tracer, store = workload.sqlite_tracer(Path(tmp), adaptive_sampling=False)
        try:
            with tracer.trace_context("bench-micro") as ctx:
                namespace["ctx"] = ctx

                def drain() -> None:
                    tracer.force_flush(timeout=600, drain_spool=True)

                for _ in range(options.repeats):
                    for case in CASES:  # interleaved, so a slow phase of the machine hits every case alike
                        before = _overflowed(tracer.stats())
                        emits = case.kind in ("emit", "part")
                        costs = batch_costs(
                            case.stmt,
                            case.setup,
                            namespace,
                            options.micro_calls,
                            options.micro_batches,
                            drain if emits else lambda: None,
                        )
                        medians[case.label].append(median(costs))
                        p99s[case.label].append(percentile(costs, 99))
                        if emits:
                            overflow[case.label] += _overflowed(tracer.stats()) - before
                            drain()
        finally:
            tracer.teardown_worker()
            store.close()
            provider.shutdown()
    return _section(options, medians, p99s, overflow)


def _section(
    options: Options, medians: dict[str, list[float]], p99s: dict[str, list[float]], overflow: dict[str, int]
) -> Section:
    loop = median(medians[CASES[0].label])
    net = {label: median(values) - loop for label, values in medians.items()}
    net[CASES[0].label] = loop
    dict_deque = net["dict + deque append"]
    sdk = net["raw OTel SDK span + BatchSpanProcessor"]
    section = Section(
        "micro",
        f"micro: cost per call, median of {options.repeats} repeats x {options.micro_batches} batches of "
        f"{options.micro_calls:,} calls (net of the loop), OtelTracer over SQLite running",
        ["call", "median us", "p99 batch us", "x dict+deque", "SDK span / call", "overflowed"],
    )
    for case in CASES:
        label = case.label
        value = net[label]
        p99 = median(p99s[label]) - (0.0 if case.kind == "loop" else loop)
        judged = case.kind in ("emit", "part")
        ratio_dd = value / dict_deque if judged and dict_deque > 0 else float("nan")
        ratio_sdk = sdk / value if judged and value > 0 else float("nan")
        section.add_row(
            [
                label,
                fmt_num(value / 1e3, 3),
                fmt_num(p99 / 1e3, 3),
                fmt_ratio(ratio_dd),
                fmt_ratio(ratio_sdk),
                fmt_int(overflow[label]) if judged else "",
            ],
            median_ns=value,
            p99_batch_ns=p99,
            gross_median_ns=median(medians[label]),
            repeat_medians_ns=medians[label],
            x_dict_deque=ratio_dd,
            sdk_over_call=ratio_sdk,
            overflowed=overflow[label],
        )
        if case.kind == "emit":
            section.check(
                f"{label} median", f"<= {EMIT_TARGET_US} us", f"{value / 1e3:.3f} us", value / 1e3 <= EMIT_TARGET_US
            )
            section.check(
                f"{label} vs dict+deque",
                f"<= {DICT_DEQUE_TARGET:g}x",
                fmt_ratio(ratio_dd),
                ratio_dd <= DICT_DEQUE_TARGET,
            )
            section.check(
                f"{label} vs raw SDK span", f">= {SDK_TARGET:g}x faster", fmt_ratio(ratio_sdk), ratio_sdk >= SDK_TARGET
            )
    section.notes.append(
        "overflowed = events that found the queue full during the case (spilled or dropped); 0 means every "
        "figure is the normal path; adaptive load shedding is off in this section"
    )
    section.notes.append(
        "dict+deque is judged as the cheaper of its two forms: the deque emptied before each batch, so the "
        "dicts come from freed memory (as the pipeline's records do, its worker freeing them); kept, as a plain "
        "timeit loop keeps them, each dict needs fresh memory, which is the 0.2-0.3 us the issue quotes"
    )
    section.notes.append(
        "the SDK's BatchSpanProcessor drops spans when its 2,048-span queue is full (it logs 'Queue full, dropping "
        "Span'); dropping is cheaper than queueing, so the SDK baseline is if anything flattered"
    )
    return section
