"""Span and batch codec: lossless round trips, and damaged or malformed input refused by path."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan

from agentemit import codec, semconv
from agentemit.codec import CodecError
from agentemit.span import AttributeValue, Span, SpanEvent

PROPERTY = settings(max_examples=250, deadline=None, derandomize=True, database=None)


# --- an exact, NaN-aware equality -------------------------------------------------------------


def canonical(value: Any) -> Any:
    """A form where == means identical: NaN equals NaN, -0.0 differs from 0.0, True from 1, tuple from list."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return (
            type(value).__name__,
            tuple((f.name, canonical(getattr(value, f.name))) for f in dataclasses.fields(value)),
        )
    if isinstance(value, dict):
        return ("dict", sorted((repr(k), canonical(v)) for k, v in value.items()))
    if isinstance(value, (list, tuple)):
        return (type(value).__name__, [canonical(v) for v in value])
    if isinstance(value, float):
        return ("float", "nan" if math.isnan(value) else repr(value))
    return (type(value).__name__, value)


def assert_identical(actual: Any, expected: Any) -> None:
    assert canonical(actual) == canonical(expected), f"\n{actual!r}\n!=\n{expected!r}"


def test_canonical_equality_tells_apart_what_python_equality_conflates() -> None:
    assert canonical(math.nan) == canonical(float("nan"))
    assert canonical(-0.0) != canonical(0.0)
    assert canonical(True) != canonical(1)
    assert canonical(1.0) != canonical(1)
    assert canonical((1,)) != canonical([1])
    assert canonical({"a": 1, "b": 2}) == canonical({"b": 2, "a": 1})


# --- strategies -------------------------------------------------------------------------------

HEX = "0123456789abcdef"
TEXT = st.text(max_size=30)  # arbitrary unicode except lone surrogates (encode_span refuses those)
INT64 = st.integers(-(2**63), 2**63 - 1)
TIME = st.integers(0, 2**63 - 1)
FLOATS = st.floats()  # includes nan, inf, -inf and -0.0
SCALARS = st.one_of(TEXT, INT64, FLOATS, st.booleans())
VALUES: st.SearchStrategy[AttributeValue] = st.one_of(
    SCALARS,
    st.lists(TEXT, max_size=4).map(tuple),
    st.lists(INT64, max_size=4).map(tuple),
    st.lists(FLOATS, max_size=4).map(tuple),
    st.lists(st.booleans(), max_size=4).map(tuple),
)
ATTRS = st.dictionaries(TEXT, VALUES, max_size=6)
RESOURCE = st.dictionaries(st.text(min_size=1, max_size=30), VALUES, max_size=6)  # no empty keys: refused
EVENTS = st.lists(st.builds(SpanEvent, TEXT, TIME, ATTRS), max_size=3)
SPAN_IDS = st.text(HEX, min_size=16, max_size=16)


@st.composite
def spans(draw: st.DrawFn, *, otel_safe: bool = False) -> Span:
    """Arbitrary spans; ``otel_safe`` keeps to what OpenTelemetry's SDK objects can hold."""
    status = draw(st.sampled_from(["UNSET", "OK", "ERROR"]))
    rollout_id, attempt_id, sequence_id = draw(TEXT), draw(TEXT), draw(INT64)
    attributes = draw(ATTRS)
    if draw(st.booleans()):  # as the pipeline's builder stamps them
        attributes.update(
            {semconv.ROLLOUT_ID: rollout_id, semconv.ATTEMPT_ID: attempt_id, semconv.SPAN_SEQUENCE_ID: sequence_id}
        )
    start_time, end_time = draw(TIME), draw(TIME)
    if otel_safe:
        end_time = max(end_time, start_time)  # end_time 0 reads back as "never ended": start_time
    return Span(
        trace_id=draw(st.text(HEX, min_size=32, max_size=32)),
        span_id=draw(SPAN_IDS),
        parent_id=draw(st.none() | SPAN_IDS),
        name=draw(TEXT),
        start_time=start_time,
        end_time=end_time,
        rollout_id=rollout_id,
        attempt_id=attempt_id,
        sequence_id=sequence_id,
        attributes=attributes,
        status=status,  # type: ignore[arg-type]
        status_description=draw(st.none() | TEXT),  # kept only with ERROR: Span drops it otherwise
        events=draw(EVENTS),
        resource=draw(RESOURCE),
    )


