"""The emit API: span names and attribute keys (issue 2's conventions), accepted values, bad input,
the no-tracer path and the ``@reward`` decorator. Spans are read back from a store, as users see them.
"""

from __future__ import annotations

import asyncio
import base64
import dataclasses
import datetime as dt
import decimal
import enum
import logging
import math
import uuid
from collections.abc import Callable, Iterator
from pathlib import PurePosixPath
from typing import Any

import orjson
import pytest
from opentelemetry.attributes import BoundedAttributes
from pydantic import BaseModel

import agentemit
from agentemit import (
    PipelineConfig,
    emit_exception,
    emit_message,
    emit_object,
    emit_reward,
    get_message_value,
    get_object_value,
    get_reward_value,
    get_rewards,
    reward,
    semconv,
)
from agentemit.emit import encoding, no_tracer
from agentemit.span import Span
from agentemit.testing import capture_spans
from agentemit.tracing.context import CURRENT, RawRecord, RolloutContext, counter


def emitted(*emits: Callable[[], object]) -> list[Span]:
    """The event spans ``emits`` record (called in order) inside one rollout, as stored (root span left out)."""
    with capture_spans() as captured, captured.tracer.trace_context(rollout_id="r-emit", attempt_id="a-emit"):
        for emit in emits:
            emit()
    return [s for s in captured.spans if s.name != semconv.SPAN_ROLLOUT]


def one(emit: Callable[[], object]) -> Span:
    (span,) = emitted(emit)
    return span


def otel_can_hold(attributes: dict[str, Any]) -> bool:
    """True when OpenTelemetry keeps every attribute as is (it silently drops values it cannot hold)."""
    return dict(BoundedAttributes(attributes=attributes, immutable=False)) == attributes


# --- conventions shared by every event ------------------------------------------------------------


def test_each_emit_call_records_a_span_named_as_agent_lightning_names_it() -> None:
    def emit_all() -> None:
        emit_message("hello")
        emit_reward(1.0)
        emit_exception(ValueError("bad"))
        emit_object({"k": 1})

    names = [s.name for s in emitted(emit_all)]
    assert names == [
        "agentlightning.message",
        "agentlightning.reward",
        "agentlightning.exception",
        "agentlightning.object",
    ]
    assert names == [semconv.SPAN_MESSAGE, semconv.SPAN_REWARD, semconv.SPAN_EXCEPTION, semconv.SPAN_OBJECT]


def test_every_emitted_span_carries_rollout_attempt_and_increasing_sequence_ids_as_attributes() -> None:
    spans = emitted(
        lambda: emit_message("a"),
        lambda: emit_reward(0.5),
        lambda: emit_object(3),
        lambda: emit_exception(KeyError("k")),
    )
    sequence = [s.attributes["agentlightning.span_sequence_id"] for s in spans]
    assert sequence == sorted(sequence) and len(set(sequence)) == 4
    for span in spans:
        assert span.attributes["agentlightning.rollout_id"] == span.rollout_id == "r-emit"
        assert span.attributes["agentlightning.attempt_id"] == span.attempt_id == "a-emit"
        assert span.attributes["agentlightning.span_sequence_id"] == span.sequence_id


def test_emit_calls_return_none() -> None:
    calls: list[tuple[Callable[..., object], tuple[Any, ...]]] = [
        (emit_message, ("m",)),
        (emit_reward, (1,)),
        (emit_exception, (OSError(),)),
        (emit_object, (1,)),
    ]
    results: list[object] = []
    assert len(emitted(lambda: results.extend(fn(*args) for fn, args in calls))) == 4
    assert results == [None, None, None, None]


# --- message -------------------------------------------------------------------------------------


def test_a_message_is_stored_in_the_body_key_and_the_legacy_message_key() -> None:
    span = one(lambda: emit_message("the agent thought about it"))
    assert span.attributes["agentlightning.message.body"] == "the agent thought about it"
    assert span.attributes["message"] == "the agent thought about it"
    assert get_message_value(span) == "the agent thought about it"


def test_an_empty_and_a_unicode_message_are_kept_exactly() -> None:
    spans = emitted(lambda: emit_message(""), lambda: emit_message("héllo ✓ 😀"))
    assert [get_message_value(s) for s in spans] == ["", "héllo ✓ 😀"]


@pytest.mark.parametrize("bad", [None, 42, b"bytes", ["a"]])
def test_a_message_that_is_not_a_str_raises_type_error_naming_the_argument(bad: Any) -> None:
    with pytest.raises(TypeError, match=rf"emit_message: message must be str, got {type(bad).__name__}"):
        emitted(lambda: emit_message(bad))


# --- reward --------------------------------------------------------------------------------------


def test_a_number_reward_is_the_primary_value_and_dimension_zero() -> None:
    span = one(lambda: emit_reward(0.75))
    assert span.attributes["reward"] == 0.75
    assert span.attributes["agentlightning.reward.0.name"] == "primary"
    assert span.attributes["agentlightning.reward.0.value"] == 0.75
    assert "agentlightning.reward.1.value" not in span.attributes
    assert get_reward_value(span) == 0.75


@pytest.mark.parametrize(("value", "expected"), [(1, 1.0), (-3, -3.0), (True, 1.0), (False, 0.0), (0, 0.0)])
def test_int_and_bool_rewards_are_stored_as_float(value: int, expected: float) -> None:
    span = one(lambda: emit_reward(value))
    for key in ("reward", "agentlightning.reward.0.value"):
        assert type(span.attributes[key]) is float and span.attributes[key] == expected


def test_a_number_like_reward_such_as_a_decimal_is_stored_as_float() -> None:
    span = one(lambda: emit_reward(decimal.Decimal("0.25")))  # type: ignore[arg-type]
    assert span.attributes["reward"] == 0.25 and type(span.attributes["reward"]) is float


