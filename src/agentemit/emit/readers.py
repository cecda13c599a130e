"""Read events back out of spans — ours and those other producers wrote.

Formats understood: agentemit / Agent Lightning 0.2 (span ``agentlightning.reward`` with ``reward``),
Agent Lightning 0.3 (span ``agentlightning.annotation`` with ``agentlightning.reward.{i}.value``), and
AgentOps operation outputs (``agentops.task.output`` / ``agentops.entity.output`` holding a dict or
JSON string ``{"type": "reward", "value": x}``). Readers accept our :class:`Span` or an
OpenTelemetry ``ReadableSpan``: anything with ``name`` and ``attributes``.
"""

from __future__ import annotations

import base64
from collections.abc import Iterable, Mapping
from typing import Any, Protocol, TypeVar

import orjson

from agentemit import semconv


class SpanLike(Protocol):
    """What a reader needs of a span."""

    @property
    def name(self) -> str: ...

    @property
    def attributes(self) -> Mapping[str, Any] | None: ...


S = TypeVar("S", bound=SpanLike)

_PRIMARY_VALUE_KEY = semconv.reward_value_key(0)  # read for every stored span: formatted once


def _attrs(span: SpanLike) -> Mapping[str, Any]:
    return span.attributes or {}


def _as_reward_number(value: Any) -> float | None:
    if isinstance(value, bool):
        return float(value)
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, str):
        try:
            return float(value)
        except ValueError:
            return None
    return None


def _agentops_reward(attrs: Mapping[str, Any]) -> float | None:
    for key in (semconv.AGENTOPS_TASK_OUTPUT, semconv.AGENTOPS_ENTITY_OUTPUT):
        raw = attrs.get(key)
        if raw is None:
            continue
        payload: Any = raw
        if isinstance(raw, (str, bytes)):
            try:
                payload = orjson.loads(raw)
            except orjson.JSONDecodeError:
                continue
        if isinstance(payload, Mapping) and payload.get("type") == "reward":
            return _as_reward_number(payload.get("value"))
    return None


def get_rewards(span: SpanLike) -> dict[str, float]:
    """Every reward dimension of a span, primary first; empty when the span carries no reward."""
    attrs = _attrs(span)
    dims: dict[str, float] = {}
    index = 0
    while (value := attrs.get(semconv.reward_value_key(index))) is not None:
        number = _as_reward_number(value)
        name = attrs.get(semconv.reward_name_key(index))
        if number is not None:
            dims[str(name) if name is not None else f"reward_{index}"] = number
        index += 1
    if dims:
        return dims
    if span.name == semconv.SPAN_REWARD:
        number = _as_reward_number(attrs.get(semconv.REWARD_LEGACY))
        if number is not None:
            return {semconv.PRIMARY_REWARD_NAME: number}
    number = _agentops_reward(attrs)
    if number is not None:
        return {semconv.PRIMARY_REWARD_NAME: number}
    return {}


def get_reward_value(span: SpanLike) -> float | None:
    """The primary reward of a span, or None when it carries none (any known format)."""
    attrs = _attrs(span)
    if span.name == semconv.SPAN_REWARD:
        number = _as_reward_number(attrs.get(semconv.REWARD_LEGACY))
        if number is not None:
            return number
    value = attrs.get(_PRIMARY_VALUE_KEY)
    if value is not None:
        number = _as_reward_number(value)
        if number is not None:
            return number
    if semconv.AGENTOPS_TASK_OUTPUT not in attrs and semconv.AGENTOPS_ENTITY_OUTPUT not in attrs:
        return None  # the common case (every stored span is read here): no function calls
    return _agentops_reward(attrs)


def is_reward_span(span: SpanLike) -> bool:
    """True when the span carries a reward in any known format."""
    return get_reward_value(span) is not None


def find_reward_spans(spans: Iterable[S]) -> list[S]:
    """The spans that carry a reward, in the given order."""
    return [s for s in spans if is_reward_span(s)]


def find_final_reward(spans: Iterable[SpanLike]) -> float | None:
    """The last reward in the given order (callers pass spans ordered by sequence_id); None if none."""
    final: float | None = None
    for span in spans:
        value = get_reward_value(span)
        if value is not None:
            final = value
    return final


def get_message_value(span: SpanLike) -> str | None:
    """The body of a message span, or None for any other span."""
    attrs = _attrs(span)
    body = attrs.get(semconv.MESSAGE_BODY)
    if body is None and span.name == semconv.SPAN_MESSAGE:
        body = attrs.get(semconv.MESSAGE_LEGACY)
    return None if body is None else str(body)


def get_object_value(span: SpanLike) -> Any:
    """The object an object span carries: the literal, the decoded JSON, or the bounded repr.

    Bytes literals come back as bytes. Returns None for a span that is not an object span. A value
    that does not decode (JSON or base64 a foreign producer broke) comes back as its stored text
    rather than raising, so one bad span cannot stop a reader going through a whole rollout.
    """
    attrs = _attrs(span)
    if semconv.OBJECT_LITERAL in attrs:
        literal = attrs[semconv.OBJECT_LITERAL]
        if attrs.get(semconv.OBJECT_BYTES_ENCODING) == "base64" and isinstance(literal, str):
            try:
                return base64.b64decode(literal)
            except ValueError:  # binascii.Error is a ValueError
                return literal
        return literal
    if semconv.OBJECT_JSON in attrs:
        raw = attrs[semconv.OBJECT_JSON]
        if not isinstance(raw, (str, bytes)):
            return raw
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError:
            return raw
    if semconv.OBJECT_REPR in attrs:
        return attrs[semconv.OBJECT_REPR]
    return None
