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
from agentemit.emit.encoding import (
    TYPE_NAME_CACHE,
    bounded_repr,
    clean_text,
    flatten_attributes,
    object_attributes,
    text_size,
    type_name,
)
from agentemit.emit.events import register_builtin_type
from agentemit.emit.no_tracer import count_no_tracer
from agentemit.emit.stacktrace import format_stacktrace
from agentemit.span import is_utf8
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


def _merge_attributes(where: str, own: dict[str, Any], attributes: Mapping[str, Any]) -> tuple[dict[str, Any], int]:
    """User attributes flattened, then the event's own on top: a user key never replaces event data.

    Also returns the size of the user's text (:func:`text_size`), which the event's estimated size
    must include: else attributes would carry any amount of memory past ``memory_threshold``.
    """
    merged: dict[str, Any] = {}
    flatten_attributes(attributes, merged, "", f"{where}: attributes")
    size = text_size(merged)
    merged.update(own)
    return merged, size


def _text_problem(text: str) -> str:
    """Why a str a store would refuse is refused (call only when :func:`is_utf8` is false)."""
    index = next(i for i, char in enumerate(text) if 0xD800 <= ord(char) <= 0xDFFF)
    return (
        f"holds a lone surrogate ({text[index]!r} at index {index}), which is not valid UTF-8; "
        "decode bytes with errors='replace' or 'backslashreplace'"
    )


def _message_text(message: Any) -> str:
    """The rare message: a str subclass (as a plain str), or text with lone surrogates (raises)."""
    if not isinstance(message, str):
        raise TypeError(f"emit_message: message must be str, got {type(message).__name__}")
    text = message if type(message) is str else str.__str__(message)  # a subclass: its characters
    if not is_utf8(text):
        raise ValueError(f"emit_message: message {_text_problem(text)}")
    return text


def emit_message(message: str, *, attributes: Mapping[str, Any] | None = None) -> None:
    """Record a message (a log line of the agent) as an ``agentlightning.message`` span.

    Raises:
        TypeError: ``message`` is not a str, ``attributes`` is not a mapping, or one of its keys
            cannot be made a str.
        ValueError: ``message`` holds a lone surrogate (not valid UTF-8: no store can keep it).
    """
    if type(message) is not str or not message.isascii():  # the usual message: one check each
        message = _message_text(message)
    if attributes is not None:  # checked inline: most calls pass none
        _check_attributes("emit_message", attributes)
    ctx = CURRENT.get()
    if ctx is None:
        return count_no_tracer("message")
    if not attributes:  # flat pairs: a record of plain values only, which the collector can untrack
        ctx.emit("message", semconv.SPAN_MESSAGE, (_BODY, message, _LEGACY_BODY, message), len(message))
        return None
    attrs, size = _merge_attributes("emit_message", {_BODY: message, _LEGACY_BODY: message}, attributes)
    ctx.emit("message", semconv.SPAN_MESSAGE, attrs, len(message) + size)  # one str, held under two keys
    return None


def _reward_number(value: Any, key: str | None) -> float:
    """``value`` as a finite float; errors name the reward, or the dimension ``key``."""
    cls = type(value)
    try:
        if cls is float:
            number: float = value
        elif cls is int or cls is bool:
            number = _float(value)
        elif isinstance(value, (int, float)):  # numpy.float64, a user's float: the built-in's own slot
            number = float.__float__(value) if isinstance(value, float) else int.__float__(value)
        else:
            as_float = getattr(value, "__float__", None)  # numpy scalars, Decimal, fractions
            if as_float is None or isinstance(value, (str, bytes)):
                raise TypeError(
                    f"emit_reward: {_what(key)} is {bounded_repr(value)} ({cls.__name__}); expected a finite number"
                )
            try:
                number = _float(as_float())
            except (OverflowError, TypeError):
                raise
            except Exception as exc:  # the user's __float__ failed: a bad argument, named
                raise TypeError(
                    f"emit_reward: {_what(key)} ({cls.__name__}) cannot be read as a number: "
                    f"__float__ raised {type(exc).__name__}; expected a finite number"
                ) from exc
    except OverflowError:  # an int beyond float range: as unusable as infinity (its repr may not even print)
        raise ValueError(f"emit_reward: {_what(key)} is too large for a float; expected a finite number") from None
    if not math.isfinite(number):
        raise ValueError(f"emit_reward: {_what(key)} is {number!r}; expected a finite number")
    return number