def test_a_reward_mapping_stores_every_dimension_with_the_primary_first() -> None:
    span = one(lambda: emit_reward({"length": -0.5, "accuracy": 1, "style": True}, primary_key="accuracy"))
    assert span.attributes["reward"] == 1.0
    dims = [
        (span.attributes[f"agentlightning.reward.{i}.name"], span.attributes[f"agentlightning.reward.{i}.value"])
        for i in range(3)
    ]
    assert dims == [("accuracy", 1.0), ("length", -0.5), ("style", 1.0)]
    assert "agentlightning.reward.3.value" not in span.attributes
    assert get_rewards(span) == {"accuracy": 1.0, "length": -0.5, "style": 1.0}


def test_a_single_dimension_mapping_needs_no_primary_key() -> None:
    span = one(lambda: emit_reward({"score": 0.3}))
    assert span.attributes["reward"] == 0.3
    assert get_rewards(span) == {"score": 0.3}


@pytest.mark.parametrize("bad", ["0.5", None, [1.0], object(), b"1", 1j])
def test_a_reward_that_is_not_a_number_raises_type_error_naming_the_reward(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"emit_reward: reward is .*expected a finite number"):
        emit_reward(bad)


def test_a_dimension_that_is_not_a_number_raises_type_error_naming_the_dimension() -> None:
    with pytest.raises(TypeError, match=r"emit_reward: dimension 'accuracy' is 'high' \(str\); expected a finite"):
        emit_reward({"score": 1.0, "accuracy": "high"}, primary_key="score")  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"dimension 'score' is None"):
        emit_reward({"score": None})  # type: ignore[dict-item]


@pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf, decimal.Decimal("Infinity")])
def test_a_non_finite_reward_raises_value_error(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"emit_reward: reward is .*expected a finite number"):
        emit_reward(bad)
    with pytest.raises(ValueError, match=r"emit_reward: dimension 'd' is .*expected a finite number"):
        emit_reward({"d": bad})


def test_an_int_too_large_for_a_float_raises_value_error_naming_the_reward() -> None:
    with pytest.raises(ValueError, match=r"emit_reward: reward is .*expected a finite number"):
        emit_reward(10**400)
    with pytest.raises(ValueError, match=r"emit_reward: dimension 'big'"):
        emit_reward({"big": 10**400})


def test_reward_mapping_errors_name_the_problem() -> None:
    with pytest.raises(ValueError, match=r"primary_key is required with 2 dimensions \(a, b\)"):
        emit_reward({"a": 1.0, "b": 2.0})
    with pytest.raises(ValueError, match=r"primary_key 'c' is not one of the dimensions \(a, b\)"):
        emit_reward({"a": 1.0, "b": 2.0}, primary_key="c")
    with pytest.raises(ValueError, match=r"reward mapping is empty"):
        emit_reward({})
    with pytest.raises(ValueError, match=r"primary_key applies only to a mapping"):
        emit_reward(1.0, primary_key="a")
    with pytest.raises(TypeError, match=r"dimension name 1 must be str, got int"):
        emit_reward({1: 0.5})  # type: ignore[dict-item]


# --- exception -----------------------------------------------------------------------------------


class AgentToolError(RuntimeError):
    """A user-defined exception type (its module is part of exception.type)."""


def _fail_with_chain() -> None:
    try:
        try:
            raise KeyError("missing")
        except KeyError as exc:
            raise ValueError("could not parse the tool output") from exc
    except ValueError:
        raise AgentToolError("tool call failed")  # noqa: B904 - implicit __context__ chaining on purpose


def _raise_chained() -> BaseException:
    try:
        _fail_with_chain()
    except AgentToolError as exc:
        return exc
    raise AssertionError("unreachable")


def test_an_exception_records_type_message_stacktrace_and_escaped() -> None:
    exc = _raise_chained()
    span = one(lambda: emit_exception(exc))
    attrs = span.attributes
    assert attrs["exception.type"] == f"{AgentToolError.__module__}.AgentToolError"
    assert attrs["exception.message"] == "tool call failed"
    assert attrs["exception.escaped"] is False
    assert span.status == "ERROR"
    assert [e.name for e in span.events] == ["exception"]


def test_the_stacktrace_includes_the_cause_and_the_context_chain() -> None:
    exc = _raise_chained()
    stack = one(lambda: emit_exception(exc)).attributes["exception.stacktrace"]
    assert isinstance(stack, str)
    assert "KeyError: 'missing'" in stack
    assert "The above exception was the direct cause of the following exception" in stack  # __cause__
    assert "ValueError: could not parse the tool output" in stack
    assert "During handling of the above exception, another exception occurred" in stack  # __context__
    assert stack.rstrip().endswith("AgentToolError: tool call failed")
    assert "_fail_with_chain" in stack  # real frames, not just the message


def _raise_then_emit_then_reraise() -> None:
    try:
        raise ValueError("boom")
    except ValueError as exc:
        emit_exception(exc)
        raise


def _frame_the_exception_passes_after_the_emit() -> None:
    _raise_then_emit_then_reraise()


def test_the_stacktrace_is_the_one_at_emit_time_not_after_the_exception_propagated() -> None:
    # The worker formats the trace later: frames the exception gains while propagating must not show.
    parked = PipelineConfig(flush_interval=3600, batch_size=10_000, adaptive_sampling=False)
    with (
        capture_spans(config=parked) as captured,
        captured.tracer.trace_context(rollout_id="r-late"),
        pytest.raises(ValueError),
    ):
        _frame_the_exception_passes_after_the_emit()
    (span,) = [s for s in captured.spans if s.name == semconv.SPAN_EXCEPTION]
    stack = span.attributes[semconv.EXCEPTION_STACKTRACE]
    assert isinstance(stack, str) and "in _raise_then_emit_then_reraise" in stack
    assert "_frame_the_exception_passes_after_the_emit" not in stack