def simple_span(index: int = 0, **changes: Any) -> Span:
    span = Span(
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id=f"{index + 1:016x}",
        parent_id=None,
        name=f"alpha{index}",
        start_time=1_700_000_000_000_000_000 + index,
        end_time=1_700_000_000_500_000_000 + index,
        rollout_id="ro-1",
        attempt_id="at-1",
        sequence_id=index,
        attributes={"weight": 0.25, "tags": ("x", "y")},
    )
    return dataclasses.replace(span, **changes)


# --- round trips ------------------------------------------------------------------------------


@PROPERTY
@given(spans())
def test_encode_then_decode_span_is_identity(span: Span) -> None:
    assert_identical(codec.decode_span(codec.encode_span(span)), span)


@PROPERTY
@given(st.lists(spans(), max_size=4))
def test_encode_then_decode_batch_is_identity(batch: list[Span]) -> None:
    assert_identical(codec.decode_batch(codec.encode_batch(batch)), batch)


@PROPERTY
@given(st.lists(spans(), max_size=3))
def test_encoded_spans_are_exactly_the_bytes_decode_batch_re_encodes_for_its_checksum(batch: list[Span]) -> None:
    for span in batch:
        assert codec.encode_span(span) == codec.dumps(span.to_dict())
        assert codec.dumps(orjson.loads(codec.encode_span(span))) == codec.encode_span(span)


@PROPERTY
@given(spans())
def test_to_dict_is_plain_json_even_for_the_strictest_encoder(span: Span) -> None:
    text = json.dumps(span.to_dict(), allow_nan=False)  # NaN and infinities are tagged, never bare
    assert_identical(Span.from_dict(json.loads(text)), span)


@PROPERTY
@given(spans(otel_safe=True))
def test_to_readable_span_then_back_is_identity(span: Span) -> None:
    assert_identical(Span.from_readable_span(span.to_readable_span()), span)


def test_non_finite_floats_and_negative_zero_survive_in_scalars_tuples_events_and_resource() -> None:
    odd = (math.nan, math.inf, -math.inf, -0.0, 0.0, 5e-324, 1.7976931348623157e308)
    span = simple_span(
        attributes={"nan": math.nan, "neg_zero": -0.0, "floats": odd},
        events=[SpanEvent("e", 1, {"inf": math.inf})],
        resource={"minus_inf": -math.inf},
    )
    assert_identical(codec.decode_span(codec.encode_span(span)), span)
    assert_identical(codec.decode_batch(codec.encode_batch([span])), [span])


def test_bools_stay_bools_and_ints_stay_ints() -> None:
    span = simple_span(attributes={"t": True, "one": 1, "one_f": 1.0, "bools": (True, False), "ints": (1, 0)})
    assert_identical(codec.decode_span(codec.encode_span(span)), span)


def test_int64_extremes_round_trip_exactly() -> None:
    span = simple_span(attributes={"min": -(2**63), "max": 2**63 - 1}, sequence_id=2**63 - 1)
    assert_identical(codec.decode_span(codec.encode_span(span)), span)


# --- damaged and malformed batches ------------------------------------------------------------


def _flip(data: bytes, marker: bytes, offset: int, new: bytes) -> bytes:
    """Replace one byte at ``offset`` within the first occurrence of ``marker`` (after the header)."""
    position = data.index(marker, data.index(b'"spans":')) + offset
    assert data[position : position + 1] != new
    return data[:position] + new + data[position + 1 :]


