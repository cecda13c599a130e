"""Custom event types: register a schema once, then emit validated events and read them back typed.

A registered type is emitted as a span ``agentlightning.event.<name>`` carrying the type, its
version and the validated payload as JSON; the raw record kind is ``event.<name>``, so the pipeline
can give each type its own priority lane, sample rate and rate limit (see :func:`event_policies`).
The built-in kinds (message, reward, exception, object) are registered here too, so
:func:`get_supported_types` lists everything this process can emit.

Schemas are versioned: registering version 2 with ``upgrade=`` lets :func:`get_event` read stored
version-1 events as version 2. Older versions stay registered.
"""

from __future__ import annotations

import logging
import re
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, TypeAlias

import orjson

from agentemit import semconv
from agentemit.emit.encoding import flatten_attributes, text_size
from agentemit.emit.no_tracer import count_no_tracer
from agentemit.emit.readers import SpanLike
from agentemit.emit.schema import SchemaAdapter, SchemaViolation, adapter_for
from agentemit.tracing.context import CURRENT

logger = logging.getLogger("agentemit")

Priority: TypeAlias = Literal["normal", "high"]
OnInvalid: TypeAlias = Literal["raise", "record"]
Upgrade: TypeAlias = Callable[[dict[str, Any]], dict[str, Any]]

NAME_PATTERN: Final = re.compile(r"[a-z][a-z0-9_.-]*\Z")
BUILTIN_NAMES: Final = ("message", "reward", "exception", "object")
KIND_PREFIX: Final = "event."


class EventValidationError(ValueError):
    """Event data does not fit its schema.

    Attributes:
        path: where, e.g. ``$.items[2].score`` (``$`` is the payload itself).
        reason: what is wrong there, e.g. ``expected number, got str``.
    """

    def __init__(self, where: str, path: str, reason: str, more: int = 0) -> None:
        suffix = f" (and {more} more error{'s' if more > 1 else ''})" if more else ""
        super().__init__(f"{where}: {path}: {reason}{suffix}")
        self.path = path
        self.reason = reason


class EventVersionError(ValueError):
    """A stored event's version cannot be read as the registered version (no upgrade path)."""

    def __init__(self, message: str, *, stored: int, registered: int) -> None:
        super().__init__(message)
        self.stored = stored
        self.registered = registered


@dataclass(frozen=True, slots=True)
class EventType:
    """A registered event type (one version of it). Returned by :func:`register_event_type`.

    ``kind`` is the raw record kind the pipeline routes on; ``span_name`` the name of emitted spans.
    ``schema`` is what was registered (None for the built-in kinds, which validate in ``emit_*``).
    """

    name: str
    version: int
    kind: str
    span_name: str
    schema: Any = None
    priority: Priority = "normal"
    sample_rate: float | None = None
    rate_limit: float | None = None
    on_invalid: OnInvalid = "raise"
    upgrade: Upgrade | None = None
    builtin: bool = False
    adapter: SchemaAdapter | None = field(default=None, repr=False, compare=False)


@dataclass(frozen=True, slots=True)
class Event:
    """A validated event: what :func:`create_event` returns and ``get_event(..., as_type=False)`` reads.

    ``payload`` is exactly the JSON an emitted span stores.
    """

    name: str
    version: int
    payload: dict[str, Any]


@dataclass(frozen=True, slots=True)
class EventPolicy:
    """Pipeline settings of one kind; None leaves the pipeline's own configuration in charge."""

    kind: str
    priority: Priority
    sample_rate: float | None
    rate_limit: float | None


class _Registry:
    """Every registered version of every type. Writers take the lock; emitters read without it."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.versions: dict[str, dict[int, EventType]] = {}
        self.current: dict[str, EventType] = {}  # the highest version of each name: what emit uses
        self.rejections: dict[str, int] = {}
        self.warned: set[str] = set()

    def add(self, event_type: EventType, where: str) -> EventType:
        with self.lock:
            versions = self.versions.setdefault(event_type.name, {})
            existing = versions.get(event_type.version)
            if existing is not None:
                _check_same(existing, event_type, where)
                if existing.schema is event_type.schema or isinstance(event_type.schema, Mapping):
                    return existing
            versions[event_type.version] = event_type  # new, or the same shape from a redefined class
            current = self.current.get(event_type.name)
            if current is None or event_type.version >= current.version:
                self.current[event_type.name] = event_type
                if event_type.priority == "high":
                    HIGH_PRIORITY_EVENT_KINDS.add(event_type.kind)
                else:
                    HIGH_PRIORITY_EVENT_KINDS.discard(event_type.kind)
            return event_type


HIGH_PRIORITY_EVENT_KINDS: set[str] = set()
"""Kinds of custom types whose current version has ``priority="high"``: a live set (read-only outside
this module) so the pipeline's hot path can test membership without a call."""