def test_a_stacktrace_that_cannot_be_formatted_becomes_a_marker_and_the_event_is_kept(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def broken(exception: BaseException, traceback: object) -> str:
        raise RuntimeError("frame inspection failed")

    monkeypatch.setattr("agentemit.emit.api.format_stacktrace", broken)
    span = one(lambda: emit_exception(KeyError("k")))
    assert span.attributes[semconv.EXCEPTION_STACKTRACE] == "<stack trace unavailable: RuntimeError>"
    assert span.attributes[semconv.EXCEPTION_TYPE] == "KeyError" and span.status == "ERROR"


def test_a_stacktrace_is_formatted_once_though_the_worker_and_the_last_trace_both_build_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from agentemit.emit import api

    calls: list[BaseException] = []

    def counting(exception: BaseException, traceback: object) -> str:
        calls.append(exception)
        return "Traceback: counted\n"

    monkeypatch.setattr(api, "format_stacktrace", counting)
    with capture_spans() as captured, captured.tracer.trace_context(rollout_id="r-once"):
        emit_exception(KeyError("k"))
    last = [s for s in captured.tracer.get_last_trace() if s.name == semconv.SPAN_EXCEPTION]
    stored = [s for s in captured.spans if s.name == semconv.SPAN_EXCEPTION]
    assert last[0].attributes[semconv.EXCEPTION_STACKTRACE] == "Traceback: counted\n"
    assert stored[0].attributes[semconv.EXCEPTION_STACKTRACE] == "Traceback: counted\n"
    assert len(calls) == 1


def test_a_builtin_exception_type_is_not_module_qualified() -> None:
    assert one(lambda: emit_exception(KeyError("k"))).attributes["exception.type"] == "KeyError"


@pytest.mark.parametrize("bad", ["boom", ValueError, None, 3])
def test_a_non_exception_raises_type_error_naming_the_argument(bad: Any) -> None:
    with pytest.raises(TypeError, match=r"emit_exception: exception must be an exception instance"):
        emitted(lambda: emit_exception(bad))


class _UnprintableError(Exception):
    def __str__(self) -> str:
        raise RuntimeError("__str__ is broken")


def test_an_exception_whose_str_raises_is_still_recorded_and_never_raises() -> None:
    span = one(lambda: emit_exception(_UnprintableError()))
    assert span.attributes["exception.type"].endswith("_UnprintableError")  # type: ignore[union-attr]
    assert isinstance(span.attributes["exception.message"], str)


# --- object --------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", ["text", 42, -1.5, True, False, 2**62])
def test_a_primitive_object_is_stored_as_a_literal_with_its_type(value: Any) -> None:
    span = one(lambda: emit_object(value))
    assert span.attributes["agentlightning.object.type"] == type(value).__name__
    assert span.attributes["agentlightning.object.literal"] == value
    assert type(get_object_value(span)) is type(value) and get_object_value(span) == value


@pytest.mark.parametrize("value", [b"\x00\xffbinary", bytearray(b"abc")])
def test_bytes_are_stored_as_a_base64_literal_and_read_back_as_bytes(value: bytes) -> None:
    span = one(lambda: emit_object(value))
    assert span.attributes["agentlightning.object.literal"] == base64.b64encode(bytes(value)).decode()
    assert span.attributes["agentlightning.object.encoding"] == "base64"
    assert get_object_value(span) == bytes(value)


def test_none_is_stored_as_json_null() -> None:
    span = one(lambda: emit_object(None))
    assert span.attributes["agentlightning.object.json"] == "null"
    assert span.attributes["agentlightning.object.type"] == "NoneType"


class Color(enum.Enum):
    RED = "red"


@dataclasses.dataclass
class Step:
    index: int
    tags: list[str]
    when: dt.datetime


class Answer(BaseModel):
    text: str
    score: float
    when: dt.date


@pytest.mark.parametrize(
    ("value", "json_value", "type_name"),
    [
        ({"a": [1, 2, {"b": None}]}, {"a": [1, 2, {"b": None}]}, "dict"),
        ([1, "two", 3.0], [1, "two", 3.0], "list"),
        ((1, 2), [1, 2], "tuple"),
        ({3}, [3], "set"),
        (
            Step(1, ["x"], dt.datetime(2024, 5, 1, 12, 30)),
            {"index": 1, "tags": ["x"], "when": "2024-05-01T12:30:00"},
            f"{__name__}.Step",
        ),
        (
            Answer(text="4", score=0.5, when=dt.date(2024, 1, 2)),
            {"text": "4", "score": 0.5, "when": "2024-01-02"},
            f"{__name__}.Answer",
        ),
        (dt.datetime(2024, 5, 1, tzinfo=dt.timezone.utc), "2024-05-01T00:00:00+00:00", "datetime.datetime"),
        (dt.date(2024, 5, 1), "2024-05-01", "datetime.date"),
        (Color.RED, "red", f"{__name__}.Color"),
        (uuid.UUID(int=1), "00000000-0000-0000-0000-000000000001", "uuid.UUID"),
        (decimal.Decimal("1.10"), "1.10", "decimal.Decimal"),
        (PurePosixPath("/a/b"), "/a/b", "pathlib.PurePosixPath"),
        ({"nested": {"bytes": b"\x01"}}, {"nested": {"bytes": "AQ=="}}, "dict"),
        ({1: "int key"}, {"1": "int key"}, "dict"),
    ],
)
def test_a_json_serializable_object_is_stored_as_json(value: Any, json_value: Any, type_name: str) -> None:
    span = one(lambda: emit_object(value))
    assert span.attributes["agentlightning.object.type"] == type_name
    assert orjson.loads(span.attributes["agentlightning.object.json"]) == json_value  # type: ignore[arg-type]
    assert get_object_value(span) == json_value
    assert "agentlightning.object.truncated" not in span.attributes


def test_numpy_scalars_and_arrays_are_stored_as_json() -> None:
    np = pytest.importorskip("numpy", reason="numpy is optional and not installed")
    spans = emitted(lambda: emit_object(np.float32(0.5)), lambda: emit_object(np.arange(4).reshape(2, 2)))
    assert [get_object_value(s) for s in spans] == [0.5, [[0, 1], [2, 3]]]


class _Opaque:
    __slots__ = ()

    def __repr__(self) -> str:
        return "<opaque handle>"


def test_an_unencodable_object_is_stored_as_its_repr_with_a_marker() -> None:
    span = one(lambda: emit_object(_Opaque()))
    assert span.attributes["agentlightning.object.repr"] == "<opaque handle>"
    assert span.attributes["agentlightning.object.unserializable"] is True
    assert "agentlightning.object.json" not in span.attributes
    assert get_object_value(span) == "<opaque handle>"


class _BrokenRepr:
    def __repr__(self) -> str:
        raise RuntimeError("repr is broken")


class _LongRepr:
    def __repr__(self) -> str:
        return "r" * (encoding.MAX_REPR_CHARS * 3)


def test_an_object_whose_repr_raises_or_is_huge_is_stored_as_a_bounded_repr() -> None:
    broken, long = emitted(lambda: emit_object(_BrokenRepr()), lambda: emit_object(_LongRepr()))
    assert broken.attributes["agentlightning.object.repr"] == "<_BrokenRepr repr failed: RuntimeError>"
    text = long.attributes["agentlightning.object.repr"]
    assert isinstance(text, str) and text.endswith(semconv.TRUNCATED_SUFFIX)
    assert len(text) == encoding.MAX_REPR_CHARS + len(semconv.TRUNCATED_SUFFIX)


@dataclasses.dataclass
class _HalfBuilt:
    ready: int
    later: int = dataclasses.field(init=False)  # never set: reading it raises AttributeError


class _HostileAttributes:
    def __getattr__(self, name: str) -> Any:
        raise RuntimeError(f"no attribute access allowed ({name})")


class _BrokenMapping(dict[str, int]):
    def items(self) -> Any:
        raise RuntimeError("items() is broken")


@pytest.mark.parametrize(
    "value", [_HalfBuilt(1), _HostileAttributes(), _BrokenMapping(a=1)], ids=["half_built", "hostile", "broken_map"]
)
def test_an_object_that_raises_while_being_encoded_is_stored_as_a_repr_and_never_raises(value: Any) -> None:
    span = one(lambda: emit_object(value))
    assert span.attributes["agentlightning.object.unserializable"] is True
    assert isinstance(span.attributes["agentlightning.object.repr"], str)


def test_a_cyclic_object_is_bounded_and_marked_truncated() -> None:
    loop: list[Any] = [1]
    loop.append(loop)
    parent: dict[str, Any] = {"name": "p"}
    parent["self"] = parent
    spans = emitted(lambda: emit_object(loop), lambda: emit_object(parent))
    assert [get_object_value(s) for s in spans] == [[1, "<list truncated>"], {"name": "p", "self": "<dict truncated>"}]
    assert all(s.attributes["agentlightning.object.truncated"] is True for s in spans)


def test_a_deeply_nested_object_is_cut_at_the_depth_limit_and_marked() -> None:
    deep: list[Any] = []
    node = deep
    for _ in range(encoding.MAX_DEPTH * 2):
        node.append([])
        node = node[0]
    span = one(lambda: emit_object(deep))
    assert span.attributes["agentlightning.object.truncated"] is True
    depth, value = 0, get_object_value(span)
    while isinstance(value, list):
        depth, value = depth + 1, value[0]
    assert depth == encoding.MAX_DEPTH and value == "<list truncated>"


def test_a_container_with_too_many_items_keeps_the_first_ones_and_is_marked() -> None:
    attrs = encoding.object_attributes(list(range(encoding.MAX_ITEMS + 5)))  # emit-time form, before redaction
    assert orjson.loads(attrs["agentlightning.object.json"]) == list(range(encoding.MAX_ITEMS))  # type: ignore[arg-type]
    assert attrs["agentlightning.object.truncated"] is True


def test_an_object_whose_json_is_too_large_is_cut_kept_as_text_and_marked() -> None:
    huge = {"blob": "x" * (encoding.MAX_JSON_BYTES + 10)}
    attrs = encoding.object_attributes(huge)  # the emit-time form, before pipeline redaction re-bounds it
    assert attrs["agentlightning.object.truncated"] is True
    assert "agentlightning.object.json" not in attrs  # cut JSON is not JSON
    text = attrs["agentlightning.object.repr"]
    assert isinstance(text, str) and text.endswith(semconv.TRUNCATED_SUFFIX)
    assert len(text) <= encoding.MAX_JSON_BYTES + len(semconv.TRUNCATED_SUFFIX)


@pytest.mark.parametrize("value", ["y" * (encoding.MAX_JSON_BYTES + 10), b"z" * (encoding.MAX_JSON_BYTES + 10)])
def test_a_huge_str_or_bytes_object_is_bounded_and_marked_truncated(value: str | bytes) -> None:
    attrs = encoding.object_attributes(value)  # the emit-time form: also what get_last_trace shows
    assert attrs["agentlightning.object.truncated"] is True
    literal = attrs["agentlightning.object.literal"]
    assert isinstance(literal, str) and len(literal) <= 2 * encoding.MAX_JSON_BYTES


@pytest.mark.parametrize("value", [2**63, -(2**63) - 1, 2**70 + 1])
def test_an_int_outside_the_64_bit_range_is_stored_as_json_text_not_lost(value: int) -> None:
    span = one(lambda: emit_object(value))
    assert span.attributes["agentlightning.object.json"] == str(value)
    assert "agentlightning.object.literal" not in span.attributes


# --- extra attributes ----------------------------------------------------------------------------


def test_extra_attributes_are_flattened_with_dotted_keys() -> None:
    span = one(lambda: emit_message("m", attributes={"tool": {"name": "search", "args": {"q": "x", "k": 3}}, "n": 1}))
    assert span.attributes["tool.name"] == "search"
    assert span.attributes["tool.args.q"] == "x"
    assert span.attributes["tool.args.k"] == 3
    assert span.attributes["n"] == 1
    assert "tool" not in span.attributes


def test_extra_attributes_otel_can_hold_are_kept_and_the_rest_become_json() -> None:
    extra = {
        "scalars": {"s": "x", "i": 1, "f": 0.5, "b": True},
        "ints": [1, 2, 3],
        "strs": ("a", "b"),
        "mixed": [1, "a"],
        "dicts": [{"a": 1}],
        "none": None,
        "empty_list": [],
        "empty_dict": {},
        "when": dt.date(2024, 1, 2),
        "raw": b"\x01",
        "opaque": _Opaque(),
        "big": 2**64,
        "bigs": [1, 2**63],
        7: "int key",
    }
    span = one(lambda: emit_object(0, attributes=extra))  # type: ignore[arg-type]
    a = span.attributes
    assert (a["scalars.s"], a["scalars.i"], a["scalars.f"], a["scalars.b"]) == ("x", 1, 0.5, True)
    assert a["ints"] == (1, 2, 3) and a["strs"] == ("a", "b")
    assert orjson.loads(a["mixed"]) == [1, "a"]  # type: ignore[arg-type]
    assert orjson.loads(a["dicts"]) == [{"a": 1}]  # type: ignore[arg-type]
    assert (a["none"], a["empty_list"], a["empty_dict"]) == ("null", "[]", "{}")
    assert a["when"] == '"2024-01-02"' and a["raw"] == '"AQ=="'
    assert a["opaque"] == "<opaque handle>"
    assert a["big"] == "18446744073709551616" and orjson.loads(a["bigs"]) == [1, 2**63]  # type: ignore[arg-type]
    assert a["7"] == "int key"
    assert otel_can_hold(dict(a))


def test_extra_attributes_work_on_every_emit_call() -> None:
    extra = {"agent": {"step": 3}}
    spans = emitted(
        lambda: emit_message("m", attributes=extra),
        lambda: emit_reward(1.0, attributes=extra),
        lambda: emit_exception(ValueError("v"), attributes=extra),
        lambda: emit_object("o", attributes=extra),
    )
    assert [s.attributes["agent.step"] for s in spans] == [3, 3, 3, 3]


def test_extra_attributes_never_replace_the_events_own_attributes() -> None:
    spans = emitted(
        lambda: emit_message("real", attributes={"message": "fake", "agentlightning": {"message": {"body": "fake"}}}),
        lambda: emit_reward(0.5, attributes={"reward": "high", "agentlightning.reward.0.value": 9.0}),
        lambda: emit_exception(KeyError("k"), attributes={"exception.type": "Nope"}),
        lambda: emit_object(1, attributes={"agentlightning.object.literal": 2}),
    )
    message, reward_span, exception, obj = spans
    assert (message.attributes["message"], get_message_value(message)) == ("real", "real")
    assert reward_span.attributes["reward"] == 0.5 and get_rewards(reward_span) == {"primary": 0.5}
    assert exception.attributes["exception.type"] == "KeyError"
    assert get_object_value(obj) == 1


def test_extra_attribute_values_that_raise_while_encoding_never_raise() -> None:
    span = one(lambda: emit_message("m", attributes={"bad": _HostileAttributes(), "broken": _BrokenMapping(a=1)}))
    assert isinstance(span.attributes["bad"], str) and isinstance(span.attributes["broken"], str)


def test_a_cyclic_extra_attribute_is_bounded() -> None:
    loop: dict[str, Any] = {"v": 1}
    loop["loop"] = loop
    span = one(lambda: emit_message("m", attributes={"c": loop}))
    assert span.attributes["c.v"] == 1
    assert otel_can_hold(dict(span.attributes))


@pytest.mark.parametrize("bad", [5, ["a", "b"], "k=v"])
@pytest.mark.parametrize("traced", [True, False], ids=["in_rollout", "no_tracer"])
def test_attributes_that_are_not_a_mapping_raise_type_error_with_or_without_a_tracer(bad: Any, traced: bool) -> None:
    calls: list[Callable[[], None]] = [
        lambda: emit_message("m", attributes=bad),
        lambda: emit_reward(1.0, attributes=bad),
        lambda: emit_exception(ValueError(), attributes=bad),
        lambda: emit_object(1, attributes=bad),
    ]
    for call in calls:
        with pytest.raises(TypeError, match=r"attributes must be a mapping"):
            if traced:
                emitted(call)
            else:
                call()


# --- no active tracer ----------------------------------------------------------------------------


@pytest.fixture
def fresh_no_tracer_warning() -> Iterator[None]:
    """Let the once-per-process warning fire again in this test."""
    no_tracer._warned.clear()
    yield
    no_tracer._warned.set()


class _Untouchable:
    """Fails the test if anything inspects it: a no-op emit must not encode what it is given."""

    touched = False

    def __getattribute__(self, name: str) -> Any:
        type.__setattr__(_Untouchable, "touched", True)
        return object.__getattribute__(self, name)

    def __repr__(self) -> str:
        type.__setattr__(_Untouchable, "touched", True)
        return "untouchable"


def test_emits_without_a_trace_context_are_counted_no_ops_with_one_warning(
    fresh_no_tracer_warning: None, caplog: pytest.LogCaptureFixture
) -> None:
    before = agentemit.stats()["no_tracer"]
    calls: list[tuple[Callable[..., object], tuple[Any, ...]]] = [
        (emit_message, ("lost",)),
        (emit_reward, (1.0,)),
        (emit_exception, (ValueError("x"),)),
        (emit_object, ({"a": 1},)),
        (emit_message, ("lost again",)),
    ]
    with caplog.at_level(logging.WARNING, logger="agentemit"):
        results = [fn(*args) for fn, args in calls]
    assert results == [None] * 5
    assert agentemit.stats()["no_tracer"] - before == 5
    warnings = [r for r in caplog.records if r.name == "agentemit" and "no active trace_context" in r.getMessage()]
    assert len(warnings) == 1
    assert warnings[0].levelno == logging.WARNING
    assert "emit_message" in warnings[0].getMessage()


def test_the_no_tracer_warning_is_not_repeated_in_a_later_call(
    fresh_no_tracer_warning: None, caplog: pytest.LogCaptureFixture
) -> None:
    emit_message("first")
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="agentemit"):
        for _ in range(3):
            emit_reward(0.0)
    assert not [r for r in caplog.records if "no active trace_context" in r.getMessage()]


