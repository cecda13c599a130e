"""What every store shares: batch validation, the stored row, verification and summary assembly.

One helper validates and encodes a whole batch before any backend writes a byte, so an invalid span
refuses the batch whole in every store alike, and the row a store keeps is the same everywhere.
"""

from __future__ import annotations

import functools
import math
import os
import weakref
from collections.abc import Iterable, Iterator, Sequence
from typing import Any, NamedTuple, Protocol

import orjson

from agentemit import codec
from agentemit.emit.readers import get_reward_value
from agentemit.span import Span, SpanEvent
from agentemit.stores.base import RolloutSummary

SpanKey = tuple[str, str, str]
Problem = tuple[SpanKey, str]

_INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
_STATUSES = frozenset(("UNSET", "OK", "ERROR"))
_NONEMPTY_TEXT = ("rollout_id", "span_id")
_TEXT = ("attempt_id", "trace_id", "name")
_INTEGERS = ("sequence_id", "start_time", "end_time")
_SCALARS = (str, bool, int, float)
_SCALAR_TYPES = frozenset(_SCALARS)

# The span key (rollout_id, attempt_id, span_id) is PostgreSQL's primary-key index entry, and a btree
# refuses an entry over ~2,700 bytes (a third of an 8 KiB page). UTF-8 spends at most 4 bytes a
# character, so 512 characters (2,048 bytes, plus a few dozen of entry overhead) fit whatever the
# text. Every store applies the same limit, so no store keeps a span another would refuse.
MAX_KEY_CHARS = 512


class StoreClosedError(RuntimeError):
    """A store was used after ``close()``."""


class SpanRow(NamedTuple):
    """One stored span: the queryable columns plus the exact encoded span and its checksum.

    The field order is the column order of the SQL stores' ``spans`` table.
    """

    rollout_id: str
    attempt_id: str
    span_id: str
    trace_id: str
    parent_id: str | None
    name: str
    sequence_id: int
    start_time: int
    end_time: int
    status: str
    reward: float | None
    checksum: str
    data: bytes


COLUMNS: tuple[str, ...] = SpanRow._fields

# SpanRow(a, b, ...) runs the namedtuple's Python-level __new__ (~0.45 us with 13 fields, measured);
# tuple.__new__ on a tuple display builds the same row in C. Every stored span passes here.
_new_row = functools.partial(tuple.__new__, SpanRow)


def _describe(span: Span, index: int) -> str:
    span_id = getattr(span, "span_id", None)
    if isinstance(span_id, str) and span_id:
        return f"span {span_id!r} (batch item {index})"
    return f"span at batch item {index}"


def _text_ok(span: Span) -> bool:
    """Fast path: the id and name fields are strs, the key parts non-empty and short enough, none holds a NUL."""
    rollout_id, attempt_id, span_id, trace_id, name = (
        span.rollout_id,
        span.attempt_id,
        span.span_id,
        span.trace_id,
        span.name,
    )
    return (
        type(rollout_id) is str
        and type(attempt_id) is str
        and type(span_id) is str
        and type(trace_id) is str
        and type(name) is str
        and rollout_id != ""
        and span_id != ""
        and len(rollout_id) + len(attempt_id) + len(span_id) <= MAX_KEY_CHARS
        and "\x00" not in f"{rollout_id}{attempt_id}{span_id}{trace_id}{name}"
    )


def key_problem(rollout_id: str, attempt_id: str, span_id: str) -> tuple[str, str] | None:
    """The longest key field and why, when the three together exceed ``MAX_KEY_CHARS``; else None."""
    total = len(rollout_id) + len(attempt_id) + len(span_id)
    if total <= MAX_KEY_CHARS:
        return None
    parts = {"rollout_id": rollout_id, "attempt_id": attempt_id, "span_id": span_id}
    longest = max(parts, key=lambda name: len(parts[name]))
    return longest, (
        f"is {len(parts[longest])} characters long: rollout_id, attempt_id and span_id together are {total}, "
        f"over the limit of {MAX_KEY_CHARS}"
    )


