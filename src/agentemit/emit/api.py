"""The public emit calls. Each validates its input, then hands a raw record to the active rollout.

Bad input is a programming error and raises at once, naming the argument; everything after
validation (no tracer, a full queue, a failing store) is counted, never raised into the agent.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping
from types import TracebackType
from typing import Any

from agentemit import semconv
from agentemit.emit.encoding import TYPE_NAME_CACHE, flatten_attributes, object_attributes, type_name
from agentemit.emit.events import register_builtin_type
from agentemit.emit.no_tracer import count_no_tracer
from agentemit.emit.stacktrace import format_stacktrace
from agentemit.tracing.context import CURRENT, as_attributes

_float = float
_partial = functools.partial
_isfinite = math.isfinite
_PRIMARY_NAME_KEY = semconv.reward_name_key(0)
_PRIMARY_VALUE_KEY = semconv.reward_value_key(0)
_BODY = semconv.MESSAGE_BODY
_LEGACY_BODY = semconv.MESSAGE_LEGACY
_LEGACY_REWARD = semconv.REWARD_LEGACY
_PRIMARY_NAME = semconv.PRIMARY_REWARD_NAME


def _check_attributes(where: str, attributes: Any) -> None:
    # Checked before looking for a rollout, so bad input raises whether or not a tracer is active.
    if not isinstance(attributes, Mapping):
        raise TypeError(f"{where}: attributes must be a mapping of str to values, got {type(attributes).__name__}")


def _merge_attributes(own: dict[str, Any], attributes: Mapping[str, Any]) -> dict[str, Any]:
    """User attributes flattened, then the event's own on top: a user key never replaces event data."""
    merged: dict[str, Any] = {}
    flatten_attributes(attributes, merged)
    merged.update(own)
    return merged


def emit_message(message: str, *, attributes: Mapping[str, Any] | None = None) -> None:
    """Record a message (a log line of the agent) as an ``agentlightning.message`` span.

    Raises:
        TypeError: ``message`` is not a str, or ``attributes`` is not a mapping.
    """
    if not isinstance(message, str):
        raise TypeError(f"emit_message: message must be str, got {type(message).__name__}")
    if attributes is not None:  # checked inline: most calls pass none
        _check_attributes("emit_message", attributes)
    ctx = CURRENT.get()
    if ctx is None:
        return count_no_tracer("message")
    if not attributes:  # flat pairs: a record of plain values only, which the collector can untrack
        ctx.emit("message", semconv.SPAN_MESSAGE, (_BODY, message, _LEGACY_BODY, message), len(message))
        return None
    attrs = _merge_attributes({_BODY: message, _LEGACY_BODY: message}, attributes)
    ctx.emit("message", semconv.SPAN_MESSAGE, attrs, len(message))  # one str, held under two keys
    return None


def _reward_number(value: Any, what: str) -> float:
    cls = type(value)
    try:
        if cls is float:
            number: float = value
        elif cls is int or cls is bool or isinstance(value, (int, float)):
            number = _float(value)
        else:
            as_float = getattr(value, "__float__", None)  # numpy scalars, Decimal, fractions
            if as_float is None or isinstance(value, (str, bytes)):
                raise TypeError(f"emit_reward: {what} is {value!r} ({cls.__name__}); expected a finite number")
            number = _float(as_float())
    except OverflowError:  # an int beyond float range: as unusable as infinity (its repr may not even print)
        raise ValueError(f"emit_reward: {what} is too large for a float; expected a finite number") from None
    if not math.isfinite(number):
        raise ValueError(f"emit_reward: {what} is {number!r}; expected a finite number")
    return number