def test_a_no_tracer_emit_does_not_inspect_its_object_or_attributes() -> None:
    _Untouchable.touched = False
    emit_object(_Untouchable())
    emit_message("m", attributes={"x": _Untouchable()})
    assert _Untouchable.touched is False


def test_bad_input_raises_even_without_a_tracer() -> None:
    with pytest.raises(TypeError):
        emit_message(1)  # type: ignore[arg-type]
    with pytest.raises(TypeError):
        emit_reward("1")  # type: ignore[arg-type]
    with pytest.raises(ValueError):
        emit_reward(math.nan)
    with pytest.raises(TypeError):
        emit_exception("e")  # type: ignore[arg-type]


# --- @reward -------------------------------------------------------------------------------------


def test_a_reward_function_returns_its_result_unchanged_and_emits_it() -> None:
    @reward
    def grade(answer: str) -> float:
        """Grade an answer."""
        return 1.0 if answer == "4" else 0.0

    results: list[float] = []
    spans = emitted(lambda: results.extend([grade("4"), grade("5")]))
    assert results == [1.0, 0.0]
    assert [get_reward_value(s) for s in spans] == [1.0, 0.0]
    assert grade.__name__ == "grade" and grade.__doc__ == "Grade an answer."


def test_an_async_reward_function_returns_its_result_unchanged_and_emits_it() -> None:
    dims = {"score": 0.5}

    @reward
    async def grade() -> dict[str, float]:
        await asyncio.sleep(0)
        return dims

    assert asyncio.iscoroutinefunction(grade)
    results: list[dict[str, float]] = []

    async def run() -> None:
        results.append(await grade())

    spans = emitted(lambda: asyncio.run(run()))
    assert results[0] is dims
    assert [get_rewards(s) for s in spans] == [{"score": 0.5}]