@pytest.mark.parametrize(
    ("marker", "offset", "new"),
    [
        (b'"name":"alpha1"', 8, b"b"),  # a letter of a string
        (b'"start_time":1700000000000000001', 14, b"8"),  # a digit of an integer
        (b'"weight":0.25', 11, b"7"),  # a digit of a float
        (b'"tags":["x","y"]', 13, b"z"),  # an item of a tuple
        (b'"span_id":"0000000000000003"', 25, b"4"),  # an id
    ],
)
def test_a_flipped_byte_in_the_spans_array_is_refused_by_the_checksum(marker: bytes, offset: int, new: bytes) -> None:
    data = codec.encode_batch([simple_span(0), simple_span(1), simple_span(2)])
    damaged = _flip(data, marker, offset, new)
    orjson.loads(damaged)  # still valid JSON: only the checksum can tell
    with pytest.raises(CodecError, match=r"\$\.checksum"):
        codec.decode_batch(damaged)


def _batch_doc(spans: list[Span]) -> dict[str, Any]:
    doc: dict[str, Any] = orjson.loads(codec.encode_batch(spans))
    return doc


def test_a_wrong_version_is_refused_naming_the_version() -> None:
    doc = _batch_doc([simple_span()])
    doc["version"] = 2
    with pytest.raises(CodecError, match=r"^\$\.version: batch version 2 .*expected 1"):
        codec.decode_batch(orjson.dumps(doc))


def test_a_wrong_count_is_refused_naming_the_count_path() -> None:
    doc = _batch_doc([simple_span(0), simple_span(1)])
    doc["count"] = 3
    with pytest.raises(CodecError, match=r"\$\.count: says 3 spans, batch holds 2"):
        codec.decode_batch(orjson.dumps(doc))


def test_a_wrong_checksum_is_refused() -> None:
    doc = _batch_doc([simple_span()])
    doc["checksum"] = "0" * 64
    with pytest.raises(CodecError, match=r"\$\.checksum"):
        codec.decode_batch(orjson.dumps(doc))


def _doc_with_span_fields(index: int, change: dict[str, Any], drop: str | None = None) -> bytes:
    """A batch whose span ``index`` was edited, with a checksum matching the edit (so only the span is wrong)."""
    spans_obj = [s.to_dict() for s in (simple_span(0), simple_span(1))]
    spans_obj[index].update(change)
    if drop:
        del spans_obj[index][drop]
    body = codec.dumps(spans_obj)
    return codec.dumps(
        {"format": codec.BATCH_FORMAT, "version": 1, "count": 2, "checksum": codec.checksum(body), "spans": spans_obj}
    )


@pytest.mark.parametrize("field", ["trace_id", "span_id", "name", "start_time", "rollout_id", "sequence_id"])
def test_a_missing_span_field_is_refused_naming_the_span_path_and_the_field(field: str) -> None:
    with pytest.raises(CodecError, match=rf"\$\.spans\[1\]: .*{field}"):
        codec.decode_batch(_doc_with_span_fields(1, {}, drop=field))


def test_a_field_of_the_wrong_type_is_refused_naming_the_span_path() -> None:
    with pytest.raises(CodecError, match=r"\$\.spans\[0\]: "):
        codec.decode_batch(_doc_with_span_fields(0, {"start_time": "yesterday"}))


