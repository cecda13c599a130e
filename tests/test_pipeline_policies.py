"""Pipeline policies: configuration and its errors, head sampling, adaptive shedding, rate limits, filters.

Time and CPU readings are injected (a fake clock, a fake CPU-seconds function); nothing sleeps.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from opentelemetry import trace as otel_trace

from _pipeline_child import FakeClock, RecordingSink, raw_record, rollout
from agentemit import emit_exception, emit_message, emit_object, emit_reward, semconv
from agentemit.pipeline.config import ConfigError, PipelineConfig
from agentemit.pipeline.factory import build_pipeline
from agentemit.pipeline.filters import predicate_filter, require_rollout
from agentemit.pipeline.pipeline import Pipeline
from agentemit.pipeline.sampling import AdaptiveShedder, CpuMonitor, HeadSampler, TokenBucket, sample_point
from agentemit.pipeline.stats import unaccounted
from agentemit.span import Span
from agentemit.stores.sqlite import SqliteStore
from agentemit.tracing.otel import OtelTracer

MB = 1024 * 1024
LOW_KINDS = {"message", "object", "otel"}


def make(made: list[Pipeline], sink: Any, tmp_path: Path, *, start: bool = False, **settings: Any) -> Pipeline:
    settings.setdefault("adaptive_sampling", False)
    settings.setdefault("redact", False)
    clock = settings.pop("clock", None)
    config = PipelineConfig(spool_dir=tmp_path / "spool", **settings)
    kwargs: dict[str, Any] = {"clock": clock} if clock is not None else {}
    p = Pipeline(sink, config, start=start, **kwargs)
    made.append(p)
    return p


# --- configuration ---------------------------------------------------------------------------------


def test_defaults_match_the_documented_values() -> None:
    config = PipelineConfig()
    assert config.sample_rate == 1.0
    assert config.memory_threshold == 100 * MB
    assert config.batch_size == 100
    assert config.flush_interval == 5.0
    assert config.overflow == "spill"
    assert config.durability == "batch"
    assert config.compression == "zstd"


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"sample_rate": 1.5}, "sample_rate must be a number from 0.0 to 1.0, got 1.5"),
        ({"sample_rate": float("nan")}, "sample_rate must be a number from 0.0 to 1.0, got nan"),
        ({"sample_rate": True}, "sample_rate must be a number from 0.0 to 1.0, got True"),
        ({"kind_sample_rates": {"message": -0.1}}, "kind_sample_rates['message'] must be a number from 0.0 to 1.0"),
        ({"kind_sample_rates": {"messages": 0.5}}, "kind_sample_rates: unknown kind 'messages'; expected one of"),
        ({"memory_threshold": 0}, "memory_threshold must be an integer > 0, got 0"),
        ({"memory_threshold": 1e8}, "memory_threshold must be an integer > 0, got 100000000.0"),
        ({"batch_size": -1}, "batch_size must be an integer > 0, got -1"),
        ({"max_queue_size": 0}, "max_queue_size must be an integer > 0, got 0"),
        ({"flush_interval": 0}, "flush_interval must be a finite number of seconds > 0, got 0"),
        ({"flush_interval": float("inf")}, "flush_interval must be a finite number of seconds > 0, got inf"),
        ({"block_timeout": -1.0}, "block_timeout must be a finite number of seconds > 0, got -1.0"),
        ({"shutdown_timeout": float("inf")}, "shutdown_timeout must be a finite number of seconds > 0, got inf"),
        ({"retry_base_delay": float("nan")}, "retry_base_delay must be a finite number of seconds >= 0, got nan"),
        ({"retry_max_delay": 0}, "retry_max_delay must be a finite number of seconds > 0, got 0"),
        ({"max_export_batch": 0}, "max_export_batch must be an integer > 0, got 0"),
        ({"flush_interval": 1e10}, "flush_interval must be at most 9.22e+09 seconds"),
        ({"shutdown_timeout": 1e300}, "shutdown_timeout must be at most 9.22e+09 seconds"),
        ({"memory_threshold": 100}, "memory_threshold must be at least 8,192 bytes (room for a few events), got 100"),
        ({"overflow": "discard"}, "overflow must be one of spill, block, drop_oldest, drop_newest, got 'discard'"),
        ({"kind_overflow": {"object": "drop"}}, "kind_overflow['object'] must be one of spill, block, drop_oldest"),
        ({"kind_overflow": {"objects": "spill"}}, "kind_overflow: unknown kind 'objects'"),
        ({"durability": "sometimes"}, "durability must be one of none, batch, always, got 'sometimes'"),
        ({"compression": "lz4"}, "compression must be one of none, gzip, zstd, got 'lz4'"),
        ({"spool_max_bytes": 0}, "spool_max_bytes must be an integer > 0, got 0"),
        ({"spool_dir": ""}, "spool_dir must be a non-empty path or None, got ''"),
        ({"rate_limits": {"message": 0}}, "rate_limits['message'] must be a finite number of events per second > 0"),
        ({"rate_limits": {"event.": 5}}, "rate_limits: unknown kind 'event.'"),
        ({"adaptive_sampling": "false"}, "adaptive_sampling must be True or False, got 'false'"),
    ],
)
def test_a_bad_argument_is_refused_with_a_message_naming_the_setting(settings: dict[str, Any], message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        PipelineConfig(**settings)


def test_a_config_error_is_a_value_error_that_names_its_setting() -> None:
    with pytest.raises(ValueError) as info:
        PipelineConfig(batch_size=0)
    assert isinstance(info.value, ConfigError) and info.value.setting == "batch_size"


def test_custom_event_kinds_are_accepted_in_per_kind_settings() -> None:
    config = PipelineConfig(rate_limits={"event.tool_call": 10.0}, kind_sample_rates={"event.tool_call": 0.5})
    assert config.rate_limits == {"event.tool_call": 10.0}


def test_settings_come_from_agentemit_variables_and_arguments_win() -> None:
    env = {
        "AGENTEMIT_SAMPLE_RATE": "0.25",
        "AGENTEMIT_BATCH_SIZE": "7",
        "AGENTEMIT_FLUSH_INTERVAL": "0.5",
        "AGENTEMIT_MEMORY_THRESHOLD": "200MB",
        "AGENTEMIT_SPOOL_MAX_BYTES": "1.5GiB",
        "AGENTEMIT_OVERFLOW": "drop_oldest",
        "AGENTEMIT_KIND_OVERFLOW": "reward=block, object=drop_newest",
        "AGENTEMIT_RATE_LIMITS": "message=100,object=2.5",
        "AGENTEMIT_KIND_SAMPLE_RATES": "message=0.1",
        "AGENTEMIT_ADAPTIVE_SAMPLING": "off",
        "AGENTEMIT_SPOOL_DIR": "/tmp/x",
        "AGENTEMIT_COMPRESSION": "none",
        "AGENTEMIT_DURABILITY": "always",
    }
    config = PipelineConfig.from_env(env, batch_size=9)
    assert config.sample_rate == 0.25
    assert config.batch_size == 9  # the argument wins
    assert config.flush_interval == 0.5
    assert config.memory_threshold == 200 * MB
    assert config.spool_max_bytes == int(1.5 * 1024**3)
    assert config.overflow == "drop_oldest"
    assert config.kind_overflow == {"reward": "block", "object": "drop_newest"}
    assert config.rate_limits == {"message": 100.0, "object": 2.5}
    assert config.kind_sample_rates == {"message": 0.1}
    assert config.adaptive_sampling is False
    assert config.spool_dir == Path("/tmp/x")
    assert (config.compression, config.durability) == ("none", "always")


def test_an_empty_environment_gives_the_defaults() -> None:
    assert PipelineConfig.from_env({}) == PipelineConfig()


@pytest.mark.parametrize(
    ("variable", "value", "message"),
    [
        ("SAMPLE_RATE", "often", "AGENTEMIT_SAMPLE_RATE='often' is not valid: could not convert string to float"),
        ("SAMPLE_RATE", "2", "AGENTEMIT_SAMPLE_RATE='2': sample_rate must be a number from 0.0 to 1.0, got 2.0"),
        ("BATCH_SIZE", "", "AGENTEMIT_BATCH_SIZE='' is not valid"),
        ("BATCH_SIZE", "0", "AGENTEMIT_BATCH_SIZE='0': batch_size must be an integer > 0, got 0"),
        ("MEMORY_THRESHOLD", "lots", "AGENTEMIT_MEMORY_THRESHOLD='lots' is not valid: expected a number of bytes"),
        ("MEMORY_THRESHOLD", "100", "memory_threshold must be at least 8,192 bytes"),
        ("MEMORY_THRESHOLD", "9" * 400, "is not valid: is too large a number of bytes"),
        ("ADAPTIVE_SAMPLING", "maybe", "AGENTEMIT_ADAPTIVE_SAMPLING='maybe' is not valid: expected true or false"),
        ("OVERFLOW", "discard", "AGENTEMIT_OVERFLOW='discard': overflow must be one of spill, block"),
        ("RATE_LIMITS", "message", "AGENTEMIT_RATE_LIMITS='message' is not valid: entry 'message' is not kind=value"),
        ("RATE_LIMITS", "message=fast", "entry 'message=fast': 'fast' is not a number"),
        ("RATE_LIMITS", "messages=5", "AGENTEMIT_RATE_LIMITS='messages=5': rate_limits: unknown kind 'messages'"),
        ("FLUSH_INTERVAL", "inf", "AGENTEMIT_FLUSH_INTERVAL='inf': flush_interval must be a finite number"),
        ("SPOOL_DIR", "", "AGENTEMIT_SPOOL_DIR='': spool_dir must be a non-empty path or None"),
        ("DURABILITY", "never", "AGENTEMIT_DURABILITY='never': durability must be one of none, batch, always"),
    ],
)
def test_a_bad_variable_is_refused_with_a_message_naming_the_variable(variable: str, value: str, message: str) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        PipelineConfig.from_env({f"AGENTEMIT_{variable}": value})


def test_an_unknown_override_is_refused_by_name() -> None:
    with pytest.raises(ConfigError, match=re.escape("unknown pipeline setting(s): batchsize")):
        PipelineConfig.from_env({}, batchsize=5)


def test_a_bad_override_is_reported_without_blaming_a_variable() -> None:
    with pytest.raises(ConfigError) as info:
        PipelineConfig.from_env({"AGENTEMIT_BATCH_SIZE": "5"}, sample_rate=3.0)
    assert str(info.value) == "sample_rate must be a number from 0.0 to 1.0, got 3.0"


# --- head sampling ---------------------------------------------------------------------------------


ROLLOUTS = [f"rollout-{i}" for i in range(400)]


def test_head_sampling_keeps_or_drops_each_rollout_whole() -> None:
    sampler = HeadSampler(PipelineConfig(sample_rate=0.5))
    decisions = {sampler.sampled_out(r) for r in ROLLOUTS}
    assert decisions == {frozenset(), frozenset(LOW_KINDS)}  # all low kinds together, rewards kept


def test_head_sampling_is_deterministic_from_the_rollout_id_and_close_to_the_rate() -> None:
    first = HeadSampler(PipelineConfig(sample_rate=0.3))
    second = HeadSampler(PipelineConfig(sample_rate=0.3))  # another process decides the same
    kept = [r for r in ROLLOUTS if not first.sampled_out(r)]
    assert kept == [r for r in ROLLOUTS if not second.sampled_out(r)]
    assert 0.2 < len(kept) / len(ROLLOUTS) < 0.4
    assert all(0.0 <= sample_point(r) < 1.0 for r in ROLLOUTS)


def test_rewards_and_exceptions_are_never_sampled_out_unless_configured() -> None:
    assert HeadSampler(PipelineConfig(sample_rate=0.0)).sampled_out("r") == frozenset(LOW_KINDS)
    explicit = HeadSampler(PipelineConfig(sample_rate=0.0, kind_sample_rates={"reward": 0.0, "exception": 0.0}))
    assert explicit.sampled_out("r") == frozenset(LOW_KINDS | {"reward", "exception"})


def test_a_lower_per_kind_rate_keeps_that_kind_in_a_subset_of_the_kept_rollouts() -> None:
    sampler = HeadSampler(PipelineConfig(sample_rate=0.6, kind_sample_rates={"message": 0.2}))
    with_messages = {r for r in ROLLOUTS if "message" not in sampler.sampled_out(r)}
    with_objects = {r for r in ROLLOUTS if "object" not in sampler.sampled_out(r)}
    assert with_messages < with_objects
    assert 0.1 < len(with_messages) / len(ROLLOUTS) < 0.3


def test_a_custom_kind_named_only_in_the_config_is_sampled_too() -> None:
    sampler = HeadSampler(PipelineConfig(kind_sample_rates={"event.tool_call": 0.0}))
    assert sampler.sampled_out("r") == frozenset({"event.tool_call"})


def test_a_sampled_out_rollout_delivers_its_rewards_and_exceptions_and_counts_the_rest(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, sample_rate=0.0)
    with rollout(p, "dropped"):
        emit_message("m")
        emit_object({"a": 1})
        emit_reward(1.0)
        emit_exception(ValueError("boom"))
    assert p.force_flush(5.0).completed
    assert sorted(s.name for s in sink.spans) == [semconv.SPAN_EXCEPTION, semconv.SPAN_REWARD]
    snap = p.stats_snapshot()
    assert snap["dropped"] == {"sampled_out": 2}
    assert snap["emitted"] == 4 and unaccounted(snap) == 0


def test_a_sampled_out_rollout_stores_no_spans_of_other_instrumentation(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    config = PipelineConfig(sample_rate=0.0, spool_dir=tmp_path / "spool", adaptive_sampling=False)
    tracer = OtelTracer(store, config=config)
    try:
        with tracer.trace_context(rollout_id="dropped"):
            emit_message("sampled out")
            with otel_trace.get_tracer("third.party").start_as_current_span("llm call"):
                pass
            emit_reward(1.0)
        assert tracer.force_flush(5.0)
        assert [s.name for s in store.query_spans("dropped")] == [semconv.SPAN_REWARD]
    finally:
        tracer.teardown()
        store.close()


# --- adaptive shedding -----------------------------------------------------------------------------


class FakeCpu:
    """CPU seconds of a make-believe process: advanced together with a fake clock."""

    def __init__(self) -> None:
        self.seconds = 0.0

    def __call__(self) -> float:
        return self.seconds


def test_cpu_monitor_measures_cpu_seconds_per_wall_second_since_the_last_reading() -> None:
    clock, cpu = FakeClock(), FakeCpu()
    monitor = CpuMonitor(clock, cpu_time=cpu)
    clock.advance(2.0)
    cpu.seconds += 1.9
    assert monitor.utilisation() == pytest.approx(0.95)
    clock.advance(1.0)
    cpu.seconds += 0.25
    assert monitor.utilisation() == pytest.approx(0.25)
    clock.advance(1.0)
    cpu.seconds += 3.0  # several threads busy: capped at one core's worth
    assert monitor.utilisation() == 1.0
    assert monitor.utilisation() == 0.0  # no time passed


def test_cpu_monitor_can_measure_against_several_cores() -> None:
    clock, cpu = FakeClock(), FakeCpu()
    monitor = CpuMonitor(clock, cpus=4, cpu_time=cpu)
    clock.advance(1.0)
    cpu.seconds += 2.0
    assert monitor.utilisation() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="cpus must be an int >= 1, got 0"):
        CpuMonitor(clock, cpus=0, cpu_time=cpu)


def test_the_real_cpu_monitor_reads_this_process() -> None:
    reading = CpuMonitor().utilisation()
    assert 0.0 <= reading <= 1.0


def test_shedding_starts_only_when_cpu_stays_high_and_stops_when_load_falls() -> None:
    shedder = AdaptiveShedder(high=0.9, low=0.7, sustain=3)
    assert [shedder.observe(u) for u in (0.95, 0.95, 0.5, 0.95, 0.95)] == [False] * 5  # a dip resets
    assert shedder.observe(0.99) is True
    assert shedder.observe(0.8) is True  # between low and high: hysteresis holds
    assert shedder.observe(0.6) is False


def test_while_shedding_one_low_priority_event_in_n_is_kept_and_rewards_always_pass() -> None:
    shedder = AdaptiveShedder(sustain=1, keep_one_in=4)
    assert all(shedder.admit("message") for _ in range(10))  # not shedding yet
    shedder.observe(1.0)
    admitted = [shedder.admit(kind) for kind in ["message", "object", "otel", "message"] * 4]
    assert admitted.count(True) == 4
    assert all(shedder.admit(kind) for kind in ("reward", "exception", "event.tool_call") for _ in range(10))


def test_the_pipeline_sheds_low_priority_kinds_under_sustained_cpu_and_restores_them(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    clock, cpu = FakeClock(), FakeCpu()
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, start=True, clock=clock, adaptive_sampling=True, flush_interval=1.0)
    p._cpu = CpuMonitor(clock, cpu_time=cpu)  # no constructor argument for it yet (see the report)

    def tick(utilisation: float) -> None:
        """One flush interval of CPU at ``utilisation``; the worker reads it on its tick."""
        clock.advance(1.0)
        cpu.seconds += utilisation
        with rollout(p, "tick"):
            emit_reward(0.0)  # something to flush, so force_flush wakes the worker
        assert p.force_flush(5.0).completed

    with rollout(p, "warm-up"):
        emit_reward(0.0)
    assert p.force_flush(5.0).completed  # the worker is in its loop: its first tick is due at clock + 1 s
    for _ in range(3):
        tick(0.97)
    assert p.stats_snapshot()["shedding"] is True
    with rollout(p, "busy"):
        for i in range(8):
            emit_message(f"m{i}")
        emit_reward(1.0)
    tick(0.2)
    assert p.stats_snapshot()["shedding"] is False
    with rollout(p, "calm"):
        emit_message("after")
    assert p.force_flush(5.0).completed
    snap = p.stats_snapshot()
    assert snap["dropped"] == {"shed": 6}  # 2 of 8 kept while shedding
    assert "after" in sink.bodies() and len([b for b in sink.bodies() if b.startswith("m")]) == 2
    assert unaccounted(snap) == 0


# --- rate limits -----------------------------------------------------------------------------------


def test_a_token_bucket_allows_its_rate_per_second_of_the_injected_clock() -> None:
    clock = FakeClock()
    bucket = TokenBucket(5.0, clock=clock)
    assert [bucket.allow() for _ in range(7)] == [True] * 5 + [False] * 2
    clock.advance(0.2)
    assert [bucket.allow() for _ in range(2)] == [True, False]
    clock.advance(100.0)
    assert sum(bucket.allow() for _ in range(10)) == 5  # the burst is capped at one second's worth


def test_a_token_bucket_refuses_a_rate_that_is_not_positive() -> None:
    with pytest.raises(ValueError, match="rate must be > 0 events per second, got 0"):
        TokenBucket(0)


def test_a_clock_stepping_back_never_takes_tokens_away() -> None:
    clock = FakeClock()
    bucket = TokenBucket(1.0, clock=clock)
    assert bucket.allow()
    clock.advance(-10.0)
    clock.advance(10.5)  # back where it was, plus half a second: not yet a whole token
    assert not bucket.allow()
    clock.advance(0.5)
    assert bucket.allow()


def test_the_pipeline_rate_limits_per_kind_and_counts_what_it_refuses(
    tmp_path: Path, pipelines: list[Pipeline]
) -> None:
    clock = FakeClock()
    sink = RecordingSink()
    p = make(pipelines, sink, tmp_path, clock=clock, rate_limits={"message": 5.0})
    with rollout(p, "r"):
        for i in range(12):
            emit_message(f"a{i}")
            emit_reward(float(i))  # no limit on rewards
        clock.advance(1.0)
        for i in range(12):
            emit_message(f"b{i}")
    assert p.force_flush(5.0).completed
    assert sorted(sink.bodies()) == sorted([f"a{i}" for i in range(5)] + [f"b{i}" for i in range(5)])
    assert len([s for s in sink.spans if s.name == semconv.SPAN_REWARD]) == 12
    snap = p.stats_snapshot()
    assert snap["dropped"] == {"rate_limited": 14}
    assert unaccounted(snap) == 0


# --- filters ---------------------------------------------------------------------------------------


def span(rollout_id: str = "r", name: str = "x") -> Span:
    return Span("0" * 31 + "1", "0" * 15 + "1", None, name, 1, 2, rollout_id, "attempt-0", 0)


def test_require_rollout_drops_only_spans_without_a_rollout() -> None:
    assert require_rollout(span("r")) is not None
    assert require_rollout(span("")) is None


def test_a_predicate_filter_keeps_what_the_predicate_accepts_and_names_it() -> None:
    def not_health(s: Span) -> bool:
        return s.name != "health"

    stage = predicate_filter(not_health)
    assert stage(span(name="work")) is not None and stage(span(name="health")) is None
    assert "not_health" in stage.__name__


def test_a_store_pipeline_drops_and_counts_spans_with_no_rollout(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    store = SqliteStore(tmp_path / "s.db")
    config = PipelineConfig(spool_dir=tmp_path / "spool", adaptive_sampling=False)
    p = build_pipeline(store=store, config=config, start=False)
    pipelines.append(p)
    p.submit(raw_record("message", 0, rollout_id="kept"))
    p.submit(raw_record("message", 1, rollout_id=""))
    assert p.force_flush(5.0).completed
    assert [s.rollout_id for s in store.query_spans("kept")] == ["kept"]
    assert p.stats_snapshot()["dropped"] == {"filtered": 1}
    store.close()


def test_a_tracer_span_filter_drops_and_counts_the_spans_it_rejects(tmp_path: Path) -> None:
    store = SqliteStore(tmp_path / "s.db")
    config = PipelineConfig(spool_dir=tmp_path / "spool", adaptive_sampling=False)

    def no_debug(s: Span) -> bool:
        return not str(s.attributes.get(semconv.MESSAGE_BODY, "")).startswith("debug")

    tracer = OtelTracer(store, config=config, span_filter=no_debug)
    try:
        with tracer.trace_context(rollout_id="r"):
            emit_message("debug: noisy")
            emit_message("useful")
            emit_message("debug: more")
        assert tracer.force_flush(5.0)
        bodies = [s.attributes.get(semconv.MESSAGE_BODY) for s in store.query_spans("r", name=semconv.SPAN_MESSAGE)]
        assert bodies == ["useful"]
        assert tracer.stats()["dropped"] == {"filtered": 2}
    finally:
        tracer.teardown()
        store.close()


def test_a_broken_stage_keeps_the_span_and_counts_the_error(tmp_path: Path, pipelines: list[Pipeline]) -> None:
    def broken(s: Span) -> Span | None:
        raise RuntimeError("stage bug")

    sink = RecordingSink()
    config = PipelineConfig(spool_dir=tmp_path / "spool", adaptive_sampling=False)
    p = Pipeline(sink, config, stages=[broken], start=False)
    pipelines.append(p)
    p.submit(raw_record("message", 0))
    assert p.force_flush(5.0).completed
    assert len(sink.spans) == 1
    assert p.stats.stage_errors == 1