def test_a_reward_function_returning_none_emits_nothing() -> None:
    @reward
    def abstain() -> None:
        return None

    assert emitted(abstain) == []


@pytest.mark.parametrize("is_async", [False, True], ids=["sync", "async"])
def test_a_raising_reward_function_emits_the_exception_and_re_raises_it(is_async: bool) -> None:
    error = ZeroDivisionError("no samples")

    def fail() -> float:
        raise error

    async def afail() -> float:
        raise error

    wrapped: Callable[[], Any] = reward(afail) if is_async else reward(fail)
    caught: list[BaseException] = []

    def call() -> None:
        try:
            result = wrapped()
            if is_async:
                asyncio.run(result)
        except ZeroDivisionError as exc:
            caught.append(exc)

    spans = emitted(call)
    assert caught == [error]
    assert [s.name for s in spans] == ["agentlightning.exception"]
    assert spans[0].attributes["exception.type"] == "ZeroDivisionError"
    assert spans[0].attributes["exception.message"] == "no samples"
    assert spans[0].attributes["exception.escaped"] is True  # it left the reward function


def test_emit_exception_records_escaped_when_asked() -> None:
    spans = emitted(lambda: emit_exception(KeyError("k"), escaped=True))
    assert spans[0].attributes["exception.escaped"] is True


