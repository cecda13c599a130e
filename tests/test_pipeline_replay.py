"""Draining the spool with memory bounded in bytes: what replay holds at once, how it delivers a spool
record (batch by batch), and how it resumes a record a sink failure interrupted.

Every test drives the pipeline by hand (``start=False``; ``force_flush`` runs the spill and the
worker pass on the caller's thread), so nothing waits on a thread or a clock.
"""

from __future__ import annotations

import tracemalloc
import uuid
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from _pipeline_child import RecordingSink, rollout
from agentemit import emit_event, emit_message, emit_reward, register_event_type, semconv
from agentemit.emit.readers import get_message_value
from agentemit.pipeline.config import PipelineConfig
from agentemit.pipeline.pipeline import Pipeline
from agentemit.pipeline.replay import replay_hold_bytes
from agentemit.pipeline.sink import ExportResult
from agentemit.pipeline.spool import Spool, SpoolEntry
from agentemit.pipeline.stats import unaccounted
from agentemit.span import Span

FILLER = "observation " * 16  # ~200 characters, like the overload benchmark's messages
SMALL_THRESHOLD = 4 << 20  # a replay budget of ~205 KiB


def make(made: list[Pipeline], sink: Any, tmp_path: Path, *, spool: Spool | None = None, **settings: Any) -> Pipeline:
    settings.setdefault("adaptive_sampling", False)
    settings.setdefault("redact", False)
    stages = settings.pop("stages", ())
    config = PipelineConfig(spool_dir=tmp_path / "spool", **settings)
    p = Pipeline(sink, config, start=False, spool=spool, stages=stages)
    made.append(p)
    return p


def emit_rounds(p: Pipeline, rounds: int, per_round: int) -> None:
    """Emit ``rounds * per_round`` unique messages, flushing between rounds (the spill buffer is bounded
    and this pipeline has no spill thread, so each round's overflow is written to the spool by the flush)."""
    with rollout(p, "r"):
        for r in range(rounds):
            for i in range(per_round):
                emit_message(f"{r}-{i} {FILLER}")
            p.force_flush(30.0)


class MeasuredSpool(Spool):
    """A real spool that records the payload bytes each replay call hands out."""

    def __init__(self, directory: Path, **kwargs: Any) -> None:
        super().__init__(directory, **kwargs)
        self.handed_out: list[int] = []

    def replay(self, limit: int | None = None, **bounds: Any) -> list[SpoolEntry]:
        entries = super().replay(limit, **bounds)
        self.handed_out.append(sum(len(e.payload) for e in entries))
        return entries


class SwitchSink:
    """Counts distinct messages delivered (no spans kept, so it costs no memory); ``down`` fails exports."""

    def __init__(self) -> None:
        self.down = True
        self.bodies: set[str] = set()
        self.duplicates = 0

    def export(self, batch: Sequence[Span]) -> ExportResult:
        if self.down:
            return ExportResult.failure("switch sink: down")
        for span in batch:
            body = get_message_value(span)
            if body in self.bodies:
                self.duplicates += 1
            elif body is not None:
                self.bodies.add(body)
        return ExportResult.success(len(batch))

    def force_flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        pass


def test_replay_hands_out_at_most_its_byte_budget_at_once(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    spool = MeasuredSpool(tmp_path / "own-spool", compression="zstd")  # sizes known only once read
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, spool=spool, memory_threshold=SMALL_THRESHOLD, max_queue_size=100)
    emit_rounds(p, 3, 2_000)  # ~3.4 MB of spilled rows
    assert p.force_flush(30.0, drain_spool=True).completed
    assert len(sink.spans) == 6_000 and set(sink.deliveries.values()) == {1}
    assert 0 < max(spool.handed_out) <= replay_hold_bytes(p.config)
    assert spool.stats.replayed > 50  # many records, so the budget, not the spool's size, bounds each call
    snap = p.stats_snapshot()
    assert snap["in_spool"] == 0 and unaccounted(snap) == 0


def test_a_spilled_record_is_delivered_in_batches_of_max_export_batch(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, batch_size=10, max_export_batch=10, max_queue_size=10)
    emit_rounds(p, 1, 200)  # 190-odd messages overflow into one spool record
    assert p.stats_snapshot()["spilled"] > 150
    assert p.force_flush(5.0, drain_spool=True).completed
    assert len(sink.spans) == 200 and set(sink.deliveries.values()) == {1}
    assert max(sink.batch_sizes) <= 10


def test_a_backlog_is_replayed_in_exports_larger_than_batch_size(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, batch_size=10, max_queue_size=10)
    emit_rounds(p, 1, 200)
    assert p.force_flush(5.0, drain_spool=True).completed
    assert len(sink.spans) == 200 and max(sink.batch_sizes) > 10  # a sink pays per export: drain in bulk


def drop_every_seventh(span: Span) -> Span | None:
    body = get_message_value(span) or ""
    return None if int(body.split("-")[1].split()[0]) % 7 == 0 else span


