"""Span names and attribute keys, matching Agent Lightning so its readers and ours interoperate.

Every other module imports names from here; no literal ``"agentlightning..."`` string lives elsewhere.
"""

from __future__ import annotations

from typing import Final

PREFIX: Final = "agentlightning"

# Span names, one per built-in event kind.
SPAN_MESSAGE: Final = "agentlightning.message"
SPAN_REWARD: Final = "agentlightning.reward"
SPAN_EXCEPTION: Final = "agentlightning.exception"
SPAN_OBJECT: Final = "agentlightning.object"
SPAN_ANNOTATION: Final = "agentlightning.annotation"  # Agent Lightning 0.3 reward carrier
SPAN_EVENT_PREFIX: Final = "agentlightning.event."  # custom event kinds: agentlightning.event.<name>
SPAN_ROLLOUT: Final = "agentemit.rollout"  # the root span of a trace_context without a name

# Rollout identity, carried by every span.
ROLLOUT_ID: Final = "agentlightning.rollout_id"
ATTEMPT_ID: Final = "agentlightning.attempt_id"
SPAN_SEQUENCE_ID: Final = "agentlightning.span_sequence_id"

# Message.
MESSAGE_BODY: Final = "agentlightning.message.body"
MESSAGE_LEGACY: Final = "message"

# Reward: primary value in ``reward``; every dimension as reward.{i}.name / reward.{i}.value.
REWARD_LEGACY: Final = "reward"
REWARD_PREFIX: Final = "agentlightning.reward"


def reward_name_key(index: int) -> str:
    """Attribute key of the name of reward dimension ``index`` (0 is the primary)."""
    return f"agentlightning.reward.{index}.name"


def reward_value_key(index: int) -> str:
    """Attribute key of the value of reward dimension ``index`` (0 is the primary)."""
    return f"agentlightning.reward.{index}.value"


PRIMARY_REWARD_NAME: Final = "primary"

# Object.
OBJECT_TYPE: Final = "agentlightning.object.type"
OBJECT_LITERAL: Final = "agentlightning.object.literal"
OBJECT_JSON: Final = "agentlightning.object.json"
OBJECT_REPR: Final = "agentlightning.object.repr"  # fallback for values JSON cannot hold
OBJECT_UNSERIALIZABLE: Final = "agentlightning.object.unserializable"  # marker: stored as repr
OBJECT_TRUNCATED: Final = "agentlightning.object.truncated"  # marker: bounded (cycle or size)
OBJECT_BYTES_ENCODING: Final = "agentlightning.object.encoding"  # "base64" for bytes literals

# Exception: OpenTelemetry's own semantic conventions.
EXCEPTION_TYPE: Final = "exception.type"
EXCEPTION_MESSAGE: Final = "exception.message"
EXCEPTION_STACKTRACE: Final = "exception.stacktrace"
EXCEPTION_ESCAPED: Final = "exception.escaped"

# Custom events.
EVENT_TYPE: Final = "agentlightning.event.type"
EVENT_VERSION: Final = "agentlightning.event.version"
EVENT_PAYLOAD: Final = "agentlightning.event.payload"

# AgentOps operation outputs that may carry {"type": "reward", "value": x}.
AGENTOPS_TASK_OUTPUT: Final = "agentops.task.output"
AGENTOPS_ENTITY_OUTPUT: Final = "agentops.entity.output"

# Marker on attribute values that were cut to the size limit.
TRUNCATED_SUFFIX: Final = "…[truncated]"