def test_a_reward_function_hidden_under_another_decorator_is_awaited_before_emitting() -> None:
    def plain_wrapper(fn: Callable[[], Any]) -> Callable[[], Any]:
        def wrapper() -> Any:  # a sync wrapper, so the coroutine function is no longer visible
            return fn()

        return wrapper

    @reward
    @plain_wrapper
    async def grade() -> float:
        await asyncio.sleep(0)
        return 0.4

    @reward
    @plain_wrapper
    async def crash() -> float:
        raise LookupError("no answer")

    results: list[Any] = []

    async def run() -> None:
        results.append(await grade())
        with pytest.raises(LookupError):
            await crash()

    spans = emitted(lambda: asyncio.run(run()))
    assert results == [0.4]
    assert [s.name for s in spans] == ["agentlightning.reward", "agentlightning.exception"]
    assert get_reward_value(spans[0]) == 0.4


# --- what an emit call accepts, every store keeps -------------------------------------------------


class _MyFloat(float):
    pass


class _MyInt(int):
    pass


class _MyStr(str):
    pass


class _EvilStr(str):
    """A str subclass whose every override raises: only its characters may be read."""

    def __str__(self) -> str:
        raise RuntimeError("__str__")

    def __repr__(self) -> str:
        raise RuntimeError("__repr__")

    def __len__(self) -> int:
        raise RuntimeError("__len__")

    def __hash__(self) -> int:
        raise RuntimeError("__hash__")


class _SurrogateRepr:
    def __repr__(self) -> str:
        return "<\udcff>"


class _SurrogateTypeError(Exception):
    pass


_SURROGATE = b"caf\xe9.txt".decode("utf-8", "surrogateescape")  # what os.fsdecode makes of a latin-1 name

