"""Readers get events back out of spans: ours, and those other producers wrote (Agent Lightning 0.2
and 0.3, AgentOps), whether the span is our ``Span`` record or an OpenTelemetry ``ReadableSpan``.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import Any

import orjson
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from agentemit import (
    Span,
    emit_exception,
    emit_message,
    emit_object,
    emit_reward,
    find_final_reward,
    find_reward_spans,
    get_message_value,
    get_object_value,
    get_reward_value,
    get_rewards,
    is_reward_span,
)
from agentemit.emit.readers import SpanLike
from agentemit.testing import capture_spans

# --- spans in each producer's format ---------------------------------------------------------------


def hand_built(name: str, attributes: Mapping[str, Any], seq: int = 0) -> Span:
    """A span as another producer would have stored it (no agentemit code wrote it)."""
    return Span(
        trace_id=f"{1:032x}",
        span_id=f"{seq + 1:016x}",
        parent_id=None,
        name=name,
        start_time=seq,
        end_time=seq + 1,
        rollout_id="r-foreign",
        attempt_id="a",
        sequence_id=seq,
        attributes=dict(attributes),
    )


Spec = tuple[str, Mapping[str, Any]]  # (span name, attributes)

AL02_REWARD: Spec = ("agentlightning.reward", {"reward": 0.25})
AL03_ANNOTATION: Spec = (
    "agentlightning.annotation",
    {
        "agentlightning.reward.0.name": "task",
        "agentlightning.reward.0.value": 1.0,
        "agentlightning.reward.1.name": "length",
        "agentlightning.reward.1.value": -0.5,
    },
)
AGENTOPS_TASK_JSON: Spec = (
    "agentops.task",
    {"agentops.task.output": orjson.dumps({"type": "reward", "value": 0.6}).decode()},
)
AGENTOPS_ENTITY_JSON: Spec = ("tool", {"agentops.entity.output": '{"type": "reward", "value": 2}'})
# A dict value: only our Span can hold it (OpenTelemetry would drop it).
AGENTOPS_TASK_DICT: Spec = ("agentops.task", {"agentops.task.output": {"type": "reward", "value": 0.9}})

NOT_REWARDS: list[Spec] = [
    ("llm.call", {"reward": 5.0}),  # a reward key on a span that is not a reward span
    ("agentops.task", {"agentops.task.output": '{"type": "answer", "value": 1}'}),
    ("agentops.task", {"agentops.task.output": "not json {"}),
    ("agentops.task", {"agentops.task.output": '["reward", 1]'}),
    ("agentlightning.reward", {"reward": "high"}),
    ("agentlightning.message", {"agentlightning.message.body": "hi", "message": "hi"}),
    ("anything", {}),
]


def sdk_spans(specs: list[Spec]) -> list[ReadableSpan]:
    """Real OpenTelemetry SDK spans (from a private provider, so the global one is untouched)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracer = provider.get_tracer("other-producer")
    for name, attributes in specs:
        with tracer.start_as_current_span(name, attributes=dict(attributes)):
            pass
    provider.shutdown()
    return list(exporter.get_finished_spans())


Form = Callable[[list[Spec]], list[Any]]


def as_spans(specs: list[Spec]) -> list[Any]:
    return [hand_built(name, attrs, seq) for seq, (name, attrs) in enumerate(specs)]


@pytest.fixture(params=["Span", "ReadableSpan"])
def form(request: pytest.FixtureRequest) -> Form:
    """Each test runs on our Span records and on real OpenTelemetry SDK spans."""
    return as_spans if request.param == "Span" else sdk_spans


# --- rewards in every historical format ------------------------------------------------------------


def test_agent_lightning_0_2_reward_span_is_read(form: Form) -> None:
    (span,) = form([AL02_REWARD])
    assert get_reward_value(span) == 0.25
    assert get_rewards(span) == {"primary": 0.25}
    assert is_reward_span(span)


def test_agent_lightning_0_3_annotation_rewards_are_read_with_every_dimension(form: Form) -> None:
    (span,) = form([AL03_ANNOTATION])
    assert get_reward_value(span) == 1.0
    assert get_rewards(span) == {"task": 1.0, "length": -0.5}
    assert list(get_rewards(span)) == ["task", "length"]  # primary first
    assert is_reward_span(span)


def test_unnamed_reward_dimensions_get_positional_names(form: Form) -> None:
    unnamed = {"agentlightning.reward.0.value": 3, "agentlightning.reward.1.value": 4}
    (span,) = form([("agentlightning.annotation", unnamed)])
    assert get_rewards(span) == {"reward_0": 3.0, "reward_1": 4.0}


@pytest.mark.parametrize(
    ("spec", "value"), [(AGENTOPS_TASK_JSON, 0.6), (AGENTOPS_ENTITY_JSON, 2.0)], ids=["task_output", "entity_output"]
)
def test_agentops_outputs_holding_a_json_reward_are_read(form: Form, spec: Any, value: float) -> None:
    (span,) = form([spec])
    assert get_reward_value(span) == value
    assert get_rewards(span) == {"primary": value}
    assert is_reward_span(span)


def test_an_agentops_output_holding_a_dict_reward_is_read() -> None:
    span = hand_built(*AGENTOPS_TASK_DICT)  # only our Span can hold a dict; OpenTelemetry would drop it
    assert get_reward_value(span) == 0.9
    assert is_reward_span(span)


