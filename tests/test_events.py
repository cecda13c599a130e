"""Custom event types: registration, validation with exact error paths, versioned reads, round trips."""

from __future__ import annotations

import dataclasses
import datetime as dt
import logging
import math
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import orjson
import pydantic
import pytest

from agentemit import OtelTracer, semconv
from agentemit.emit.events import (
    HIGH_PRIORITY_EVENT_KINDS,
    Event,
    EventType,
    EventValidationError,
    EventVersionError,
    create_event,
    emit_event,
    event_policies,
    event_rejections,
    get_event,
    get_event_type,
    get_supported_types,
    high_priority_kinds,
    register_event_type,
)
from agentemit.emit.no_tracer import no_tracer_count
from agentemit.pipeline.builder import build_span
from agentemit.span import Span
from agentemit.tracing.context import CURRENT, RawRecord, RolloutContext, counter

# --- the same "judge" schema in all three forms -------------------------------------------------


class ItemModel(pydantic.BaseModel):
    label: str
    score: float


class JudgeModel(pydantic.BaseModel):
    verdict: str
    items: list[ItemModel]
    note: str | None = None


@dataclasses.dataclass
class ItemData:
    label: str
    score: float


@dataclasses.dataclass
class JudgeData:
    verdict: str
    items: list[ItemData]
    note: str | None = None


JUDGE_SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "verdict": {"type": "string"},
        "items": {
            "type": "array",
            "items": {
                "type": "object",
                "properties": {"label": {"type": "string"}, "score": {"type": "number"}},
                "required": ["label", "score"],
            },
        },
        "note": {"type": ["string", "null"]},
    },
    "required": ["verdict", "items"],
}

SCHEMAS: dict[str, Any] = {"pydantic": JudgeModel, "dataclass": JudgeData, "jsonschema": JUDGE_SCHEMA}
JUDGE = {"verdict": "pass", "items": [{"label": "a", "score": 0.1}, {"label": "b", "score": 2.5}]}


def _items(score: Any) -> list[dict[str, Any]]:
    return [{"label": "a", "score": 1.0}, {"label": "b", "score": 2.0}, {"label": "c", "score": score}]


@pytest.fixture
def name() -> str:
    """A fresh type name: the registry is process-wide, so every test registers its own types."""
    return f"t{uuid.uuid4().hex[:10]}.judge"


@pytest.fixture
def records() -> Iterator[list[RawRecord]]:
    """An active rollout whose raw records (what the pipeline would receive) land in a list."""
    captured: list[RawRecord] = []
    ctx = RolloutContext(
        rollout_id="r-events",
        attempt_id="a-0",
        trace_id=0xABC,
        span_id=0x1,
        sequence=counter(),
        deliver=captured.append,
    )
    token = CURRENT.set(ctx)
    try:
        yield captured
    finally:
        CURRENT.reset(token)


def _span(record: RawRecord) -> Span:
    return build_span(record, {})


# --- emitting -----------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_emit_event_records_an_event_span_with_type_version_and_json_payload(
    kind: str, name: str, records: list[RawRecord]
) -> None:
    register_event_type(name, SCHEMAS[kind])
    emit_event(name, JUDGE, attributes={"run": {"step": 3}})

    [record] = records
    assert record[0] == f"event.{name}"
    assert record[1] == semconv.SPAN_EVENT_PREFIX + name
    attrs = record[4]
    assert attrs[semconv.EVENT_TYPE] == name
    assert attrs[semconv.EVENT_VERSION] == 1
    expected = {**JUDGE, "note": None} if kind != "jsonschema" else JUDGE  # models fill in defaults
    assert orjson.loads(attrs[semconv.EVENT_PAYLOAD]) == expected
    assert attrs["run.step"] == 3


@pytest.mark.parametrize("kind", ["pydantic", "dataclass"])
def test_emit_event_accepts_an_instance_of_the_registered_type(kind: str, name: str, records: list[RawRecord]) -> None:
    register_event_type(name, SCHEMAS[kind])
    instance = (
        JudgeModel.model_validate(JUDGE) if kind == "pydantic" else JudgeData("pass", [ItemData("a", 0.1)], note="n")
    )
    emit_event(name, instance)
    assert get_event(_span(records[0])) == instance


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_payload_holds_exactly_the_validated_values(kind: str, name: str) -> None:
    register_event_type(name, SCHEMAS[kind])
    data = {"verdict": "ü ✓ \u2028", "items": [{"label": "x", "score": 0.1 + 0.2}, {"label": "y", "score": 1e-300}]}
    event = create_event(name, data)
    assert event.payload["verdict"] == data["verdict"]
    assert [i["score"] for i in event.payload["items"]] == [0.1 + 0.2, 1e-300]


