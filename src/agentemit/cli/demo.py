"""``agentemit demo``: a simulated agent workload that exercises the whole library, then proves nothing was lost.

The agent solves Countdown-style puzzles (reach a target from four numbers with + - * /) by a seeded
random search standing in for a model. Every rollout runs in a thread of a shared pool, inside one
shared :class:`~agentemit.OtelTracer`, and emits the four event kinds, a third-party OpenTelemetry
span (``llm.call``) and, now and then, an exception from a flaky tool. The agent counts what it
emitted; after the flush the demo reads the store back and compares, kind by kind. No network, no
model, no sleeping: a run takes well under a second.
"""

from __future__ import annotations

import random
import secrets
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, TextIO

from opentelemetry import trace as otel_trace

import agentemit
from agentemit import semconv
from agentemit.cli import render
from agentemit.pipeline.config import PipelineConfig
from agentemit.pipeline.pipeline import FlushReport
from agentemit.stores import SpanStore, SqliteStore, open_store

KINDS = ("message", "reward", "exception", "object", "other")
_KIND_OF_NAME = {
    semconv.SPAN_MESSAGE: "message",
    semconv.SPAN_REWARD: "reward",
    semconv.SPAN_EXCEPTION: "exception",
    semconv.SPAN_OBJECT: "object",
}
ROOT_SPAN = "demo-rollout"
LLM_SPAN = "llm.call"
MAX_STEPS = 4
MAX_ATTEMPTS = 2
CANDIDATES = 6
TOOL_FAILURE_RATE = 0.12
FLUSH_TIMEOUT = 10.0


# --- the simulated agent ---------------------------------------------------------------------


class ToolError(RuntimeError):
    """The simulated calculator tool failed (the agent catches it and emits it)."""


@dataclass
class PuzzleState:
    """What the agent knows after a step; emitted as an object span."""

    numbers: list[int]
    target: int
    step: int
    best_expression: str | None = None
    best_value: int | None = None
    solved: bool = False


def random_expression(rng: random.Random, numbers: list[int]) -> tuple[str, Fraction] | None:
    """Combine 2-4 of the numbers left to right with random operators; None if a division is inexact."""
    picked = rng.sample(numbers, rng.randint(2, len(numbers)))
    text, value = str(picked[0]), Fraction(picked[0])
    for n in picked[1:]:
        op = rng.choice("+-*/")
        if op == "/" and (n == 0 or (value / n).denominator != 1):
            return None  # Countdown allows exact division only
        value = {"+": value + n, "-": value - n, "*": value * n, "/": value / n if n else value}[op]
        text = f"({text} {op} {n})"
    return text, value


def make_puzzle(rng: random.Random) -> tuple[list[int], int]:
    """Four numbers and a reachable positive target."""
    numbers = [rng.randint(1, 12) for _ in range(4)]
    while True:
        made = random_expression(rng, numbers)
        if made is not None and made[1] > 0 and made[1].denominator == 1:
            return numbers, int(made[1])


def calculator(value: Fraction, rng: random.Random) -> int:
    """The agent's tool: exact, but flaky (fails at TOOL_FAILURE_RATE)."""
    if rng.random() < TOOL_FAILURE_RATE:
        raise ToolError("calculator: upstream timed out after 30s (simulated)")
    return int(value)


@agentemit.reward
def closeness(value: int, target: int) -> float:
    """Step reward: 1.0 on the target, falling off with the distance to it."""
    return 1.0 / (1.0 + abs(value - target))