_REGISTRY = _Registry()


def _check_same(old: EventType, new: EventType, where: str) -> None:
    assert old.adapter is not None and new.adapter is not None
    if not old.adapter.same_type(new.adapter):
        raise ValueError(
            f"{where}: version {old.version} is already registered with a different schema; "
            f"register the changed schema as a new version"
        )
    for option in ("priority", "sample_rate", "rate_limit", "on_invalid"):
        if getattr(old, option) != getattr(new, option):
            raise ValueError(
                f"{where}: version {old.version} is already registered with {option}={getattr(old, option)!r}, "
                f"got {option}={getattr(new, option)!r}"
            )
    if (old.upgrade is None) != (new.upgrade is None):
        raise ValueError(
            f"{where}: version {old.version} is already registered {'with' if old.upgrade else 'without'} "
            "an upgrade function"
        )


def _check_options(
    where: str,
    version: Any,
    priority: Any,
    sample_rate: Any,
    rate_limit: Any,
    on_invalid: Any,
    upgrade: Any,
) -> None:
    if type(version) is not int or version < 1:
        raise ValueError(f"{where}: version must be an int >= 1, got {version!r}")
    if priority not in ("normal", "high"):
        raise ValueError(f"{where}: priority must be 'normal' or 'high', got {priority!r}")
    if sample_rate is not None and (
        not isinstance(sample_rate, (int, float)) or isinstance(sample_rate, bool) or not 0.0 <= sample_rate <= 1.0
    ):
        raise ValueError(f"{where}: sample_rate must be a number from 0.0 to 1.0, got {sample_rate!r}")
    if rate_limit is not None and (
        not isinstance(rate_limit, (int, float)) or isinstance(rate_limit, bool) or not rate_limit > 0
    ):
        raise ValueError(f"{where}: rate_limit must be events per second > 0, got {rate_limit!r}")
    if on_invalid not in ("raise", "record"):
        raise ValueError(f"{where}: on_invalid must be 'raise' or 'record', got {on_invalid!r}")
    if upgrade is not None and not callable(upgrade):
        raise TypeError(f"{where}: upgrade must be a callable taking the previous version's payload dict")
    if upgrade is not None and version == 1:
        raise ValueError(f"{where}: upgrade given for version 1, which has no earlier version to upgrade from")


def register_event_type(
    name: str,
    schema: Any,
    *,
    priority: Priority = "normal",
    sample_rate: float | None = None,
    rate_limit: float | None = None,
    version: int = 1,
    on_invalid: OnInvalid = "raise",
    upgrade: Upgrade | None = None,
) -> EventType:
    """Register (one version of) a custom event type; idempotent for the same schema and options.

    Args:
        name: ``[a-z][a-z0-9_.-]*``; spans are named ``agentlightning.event.<name>``.
        schema: a pydantic model class, a dataclass, or a JSON Schema dict (keywords: type,
            properties, required, items, enum, minimum, maximum, minLength, maxLength,
            additionalProperties).
        priority: "high" puts the type in the pipeline's high-priority lane (with rewards).
        sample_rate, rate_limit: per-type defaults for the pipeline (see :func:`event_policies`).
        version: schema version; :func:`emit_event` uses the highest registered version.
        on_invalid: "raise" an :class:`EventValidationError`, or "record": drop the event, count it
            (:func:`event_rejections`) and warn once per type.
        upgrade: for version N, turns a version N-1 payload dict into a version N dict.

    Raises:
        ValueError: a bad name or option, or a different schema already registered at ``version``.
        TypeError: ``schema`` is not one of the supported kinds.
    """
    where = f"register_event_type({name!r})"
    if not isinstance(name, str) or not NAME_PATTERN.match(name):
        raise ValueError(
            f"{where}: event type names must match [a-z][a-z0-9_.-]* "
            "(a lowercase letter, then lowercase letters, digits, '_', '.' or '-')"
        )
    if name in BUILTIN_NAMES:
        raise ValueError(f"{where}: {name!r} is a built-in event type; use emit_{name}() or choose another name")
    _check_options(where, version, priority, sample_rate, rate_limit, on_invalid, upgrade)
    try:
        adapter = adapter_for(schema)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"{where}: {exc}") from exc
    event_type = EventType(
        name=name,
        version=version,
        kind=KIND_PREFIX + name,
        span_name=semconv.SPAN_EVENT_PREFIX + name,
        schema=schema,
        priority=priority,
        sample_rate=sample_rate,
        rate_limit=rate_limit,
        on_invalid=on_invalid,
        upgrade=upgrade,
        adapter=adapter,
    )
    return _REGISTRY.add(event_type, where)