def test_event_attribute_keys_win_over_user_attributes(name: str, records: list[RawRecord]) -> None:
    register_event_type(name, JUDGE_SCHEMA)
    emit_event(name, JUDGE, attributes={semconv.EVENT_TYPE: "spoofed", "user": "kept"})
    attrs = records[0][4]
    assert attrs[semconv.EVENT_TYPE] == name
    assert attrs["user"] == "kept"


def test_emit_event_with_no_active_rollout_is_a_counted_no_op(name: str) -> None:
    register_event_type(name, JUDGE_SCHEMA)
    assert CURRENT.get() is None
    before = no_tracer_count()
    emit_event(name, JUDGE)
    assert no_tracer_count() == before + 1


def test_emit_event_still_validates_with_no_active_rollout(name: str) -> None:
    register_event_type(name, JUDGE_SCHEMA)
    with pytest.raises(EventValidationError):
        emit_event(name, {"items": []})


def test_emit_and_create_refuse_unregistered_and_builtin_names(name: str) -> None:
    with pytest.raises(ValueError, match=rf"emit_event\('{name}'\): event type is not registered"):
        emit_event(name, {})
    with pytest.raises(ValueError, match=r"create_event\('reward'\): 'reward' is a built-in event type"):
        create_event("reward", {})


def test_emit_event_rejects_non_mapping_attributes(name: str, records: list[RawRecord]) -> None:
    register_event_type(name, JUDGE_SCHEMA)
    with pytest.raises(TypeError, match="attributes must be a mapping"):
        emit_event(name, JUDGE, attributes=["a"])  # type: ignore[arg-type]


def test_create_event_validates_without_emitting(name: str, records: list[RawRecord]) -> None:
    register_event_type(name, JudgeModel)
    event = create_event(name, JUDGE)
    assert event == Event(name, 1, {**JUDGE, "note": None})
    assert records == []


# --- validation errors --------------------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_nested_error_names_the_exact_field_path(kind: str, name: str) -> None:
    register_event_type(name, SCHEMAS[kind])
    with pytest.raises(EventValidationError) as info:
        emit_event(name, {"verdict": "pass", "items": _items("high")})
    assert info.value.path == "$.items[2].score"
    assert info.value.reason == "expected number, got str"
    assert str(info.value) == f"emit_event('{name}'): $.items[2].score: expected number, got str"


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_missing_required_field_is_reported_at_its_path(kind: str, name: str) -> None:
    register_event_type(name, SCHEMAS[kind])
    with pytest.raises(EventValidationError) as info:
        create_event(name, {"verdict": "pass", "items": [{"label": "a"}]})
    assert info.value.path == "$.items[0].score"
    assert "missing required" in info.value.reason


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_non_finite_numbers_are_refused_because_json_cannot_hold_them(kind: str, name: str) -> None:
    register_event_type(name, SCHEMAS[kind])
    with pytest.raises(EventValidationError) as info:
        create_event(name, {"verdict": "pass", "items": _items(math.inf)})
    assert info.value.path == "$.items[2].score"
    assert info.value.reason == "expected a finite number, got inf"


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_data_of_the_wrong_shape_is_refused_at_the_root(kind: str, name: str) -> None:
    register_event_type(name, SCHEMAS[kind])
    with pytest.raises(EventValidationError) as info:
        create_event(name, ["not", "an", "object"])
    assert info.value.path == "$"
    assert info.value.reason.endswith("got list")


def test_an_invalid_model_instance_is_revalidated_and_refused(name: str) -> None:
    register_event_type(name, JudgeModel)
    broken = JudgeModel.model_construct(verdict="pass", items=[ItemModel.model_construct(label="a", score="x")])
    with pytest.raises(EventValidationError) as info:
        create_event(name, broken)
    assert info.value.path == "$.items[0].score"