def _field_problem(span: Span) -> tuple[str, str] | None:
    """The first invalid field of ``span`` and what is wrong with it, or None (the careful path)."""
    if not _text_ok(span):
        for name in _NONEMPTY_TEXT + _TEXT:
            value = getattr(span, name)
            if not isinstance(value, str):
                expected = "a non-empty str" if name in _NONEMPTY_TEXT else "a str"
                return name, f"is {type(value).__name__}; expected {expected}"
            if not value and name in _NONEMPTY_TEXT:
                return name, "is empty"
            if "\x00" in value:
                return name, "contains a NUL character"
        problem = key_problem(span.rollout_id, span.attempt_id, span.span_id)
        if problem is not None:
            return problem
    parent = span.parent_id
    if parent is not None and (not isinstance(parent, str) or "\x00" in parent):
        return "parent_id", f"is {parent!r}; expected None or a str without NUL characters"
    for name in _INTEGERS:
        value = getattr(span, name)
        if type(value) is not int:
            return name, f"is {type(value).__name__}; expected an int"
        if not _INT64_MIN <= value <= INT64_MAX:
            return name, f"is {value}, outside the signed 64-bit range"
    if span.status not in _STATUSES:
        return "status", f"is {span.status!r}; expected one of UNSET, OK, ERROR"
    if span.status_description is not None and not isinstance(span.status_description, str):
        return "status_description", f"is {type(span.status_description).__name__}; expected None or a str"
    return _attributes_problem(span)


def _bad_attribute(attrs: object) -> str | None:
    """Why ``attrs`` would not read back as it was written, or None.

    Values must be OpenTelemetry attribute values (a str, bool, int or float, or a sequence of them);
    anything else would be stored but fail to decode, or decode as something else.
    """
    if not isinstance(attrs, dict):
        return f"is {type(attrs).__name__}; expected a dict"
    for key, value in attrs.items():
        if type(key) is not str and not isinstance(key, str):
            return f"key {key!r} is {type(key).__name__}; expected a str"
        kind = type(value)
        if kind in _SCALAR_TYPES:  # exact-type fast path; subclasses take the isinstance path
            continue
        if kind is tuple or kind is list:
            if _SCALAR_TYPES.issuperset(map(type, value)) or all(isinstance(item, _SCALARS) for item in value):
                continue
        elif isinstance(value, _SCALARS):
            continue
        return f"[{key!r}] is {kind.__name__}; expected a str, bool, int, float or a sequence of them"
    return None


def _attributes_problem(span: Span) -> tuple[str, str] | None:
    problem = _bad_attribute(span.attributes)
    if problem is not None:
        return "attributes", problem
    problem = _bad_attribute(span.resource)
    if problem is not None:
        return "resource", problem
    if not isinstance(span.events, list):
        return "events", f"is {type(span.events).__name__}; expected a list of SpanEvent"
    for i, event in enumerate(span.events):
        if not isinstance(event, SpanEvent):
            return f"events[{i}]", f"is {type(event).__name__}; expected a SpanEvent"
        if not isinstance(event.name, str) or type(event.timestamp) is not int:
            return f"events[{i}]", "needs a str name and an int timestamp"
        problem = _bad_attribute(event.attributes)
        if problem is not None:
            return f"events[{i}].attributes", problem
    return None


def _unencodable_field(span: Span) -> str:
    """Name the field orjson refused (only called once encoding has failed, so speed is no concern)."""
    for name, value in span.to_dict().items():
        try:
            codec.dumps(value)
        except (TypeError, ValueError):
            if isinstance(value, dict):
                for key, item in value.items():
                    try:
                        codec.dumps(item)
                    except (TypeError, ValueError):
                        return f"{name}[{key!r}]"
            return name
    return "span"


def _reward(span: Span) -> float | None:
    # NaN cannot be ranked (SQLite stores a NaN REAL as NULL) and JSON has no infinity (a summary sent
    # over HTTP would read back null), so a non-finite reward counts as none in every backend alike;
    # emit_reward refuses both. The span itself is still stored losslessly in ``data``.
    value = get_reward_value(span)
    return None if value is None or not math.isfinite(value) else value