def run_attempt(rng: random.Random, numbers: list[int], target: int, counts: Counter[str]) -> tuple[bool, float]:
    """One attempt at the puzzle inside the current rollout; returns (solved, final score)."""
    llm = otel_trace.get_tracer("agentemit.demo")
    state = PuzzleState(list(numbers), target, 0)
    best_close = 0.0
    for step in range(1, MAX_STEPS + 1):
        state.step = step
        agentemit.emit_message(f"step {step}: reach {target} from {numbers}; asking the model for candidates")
        counts["message"] += 1
        with llm.start_as_current_span(LLM_SPAN, attributes={"gen_ai.request.model": "sim-countdown-1"}) as span:
            counts["other"] += 1
            candidates = [c for c in (random_expression(rng, numbers) for _ in range(CANDIDATES)) if c is not None]
            span.set_attribute("gen_ai.usage.output_tokens", 9 * len(candidates))
            if not candidates:
                continue
            text, exact = min(candidates, key=lambda c: abs(c[1] - target))
            try:
                value = calculator(exact, rng)
            except ToolError as exc:
                agentemit.emit_exception(exc, attributes={"tool": "calculator", "expression": text})
                counts["exception"] += 1
                continue
            best_close = max(best_close, closeness(value, target))  # emitted as a reward under llm.call
            counts["reward"] += 1
        if state.best_value is None or abs(value - target) < abs(state.best_value - target):
            state.best_expression, state.best_value = text, value
        state.solved = value == target
        agentemit.emit_message(
            f"thought: {text} = {value}" + (" — solved" if state.solved else f", off by {abs(value - target)}")
        )
        agentemit.emit_object(state)
        counts["message"] += 1
        counts["object"] += 1
        if state.solved:
            break
    score = 1.0 if state.solved else 0.5 * best_close
    efficiency = 1.0 - (state.step - 1) / MAX_STEPS if state.solved else 0.0
    agentemit.emit_reward(
        {"score": score, "solved": float(state.solved), "efficiency": efficiency}, primary_key="score"
    )
    counts["reward"] += 1
    return state.solved, score


@dataclass
class RolloutResult:
    rollout_id: str
    attempts: int
    solved: bool
    tool_errors: int
    counts: Counter[str]


def run_rollout(tracer: agentemit.OtelTracer, rollout_id: str, seed: int, index: int) -> RolloutResult:
    """One rollout: up to MAX_ATTEMPTS attempts, each its own trace context."""
    rng = random.Random(f"{seed}:{index}")  # per rollout, so results do not depend on thread scheduling
    numbers, target = make_puzzle(rng)
    counts: Counter[str] = Counter()
    solved, attempts = False, 0
    while not solved and attempts < MAX_ATTEMPTS:
        with tracer.trace_context(ROOT_SPAN, rollout_id=rollout_id, attempt_id=f"attempt-{attempts}"):
            counts["other"] += 1  # the context's root span
            solved, _ = run_attempt(rng, numbers, target, counts)
        attempts += 1
    return RolloutResult(rollout_id, attempts, solved, counts["exception"], counts)


# --- the run and its report ------------------------------------------------------------------


@dataclass
class DemoReport:
    """What a demo run emitted, what the store holds afterwards, and the pipeline's counters."""

    run_id: str
    store_label: str
    spool_dir: Path | None
    threads: int
    seed: int
    results: list[RolloutResult]
    stored: Counter[str]
    final_rewards: dict[str, float | None]
    elapsed: float
    flush: FlushReport | None
    stats: dict[str, Any] = field(default_factory=dict)
    where_args: str = ""  # the --db/--store arguments that name this store, for the hint at the end

    @property
    def emitted(self) -> Counter[str]:
        total: Counter[str] = Counter()
        for result in self.results:
            total.update(result.counts)
        return total

    @property
    def lost(self) -> int:
        return sum(self.emitted.values()) - sum(self.stored.values())

    @property
    def ok(self) -> bool:
        return self.lost == 0 and self.emitted == self.stored and not self.stats.get("dropped_total", 0)


def _open(db: str | None, store_url: str | None) -> tuple[SpanStore, str, Path | None]:
    if store_url is not None:
        store: SpanStore = open_store(store_url)
        label = render.safe_url(store_url)
    else:
        store = SqliteStore(Path(db or "agentemit.db").resolve())
        label = f"sqlite {store.path}"
    spool = Path(store.path + ".spool") if isinstance(store, SqliteStore) and store.path != ":memory:" else None
    return store, label, spool


def _read_back(store: SpanStore, rollout_ids: list[str]) -> tuple[Counter[str], dict[str, float | None]]:
    stored: Counter[str] = Counter()
    finals: dict[str, float | None] = {}
    for rollout_id in rollout_ids:
        for span in store.query_spans(rollout_id):
            stored[_KIND_OF_NAME.get(span.name, "other")] += 1
        finals[rollout_id] = agentemit.find_final_reward(store.query_spans(rollout_id, "latest"))
    return stored, finals


