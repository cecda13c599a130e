"""Turn arbitrary Python values into OpenTelemetry attribute values, bounded and never raising.

Used off the hot path for objects and on it only for user ``attributes`` (flat dicts of scalars cost
one ``type()`` check per value).
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import enum
import math
import uuid
from collections.abc import Mapping
from decimal import Decimal
from pathlib import PurePath
from typing import Any

import orjson

from agentemit import semconv
from agentemit.span import AttributeValue, is_utf8

MAX_DEPTH = 32
MAX_ITEMS = 10_000  # containers longer than this are cut (and marked)
MAX_JSON_BYTES = 1 << 20  # JSON text longer than this is cut (and marked)
MAX_REPR_CHARS = 4096
_MAX_LITERAL_BYTES = MAX_JSON_BYTES * 3 // 4  # bytes whose base64 text fits MAX_JSON_BYTES
_INT64_MIN, _INT64_MAX = -(2**63), 2**63 - 1  # OpenTelemetry attribute ints are signed 64-bit

_SCALARS = (str, bool, int, float)
_EXACT_SCALARS = frozenset(_SCALARS)


class _Truncated:
    """Records whether :func:`to_jsonable` had to bound its input."""

    __slots__ = ("hit",)

    def __init__(self) -> None:
        self.hit = False


def clean_text(text: str) -> str:
    """``text`` as an exact str that is valid UTF-8: a str subclass becomes a plain str (its own
    ``__str__`` is not called), and lone surrogates (``os.fsdecode``, ``surrogateescape``) become
    backslash escapes. Stores refuse them, and an event must not be lost for them."""
    if type(text) is not str:
        text = str.__str__(text)  # the characters themselves, whatever the subclass overrides
    if is_utf8(text):
        return text
    return text.encode("utf-8", "backslashreplace").decode("utf-8")


def exact_scalar(value: str | bool | int | float) -> str | bool | int | float:
    """A str, int or float subclass (``numpy.float64``, a user's ``class MyFloat(float)``) as the
    exact built-in type, read through the built-in's own slot (no user override runs); stores and
    orjson take only the exact types. A str is cleaned as :func:`clean_text` does."""
    if isinstance(value, str):
        return clean_text(value)
    if isinstance(value, bool):  # bool cannot be subclassed: already exact
        return value
    if isinstance(value, int):
        return int.__int__(value)
    return float.__float__(value)


def _numpy_to_python(value: Any) -> tuple[bool, Any]:
    module = type(value).__module__
    if not module.startswith("numpy"):
        return False, None
    if hasattr(value, "tolist"):
        return True, value.tolist()
    return False, None


def to_jsonable(value: Any, marker: _Truncated, depth: int = 0, seen: frozenset[int] = frozenset()) -> Any:
    """A JSON-encodable copy of ``value``; cycles, depth and size are bounded and marked.

    Raises ``TypeError`` for a value with no JSON form (the caller falls back to a bounded repr).
    """
    cls = type(value)
    if value is None or cls is bool or cls is int:
        return value
    if cls is str:
        return value if is_utf8(value) else clean_text(value)
    if cls is float:
        return value if math.isfinite(value) else str(value)
    if depth >= MAX_DEPTH or id(value) in seen:
        marker.hit = True
        return f"<{type(value).__name__} truncated>"
    if isinstance(value, enum.Enum):
        return to_jsonable(value.value, marker, depth + 1, seen)
    if isinstance(value, _SCALARS):  # a subclass (numpy.float64 is a float): its exact value
        return to_jsonable(exact_scalar(value), marker, depth + 1, seen)
    if isinstance(value, (_dt.datetime, _dt.date, _dt.time)):
        return value.isoformat()
    if isinstance(value, _dt.timedelta):
        return value.total_seconds()
    if isinstance(value, (uuid.UUID, Decimal, PurePath)):
        return str(value)
    if isinstance(value, (bytes, bytearray, memoryview)):
        return base64.b64encode(bytes(value)).decode("ascii")
    is_np, converted = _numpy_to_python(value)
    if is_np:
        return to_jsonable(converted, marker, depth + 1, seen)
    inner = seen | {id(value)}
    if isinstance(value, Mapping):
        out: dict[str, Any] = {}
        for i, (k, v) in enumerate(value.items()):
            if i >= MAX_ITEMS:
                marker.hit = True
                break
            key = clean_text(k if isinstance(k, str) else str(k))  # orjson takes exact, valid str keys only
            out[key] = to_jsonable(v, marker, depth + 1, inner)
        return out
    if isinstance(value, (list, tuple, set, frozenset)):
        items = list(value)
        if len(items) > MAX_ITEMS:
            marker.hit = True
            items = items[:MAX_ITEMS]
        return [to_jsonable(v, marker, depth + 1, inner) for v in items]
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        fields = {f.name: getattr(value, f.name) for f in dataclasses.fields(value)}
        return to_jsonable(fields, marker, depth + 1, inner)
    dump = getattr(value, "model_dump", None)  # pydantic v2
    if callable(dump) and not isinstance(value, type):
        return to_jsonable(dump(mode="json"), marker, depth + 1, inner)
    raise TypeError(f"{type(value).__name__} has no JSON form")


_NATIVE_JSON_OPTIONS = orjson.OPT_NON_STR_KEYS | orjson.OPT_SERIALIZE_NUMPY
_orjson_dumps = orjson.dumps


def bounded_repr(value: Any) -> str:
    """``repr`` that never raises, never exceeds :data:`MAX_REPR_CHARS` and is valid UTF-8 (a
    ``__repr__`` may return a str subclass or lone surrogates)."""
    try:
        text = clean_text(repr(value))
    except Exception as exc:  # a broken __repr__ must not break the agent
        text = f"<{type(value).__name__} repr failed: {type(exc).__name__}>"
    if len(text) > MAX_REPR_CHARS:
        text = text[:MAX_REPR_CHARS] + semconv.TRUNCATED_SUFFIX
    return text


def object_attributes(obj: Any) -> dict[str, AttributeValue] | tuple[str, str, str, str]:
    """Attributes of an object event: type, then a literal, JSON, or (marked) bounded repr.

    The usual dict, list or tuple comes back as flat pairs ``(type key, type, JSON key, JSON)``, as a
    raw record carries them (see ``tracing/context.py``); anything else as a dict.
    """
    cls = type(obj)
    if cls is dict or cls is list or cls is tuple:
        # The usual payload goes straight to orjson, datetimes, enums, UUIDs and numpy values inside
        # included (NaN and infinities become null). What it refuses (sets, bytes, cycles, ...) and
        # what breaks a bound goes through the bounded walker below, as do dataclasses and models.
        try:
            text: str | None = _orjson_dumps(obj, None, _NATIVE_JSON_OPTIONS).decode()
        except Exception:
            text = None
        # Conservative bounds on orjson's text, counted in C (inline: this is the hot path): no more
        # brackets than MAX_DEPTH means no deeper nesting, fewer commas than MAX_ITEMS no longer
        # container (else the walker cuts and marks it). A text too short to break a bound is not
        # counted: every bracket is closed, so at most half of it opens one.
        if text is not None:
            size = len(text)
            if (size <= 2 * MAX_DEPTH or text.count("[") + text.count("{") <= MAX_DEPTH) and (
                size < MAX_ITEMS or text.count(",") < MAX_ITEMS
            ):
                if size <= MAX_JSON_BYTES:  # _with_json's common case, inline
                    return (semconv.OBJECT_TYPE, cls.__qualname__, semconv.OBJECT_JSON, text)
                return _with_json({semconv.OBJECT_TYPE: cls.__qualname__}, text, truncated=False)
    attrs: dict[str, AttributeValue] = {semconv.OBJECT_TYPE: type_name(cls)}
    if obj is None:
        attrs[semconv.OBJECT_JSON] = "null"
        return attrs
    if isinstance(obj, _SCALARS) and not isinstance(obj, enum.Enum):
        if cls is not int and cls is not float and cls is not bool:
            obj = exact_scalar(obj)  # a subclass, or lone surrogates: what a store takes, same value
        if isinstance(obj, str) and len(obj) > MAX_JSON_BYTES:
            attrs[semconv.OBJECT_LITERAL] = obj[:MAX_JSON_BYTES] + semconv.TRUNCATED_SUFFIX
            attrs[semconv.OBJECT_TRUNCATED] = True
            return attrs
        if isinstance(obj, int) and not _INT64_MIN <= obj <= _INT64_MAX:
            attrs[semconv.OBJECT_JSON] = str(int(obj))  # no attribute int holds it; JSON text does
            return attrs
        attrs[semconv.OBJECT_LITERAL] = obj
        return attrs
    if isinstance(obj, (bytes, bytearray, memoryview)):
        data = bytes(obj)
        if len(data) > _MAX_LITERAL_BYTES:  # cut before encoding, so the literal stays valid base64
            data = data[:_MAX_LITERAL_BYTES]
            attrs[semconv.OBJECT_TRUNCATED] = True
        attrs[semconv.OBJECT_LITERAL] = base64.b64encode(data).decode("ascii")
        attrs[semconv.OBJECT_BYTES_ENCODING] = "base64"
        return attrs
    marker = _Truncated()  # what orjson refused natively (above) goes through the bounded walker
    try:
        text = orjson.dumps(to_jsonable(obj, marker)).decode("utf-8")
    except Exception:  # whatever the object raises while being read, it is stored as a repr, never raised
        attrs[semconv.OBJECT_REPR] = bounded_repr(obj)
        attrs[semconv.OBJECT_UNSERIALIZABLE] = True
        return attrs
    return _with_json(attrs, text, truncated=marker.hit)


def _with_json(attrs: dict[str, AttributeValue], text: str, *, truncated: bool) -> dict[str, AttributeValue]:
    """``attrs`` plus the object's JSON, cut at :data:`MAX_JSON_BYTES` (and kept as text: cut JSON is
    not JSON), marked truncated when cut here or by the walker."""
    if len(text) > MAX_JSON_BYTES:
        attrs[semconv.OBJECT_REPR] = text[:MAX_JSON_BYTES] + semconv.TRUNCATED_SUFFIX
        truncated = True
    else:
        attrs[semconv.OBJECT_JSON] = text
    if truncated:
        attrs[semconv.OBJECT_TRUNCATED] = True
    return attrs


TYPE_NAME_CACHE: dict[type, str] = {}  # what type_name has worked out (hot paths look here first)


def type_name(cls: type) -> str:
    """``module.Qualname`` (just ``Qualname`` for builtins), remembered per class: an agent emits few."""
    name = TYPE_NAME_CACHE.get(cls)
    if name is None:
        module = cls.__module__
        name = clean_text(cls.__qualname__ if module == "builtins" else f"{module}.{cls.__qualname__}")
        if len(TYPE_NAME_CACHE) < 1024:  # bounded: classes made on the fly must not grow it for ever
            TYPE_NAME_CACHE[cls] = name
    return name


def flatten_attributes(
    attributes: Mapping[str, Any], out: dict[str, AttributeValue], prefix: str = "", where: str = "attributes"
) -> None:
    """Merge user attributes into ``out`` with dotted keys; values OpenTelemetry cannot hold become JSON.

    Everything kept is what every store accepts: exact built-in types (a subclass such as
    ``numpy.float64`` is converted), text without lone surrogates (escaped). Never raises for a
    value; raises ``TypeError`` (prefixed with ``where``) for a key that cannot be made a str.
    """
    for key, value in attributes.items():
        name = prefix + (key if type(key) is str and key.isascii() else _key_text(key, where))
        cls = type(value)
        if cls is str:
            out[name] = value if is_utf8(value) else clean_text(value)
        elif cls is float or cls is bool or (cls is int and _INT64_MIN <= value <= _INT64_MAX):
            out[name] = value
        elif isinstance(value, Mapping) and value and len(prefix) < 256:
            try:
                nested = dict(value.items())
            except Exception:  # a broken mapping is kept as its repr, never raised into the agent
                out[name] = bounded_repr(value)
            else:
                flatten_attributes(nested, out, name + ".", where)
        else:
            out[name] = _attribute_value(value)


def _key_text(key: Any, where: str) -> str:
    """An attribute key as valid UTF-8 text: a str as it is (surrogates escaped), anything else its
    ``str()``; raises ``TypeError`` naming the key when that ``str()`` raises."""
    if isinstance(key, str):
        return clean_text(key)
    try:
        return clean_text(str(key))
    except Exception as exc:
        raise TypeError(
            f"{where}: key {bounded_repr(key)} ({type(key).__name__}) cannot be made a str: "
            f"str() raised {type(exc).__name__}; attribute keys must be str"
        ) from exc


def _attribute_value(value: Any) -> AttributeValue:
    if isinstance(value, _SCALARS) and not isinstance(value, enum.Enum):
        exact = exact_scalar(value)  # a subclass (numpy.float64, a user's float): the exact type
        if type(exact) is int and not _INT64_MIN <= exact <= _INT64_MAX:
            return str(exact)  # JSON text of an int no attribute can hold
        return exact
    if isinstance(value, (list, tuple)) and value:
        first = type(value[0])
        if (
            first in (str, bool, int, float)
            and all(type(v) is first for v in value)
            and (first is not int or all(_INT64_MIN <= v <= _INT64_MAX for v in value))
        ):
            if first is str and not all(map(is_utf8, value)):
                return tuple(map(clean_text, value))
            return tuple(value)
    is_np, converted = _numpy_to_python(value)
    if is_np and type(converted) in _EXACT_SCALARS:  # a numpy scalar (np.int64 is no int): its value
        return _attribute_value(converted)
    marker = _Truncated()
    try:
        return orjson.dumps(to_jsonable(value, marker)).decode("utf-8")
    except Exception:  # whatever the value raises while being read, it is kept as a repr, never raised
        return bounded_repr(value)


def text_size(attributes: Mapping[str, Any]) -> int:
    """Bytes held by flattened attributes, roughly: their text values (a tuple's items as 8 bytes
    each plus their text). What the queue's byte bound counts for an event's own big strings and
    for the user's ``attributes``, so that neither can carry an event past it unseen."""
    size = 0
    for value in attributes.values():  # a plain loop: a generator costs more than the few values it sums
        cls = type(value)
        if cls is str:
            size += len(value)
        elif cls is tuple:
            size += 8 * len(value)
            if value and type(value[0]) is str:
                size += sum(map(len, value))
    return size