def _valid_and_plain(span: Span, resource_known_plain: bool) -> bool:
    """True when ``span`` is valid (exact types, every key part set, no NUL) and plain for the codec,
    decided in one pass over its values; False sends it to the careful path, which names the problem.

    Only exact types pass here, so anything unusual (subclasses, lists, a float time) is judged by
    :func:`_field_problem` and the codec's checked encoder, never waved through.
    """
    if type(span) is not Span or not _text_ok(span):
        return False
    parent = span.parent_id
    if parent is not None and (type(parent) is not str or "\x00" in parent):
        return False
    sequence_id, start_time, end_time = span.sequence_id, span.start_time, span.end_time
    if type(sequence_id) is not int or type(start_time) is not int or type(end_time) is not int:
        return False
    if sequence_id < _INT64_MIN or start_time < _INT64_MIN or end_time < _INT64_MIN:
        return False  # the codec's plain check covers the upper bound
    status, description = span.status, span.status_description
    if type(status) is not str or status not in _STATUSES:
        return False
    if description is not None and type(description) is not str:
        return False
    if type(span.attributes) is not dict or (not resource_known_plain and type(span.resource) is not dict):
        return False
    events = span.events
    if type(events) is not list:
        return False
    for event in events:
        if (
            type(event) is not SpanEvent
            or type(event.name) is not str
            or type(event.timestamp) is not int
            or event.timestamp < _INT64_MIN
            or type(event.attributes) is not dict
        ):
            return False
    try:
        return codec.is_plain_span(span, resource_known_plain=resource_known_plain)
    except TypeError:
        return False


def _checked(span: object, index: int, backend: str) -> None:
    """The careful path: raise ``ValueError`` naming the first bad field of ``span``, if any."""
    if not isinstance(span, Span):
        raise ValueError(f"{backend} store: batch item {index} is {type(span).__name__}, not a Span")
    problem = _field_problem(span)
    if problem is not None:
        raise ValueError(f"{backend} store: {_describe(span, index)}: {problem[0]} {problem[1]}")


def encode_row(span: Span, index: int, backend: str, plain: bool) -> SpanRow:
    """The stored row of a span; ``plain`` says :func:`_valid_and_plain` found it valid and plain.

    Raises:
        ValueError: a field is invalid or cannot be encoded (the message names the span and field).
    """
    try:
        data = codec.encode_span(span, known_plain=plain)
    except (TypeError, ValueError) as exc:
        if plain:  # a fault the one-pass check leaves to orjson (a non-str key): name it as validation does
            _checked(span, index, backend)
        field = _unencodable_field(span)
        where = f"{backend} store: {_describe(span, index)}"
        raise ValueError(f"{where}: {field} cannot be encoded as JSON: {exc}") from exc
    return _new_row(
        (
            span.rollout_id,
            span.attempt_id,
            span.span_id,
            span.trace_id,
            span.parent_id,
            span.name,
            span.sequence_id,
            span.start_time,
            span.end_time,
            span.status,
            _reward(span),
            codec.checksum(data),
            data,
        )
    )


def iter_rows(spans: Sequence[Span], backend: str, first_index: int = 0) -> Iterator[SpanRow]:
    """Validate and encode spans one at a time; raises ``ValueError`` naming the first bad span and field.

    A store must not write a batch in part, so it either builds all rows before writing (see
    :func:`build_rows`) or writes them inside a transaction it rolls back on error. Streaming lets
    each row's buffer be reused (holding a whole batch of rows costs about 3 µs a span in allocator
    work: BENCHMARKS.md). Validation and the codec's check for values orjson may write as they are
    walk each span once together; only a span that fails it is walked again, to name the problem.
    """
    plain_resource: object = None  # the last resource found valid and plain (spans share theirs)
    for index, span in enumerate(spans, first_index):
        plain = _valid_and_plain(span, span.resource is plain_resource if type(span) is Span else False)
        if plain:
            plain_resource = span.resource
        else:
            _checked(span, index, backend)
        yield encode_row(span, index, backend, plain)


def build_rows(spans: Sequence[Span], backend: str) -> list[SpanRow]:
    """Every row of a batch, built before the caller writes any (so an invalid batch stores nothing)."""
    return list(iter_rows(spans, backend))


def next_sequence_id(highest: int | None) -> int:
    """One past an attempt's highest sequence id (0 for none), computed in Python in every store: SQL
    ``MAX(sequence_id) + 1`` overflows at 2**63-1 (PostgreSQL raises, SQLite turns it into a float).
    """
    return 0 if highest is None else int(highest) + 1