def test_an_unknown_attribute_tag_is_refused_naming_the_span_path() -> None:
    with pytest.raises(CodecError, match=r"\$\.spans\[1\]: .*not an attribute value"):
        codec.decode_batch(_doc_with_span_fields(1, {"attributes": {"x": {"$float": "huge"}}}))


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"not json", "not valid JSON"),
        (b'{"format": "agentemit.batch", "version": 1, "count": 0, "spans": [', "not valid JSON"),  # cut short
        (b"[]", "not an agentemit.batch document"),
        (b'{"format": "other", "version": 1, "spans": []}', "not an agentemit.batch document"),
        (b'{"format": "agentemit.batch", "version": 1}', r"\$\.spans: expected a list"),
        (b'{"format": "agentemit.batch", "version": 1, "spans": {}}', r"\$\.spans: expected a list"),
        (
            b'{"format": "agentemit.batch", "version": 1, "count": 1, "checksum": "%s", "spans": [5]}'
            % codec.checksum(b"[5]").encode(),
            r"\$\.spans\[0\]: a span must be a JSON object",
        ),
    ],
)
def test_malformed_batches_are_refused_with_a_codec_error(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        codec.decode_batch(data)


@pytest.mark.parametrize(("data", "message"), [(b"[1]", "must be a JSON object"), (b"{", "not valid JSON")])
def test_malformed_spans_are_refused_with_a_codec_error(data: bytes, message: str) -> None:
    with pytest.raises(CodecError, match=message):
        codec.decode_span(data)


@pytest.mark.parametrize("key", ["checksum", "count"])
def test_a_batch_without_checksum_or_count_is_refused(key: str) -> None:
    doc = _batch_doc([simple_span()])
    del doc[key]
    with pytest.raises(CodecError, match=rf"^\$\.{key}: missing"):
        codec.decode_batch(orjson.dumps(doc))


@pytest.mark.parametrize(("key", "flipped"), [("checksum", "checksun"), ("count", "coune")])
def test_a_flipped_byte_in_a_header_key_name_does_not_turn_verification_off(key: str, flipped: str) -> None:
    data = codec.encode_batch([simple_span(0), simple_span(1)])
    damaged = data.replace(f'"{key}"'.encode(), f'"{flipped}"'.encode(), 1)
    with pytest.raises(CodecError, match=rf"\$\.{key}: missing"):
        codec.decode_batch(damaged)


@pytest.mark.parametrize(("field", "value"), [("checksum", 5), ("count", "2"), ("count", True)])
def test_a_checksum_or_count_of_the_wrong_type_is_refused(field: str, value: Any) -> None:
    doc = _batch_doc([simple_span()])
    doc[field] = value
    with pytest.raises(CodecError, match=rf"^\$\.{field}: is "):
        codec.decode_batch(orjson.dumps(doc))


def test_a_version_of_true_is_not_taken_for_version_1() -> None:
    doc = _batch_doc([simple_span()])
    doc["version"] = True
    with pytest.raises(CodecError, match=r"^\$\.version: "):
        codec.decode_batch(orjson.dumps(doc))


# --- encoding refuses what decoding would refuse ----------------------------------------------


@pytest.mark.parametrize("number", [2**63, 2**64 - 1, 2**64, 2**70, -(2**63) - 1, -(2**70)])
@pytest.mark.parametrize("place", ["scalar", "tuple", "event", "resource"])
def test_encode_span_refuses_an_int_outside_int64_naming_the_attribute(number: int, place: str) -> None:
    span = {
        "scalar": simple_span(attributes={"big": number}),
        "tuple": simple_span(attributes={"big": (1, number)}),
        "event": simple_span(events=[SpanEvent("e", 1, {"big": number})]),
        "resource": simple_span(resource={"big": number}),
    }[place]
    with pytest.raises(CodecError, match=r"\['big'\].*outside the signed 64-bit range"):
        codec.encode_span(span)
    with pytest.raises(CodecError, match="'big'"):
        codec.encode_batch([simple_span(1), span])


@pytest.mark.parametrize("field", ["start_time", "end_time", "sequence_id"])
@pytest.mark.parametrize("number", [2**63, 2**64 + 1, -(2**63) - 1])
def test_encode_span_refuses_an_integer_field_outside_int64_naming_the_field(field: str, number: int) -> None:
    with pytest.raises(CodecError, match=rf"{field}: {number} is outside"):
        codec.encode_span(simple_span(**{field: number}))


def test_encode_span_refuses_an_event_timestamp_outside_int64_naming_the_event() -> None:
    with pytest.raises(CodecError, match=r"events\[0\]\.timestamp"):
        codec.encode_span(simple_span(events=[SpanEvent("e", 2**63)]))


def test_encode_span_still_tags_non_finite_floats_next_to_int64_extremes() -> None:
    span = simple_span(attributes={"nan": math.nan, "max": 2**63 - 1, "min": -(2**63)})
    assert_identical(codec.decode_span(codec.encode_span(span)), span)


@pytest.mark.parametrize(
    ("changes", "path"),
    [
        ({"attributes": {"path": "caf\udce9"}}, r"attributes\['path'\]"),
        ({"attributes": {"paths": ("ok", "caf\udce9")}}, r"attributes\['paths'\]\[1\]"),
        ({"attributes": {"caf\udce9": 1}}, r"attributes: key 'caf\\udce9'"),
        ({"resource": {"path": "\ud800"}}, r"resource\['path'\]"),
        ({"events": [SpanEvent("e", 1, {"path": "\udfff"})]}, r"events\[0\]\.attributes\['path'\]"),
        ({"name": "caf\udce9"}, "name: "),
        ({"status": "ERROR", "status_description": "caf\udce9"}, "status_description: "),
    ],
)
def test_encode_span_with_a_lone_surrogate_raises_codec_error_naming_the_culprit(
    changes: dict[str, Any], path: str
) -> None:
    span = simple_span(**changes)
    with pytest.raises(CodecError, match=rf"{path}.*lone surrogate"):
        codec.encode_span(span)
    nonfinite = dataclasses.replace(span, attributes={**span.attributes, "nan": math.nan})  # the tagging path
    with pytest.raises(CodecError, match=rf"{path}.*lone surrogate"):
        codec.encode_span(nonfinite)


@pytest.mark.parametrize("bad", [None, ((1,), (2,)), {"a": 1}, b"bytes"])
def test_encode_span_refuses_a_value_that_is_not_an_attribute_value(bad: Any) -> None:
    with pytest.raises(CodecError, match=r"attributes\['x'\].* is not an attribute value"):
        codec.encode_span(simple_span(attributes={"x": bad}))


def test_encode_span_refuses_an_empty_resource_key() -> None:
    with pytest.raises(CodecError, match=r"resource\[''\]: an empty key"):
        codec.encode_span(simple_span(resource={"": "unnamed"}))


def test_an_empty_attribute_key_is_fine() -> None:
    span = simple_span(attributes={"": "unnamed"}, events=[SpanEvent("e", 1, {"": 1})])
    assert_identical(codec.decode_span(codec.encode_span(span)), span)


def test_a_list_attribute_value_is_encoded_as_an_array_and_reads_back_as_a_tuple() -> None:
    span = simple_span(attributes={"ids": [1, 2]})
    assert codec.decode_span(codec.encode_span(span)).attributes == {"ids": (1, 2)}


WIDE_INTS = st.one_of(st.integers(), st.integers(2**62, 2**66), st.integers(-(2**66), -(2**62)))
ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=4)  # lone surrogates included
ANY_SCALAR = st.one_of(WIDE_INTS, ANY_TEXT, FLOATS, st.booleans())
ANY_VALUE = st.one_of(
    ANY_SCALAR,
    st.lists(ANY_SCALAR, max_size=4).map(tuple),  # mixed tuples too
    st.lists(WIDE_INTS, max_size=4).map(tuple),
    st.lists(FLOATS, max_size=4).map(tuple),
)