def run_demo(
    *, db: str | None = None, store_url: str | None = None, rollouts: int = 20, threads: int = 4, seed: int = 0
) -> DemoReport:
    """Run the workload into the store and read it back (before teardown, so ``memory`` works too)."""
    store, label, spool_dir = _open(db, store_url)
    run_id = f"{time.strftime('%Y%m%d-%H%M%S')}-{secrets.token_hex(3)}"
    # Adaptive shedding is off: the demo's point is that every event arrives, and a busy machine
    # would otherwise shed messages on purpose. Other AGENTEMIT_* settings apply as usual.
    config = PipelineConfig.from_env(flush_interval=0.2, spool_dir=spool_dir, adaptive_sampling=False)
    tracer = agentemit.OtelTracer(store, config=config, keep_last_trace=False)
    tracer.init_worker(0)
    try:
        started = time.perf_counter()
        ids = [f"demo-{run_id}-{i:03d}" for i in range(rollouts)]
        with ThreadPoolExecutor(max_workers=threads, thread_name_prefix="demo-agent") as pool:
            futures = [pool.submit(run_rollout, tracer, rid, seed, i) for i, rid in enumerate(ids)]
            results = [f.result() for f in futures]
        flush = tracer.force_flush(FLUSH_TIMEOUT)
        elapsed = time.perf_counter() - started
        stats = tracer.stats()
        stored, finals = _read_back(store, ids)
    finally:
        tracer.teardown_worker()  # also closes the store (the pipeline's store sink owns it)
    where = (
        f"--store {render.safe_url(store_url)}" if store_url is not None else (f"--db {db}" if db is not None else "")
    )
    return DemoReport(run_id, label, spool_dir, threads, seed, results, stored, finals, elapsed, flush, stats, where)


def print_report(report: DemoReport, out: TextIO) -> None:
    """The summary table: per-kind emitted vs stored, rewards, throughput, loss counters."""
    results = report.results
    emitted, stored = report.emitted, report.stored
    w = out.write
    w(f"agentemit demo: {len(results)} rollouts on {report.threads} threads ")
    w(f"(run {report.run_id}, seed {report.seed})\n")
    w(f"  store     {report.store_label}\n")
    w(f"  spool     {report.spool_dir if report.spool_dir else '(default spool directory)'}\n")
    solved = sum(r.solved for r in results)
    retried = sum(r.attempts > 1 for r in results)
    errored = sum(r.tool_errors > 0 for r in results)
    w(f"  rollouts  {len(results)}  (solved {solved}, retried {retried}, hit a tool error {errored})\n\n")
    rows = [(k, emitted[k], stored[k]) for k in KINDS]
    rows.append(("total", sum(emitted.values()), sum(stored.values())))
    for line in render.table(("spans", "emitted", "stored"), rows, right=(1, 2)):
        w(f"  {line}\n")
    finals = [v for v in report.final_rewards.values() if v is not None]
    mean = sum(finals) / len(finals) if finals else None
    total = sum(stored.values())
    w(f"\n  mean final reward  {render.format_reward(mean)}  (primary 'score' of each rollout's latest attempt)\n")
    rate = total / report.elapsed if report.elapsed > 0 else 0.0
    w(f"  throughput         {total} events in {report.elapsed:.2f}s = {rate:,.0f} events/s (emit to stored)\n")
    s = report.stats
    w(
        f"  pipeline           emitted {s.get('emitted', 0)}  exported {s.get('exported', 0)}"
        f"  dropped {s.get('dropped_total', 0)}  pending {s.get('pending', 0)}  in spool {s.get('in_spool', 0)}"
        f"  recovered {s.get('recovered', 0)}\n"
    )
    if report.flush is not None:
        f = report.flush
        state = "completed" if f.completed else "NOT completed"
        w(f"  flush              {state} in {f.elapsed * 1000:.0f} ms, {f.delivered} delivered by the final flush\n")
    if report.ok:
        w(f"  result             OK: all {total} events stored, 0 lost\n")
    else:
        dropped = s.get("dropped", {})
        w(f"  result             LOST {report.lost} event(s); drops by reason: {dropped or 'none counted'}\n")
    if results:
        where = f" {report.where_args}" if report.where_args else ""
        w(f"\nnext: agentemit inspect{where} --rollout {results[0].rollout_id}\n")