def register_builtin_type(name: str, span_name: str, priority: Priority) -> EventType:
    """Register a built-in kind (called by ``emit/api.py``); its emitter validates its own input."""
    event_type = EventType(name=name, version=1, kind=name, span_name=span_name, priority=priority, builtin=True)
    with _REGISTRY.lock:
        _REGISTRY.versions[name] = {1: event_type}
        _REGISTRY.current[name] = event_type
    return event_type


def _lookup(where: str, name: str) -> EventType:
    event_type = _REGISTRY.current.get(name)
    if event_type is None:
        raise ValueError(f"{where}: event type is not registered; call register_event_type({name!r}, schema) first")
    if event_type.builtin:
        raise ValueError(f"{where}: {name!r} is a built-in event type; use emit_{name}()")
    return event_type


def _validate(where: str, event_type: EventType, data: Any) -> bytes:
    """The payload's JSON bytes, or :class:`EventValidationError`."""
    assert event_type.adapter is not None
    try:
        payload = event_type.adapter.validate(data)
    except SchemaViolation as exc:
        raise EventValidationError(where, exc.path, exc.reason, exc.more) from None
    try:
        return orjson.dumps(payload)
    except TypeError as exc:  # e.g. a str holding lone surrogates
        raise EventValidationError(where, "$", f"not encodable as JSON ({exc})") from None


def emit_event(name: str, data: Any, *, attributes: Mapping[str, Any] | None = None) -> None:
    """Validate ``data`` against the registered type ``name`` and record it as ``agentlightning.event.<name>``.

    ``data`` is a dict, or an instance of the registered model/dataclass. The span's attributes are
    the type, version and JSON payload, plus ``attributes`` flattened (the three event keys win).

    Raises:
        EventValidationError: ``data`` does not fit the schema (unless registered with
            ``on_invalid="record"``).
        ValueError: ``name`` is not registered, or is a built-in kind.
        TypeError: ``attributes`` is not a mapping.
    """
    where = f"emit_event({name!r})"
    event_type = _lookup(where, name)
    try:
        payload = _validate(where, event_type, data)
    except EventValidationError as exc:
        if event_type.on_invalid == "raise":
            raise
        _reject(event_type, exc)
        return None
    ctx = CURRENT.get()
    if ctx is None:
        return count_no_tracer(f"event({name!r})")
    attrs: dict[str, Any] = {}
    size = 0
    if attributes:
        if not isinstance(attributes, Mapping):
            raise TypeError(f"{where}: attributes must be a mapping of str to values, got {type(attributes).__name__}")
        flatten_attributes(attributes, attrs, "", f"{where}: attributes")
        size = text_size(attrs)  # counted against memory_threshold, as the payload is
    text = payload.decode()
    attrs[semconv.EVENT_TYPE] = name
    attrs[semconv.EVENT_VERSION] = event_type.version
    attrs[semconv.EVENT_PAYLOAD] = text
    ctx.emit(event_type.kind, event_type.span_name, attrs, len(text) + size)


def _reject(event_type: EventType, exc: EventValidationError) -> None:
    registry = _REGISTRY
    with registry.lock:
        registry.rejections[event_type.name] = registry.rejections.get(event_type.name, 0) + 1
        first = event_type.name not in registry.warned
        registry.warned.add(event_type.name)
    if first:
        logger.warning(
            "agentemit: %s; the event was not recorded (on_invalid='record': further rejections of %r are "
            "counted in event_rejections() without a warning)",
            exc,
            event_type.name,
        )


def create_event(name: str, data: Any) -> Event:
    """Validate ``data`` as an event of type ``name`` without emitting it.

    Raises:
        EventValidationError: ``data`` does not fit the schema (whatever ``on_invalid`` says).
        ValueError: ``name`` is not registered, or is a built-in kind.
    """
    where = f"create_event({name!r})"
    event_type = _lookup(where, name)
    payload = _validate(where, event_type, data)
    return Event(name, event_type.version, orjson.loads(payload))