@PROPERTY
@given(st.dictionaries(ANY_TEXT, ANY_VALUE, max_size=4), st.dictionaries(ANY_TEXT, ANY_VALUE, max_size=2))
def test_encode_span_either_refuses_with_codec_error_or_decodes_to_the_same_span(
    attributes: dict[str, AttributeValue], resource: dict[str, AttributeValue]
) -> None:
    span = simple_span(attributes=attributes, resource=resource, events=[SpanEvent("e", 1, attributes)])
    try:
        data = codec.encode_span(span)
    except CodecError:
        return
    assert_identical(codec.decode_span(data), span)
    assert data == codec.dumps(span.to_dict())


# --- decoding refuses what a span cannot hold -------------------------------------------------


@pytest.mark.parametrize(
    "literal",
    [b"1180591620717411303424", b"18446744073709551616", b"-9223372036854775809", b"9223372036854775808"],
)
def test_decode_span_refuses_a_json_integer_beyond_int64_naming_the_attribute(literal: bytes) -> None:
    data = codec.encode_span(simple_span(attributes={"big": 1})).replace(b'"big":1', b'"big":' + literal)
    with pytest.raises(CodecError, match=r"\$: attributes\['big'\]: .*outside the signed 64-bit range"):
        codec.decode_span(data)
    with pytest.raises(CodecError, match=r"attributes\['big'\]"):
        codec.decode_span(data.decode())