def reward_attributes(reward: float | Mapping[str, float], primary_key: str | None = None) -> dict[str, Any]:
    """Validated reward attributes: ``reward`` holds the primary, dimensions follow, primary first."""
    if type(reward) is float and primary_key is None and _isfinite(reward):  # the usual call, before
        return {  # isinstance(reward, Mapping), an ABC check that costs more than all the rest
            semconv.REWARD_LEGACY: reward,
            _PRIMARY_NAME_KEY: semconv.PRIMARY_REWARD_NAME,
            _PRIMARY_VALUE_KEY: reward,
        }
    if isinstance(reward, Mapping):
        if not reward:
            raise ValueError("emit_reward: reward mapping is empty; give at least one dimension")
        if primary_key is None:
            if len(reward) != 1:
                names = ", ".join(map(str, reward))
                raise ValueError(f"emit_reward: primary_key is required with {len(reward)} dimensions ({names})")
            primary_key = next(iter(reward))
        if primary_key not in reward:
            raise ValueError(
                f"emit_reward: primary_key {primary_key!r} is not one of the dimensions ({', '.join(map(str, reward))})"
            )
        dims = [(primary_key, _reward_number(reward[primary_key], f"dimension {primary_key!r}"))]
        for key, value in reward.items():
            if not isinstance(key, str):
                raise TypeError(f"emit_reward: dimension name {key!r} must be str, got {type(key).__name__}")
            if key != primary_key:
                dims.append((key, _reward_number(value, f"dimension {key!r}")))
        attrs: dict[str, Any] = {semconv.REWARD_LEGACY: dims[0][1]}
        for index, (key, value) in enumerate(dims):
            attrs[semconv.reward_name_key(index)] = key
            attrs[semconv.reward_value_key(index)] = value
        return attrs
    if primary_key is not None:
        raise ValueError("emit_reward: primary_key applies only to a mapping of dimensions")
    value = _reward_number(reward, "reward")
    return {
        semconv.REWARD_LEGACY: value,
        _PRIMARY_NAME_KEY: semconv.PRIMARY_REWARD_NAME,
        _PRIMARY_VALUE_KEY: value,
    }


def emit_reward(
    reward: float | Mapping[str, float],
    *,
    primary_key: str | None = None,
    attributes: Mapping[str, Any] | None = None,
) -> None:
    """Record a reward as an ``agentlightning.reward`` span.

    ``reward`` is a number (int and bool become float) or a mapping of named dimensions, with
    ``primary_key`` naming the primary one when there are several.

    Raises:
        TypeError: a value is not a number (the message names the dimension).
        ValueError: a value is NaN or infinite, or ``primary_key`` is missing or unknown.
    """
    if type(reward) is float and primary_key is None and attributes is None and _isfinite(reward):
        ctx = CURRENT.get()  # the usual call: flat pairs, a record the collector can untrack
        if ctx is None:
            return count_no_tracer("reward")
        flat = (_LEGACY_REWARD, reward, _PRIMARY_NAME_KEY, _PRIMARY_NAME, _PRIMARY_VALUE_KEY, reward)
        return ctx.emit("reward", semconv.SPAN_REWARD, flat)
    attrs = reward_attributes(reward, primary_key)
    if attributes is not None:  # checked inline: most calls pass none
        _check_attributes("emit_reward", attributes)
    ctx = CURRENT.get()
    if ctx is None:
        return count_no_tracer("reward")
    if attributes:
        attrs = _merge_attributes(attrs, attributes)
    ctx.emit("reward", semconv.SPAN_REWARD, attrs)


def _exception_pairs(exception: BaseException, escaped: bool) -> tuple[Any, ...]:
    """OpenTelemetry exception attributes as flat pairs, as a raw record carries them
    (``tracing/context.py``); the stack trace, formatted later, includes chained causes."""
    cls = type(exception)
    try:
        message = str(exception)
    except Exception:  # a broken __str__ must not turn recording an error into raising one
        message = f"<{cls.__name__} str() failed>"
    return (
        semconv.EXCEPTION_TYPE,
        TYPE_NAME_CACHE.get(cls) or type_name(cls),  # the cache, looked up inline
        semconv.EXCEPTION_MESSAGE,
        message,
        semconv.EXCEPTION_STACKTRACE,
        # The stack trace, formatted later on the pipeline's worker (see builder.resolve_deferred): a
        # zero-argument callable built in C. It holds the traceback object as it is now: as an
        # exception propagates, Python links new frames in front of that object, never into it.
        _partial(_format_stacktrace, exception, exception.__traceback__),
        semconv.EXCEPTION_ESCAPED,
        escaped,
    )


