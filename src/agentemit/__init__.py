"""agentemit: fast, lossless event emission for LLM agents and agent-RL training loops.

Emit calls (``emit_message``, ``emit_reward``, ...) record OpenTelemetry spans named as Agent
Lightning names them; a tracer collects each rollout's spans inside ``trace_context(...)`` and a
delivery pipeline hands them to a store.
"""

from __future__ import annotations

from typing import Any

from agentemit.emit.api import emit_exception, emit_message, emit_object, emit_reward
from agentemit.emit.events import (
    Event,
    EventType,
    EventValidationError,
    EventVersionError,
    create_event,
    emit_event,
    get_event,
    get_supported_types,
    register_event_type,
)
from agentemit.emit.readers import (
    find_final_reward,
    find_reward_spans,
    get_message_value,
    get_object_value,
    get_reward_value,
    get_rewards,
    is_reward_span,
)
from agentemit.emit.reward import reward
from agentemit.pipeline.config import ConfigError, PipelineConfig
from agentemit.pipeline.pipeline import FlushReport, Pipeline
from agentemit.pipeline.redact import Redactor
from agentemit.pipeline.stats import DropReason
from agentemit.span import Span, SpanEvent
from agentemit.stores import InMemoryStore, SqliteStore, open_store
from agentemit.stores.base import RolloutSummary, SpanStore
from agentemit.tracing.agentops import AgentOpsTracer
from agentemit.tracing.base import Tracer
from agentemit.tracing.http import HttpTracer
from agentemit.tracing.otel import OtelTracer

__version__ = "0.1.0"


def stats() -> dict[str, Any]:
    """Counters of every live pipeline in this process, plus emits that had no active rollout or came
    after their pipeline had shut down."""
    from agentemit.emit.no_tracer import no_tracer_count
    from agentemit.pipeline.pipeline import _live_pipelines, after_shutdown_count
    from agentemit.tracing.otel import _PROCESSOR

    return {
        "no_tracer": no_tracer_count(),
        "after_shutdown": after_shutdown_count(),
        "orphan_spans": _PROCESSOR.orphans,  # SDK spans that ended outside any open rollout
        "pipelines": {f"{p.name}@{id(p):x}": p.stats_snapshot() for p in list(_live_pipelines)},
    }


__all__ = [
    "AgentOpsTracer",
    "ConfigError",
    "DropReason",
    "Event",
    "EventType",
    "EventValidationError",
    "EventVersionError",
    "FlushReport",
    "HttpTracer",
    "InMemoryStore",
    "OtelTracer",
    "Pipeline",
    "PipelineConfig",
    "Redactor",
    "RolloutSummary",
    "Span",
    "SpanEvent",
    "SpanStore",
    "SqliteStore",
    "Tracer",
    "__version__",
    "create_event",
    "emit_event",
    "emit_exception",
    "emit_message",
    "emit_object",
    "emit_reward",
    "find_final_reward",
    "find_reward_spans",
    "get_event",
    "get_message_value",
    "get_object_value",
    "get_reward_value",
    "get_rewards",
    "get_supported_types",
    "is_reward_span",
    "open_store",
    "register_event_type",
    "reward",
    "stats",
]