def test_decode_span_refuses_a_wide_integer_inside_an_array_and_in_a_field() -> None:
    data = codec.encode_span(simple_span(attributes={"big": (1, 2)}))
    with pytest.raises(CodecError, match=r"attributes\['big'\]\[1\]"):
        codec.decode_span(data.replace(b'"big":[1,2]', b'"big":[1,200000000000000000000]'))
    with pytest.raises(CodecError, match=r"\$: sequence_id: "):
        codec.decode_span(data.replace(b'"sequence_id":0', b'"sequence_id":200000000000000000000'))


@pytest.mark.parametrize("literal", [str(2**64), str(-(2**63) - 1), str(2**70)])
@pytest.mark.parametrize("place", ["attribute", "event", "resource"])
def test_a_wide_integer_that_json_parsers_read_as_a_float_is_refused_wherever_it_sits(literal: str, place: str) -> None:
    # The decoder's fast path skips the scan for wide literals; it must still send these spans to it.
    span = {
        "attribute": simple_span(attributes={"big": 7}),
        "event": simple_span(events=[SpanEvent("e", 1, {"big": 7})]),
        "resource": simple_span(resource={"big": 7}),
    }[place]
    data = codec.encode_span(span).replace(b'"big":7', b'"big":' + literal.encode())
    with pytest.raises(CodecError, match=rf"\['big'\]: {re.escape(literal)} is outside"):
        codec.decode_span(data)
    spans = [simple_span(0), span]
    body = codec.encode_batch(spans)
    body = body.replace(b'"big":7', b'"big":' + literal.encode())
    body = body.replace(codec.checksum(b"[" + b",".join(map(codec.encode_span, spans)) + b"]").encode(), b"X" * 64)
    digest = codec.checksum(body[body.index(b',"spans":') + 9 : -1])
    with pytest.raises(CodecError, match=rf"\$\.spans\[1\]: .*\['big'\]: {re.escape(literal)} is outside"):
        codec.decode_batch(body.replace(b"X" * 64, digest.encode()))


def test_large_floats_still_decode_as_floats() -> None:
    span = simple_span(attributes={"huge": 1e300, "edge": float(2**63), "neg": -1e19}, resource={"r": 2e30})
    assert_identical(codec.decode_span(codec.encode_span(span)), span)
    assert_identical(codec.decode_batch(codec.encode_batch([span]))[0], span)


def test_decode_batch_refuses_a_json_integer_beyond_int64_naming_the_span_and_attribute() -> None:
    spans_obj = [simple_span(0).to_dict(), simple_span(1, attributes={"big": 7}).to_dict()]
    body = codec.dumps(spans_obj).replace(b'"big":7', b'"big":1180591620717411303424')
    # A checksum over what orjson re-encodes (the float it reads) so that only the int check can tell.
    digest = codec.checksum(codec.dumps(orjson.loads(body)))
    data = b'{"format":"agentemit.batch","version":1,"count":2,"checksum":"%s","spans":%s}' % (digest.encode(), body)
    with pytest.raises(CodecError, match=r"\$\.spans\[1\]: attributes\['big'\]: 1180591620717411303424 is outside"):
        codec.decode_batch(data)


def test_long_digit_runs_inside_strings_decode_normally() -> None:
    span = simple_span(attributes={"digits": "1" * 40, "negative": "-" + "9" * 30, "float": 1e300})
    assert_identical(codec.decode_span(codec.encode_span(span)), span)
    assert_identical(codec.decode_batch(codec.encode_batch([span])), [span])