_ACCEPTED: list[tuple[str, Callable[[], None]]] = [
    ("float subclass attribute", lambda: emit_message("m", attributes={"v": _MyFloat(1.5)})),
    ("int subclass attribute", lambda: emit_message("m", attributes={"v": _MyInt(2)})),
    ("str subclass attribute", lambda: emit_message("m", attributes={"v": _MyStr("s")})),
    ("hostile str subclass attribute", lambda: emit_message("m", attributes={"v": _EvilStr("s")})),
    ("subclass items", lambda: emit_message("m", attributes={"v": [_MyFloat(1.5), _MyFloat(2.5)]})),
    ("str subclass key", lambda: emit_message("m", attributes={_MyStr("k"): 1})),
    ("reward with a float subclass attribute", lambda: emit_reward(0.7, attributes={"t": _MyFloat(0.2)})),
    ("reward of a float subclass", lambda: emit_reward(_MyFloat(0.5))),
    ("reward dimension named by a str subclass", lambda: emit_reward({_MyStr("acc"): 1.0})),
    ("surrogate attribute value", lambda: emit_message("m", attributes={"path": _SURROGATE})),
    ("surrogate attribute key", lambda: emit_message("m", attributes={_SURROGATE: 1})),
    ("surrogate nested key", lambda: emit_message("m", attributes={"a": {_SURROGATE: 1}})),
    ("surrogate attribute items", lambda: emit_message("m", attributes={"paths": [_SURROGATE, "b"]})),
    ("surrogate in a reward's attributes", lambda: emit_reward(0.5, attributes={"path": _SURROGATE})),
    ("object float subclass", lambda: emit_object(_MyFloat(3.0))),
    ("object int subclass", lambda: emit_object(_MyInt(3))),
    ("object str subclass", lambda: emit_object(_MyStr("abc"))),
    ("object hostile str subclass", lambda: emit_object(_EvilStr("abc"))),
    ("object surrogate str", lambda: emit_object(_SURROGATE)),
    ("object surrogate in a dict", lambda: emit_object({"k": _SURROGATE})),
    ("object surrogate key", lambda: emit_object({_SURROGATE: 1})),
    ("object str subclass key", lambda: emit_object({_MyStr("k"): _MyFloat(1.0)})),
    ("object float subclass in a set", lambda: emit_object({_MyFloat(1.0)})),
    ("object whose repr holds a surrogate", lambda: emit_object(_SurrogateRepr())),
    ("exception with a surrogate message", lambda: emit_exception(ValueError(_SURROGATE))),
    ("exception with a surrogate attribute", lambda: emit_exception(ValueError("v"), attributes={"p": _SURROGATE})),
    ("exception type named with a surrogate", lambda: emit_exception(_SurrogateTypeError("x"))),
]
_SurrogateTypeError.__qualname__ = "Surrogate\udcffError"


def test_every_event_an_emit_call_accepts_is_stored_by_a_real_store_none_counted_invalid(
    sqlite_tracer: agentemit.OtelTracer,
) -> None:
    """Subclasses of str/int/float (numpy.float64 is one) and lone surrogates (os.fsdecode) were
    accepted at the call, then refused by the store and dropped as ``invalid``, rewards included."""
    for index, (_, emit) in enumerate(_ACCEPTED):
        with sqlite_tracer.trace_context("case", rollout_id=f"case-{index}"):
            emit()
    report = sqlite_tracer.force_flush(10)
    assert report.completed and report.dropped == {}
    store = sqlite_tracer.store
    assert store is not None
    lost = [name for i, (name, _) in enumerate(_ACCEPTED) if len(store.query_spans(f"case-{i}")) != 2]
    assert lost == []  # each rollout: its root span and the event
    assert sqlite_tracer.stats()["dropped"] == {}


def test_scalar_subclasses_become_their_exact_builtin_type_with_the_same_value() -> None:
    message, obj, reward_span = emitted(
        lambda: emit_message(
            _MyStr("body"), attributes={"f": _MyFloat(1.5), "i": _MyInt(2), "s": _EvilStr("s"), "big": _MyInt(2**64)}
        ),
        lambda: emit_object(_MyFloat(2.5)),
        lambda: emit_reward({_MyStr("acc"): 1.0}),
    )
    a = message.attributes
    assert [(type(a[k]), a[k]) for k in ("f", "i", "s", "big")] == [
        (float, 1.5),
        (int, 2),
        (str, "s"),
        (str, str(2**64)),
    ]
    assert type(get_message_value(message)) is str and get_message_value(message) == "body"
    assert type(obj.attributes["agentlightning.object.literal"]) is float and get_object_value(obj) == 2.5
    assert type(reward_span.attributes["agentlightning.reward.0.name"]) is str and get_rewards(reward_span) == {
        "acc": 1.0
    }


def test_lone_surrogates_in_attributes_objects_and_exception_text_are_escaped_and_the_event_kept() -> None:
    escaped = "caf\\udce9.txt"
    message, obj, exception = emitted(
        lambda: emit_message("m", attributes={_SURROGATE: _SURROGATE, "l": [_SURROGATE]}),
        lambda: emit_object({"k": _SURROGATE}),
        lambda: emit_exception(OSError(_SURROGATE)),
    )
    assert message.attributes[escaped] == escaped and message.attributes["l"] == (escaped,)
    assert get_object_value(obj) == {"k": escaped}
    assert exception.attributes["exception.message"] == escaped and exception.status_description == escaped


def test_a_message_with_a_lone_surrogate_raises_value_error_naming_the_message() -> None:
    with pytest.raises(ValueError, match=r"emit_message: message holds a lone surrogate .*index 3"):
        emitted(lambda: emit_message(_SURROGATE))
    with pytest.raises(ValueError, match=r"emit_message: message holds a lone surrogate"):
        emit_message(_MyStr(_SURROGATE))  # no tracer: still refused at the call


def test_a_reward_dimension_named_with_a_lone_surrogate_raises_value_error_naming_it() -> None:
    with pytest.raises(ValueError, match=r"emit_reward: dimension name 'caf\\udce9.txt' holds a lone surrogate"):
        emitted(lambda: emit_reward({_SURROGATE: 1.0}))
    with pytest.raises(ValueError, match=r"dimension name .* holds a lone surrogate"):
        emit_reward({"a": 1.0, _SURROGATE: 0.5}, primary_key="a")


def test_numpy_scalars_in_attributes_and_objects_are_stored_as_exact_builtin_types(
    sqlite_tracer: agentemit.OtelTracer,
) -> None:
    np = pytest.importorskip("numpy", reason="numpy is optional and not installed")
    with sqlite_tracer.trace_context("case", rollout_id="np"):
        emit_object(np.float64(0.5))
        emit_message("m", attributes={"score": np.float64(0.5), "n": np.int64(3)})
        emit_reward(0.5, attributes={"t": np.float64(1.0)})
    assert sqlite_tracer.force_flush(10).dropped == {}
    assert sqlite_tracer.store is not None
    spans = [s for s in sqlite_tracer.store.query_spans("np") if s.name != "case"]
    assert len(spans) == 3
    assert get_object_value(spans[0]) == 0.5
    values = (spans[1].attributes["score"], spans[1].attributes["n"], spans[2].attributes["t"])
    assert values == (0.5, 3, 1.0) and list(map(type, values)) == [float, int, float]