@pytest.mark.parametrize("spec", NOT_REWARDS, ids=[f"{n}:{','.join(a)}" for n, a in NOT_REWARDS])
def test_spans_carrying_no_reward_read_as_none(form: Form, spec: Any) -> None:
    (span,) = form([spec])
    assert get_reward_value(span) is None
    assert get_rewards(span) == {}
    assert not is_reward_span(span)


def test_a_zero_reward_is_still_a_reward(form: Form) -> None:
    (span,) = form([("agentlightning.reward", {"reward": 0.0})])
    assert get_reward_value(span) == 0.0
    assert is_reward_span(span)
    assert find_final_reward([span]) == 0.0


def test_find_reward_spans_keeps_reward_spans_of_every_format_in_order(form: Form) -> None:
    specs = [NOT_REWARDS[0], AL02_REWARD, NOT_REWARDS[5], AL03_ANNOTATION, AGENTOPS_TASK_JSON, NOT_REWARDS[1]]
    spans = form(specs)
    found = find_reward_spans(spans)
    assert [get_reward_value(s) for s in found] == [0.25, 1.0, 0.6]
    assert all(any(s is f for s in spans) for f in found)  # the same objects, not copies


def test_find_final_reward_is_the_last_reward_in_order(form: Form) -> None:
    spans = form([AL02_REWARD, NOT_REWARDS[0], AGENTOPS_ENTITY_JSON, AL03_ANNOTATION, NOT_REWARDS[5]])
    assert find_final_reward(spans) == 1.0
    assert find_final_reward(list(reversed(spans))) == 0.25


def test_find_final_reward_is_none_without_any_reward(form: Form) -> None:
    assert find_final_reward(form(NOT_REWARDS[:2])) is None
    assert find_final_reward([]) is None
    assert find_reward_spans([]) == []


def test_readers_accept_any_iterable_of_spans(form: Form) -> None:
    spans = form([AL02_REWARD, AL03_ANNOTATION])

    def stream() -> Iterator[Any]:
        yield from spans

    assert find_final_reward(stream()) == 1.0
    assert len(find_reward_spans(stream())) == 2


# --- messages and objects --------------------------------------------------------------------------


def test_message_readers_read_the_body_key_and_legacy_message_spans(form: Form) -> None:
    ours, legacy, stray = form(
        [
            ("agentlightning.message", {"agentlightning.message.body": "ours", "message": "ours"}),
            ("agentlightning.message", {"message": "legacy"}),
            ("llm.call", {"message": "not a message span"}),
        ]
    )
    assert get_message_value(ours) == "ours"
    assert get_message_value(legacy) == "legacy"
    assert get_message_value(stray) is None


def test_object_readers_read_literals_bytes_json_and_reprs(form: Form) -> None:
    literal, raw, json_value, text, other = form(
        [
            ("agentlightning.object", {"agentlightning.object.type": "int", "agentlightning.object.literal": 7}),
            (
                "agentlightning.object",
                {"agentlightning.object.literal": "AAE=", "agentlightning.object.encoding": "base64"},
            ),
            ("agentlightning.object", {"agentlightning.object.json": '{"a": [1, null]}'}),
            ("agentlightning.object", {"agentlightning.object.repr": "<handle>"}),
            ("agentlightning.reward", {"reward": 1.0}),
        ]
    )
    assert get_object_value(literal) == 7
    assert get_object_value(raw) == b"\x00\x01"
    assert get_object_value(json_value) == {"a": [1, None]}
    assert get_object_value(text) == "<handle>"
    assert get_object_value(other) is None


# --- our own spans, through a tracer and a store -----------------------------------------------------


def _our_spans() -> list[Span]:
    with capture_spans() as captured, captured.tracer.trace_context(rollout_id="r-ours"):
        emit_message("thinking")
        emit_reward(0.1)
        emit_object({"plan": ["a", "b"]})
        emit_object(b"\x02")
        emit_exception(RuntimeError("oops"))
        emit_reward({"accuracy": 0.9, "cost": -0.2}, primary_key="accuracy")
    return captured.spans


@pytest.mark.parametrize("readable", [False, True], ids=["Span", "ReadableSpan"])
def test_readers_read_what_the_emit_calls_wrote(readable: bool) -> None:
    ours = _our_spans()
    spans: list[SpanLike] = [s.to_readable_span() for s in ours] if readable else list(ours)
    _, message, first, plan, raw, error, final = spans
    assert get_message_value(message) == "thinking"
    assert get_object_value(plan) == {"plan": ["a", "b"]}
    assert get_object_value(raw) == b"\x02"
    assert [get_reward_value(s) for s in find_reward_spans(spans)] == [0.1, 0.9]
    assert get_rewards(first) == {"primary": 0.1}
    assert get_rewards(final) == {"accuracy": 0.9, "cost": -0.2}
    assert find_final_reward(spans) == 0.9
    assert not is_reward_span(error) and get_message_value(error) is None and get_object_value(error) is None


def test_an_object_value_that_does_not_decode_comes_back_as_its_text(form: Form) -> None:
    broken_json, broken_base64 = form(
        [
            ("agentlightning.object", {"agentlightning.object.json": "{cut off"}),
            (
                "agentlightning.object",
                {"agentlightning.object.literal": "AAE", "agentlightning.object.encoding": "base64"},
            ),
        ]
    )
    assert get_object_value(broken_json) == "{cut off"
    assert get_object_value(broken_base64) == "AAE"