def _format_stacktrace(exception: BaseException, traceback: TracebackType | None) -> str:
    try:
        return format_stacktrace(exception, traceback)
    except Exception as exc:  # a broken __str__ or frame must not cost the event
        return f"<stack trace unavailable: {type(exc).__name__}>"


def emit_exception(
    exception: BaseException, *, attributes: Mapping[str, Any] | None = None, escaped: bool = False
) -> None:
    """Record an exception (type, message, full stack trace with causes) as ``agentlightning.exception``.

    ``escaped=True`` says the exception is leaving the scope that recorded it (OpenTelemetry's
    ``exception.escaped``), as when ``@reward`` records and re-raises it.

    Raises:
        TypeError: ``exception`` is not an exception instance.
    """
    if not isinstance(exception, BaseException):
        raise TypeError(f"emit_exception: exception must be an exception instance, got {type(exception).__name__}")
    if attributes is not None:  # checked inline: most calls pass none
        _check_attributes("emit_exception", attributes)
    ctx = CURRENT.get()
    if ctx is None:
        return count_no_tracer("exception")
    pairs = _exception_pairs(exception, escaped is True)
    if not attributes:  # flat pairs: no dict to build on the agent's thread
        ctx.emit("exception", semconv.SPAN_EXCEPTION, pairs, _STACKTRACE_SIZE)
        return None
    ctx.emit("exception", semconv.SPAN_EXCEPTION, _merge_attributes(as_attributes(pairs), attributes), _STACKTRACE_SIZE)
    return None


def emit_object(obj: Any, *, attributes: Mapping[str, Any] | None = None) -> None:
    """Record any Python object as ``agentlightning.object``; never raises for the object itself.

    Primitives are stored as a literal, bytes as base64, JSON-able values (dicts, lists, dataclasses,
    pydantic models, datetimes, enums, numpy) as JSON; anything else as a bounded ``repr`` with a
    marker. Cycles and huge values are bounded and marked truncated.
    """
    if attributes is not None:  # checked inline: most calls pass none
        _check_attributes("emit_object", attributes)
    ctx = CURRENT.get()
    if ctx is None:
        return count_no_tracer("object")
    found = object_attributes(obj)
    if type(found) is tuple:  # the usual JSON payload, as flat pairs the collector can untrack
        if not attributes:
            ctx.emit("object", semconv.SPAN_OBJECT, found, len(found[3]))
            return None
        attrs: dict[str, Any] = as_attributes(found)
    else:
        attrs = found  # type: ignore[assignment]
    if attributes:
        attrs = _merge_attributes(attrs, attributes)
        size = _text_size(attrs)
    else:  # the object's own text (JSON, repr or a str literal) is the one that can be big
        payload = attrs.get(semconv.OBJECT_JSON) or attrs.get(semconv.OBJECT_REPR) or attrs.get(semconv.OBJECT_LITERAL)
        size = len(payload) if type(payload) is str else 0
    ctx.emit("object", semconv.SPAN_OBJECT, attrs, size)
    return None


# The built-in kinds are registered event types too (their priority is the pipeline's default lane).
register_builtin_type("message", semconv.SPAN_MESSAGE, "normal")
register_builtin_type("reward", semconv.SPAN_REWARD, "high")
register_builtin_type("exception", semconv.SPAN_EXCEPTION, "high")
register_builtin_type("object", semconv.SPAN_OBJECT, "normal")


_STACKTRACE_SIZE = 4096  # a formatted stack trace, roughly; formatted later


def _text_size(attrs: dict[str, Any]) -> int:
    """Bytes held by the string values of an object event (its JSON or repr dominates)."""
    size = 0
    for value in attrs.values():  # a plain loop: a generator costs more than the few values it sums
        if type(value) is str:
            size += len(value)
    return size