# --- user attributes count toward memory_threshold ------------------------------------------------


@pytest.fixture
def raw_records() -> Iterator[list[RawRecord]]:
    """An active rollout whose raw records (what the pipeline would receive) land in a list."""
    captured: list[RawRecord] = []
    ctx = RolloutContext(
        rollout_id="r", attempt_id="a", trace_id=1, span_id=1, sequence=counter(), deliver=captured.append
    )
    token = CURRENT.set(ctx)
    try:
        yield captured
    finally:
        CURRENT.reset(token)


_BIG = {"output": "x" * 1_000_000, "tokens": ("y" * 100_000,) * 5, "nested": {"k": "z" * 100_000}}
_BIG_SIZE = 1_000_000 + 500_000 + 100_000


@pytest.mark.parametrize(
    "emit",
    [
        lambda attributes: emit_message("m", attributes=attributes),
        lambda attributes: emit_reward(0.5, attributes=attributes),
        lambda attributes: emit_reward({"a": 1.0}, attributes=attributes),
        lambda attributes: emit_exception(ValueError("v"), attributes=attributes),
        lambda attributes: emit_object({"a": 1}, attributes=attributes),
    ],
    ids=["message", "reward", "reward_mapping", "exception", "object"],
)
def test_user_attributes_count_toward_an_events_estimated_size(
    emit: Callable[[Any], None], raw_records: list[RawRecord]
) -> None:
    """The queue is bounded by estimated bytes (memory_threshold): 60 events with 1 MiB attributes were
    queued as 42 KB, and one 20 MiB attribute was never counted oversize."""
    emit({"small": 1})
    emit(_BIG)
    small, big = raw_records
    assert big[12] - small[12] >= _BIG_SIZE


def test_an_attribute_bigger_than_the_queue_budget_is_refused_as_oversize(tmp_path: Any) -> None:
    config = PipelineConfig(spool_dir=tmp_path / "spool", memory_threshold=1 << 20, flush_interval=0.01)
    with capture_spans(config=config) as captured:
        with captured.tracer.trace_context(rollout_id="r"):
            emit_message("m", attributes={"blob": "y" * (2 << 20)})
            emit_reward(0.5, attributes={"blob": "y" * (2 << 20)})
            emit_message("kept")
        assert captured.tracer.stats()["dropped"] == {"oversize": 2}
    assert [get_message_value(s) for s in captured.spans if s.name == semconv.SPAN_MESSAGE] == ["kept"]


# --- hostile input raises TypeError or ValueError, never the user's own exception -------------------


class _Boom(Exception):
    pass


class _FloatBoom:
    def __float__(self) -> float:
        raise _Boom("__float__")

    def __repr__(self) -> str:
        raise _Boom("__repr__")


class _KeyBoom:
    """A hashable key whose str and repr raise."""

    def __hash__(self) -> int:
        return 1

    def __str__(self) -> str:
        raise _Boom("__str__")

    def __repr__(self) -> str:
        raise _Boom("__repr__")


class _HashBoom(str):
    def __hash__(self) -> int:
        raise _Boom("__hash__")

    def __eq__(self, other: object) -> bool:
        raise _Boom("__eq__")


def test_a_reward_whose_float_raises_is_a_type_error_naming_it_chained_from_the_cause() -> None:
    with pytest.raises(TypeError, match=r"emit_reward: reward \(_FloatBoom\) cannot be read as a number") as info:
        emit_reward(_FloatBoom())  # type: ignore[arg-type]
    assert isinstance(info.value.__cause__, _Boom)
    with pytest.raises(TypeError, match=r"emit_reward: dimension 'a' \(_FloatBoom\) cannot be read"):
        emit_reward({"a": _FloatBoom()})  # type: ignore[dict-item]


def test_reward_dimension_names_whose_str_or_repr_raise_are_a_type_error() -> None:
    with pytest.raises(TypeError, match=r"emit_reward: dimension name <_KeyBoom repr failed: _Boom> must be str"):
        emit_reward({_KeyBoom(): 1.0, "a": 2.0})  # type: ignore[dict-item]
    with pytest.raises(TypeError, match=r"dimension name .* must be str"):
        emit_reward({_KeyBoom(): 1.0, "a": 2.0}, primary_key="a")  # type: ignore[dict-item]


def test_a_primary_key_whose_hash_raises_is_compared_by_its_characters_or_refused() -> None:
    span = one(lambda: emit_reward({"a": 1.0, "b": 2.0}, primary_key=_HashBoom("b")))
    assert get_rewards(span) == {"b": 2.0, "a": 1.0} and span.attributes["reward"] == 2.0
    with pytest.raises(TypeError, match=r"emit_reward: primary_key must be str, got _KeyBoom"):
        emit_reward({"a": 1.0, "b": 2.0}, primary_key=_KeyBoom())  # type: ignore[arg-type]


@pytest.mark.parametrize("call", ["emit_message", "emit_reward", "emit_exception", "emit_object"])
def test_an_attribute_key_whose_str_raises_is_a_type_error_naming_the_call(call: str) -> None:
    calls: dict[str, Callable[[dict[Any, Any]], None]] = {
        "emit_message": lambda a: emit_message("m", attributes=a),
        "emit_reward": lambda a: emit_reward(0.5, attributes=a),
        "emit_exception": lambda a: emit_exception(ValueError(), attributes=a),
        "emit_object": lambda a: emit_object(1, attributes=a),
    }
    with pytest.raises(TypeError, match=rf"{call}: attributes: key <_KeyBoom repr failed: _Boom> \(_KeyBoom\)") as info:
        emitted(lambda: calls[call]({_KeyBoom(): 1, "a": {_KeyBoom(): 2}}))
    assert isinstance(info.value.__cause__, _Boom)


def test_a_message_that_is_a_str_subclass_overriding_everything_is_stored_as_its_characters() -> None:
    assert get_message_value(one(lambda: emit_message(_EvilStr("evil")))) == "evil"
