"""Helpers shared by the pipeline tests, and the child process the crash tests SIGKILL.

As a script: ``python _pipeline_child.py <mode> <spool_root> <name>`` emits rounds of messages into a
pipeline with a real spool under ``spool_root`` and prints one line per round whose events are
confirmed on disk, until it is killed (or a bound is reached):

* ``failing``: the sink refuses every batch (retryable), so each round is spooled in built form;
  after a round's ``force_flush`` leaves nothing in memory it prints ``confirmed <round>``: every
  message of rounds ``0..round`` is durable (``durability="batch"`` fsyncs each spool append).
* ``overflow``: the sink blocks forever on its first batch, so the queue overflows and the spill
  thread writes the overflow in raw form; after each round it prints ``spooled <n>``: the first
  ``n`` overflowed messages (in emission order) are durable.

Messages of round ``r`` are ``crash-<r>-<k>`` in rollout ``crash-<r>``; see :func:`message_body`.
"""

from __future__ import annotations

import itertools
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agentemit import semconv
from agentemit.emit.readers import get_message_value
from agentemit.pipeline.config import PipelineConfig
from agentemit.pipeline.pipeline import Pipeline
from agentemit.pipeline.sink import ExportResult
from agentemit.span import Span
from agentemit.stores.base import SpanStore
from agentemit.tracing.context import CURRENT, RawRecord, RolloutContext

PER_ROUND = 20
MAX_ROUNDS = 2_000  # a bound, so a parent that forgets to kill us does not fill the disk


# --- helpers for the tests ---------------------------------------------------------------------------