def check_page(limit: int | None, offset: int, backend: str) -> None:
    """Refuse a limit or offset outside 0..2**63-1: SQL reads a negative limit as "no limit", and
    SQLite and PostgreSQL cannot bind a larger one (the memory store could), so every store refuses both.
    """
    if limit is not None and (type(limit) is not int or not 0 <= limit <= INT64_MAX):
        raise ValueError(f"{backend} store: limit {limit!r} must be None or an int in 0..{INT64_MAX}")
    if type(offset) is not int or not 0 <= offset <= INT64_MAX:
        raise ValueError(f"{backend} store: offset {offset!r} must be an int in 0..{INT64_MAX}")


def row_problem(key: SpanKey, checksum: str, data: bytes) -> str | None:
    """What is wrong with a stored row, or None: its checksum must match its data, and the data its key."""
    actual = codec.checksum(data)
    if actual != checksum:
        return f"checksum mismatch: column says {checksum}, data hashes to {actual}"
    try:
        obj = orjson.loads(data)
        stored = (obj["rollout_id"], obj["attempt_id"], obj["span_id"])
    except (orjson.JSONDecodeError, KeyError, TypeError) as exc:
        return f"data is not a span record: {exc!r}"
    if stored != key:
        return f"data holds span key {stored!r}, not the row's key"
    return None


def assemble_summaries(
    heads: Iterable[tuple[str, int, int, int, float | None]],
    attempts: Iterable[tuple[str, str]],
    names: Iterable[tuple[str, str, int]],
) -> list[RolloutSummary]:
    """Build summaries from grouped query results.

    ``heads``: (rollout_id, span_count, first_time, last_time, final_reward) in page order;
    ``attempts``: (rollout_id, attempt_id) in first-appearance order; ``names``: (rollout_id, name, count).
    """
    by_id: dict[str, RolloutSummary] = {}
    for rollout_id, count, first, last, reward in heads:
        by_id[rollout_id] = RolloutSummary(
            rollout_id=rollout_id,
            attempt_ids=[],
            span_count=int(count),
            final_reward=None if reward is None else float(reward),
            first_time=int(first),
            last_time=int(last),
        )
    for rollout_id, attempt_id in attempts:
        by_id[rollout_id].attempt_ids.append(attempt_id)
    for rollout_id, name, count in sorted(names):
        by_id[rollout_id].spans_by_name[name] = int(count)
    return list(by_id.values())


# --- fork safety -----------------------------------------------------------------------------

_FORK_AWARE: weakref.WeakSet[ForkAware] = weakref.WeakSet()
_ABANDONED: list[object] = []  # resources a forked child must neither use nor close (the parent owns them)
_HELD_AT_FORK: list[Any] = []  # the stores' locks the forking thread holds until the fork is done
_FORK_GUARD_WAIT = 10.0  # seconds to wait for a store call in progress before forking anyway


class ForkAware(Protocol):
    def _after_fork_in_child(self) -> None: ...


def _hold_stores_for_fork() -> None:
    """Before a fork: wait until no thread is inside a store's connection, and keep it so until the
    fork is done. A child forked while another thread was inside SQLite inherits SQLite's internal
    mutexes held by a thread it does not have, and hangs on its first call (1 child in 20, measured).
    A store opts in with a ``_fork_guard`` lock; locks are taken in one order, and a lock the
    forking thread itself holds (it forks from inside a store call) is given up on after a wait."""
    for obj in sorted(list(_FORK_AWARE), key=id):
        lock = getattr(obj, "_fork_guard", None)
        if lock is not None and lock.acquire(timeout=_FORK_GUARD_WAIT):
            _HELD_AT_FORK.append(lock)


def _release_after_fork_in_parent() -> None:
    while _HELD_AT_FORK:
        _HELD_AT_FORK.pop().release()


def _reset_after_fork() -> None:
    _HELD_AT_FORK.clear()  # the child's stores replace these locks (their _after_fork_in_child)
    for obj in list(_FORK_AWARE):
        obj._after_fork_in_child()


def register_fork_aware(obj: ForkAware) -> None:
    """Call ``obj._after_fork_in_child()`` in a forked child, so it reopens connections lazily."""
    _FORK_AWARE.add(obj)


def abandon(resource: object) -> None:
    """Keep a parent-owned resource alive in a child: closing it there would break the parent's copy."""
    _ABANDONED.append(resource)


if hasattr(os, "register_at_fork"):
    os.register_at_fork(
        before=_hold_stores_for_fork,
        after_in_parent=_release_after_fork_in_parent,
        after_in_child=_reset_after_fork,
    )