def test_a_record_interrupted_by_a_sink_failure_resumes_after_what_was_delivered(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    # Export calls: the queue's batch, two batches of the spilled record, then the third fails twice
    # (once in the worker pass, once in the flush's own replay attempt).
    sink = RecordingSink(script=["ok", "ok", "ok", "fail", "fail"])
    p = make(
        pipelines, sink, tmp_path, batch_size=10, max_export_batch=10, max_queue_size=10, stages=[drop_every_seventh]
    )
    with rollout(p, "r"):
        for i in range(100):
            emit_message(f"0-{i} {FILLER}")
    spilled_before = len(sink.spans)
    report = p.force_flush(5.0)
    assert report.in_spool > 0 and len(sink.spans) > spilled_before
    during = p.stats_snapshot()
    assert unaccounted(during) == 0  # exact while the record is half delivered: its counts wait for it
    assert p.force_flush(5.0, drain_spool=True).completed
    assert set(sink.deliveries.values()) == {1}  # the delivered batches were not sent again
    assert len(sink.spans) == 100 - 15
    snap = p.stats_snapshot()
    assert snap["dropped"] == {"filtered": 15}  # the failed batch's filtered spans are counted once
    assert snap["exported"] == 85 and snap["in_spool"] == 0 and unaccounted(snap) == 0


def test_draining_a_large_spool_holds_a_bounded_number_of_bytes(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    sink = SwitchSink()
    p = make(pipelines, sink, tmp_path, memory_threshold=SMALL_THRESHOLD, max_queue_size=100)
    emit_rounds(p, 4, 2_000)  # the sink is down: everything goes to the spool (~4.5 MB of payloads)
    assert p.stats_snapshot()["in_spool"] == 8_000
    sink.down = False
    tracemalloc.start()
    try:
        assert p.force_flush(60.0, drain_spool=True).completed
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(sink.bodies) == 8_000 and sink.duplicates == 0
    # The budget is ~205 KiB of payloads, and decoding one record peaks at ~14x its JSON (orjson).
    # Holding rounds of 16 records of up to 2,000 rows (~1 MB each) would peak above 15 MiB.
    assert peak < 3 << 20, f"draining peaked at {peak / 2**20:.1f} MiB of Python allocations"


def test_at_the_spool_cap_the_messages_of_failed_batches_go_and_their_rewards_stay(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    """Each failed batch mixes a reward and a high-priority custom event with messages: spooled apart,
    only messages go at the cap. Spooled whole at the reward's priority, the oldest rewards went."""
    verdict = f"t{uuid.uuid4().hex[:10]}.verdict"  # the event registry is process-wide
    register_event_type(verdict, {"type": "object", "properties": {"ok": {"type": "boolean"}}}, priority="high")
    sink = RecordingSink(script=["fail"] * 1_000)
    p = make(pipelines, sink, tmp_path, spool_max_bytes=60_000, compression="none", batch_size=25)
    for r in range(20):
        with rollout(p, f"r{r}"):
            for i in range(23):
                emit_message(f"{r}-{i} {FILLER}")
            emit_reward(float(r))
            emit_event(verdict, {"ok": True})
        p.run_once()  # the export fails (spooled); so does this pass's replay round
    sink.script.clear()
    assert p.force_flush(5.0, drain_spool=True).completed
    names = Counter(s.name for s in sink.spans)
    assert names[semconv.SPAN_REWARD] == names[semconv.SPAN_EVENT_PREFIX + verdict] == 20
    messages = names[semconv.SPAN_MESSAGE]
    assert 0 < messages < 460
    snap = p.stats_snapshot()
    assert snap["dropped"] == {"spool_full": 460 - messages}
    assert p.spool().stats.evicted_records[0] == 0
    assert unaccounted(snap) == 0


def test_a_failed_replay_round_hands_its_records_back_so_the_cap_evicts_the_oldest(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    """Records a replay round handed out are protected from eviction while it delivers them; left
    protected after the sink failed, the cap refused every newer record instead of the oldest."""
    sink = RecordingSink(script=["fail"] * 1_000)
    p = make(pipelines, sink, tmp_path, spool_max_bytes=60_000, compression="none", batch_size=25)
    for r in range(8):  # about twice what the cap holds
        with rollout(p, f"r{r}"):
            for i in range(25):
                emit_message(f"{r}-{i} {FILLER}")
        p.run_once()  # the export fails (spooled); so does this pass's replay round
    sink.script.clear()
    assert p.force_flush(5.0, drain_spool=True).completed
    bodies = sink.bodies()
    assert {f"7-{i} {FILLER}" for i in range(25)} <= set(bodies)  # the newest round survived
    assert f"0-0 {FILLER}" not in bodies  # the oldest was evicted for it
    snap = p.stats_snapshot()
    assert snap["dropped"] == {"spool_full": 200 - len(bodies)} and unaccounted(snap) == 0