class FakeClock:
    """Monotonic seconds that move only when told to."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class RecordingSink:
    """A sink that keeps every span it accepted, counting deliveries per span key (thread-safe).

    ``script`` decides each export call in turn (``"ok"``, ``"fail"`` retryable, ``"refuse"``
    non-retryable); after the script, calls succeed. ``gate`` (an Event), when given, makes every
    export wait until it is set; ``entered`` is set whenever an export starts. ``on_export`` runs at
    the start of every export (e.g. to try re-entering the pipeline).
    """

    def __init__(
        self,
        script: Sequence[str] = (),
        *,
        gate: threading.Event | None = None,
        on_export: Callable[[Sequence[Span]], None] | None = None,
        refuse: Callable[[Span], bool] | None = None,
    ) -> None:
        self.script = list(script)
        self.gate = gate
        self.on_export = on_export
        self.refuse = refuse
        self.entered = threading.Event()
        self.calls = 0
        self.spans: list[Span] = []
        self.deliveries: Counter[tuple[str, str, str]] = Counter()
        self.batch_sizes: list[int] = []
        self.delivered_event = threading.Event()
        self.notify_at: int | None = None
        self._lock = threading.Lock()

    def export(self, batch: Sequence[Span]) -> ExportResult:
        self.entered.set()
        if self.on_export is not None:
            self.on_export(batch)
        if self.gate is not None:
            self.gate.wait(30)
        with self._lock:
            step = self.script.pop(0) if self.script else "ok"
            self.calls += 1
        if step == "fail":
            return ExportResult.failure("recording sink: scripted outage")
        if step == "refuse" or (self.refuse is not None and any(self.refuse(s) for s in batch)):
            return ExportResult.failure("recording sink: refused as malformed", retryable=False)
        with self._lock:
            self.spans.extend(batch)
            self.batch_sizes.append(len(batch))
            self.deliveries.update(s.key for s in batch)
            if self.notify_at is not None and len(self.spans) >= self.notify_at:
                self.delivered_event.set()
        return ExportResult.success(len(batch))

    def force_flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        pass

    def bodies(self) -> list[str]:
        with self._lock:
            return [b for b in (get_message_value(s) for s in self.spans) if b is not None]


class StoreBackedSink:
    """A :class:`RecordingSink`-like wrapper over a real store, with a scripted outage in front.

    ``script`` as for :class:`RecordingSink`; a store refusal (ValueError) is non-retryable, like the
    library's own store sink. Counts deliveries per span key, so tests can tell "stored once" from
    "sent once".
    """

    def __init__(self, store: SpanStore, script: Sequence[str] = (), *, notify_at: int | None = None) -> None:
        self.store = store
        self.script = list(script)
        self.calls = 0
        self.deliveries: Counter[tuple[str, str, str]] = Counter()
        self.notify_at = notify_at
        self.delivered_event = threading.Event()  # set once ``notify_at`` spans were delivered
        self._lock = threading.Lock()

    def export(self, batch: Sequence[Span]) -> ExportResult:
        with self._lock:
            step = self.script.pop(0) if self.script else "ok"
            self.calls += 1
        if step == "fail":
            return ExportResult.failure("store outage (scripted)")
        try:
            stored = self.store.add_many_spans(batch)
        except ValueError as exc:
            return ExportResult.failure(str(exc), retryable=False)
        with self._lock:
            self.deliveries.update(s.key for s in batch)
            if self.notify_at is not None and sum(self.deliveries.values()) >= self.notify_at:
                self.delivered_event.set()
        return ExportResult.success(stored)

    def force_flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        pass


@contextmanager
def rollout(pipeline: Pipeline, rollout_id: str, attempt_id: str = "attempt-0") -> Iterator[RolloutContext]:
    """Make ``rollout_id`` the active rollout, emitting straight into ``pipeline`` (no OpenTelemetry).

    Sampling is decided as a tracer decides it: once, from the rollout id, when the rollout opens.
    """
    ctx = RolloutContext(
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        trace_id=int.from_bytes(rollout_id.encode()[:16].ljust(16, b"\0"), "big") or 1,
        span_id=1,
        sequence=itertools.count(),
        deliver=pipeline.submit,
        sampled_out=pipeline.sampled_out(rollout_id),
        on_sampled_out=pipeline.count_sampled_out,
    )
    token = CURRENT.set(ctx)
    try:
        yield ctx
    finally:
        CURRENT.reset(token)


def raw_record(kind: str, i: int, *, rollout_id: str = "r", body: str | None = None) -> RawRecord:
    """A raw record as a rollout context would make it (for tests that call ``submit`` directly)."""
    name = {"reward": semconv.SPAN_REWARD, "exception": semconv.SPAN_EXCEPTION}.get(kind, semconv.SPAN_MESSAGE)
    attrs: dict[str, Any] = {semconv.MESSAGE_BODY: body if body is not None else f"{kind}-{i}"}
    return (kind, name, i, i, attrs, "0" * 31 + "1", i + 1, 0, i, rollout_id, "attempt-0", None, 0)


def message_body(round_: int, k: int) -> str:
    return f"crash-{round_}-{k}"


def stored_bodies(store: SpanStore) -> Counter[str]:
    """How many times each message body is stored, over every rollout."""
    out: Counter[str] = Counter()
    for summary in store.list_rollouts():
        for span in store.query_spans(summary.rollout_id):
            body = get_message_value(span)
            if body is not None:
                out[body] += 1
    return out


# --- the child process -------------------------------------------------------------------------------


class _FailingSink:
    def export(self, batch: Sequence[Span]) -> ExportResult:
        return ExportResult.failure("crash child: the sink is down")

    def force_flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        pass


class _StuckSink(_FailingSink):
    def export(self, batch: Sequence[Span]) -> ExportResult:
        threading.Event().wait()  # until SIGKILL
        return ExportResult.success()


def _emit_round(pipeline: Pipeline, round_: int) -> None:
    from agentemit import emit_message

    with rollout(pipeline, f"crash-{round_}"):
        for k in range(PER_ROUND):
            emit_message(message_body(round_, k))


def main(argv: list[str]) -> None:
    mode, root, name = argv
    common: dict[str, Any] = {
        "spool_dir": Path(root),
        "durability": "batch",
        "adaptive_sampling": False,
        "redact": False,
        "flush_interval": 60.0,
    }
    if mode == "failing":
        pipeline = Pipeline(_FailingSink(), PipelineConfig(batch_size=50, **common), name=name)
        for round_ in range(MAX_ROUNDS):
            _emit_round(pipeline, round_)
            report = pipeline.force_flush(5.0)
            if report.pending == 0:
                print(f"confirmed {round_}", flush=True)
    elif mode == "overflow":
        config = PipelineConfig(batch_size=10, max_queue_size=20, block_timeout=5.0, **common)
        pipeline = Pipeline(_StuckSink(), config, name=name)
        for round_ in range(MAX_ROUNDS):
            _emit_round(pipeline, round_)
            pipeline.force_flush(0.1)  # never completes (the sink is stuck); lets the spill thread write
            print(f"spooled {pipeline.stats_snapshot()['in_spool']}", flush=True)
    else:
        raise SystemExit(f"pipeline child: unknown mode {mode!r}")


if __name__ == "__main__":
    main(sys.argv[1:])