@pytest.mark.parametrize("field", ["attributes", "resource"])
@pytest.mark.parametrize("value", [["not", "an", "object"], None, "text"])
def test_attributes_that_are_not_an_object_are_refused_with_a_codec_error(field: str, value: Any) -> None:
    with pytest.raises(CodecError, match=rf"\$\.spans\[0\]: {field}: expected an object"):
        codec.decode_batch(_doc_with_span_fields(0, {field: value}))


@pytest.mark.parametrize(
    ("bad", "path"),
    [(None, ": null"), ([[1], [2]], r"\[0\]: array \[1\]"), ([1, None], r"\[1\]: null"), ({}, ": object {}")],
)
def test_attribute_values_that_are_not_attribute_values_are_refused(bad: Any, path: str) -> None:
    with pytest.raises(CodecError, match=rf"\$\.spans\[0\]: attributes\['x'\]{path} is not an attribute value"):
        codec.decode_batch(_doc_with_span_fields(0, {"attributes": {"x": bad}}))


def test_an_empty_resource_key_is_refused_when_decoding() -> None:
    with pytest.raises(CodecError, match=r"\$\.spans\[0\]: resource\[''\]: an empty key"):
        codec.decode_batch(_doc_with_span_fields(0, {"resource": {"": "x"}}))


@pytest.mark.parametrize("status", ["BROKEN", "ok", None, 1])
def test_an_unknown_status_is_refused_naming_the_span_path(status: Any) -> None:
    with pytest.raises(CodecError, match=r"\$\.spans\[0\]: status: .* is not one of UNSET, OK, ERROR"):
        codec.decode_batch(_doc_with_span_fields(0, {"status": status}))


@pytest.mark.parametrize(
    ("event", "message"),
    [
        ({"name": "e", "attributes": {}}, r"events\[0\] is missing field 'timestamp'"),
        ({"timestamp": 1}, r"events\[0\] is missing field 'name'"),
        ({"name": "e", "timestamp": "now"}, r"events\[0\]\.timestamp: expected an int, got str"),
        ({"name": "e", "timestamp": 1, "attributes": {"k": None}}, r"events\[0\]\.attributes\['k'\]: null"),
        ("not an event", r"events\[0\]: expected an object, got str"),
    ],
)
def test_a_bad_event_is_refused_naming_the_event_path(event: Any, message: str) -> None:
    with pytest.raises(CodecError, match=rf"\$\.spans\[0\]: {message}"):
        codec.decode_batch(_doc_with_span_fields(0, {"events": [event]}))


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"start_time": True}, "start_time: expected an int, got bool"),
        ({"start_time": 1.5}, "start_time: expected an int, got float"),
        ({"trace_id": 7}, "trace_id: expected a str, got int"),
        ({"parent_id": 7}, "parent_id: expected a str or null, got int"),
        ({"status_description": ["x"]}, "status_description: expected a str or null, got array"),
        ({"events": {}}, "events: expected an array, got object"),
    ],
)
def test_a_field_of_the_wrong_type_is_refused_not_coerced(change: dict[str, Any], message: str) -> None:
    with pytest.raises(CodecError, match=rf"\$\.spans\[0\]: {re.escape(message)}"):
        codec.decode_batch(_doc_with_span_fields(0, change))


def test_optional_fields_may_be_absent() -> None:
    data = {k: v for k, v in simple_span().to_dict().items() if k not in ("attributes", "events", "resource")}
    del data["status"], data["status_description"]
    assert_identical(Span.from_dict(data), simple_span(attributes={}))


# --- status description and the OpenTelemetry round trip ------------------------------------


@pytest.mark.parametrize("status", ["OK", "UNSET"])
def test_a_span_keeps_a_status_description_only_with_error(status: str) -> None:
    span = simple_span(status=status, status_description="fine")
    assert span.status_description is None
    assert Span.from_dict({**span.to_dict(), "status_description": "fine"}).status_description is None
    assert simple_span(status="ERROR", status_description="boom").status_description == "boom"