def test_pydantic_constraint_errors_carry_pydantic_reason_and_value(name: str) -> None:
    class Scored(pydantic.BaseModel):
        score: float = pydantic.Field(gt=0)

    register_event_type(name, Scored)
    with pytest.raises(EventValidationError) as info:
        create_event(name, {"score": -1})
    assert info.value.path == "$.score"
    assert info.value.reason == "Input should be greater than 0, got -1"


@pytest.mark.parametrize(
    ("schema", "value", "reason"),
    [
        ({"type": "integer"}, 1.5, "expected integer, got float"),
        ({"type": "integer"}, True, "expected integer, got bool"),
        ({"type": "number"}, None, "expected number, got null"),
        ({"type": "boolean"}, 1, "expected boolean, got int"),
        ({"enum": ["a", "b"]}, "c", 'expected one of ["a","b"], got \'c\''),
        ({"enum": [1]}, True, "expected one of [1], got True"),
        ({"minimum": 0}, -0.5, "expected >= 0, got -0.5"),
        ({"maximum": 10}, 11, "expected <= 10, got 11"),
        ({"minLength": 2}, "a", "expected at least 2 characters, got 1"),
        ({"maxLength": 2}, "abc", "expected at most 2 characters, got 3"),
        ({"type": "array", "items": {"type": "string"}}, ["a", 1], "expected string, got int"),
        ({}, dt.date(2024, 1, 1), "expected a JSON value, got date"),
        ({}, 2**64, "expected an integer that fits in 64 bits, got 18446744073709551616"),
    ],
)
def test_json_schema_keywords_are_enforced(name: str, schema: dict[str, Any], value: Any, reason: str) -> None:
    register_event_type(name, {"type": "object", "properties": {"v": schema}})
    with pytest.raises(EventValidationError) as info:
        create_event(name, {"v": value})
    assert info.value.path.startswith("$.v")
    assert info.value.reason == reason


@pytest.mark.parametrize(
    ("value", "accepted"),
    [(1, True), (1.0, True), (0, True), ("a", False), ([1], False)],
)
def test_json_schema_integer_accepts_integral_numbers_only(name: str, value: Any, accepted: bool) -> None:
    register_event_type(name, {"type": "object", "properties": {"n": {"type": "integer", "minimum": 0}}})
    if accepted:
        assert create_event(name, {"n": value}).payload == {"n": value}
    else:
        with pytest.raises(EventValidationError):
            create_event(name, {"n": value})


def test_json_schema_additional_properties_false_and_schema(name: str) -> None:
    register_event_type(
        name,
        {
            "type": "object",
            "properties": {"a": {"type": "object", "additionalProperties": False}},
            "additionalProperties": {"type": "integer"},
        },
    )
    assert create_event(name, {"a": {}, "b": 1}).payload == {"a": {}, "b": 1}
    with pytest.raises(EventValidationError, match=r"\$\.a\.x: additional property is not allowed"):
        create_event(name, {"a": {"x": 1}})
    with pytest.raises(EventValidationError, match=r"\$\[\"odd key\"\]: expected integer, got str"):
        create_event(name, {"a": {}, "odd key": "s"})