def _what(key: str | None) -> str:
    return "reward" if key is None else f"dimension {key!r}"


def _dimension_name(key: Any) -> str:
    """A dimension name as a plain str a store keeps; raises naming it otherwise."""
    if not isinstance(key, str):
        raise TypeError(f"emit_reward: dimension name {bounded_repr(key)} must be str, got {type(key).__name__}")
    name = key if type(key) is str else str.__str__(key)  # a str subclass: its characters, whatever it overrides
    if not is_utf8(name):
        raise ValueError(f"emit_reward: dimension name {name!r} {_text_problem(name)}")
    return name


def reward_attributes(reward: float | Mapping[str, float], primary_key: str | None = None) -> dict[str, Any]:
    """Validated reward attributes: ``reward`` holds the primary, dimensions follow, primary first."""
    if type(reward) is float and primary_key is None and _isfinite(reward):  # the usual call, before
        return {  # isinstance(reward, Mapping), an ABC check that costs more than all the rest
            semconv.REWARD_LEGACY: reward,
            _PRIMARY_NAME_KEY: semconv.PRIMARY_REWARD_NAME,
            _PRIMARY_VALUE_KEY: reward,
        }
    if isinstance(reward, Mapping):
        try:
            items = list(reward.items())
        except Exception as exc:  # a broken mapping is a bad argument, named
            raise TypeError(
                f"emit_reward: reward mapping ({type(reward).__name__}) cannot be read: "
                f"items() raised {type(exc).__name__}"
            ) from exc
        if not items:
            raise ValueError("emit_reward: reward mapping is empty; give at least one dimension")
        # Names first, as plain strs: every later step (the primary's lookup, messages) then runs
        # on values that cannot raise, whatever the user's keys override.
        named = [(_dimension_name(key), value) for key, value in items]
        names = [name for name, _ in named]
        if primary_key is None:
            if len(named) != 1:
                raise ValueError(
                    f"emit_reward: primary_key is required with {len(named)} dimensions ({', '.join(names)})"
                )
            primary = 0
        else:
            if type(primary_key) is not str:
                if not isinstance(primary_key, str):
                    raise TypeError(f"emit_reward: primary_key must be str, got {type(primary_key).__name__}")
                primary_key = str.__str__(primary_key)
            if primary_key not in names:
                raise ValueError(
                    f"emit_reward: primary_key {primary_key!r} is not one of the dimensions ({', '.join(names)})"
                )
            primary = names.index(primary_key)
        order = [named[primary], *named[:primary], *named[primary + 1 :]]
        attrs: dict[str, Any] = {}
        for index, (key, value) in enumerate(order):
            number = _reward_number(value, key)
            if index == 0:
                attrs[semconv.REWARD_LEGACY] = number
            attrs[semconv.reward_name_key(index)] = key
            attrs[semconv.reward_value_key(index)] = number
        return attrs
    if primary_key is not None:
        raise ValueError("emit_reward: primary_key applies only to a mapping of dimensions")
    value = _reward_number(reward, None)
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
    size = 0
    if attributes:
        attrs, size = _merge_attributes("emit_reward", attrs, attributes)
    ctx.emit("reward", semconv.SPAN_REWARD, attrs, size)


def _exception_pairs(exception: BaseException, escaped: bool) -> tuple[Any, ...]:
    """OpenTelemetry exception attributes as flat pairs, as a raw record carries them
    (``tracing/context.py``); the stack trace, formatted later, includes chained causes."""
    cls = type(exception)
    try:
        message = str(exception)
        if type(message) is not str or not message.isascii():  # the usual message: one check each
            message = clean_text(message)  # lone surrogates escaped: a store refuses them
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
        return clean_text(format_stacktrace(exception, traceback))  # paths may hold surrogates (fsdecode)
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
    attrs, size = _merge_attributes("emit_exception", as_attributes(pairs), attributes)
    ctx.emit("exception", semconv.SPAN_EXCEPTION, attrs, _STACKTRACE_SIZE + size)
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
        attrs, _ = _merge_attributes("emit_object", attrs, attributes)
        size = text_size(attrs)  # the object's own text (its JSON or repr dominates) and the user's
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