def test_readable_round_trip_keeps_the_description_of_an_error_and_nothing_else() -> None:
    for span in (
        simple_span(status="OK", status_description="fine"),
        simple_span(status="ERROR", status_description=""),
    ):
        assert_identical(Span.from_readable_span(span.to_readable_span()), span)


def test_readable_round_trip_does_not_add_identity_attributes() -> None:
    span = simple_span()
    readable = span.to_readable_span()
    assert readable.attributes is not None
    assert readable.attributes[semconv.ROLLOUT_ID] == "ro-1"  # OpenTelemetry readers find it there
    assert readable.attributes[semconv.SPAN_SEQUENCE_ID] == 0
    assert_identical(Span.from_readable_span(readable), span)


def test_readable_round_trip_keeps_identity_attributes_that_disagree_with_the_fields() -> None:
    span = simple_span(attributes={semconv.ROLLOUT_ID: "explicit"})
    readable = span.to_readable_span()
    assert readable.attributes is not None and readable.attributes[semconv.ROLLOUT_ID] == "explicit"
    assert_identical(Span.from_readable_span(readable), span)


def test_explicit_identity_arguments_win_over_the_source_span() -> None:
    back = Span.from_readable_span(simple_span().to_readable_span(), rollout_id="r2", attempt_id="a2", sequence_id=9)
    assert (back.rollout_id, back.attempt_id, back.sequence_id) == ("r2", "a2", 9)
    assert semconv.ROLLOUT_ID not in back.attributes


def test_an_sdk_span_keeps_its_identity_attributes_and_takes_identity_from_them() -> None:
    converted = simple_span().to_readable_span()
    plain = ReadableSpan(
        name="third-party",
        context=converted.get_span_context(),
        attributes=dict(converted.attributes or {}),
    )
    back = Span.from_readable_span(plain)
    assert (back.rollout_id, back.attempt_id, back.sequence_id) == ("ro-1", "at-1", 0)
    assert back.attributes[semconv.ROLLOUT_ID] == "ro-1"


def test_to_readable_span_refuses_an_empty_resource_key_that_opentelemetry_would_drop() -> None:
    with pytest.raises(ValueError, match=r"span '0000000000000001': resource\[''\]"):
        simple_span(resource={"": "unnamed"}).to_readable_span()


def test_values_opentelemetry_allows_but_a_span_cannot_hold_are_kept_as_text() -> None:
    converted = simple_span().to_readable_span()
    sdk_span = ReadableSpan(
        name="third-party",
        context=converted.get_span_context(),
        attributes={"big": 2**64, "small": -(2**63) - 1, "holes": [1, None], "wide": (1, 2**63), "ok": [1, 2]},
        events=[Event("e", {"big": 2**70}, 5)],
        resource=Resource({"service.name": "svc", "pid": 2**63}),
    )
    span = Span.from_readable_span(sdk_span, rollout_id="ro-1", attempt_id="at-1", sequence_id=0)
    assert span.attributes == {
        "big": str(2**64),
        "small": str(-(2**63) - 1),
        "holes": "[1, null]",
        "wide": f"[1, {2**63}]",
        "ok": (1, 2),
    }
    assert span.events[0].attributes == {"big": str(2**70)}
    assert span.resource["pid"] == str(2**63)
    assert_identical(codec.decode_span(codec.encode_span(span)), span)


def test_encode_batch_writes_the_span_by_span_bytes_whether_or_not_the_batch_is_usual() -> None:
    usual = [simple_span(i, attributes={"n": i, "f": 0.5, "s": "x"}) for i in range(5)]
    unusual = [*usual, simple_span(9, attributes={"nan": math.nan, "t": (1, 2)})]  # needs the careful path
    for spans in (usual, unusual, tuple(usual)):
        body = codec.encode_batch(spans)
        array = b"[" + b",".join(codec.encode_span(s) for s in spans) + b"]"
        assert body.endswith(b',"spans":' + array + b"}")
        for got, want in zip(codec.decode_batch(body), spans, strict=True):
            assert_identical(got, want)