@pytest.mark.parametrize(
    ("schema", "message"),
    [
        (
            {"type": "object", "properties": {"a": {"pattern": "x"}}},
            r"keyword 'pattern' at \$\.properties\.a is not supported",
        ),
        ({"type": "object", "oneOf": []}, r"keyword 'oneOf' at \$ is not supported"),
        ({"type": "array"}, "must have type 'object'"),
        ({"type": "object", "properties": {"a": {"type": "text"}}}, "keyword 'type'"),
        ({"type": "object", "required": "a"}, "keyword 'required'"),
        ({"type": "object", "properties": {"a": {"minLength": -1}}}, "keyword 'minLength'"),
    ],
)
def test_unsupported_or_malformed_json_schema_is_refused_at_registration(
    name: str, schema: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        register_event_type(name, schema)


def test_schema_of_an_unsupported_kind_is_a_type_error(name: str) -> None:
    with pytest.raises(TypeError, match="pydantic model class, a dataclass or a JSON Schema dict"):
        register_event_type(name, JudgeModel.model_validate(JUDGE))


def test_later_edits_to_a_json_schema_dict_do_not_change_the_registered_type(name: str) -> None:
    schema: dict[str, Any] = {"type": "object", "properties": {"a": {"type": "integer"}}}
    register_event_type(name, schema)
    schema["properties"]["a"]["type"] = "string"
    assert create_event(name, {"a": 1}).payload == {"a": 1}


# --- on_invalid="record" -----------------------------------------------------------------------


def test_record_mode_drops_counts_and_warns_once_per_type(
    name: str, records: list[RawRecord], caplog: pytest.LogCaptureFixture
) -> None:
    register_event_type(name, JUDGE_SCHEMA, on_invalid="record")
    caplog.set_level(logging.WARNING, logger="agentemit")
    for _ in range(3):
        emit_event(name, {"verdict": "x", "items": _items("bad")})
    emit_event(name, JUDGE)

    assert event_rejections()[name] == 3
    assert len(records) == 1  # only the valid event
    warnings = [r for r in caplog.records if name in r.getMessage()]
    assert len(warnings) == 1
    assert "$.items[2].score: expected number, got str" in warnings[0].getMessage()


def test_record_mode_does_not_change_create_event_which_always_raises(name: str) -> None:
    register_event_type(name, JUDGE_SCHEMA, on_invalid="record")
    with pytest.raises(EventValidationError):
        create_event(name, {})
    assert event_rejections().get(name, 0) == 0


# --- registration ------------------------------------------------------------------------------


@pytest.mark.parametrize("bad", ["", "Judge", "1judge", "_judge", "judge name", "jüdge", "judge/x", 7])
def test_names_must_match_the_pattern(bad: Any) -> None:
    with pytest.raises(ValueError, match=r"must match \[a-z\]\[a-z0-9_\.-\]\*"):
        register_event_type(bad, JUDGE_SCHEMA)


@pytest.mark.parametrize("good", ["j", "judge.v2", "tool-call", "a_b.c-d9"])
def test_names_with_dots_dashes_and_digits_are_accepted(good: str, name: str) -> None:
    full = f"{name}.{good}"
    assert register_event_type(full, JUDGE_SCHEMA).span_name == f"agentlightning.event.{full}"


def test_builtin_names_cannot_be_registered() -> None:
    with pytest.raises(ValueError, match="'reward' is a built-in event type"):
        register_event_type("reward", JUDGE_SCHEMA)


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"priority": "urgent"}, "priority must be 'normal' or 'high'"),
        ({"sample_rate": 1.5}, "sample_rate must be a number from 0.0 to 1.0"),
        ({"rate_limit": 0}, "rate_limit must be events per second > 0"),
        ({"version": 0}, "version must be an int >= 1"),
        ({"on_invalid": "ignore"}, "on_invalid must be 'raise' or 'record'"),
        ({"upgrade": lambda p: p}, "upgrade given for version 1"),
    ],
)
def test_bad_options_are_refused_naming_the_option(name: str, options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        register_event_type(name, JUDGE_SCHEMA, **options)


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_re_registering_the_same_schema_is_idempotent(kind: str, name: str) -> None:
    first = register_event_type(name, SCHEMAS[kind], priority="high")
    again = register_event_type(name, SCHEMAS[kind], priority="high")
    assert again is first
    assert get_supported_types()[name] is first


def test_re_registering_an_equal_json_schema_dict_returns_the_registered_type(name: str) -> None:
    first = register_event_type(name, JUDGE_SCHEMA)
    assert register_event_type(name, orjson.loads(orjson.dumps(JUDGE_SCHEMA))) is first


def test_re_registering_a_redefined_identical_class_is_idempotent(name: str, records: list[RawRecord]) -> None:
    def define() -> type[pydantic.BaseModel]:  # as a re-run notebook cell or a reloaded module does
        class Note(pydantic.BaseModel):
            text: str

        return Note

    first, second = define(), define()
    register_event_type(name, first)
    emit_event(name, {"text": "x"})
    assert register_event_type(name, second).schema is second
    assert type(get_event(_span(records[0]))) is second  # readers build the current class


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_a_different_schema_at_the_same_version_is_refused(kind: str, name: str) -> None:
    register_event_type(name, SCHEMAS[kind])
    with pytest.raises(ValueError, match="version 1 is already registered with a different schema"):
        register_event_type(name, {"type": "object", "properties": {"other": {"type": "string"}}})


def test_different_options_at_the_same_version_are_refused(name: str) -> None:
    register_event_type(name, JUDGE_SCHEMA)
    with pytest.raises(ValueError, match="already registered with priority='normal', got priority='high'"):
        register_event_type(name, JUDGE_SCHEMA, priority="high")


def test_supported_types_include_the_builtins_with_their_priorities(name: str) -> None:
    register_event_type(name, JUDGE_SCHEMA, priority="high", sample_rate=0.5, rate_limit=100)
    types = get_supported_types()
    assert {k: (types[k].priority, types[k].span_name) for k in ("message", "reward", "exception", "object")} == {
        "message": ("normal", semconv.SPAN_MESSAGE),
        "reward": ("high", semconv.SPAN_REWARD),
        "exception": ("high", semconv.SPAN_EXCEPTION),
        "object": ("normal", semconv.SPAN_OBJECT),
    }
    assert all(isinstance(t, EventType) for t in types.values())
    assert {"reward", "exception", f"event.{name}"} <= high_priority_kinds()
    assert not {"message", "object"} & high_priority_kinds()
    assert f"event.{name}" in HIGH_PRIORITY_EVENT_KINDS
    policy = event_policies()[f"event.{name}"]
    assert (policy.priority, policy.sample_rate, policy.rate_limit) == ("high", 0.5, 100)


def test_a_new_version_with_normal_priority_leaves_the_high_lane(name: str) -> None:
    register_event_type(name, JUDGE_SCHEMA, priority="high")
    register_event_type(name, JUDGE_SCHEMA, version=2, priority="normal", upgrade=lambda p: p)
    assert f"event.{name}" not in high_priority_kinds()
    assert f"event.{name}" not in HIGH_PRIORITY_EVENT_KINDS


# --- reading back and versions ------------------------------------------------------------------


class JudgeV1(pydantic.BaseModel):
    verdict: str
    score: float


class JudgeV2(pydantic.BaseModel):
    verdict: str
    scores: dict[str, float]


class JudgeV3(pydantic.BaseModel):
    passed: bool
    scores: dict[str, float]


def _v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    return {"verdict": payload["verdict"], "scores": {"overall": payload["score"]}}


def _v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
    return {"passed": payload["verdict"] == "pass", "scores": payload["scores"]}


def _stored_v1(name: str, records: list[RawRecord]) -> Span:
    register_event_type(name, JudgeV1)
    emit_event(name, {"verdict": "pass", "score": 0.75})
    return _span(records[-1])


def test_get_event_reads_a_v1_span_as_v2_through_the_upgrade(name: str, records: list[RawRecord]) -> None:
    span = _stored_v1(name, records)
    register_event_type(name, JudgeV2, version=2, upgrade=_v1_to_v2)
    assert get_event(span) == JudgeV2(verdict="pass", scores={"overall": 0.75})
    assert get_event_type(name, 1).schema is JudgeV1  # the old version stays registered
    assert get_event_type(name).version == 2


def test_get_event_chains_upgrades_across_versions(name: str, records: list[RawRecord]) -> None:
    span = _stored_v1(name, records)
    register_event_type(name, JudgeV2, version=2, upgrade=_v1_to_v2)
    register_event_type(name, JudgeV3, version=3, upgrade=_v2_to_v3)
    assert get_event(span) == JudgeV3(passed=True, scores={"overall": 0.75})
    emit_event(name, {"passed": False, "scores": {}})
    assert records[-1][4][semconv.EVENT_VERSION] == 3  # emits use the newest version


def test_get_event_without_an_upgrade_path_names_both_versions(name: str, records: list[RawRecord]) -> None:
    span = _stored_v1(name, records)
    register_event_type(name, JudgeV2, version=2)
    with pytest.raises(EventVersionError, match="stored version 1 cannot be read as registered version 2") as info:
        get_event(span)
    assert (info.value.stored, info.value.registered) == (1, 2)


def test_get_event_refuses_a_span_newer_than_the_registered_version(name: str, records: list[RawRecord]) -> None:
    register_event_type(name, JudgeV2, version=2)
    emit_event(name, {"verdict": "pass", "scores": {}})
    span = _span(records[-1])
    span.attributes[semconv.EVENT_VERSION] = 3
    with pytest.raises(EventVersionError, match="stored version 3 is newer than registered version 2"):
        get_event(span)


def test_a_failing_upgrade_is_reported_as_a_version_error(name: str, records: list[RawRecord]) -> None:
    span = _stored_v1(name, records)

    def broken(payload: dict[str, Any]) -> dict[str, Any]:
        return {"missing": payload["nope"]}

    register_event_type(name, JudgeV2, version=2, upgrade=broken)
    with pytest.raises(EventVersionError, match="failed at version 2: KeyError") as info:
        get_event(span)
    assert isinstance(info.value.__cause__, KeyError)


def test_get_event_as_event_returns_the_stored_payload_without_upgrading(name: str, records: list[RawRecord]) -> None:
    span = _stored_v1(name, records)
    register_event_type(name, JudgeV2, version=2)
    assert get_event(span, as_type=False) == Event(name, 1, {"verdict": "pass", "score": 0.75})


@pytest.mark.parametrize("kind", sorted(SCHEMAS))
def test_get_event_returns_the_registered_type(kind: str, name: str, records: list[RawRecord]) -> None:
    register_event_type(name, SCHEMAS[kind])
    emit_event(name, JUDGE)
    expected: dict[str, Callable[[], Any]] = {
        "pydantic": lambda: JudgeModel.model_validate(JUDGE),
        "dataclass": lambda: JudgeData("pass", [ItemData("a", 0.1), ItemData("b", 2.5)]),
        "jsonschema": lambda: JUDGE,
    }
    assert get_event(_span(records[0])) == expected[kind]()


def test_get_event_is_none_for_spans_that_are_not_custom_events(records: list[RawRecord]) -> None:
    from agentemit import emit_reward

    emit_reward(1.0)
    assert get_event(_span(records[0])) is None


def test_get_event_of_an_unregistered_type_needs_as_type_false() -> None:
    other = f"t{uuid.uuid4().hex[:10]}.gone"
    stored = Span(
        trace_id="0" * 32,
        span_id="1" * 16,
        parent_id=None,
        name=semconv.SPAN_EVENT_PREFIX + other,
        start_time=1,
        end_time=1,
        rollout_id="r",
        attempt_id="a",
        sequence_id=0,
        attributes={semconv.EVENT_TYPE: other, semconv.EVENT_VERSION: 1, semconv.EVENT_PAYLOAD: '{"a":1}'},
    )
    with pytest.raises(ValueError, match="event type is not registered in this process"):
        get_event(stored)
    assert get_event(stored, as_type=False) == Event(other, 1, {"a": 1})


# --- a real tracer and store --------------------------------------------------------------------


def test_round_trip_through_a_tracer_and_sqlite_store(name: str, sqlite_tracer: OtelTracer) -> None:
    register_event_type(name, JudgeModel, priority="high")
    sent = JudgeModel(verdict="pass", items=[ItemModel(label="α", score=0.1 + 0.2)], note="kept")
    with sqlite_tracer.trace_context(rollout_id="r-roundtrip"):
        emit_event(name, sent, attributes={"step": 1})
    report = sqlite_tracer.force_flush(10.0)
    assert report is not None and report.completed

    assert sqlite_tracer.store is not None
    spans = sqlite_tracer.store.query_spans("r-roundtrip")
    [stored] = [s for s in spans if s.name == semconv.SPAN_EVENT_PREFIX + name]
    assert stored.attributes["step"] == 1
    read = get_event(stored)
    assert isinstance(read, JudgeModel)
    assert read == sent
    assert [get_event(s) for s in spans if s is not stored] == [None] * (len(spans) - 1)


def test_user_attributes_count_toward_an_events_estimated_size(name: str, records: list[RawRecord]) -> None:
    """The queue's byte bound (memory_threshold) must see the user's attributes, not just the payload."""
    register_event_type(name, JUDGE_SCHEMA)
    emit_event(name, JUDGE)
    emit_event(name, JUDGE, attributes={"output": "x" * 1_000_000})
    assert records[1][12] - records[0][12] >= 1_000_000


def test_an_attribute_key_whose_str_raises_is_a_type_error_naming_the_call(name: str, records: list[RawRecord]) -> None:
    class Key:
        def __str__(self) -> str:
            raise LookupError("no str")

    register_event_type(name, JUDGE_SCHEMA)
    with pytest.raises(TypeError, match=rf"emit_event\('{name}'\): attributes: key .* cannot be made a str") as info:
        emit_event(name, JUDGE, attributes={Key(): 1})
    assert isinstance(info.value.__cause__, LookupError) and records == []