def get_event(span: SpanLike, *, as_type: bool = True) -> Any:
    """The custom event a span carries, or None for a span that is not a custom event.

    With ``as_type`` (default): an instance of the registered type (a pydantic model or dataclass,
    or a dict for JSON Schema), upgraded to the registered version. Otherwise an :class:`Event` of
    the payload as stored (no registration needed, no upgrade).

    Raises:
        EventVersionError: the stored version cannot be read as the registered one.
        EventValidationError: the stored (or upgraded) payload does not fit the schema.
        ValueError: the span is malformed, or (with ``as_type``) its type is not registered.
    """
    attrs = span.attributes or {}
    name = attrs.get(semconv.EVENT_TYPE)
    if not span.name.startswith(semconv.SPAN_EVENT_PREFIX) or not isinstance(name, str):
        return None
    where = f"get_event({name!r})"
    text, version = attrs.get(semconv.EVENT_PAYLOAD), attrs.get(semconv.EVENT_VERSION)
    if not isinstance(text, (str, bytes)) or type(version) is not int:
        raise ValueError(f"{where}: span {span.name!r} lacks a JSON payload or an int version")
    if not as_type:
        try:
            payload = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise EventValidationError(where, "$", f"payload is not valid JSON ({exc})") from None
        if not isinstance(payload, dict):  # e.g. cut to a JSON string by the redaction stage's size limit
            raise EventValidationError(where, "$", f"expected object, got {type(payload).__name__}")
        return Event(name, version, payload)
    current = _REGISTRY.current.get(name)
    if current is None or current.builtin:
        raise ValueError(f"{where}: event type is not registered in this process; register it or pass as_type=False")
    assert current.adapter is not None
    if version != current.version:
        text = orjson.dumps(_upgrade(where, name, version, current.version, text))
    try:
        return current.adapter.load(text)
    except SchemaViolation as exc:
        raise EventValidationError(where, exc.path, exc.reason, exc.more) from None


def _upgrade(where: str, name: str, stored: int, registered: int, text: str | bytes) -> dict[str, Any]:
    """Walk the upgrade chain from ``stored`` to ``registered``, one version at a time."""
    if stored > registered:
        raise EventVersionError(
            f"{where}: stored version {stored} is newer than registered version {registered}",
            stored=stored,
            registered=registered,
        )
    versions = _REGISTRY.versions.get(name, {})
    for step in range(stored + 1, registered + 1):
        step_type = versions.get(step)
        if step_type is None or step_type.upgrade is None:
            missing = "is not registered" if step_type is None else "has no upgrade function"
            raise EventVersionError(
                f"{where}: stored version {stored} cannot be read as registered version {registered}: "
                f"version {step} {missing}",
                stored=stored,
                registered=registered,
            )
    stored_type = versions.get(stored)
    try:
        # With the stored version's schema registered, the upgrade gets a validated, complete payload.
        if stored_type is not None and stored_type.adapter is not None:
            payload = stored_type.adapter.load_payload(text)
        else:
            payload = orjson.loads(text)
    except SchemaViolation as exc:
        raise EventValidationError(f"{where} (stored version {stored})", exc.path, exc.reason, exc.more) from None
    for step in range(stored + 1, registered + 1):
        upgrade = versions[step].upgrade
        assert upgrade is not None
        try:
            payload = upgrade(payload)
        except Exception as exc:
            raise EventVersionError(
                f"{where}: upgrading stored version {stored} to registered version {registered} failed at version "
                f"{step}: {type(exc).__name__}: {exc}",
                stored=stored,
                registered=registered,
            ) from exc
    return payload


def get_event_type(name: str, version: int | None = None) -> EventType:
    """A registered type: the current (highest) version, or the given one. Raises ``KeyError`` if absent."""
    _ensure_builtins()
    found = _REGISTRY.current.get(name) if version is None else _REGISTRY.versions.get(name, {}).get(version)
    if found is None:
        raise KeyError(f"event type {name!r}{'' if version is None else f' version {version}'} is not registered")
    return found


def get_supported_types() -> dict[str, EventType]:
    """Every type this process can emit, built-ins included, at its current version."""
    _ensure_builtins()
    return dict(sorted(_REGISTRY.current.items()))


def high_priority_kinds() -> frozenset[str]:
    """Raw record kinds that belong in the pipeline's high-priority lane (built-ins and custom)."""
    _ensure_builtins()
    return frozenset(t.kind for t in _REGISTRY.current.values() if t.priority == "high")


def event_policies() -> dict[str, EventPolicy]:
    """Per-kind pipeline defaults of every registered type, keyed by raw record kind."""
    _ensure_builtins()
    return {t.kind: EventPolicy(t.kind, t.priority, t.sample_rate, t.rate_limit) for t in _REGISTRY.current.values()}


def event_rejections() -> dict[str, int]:
    """How many events of each type ``on_invalid="record"`` dropped in this process."""
    with _REGISTRY.lock:
        return dict(_REGISTRY.rejections)


def _ensure_builtins() -> None:
    """The built-ins register when ``emit/api.py`` is imported; make sure it has been."""
    if "reward" not in _REGISTRY.current:
        import agentemit.emit.api  # noqa: F401
