"""Redactor: secrets never survive, look-alikes always do, and the stage never loses a span."""

from __future__ import annotations

import json
import re
import threading
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from _secrets_corpus import (
    AWS_KEY_ID,
    LEAKS,
    NON_SECRET_ATTRIBUTES,
    NON_SECRET_TEXTS,
    OPAQUE_BEARER,
    OPENAI_KEY,
    SECRET_ATTRIBUTES,
    Leak,
)
from agentemit import codec, semconv
from agentemit.pipeline._redact_rules import BUILTIN_RULES, PRIVATE_KEY, may_match
from agentemit.pipeline.redact import (
    ERROR_MASK,
    MASK,
    STATUS_DESCRIPTION_KEY,
    RedactionStats,
    Redactor,
    normalize_key,
)
from agentemit.span import AttributeValue, Span, SpanEvent

PROPERTY = settings(max_examples=300, deadline=None, derandomize=True, database=None)
HASH_MARK = re.compile(r"\[REDACTED:[0-9a-f]{12}\]")


def make_span(
    attributes: dict[str, AttributeValue] | None = None,
    *,
    events: list[SpanEvent] | None = None,
    status_description: str | None = None,
    resource: dict[str, AttributeValue] | None = None,
    name: str = "openai.chat",
) -> Span:
    return Span(
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        parent_id=None,
        name=name,
        start_time=1_700_000_000_000_000_000,
        end_time=1_700_000_000_500_000_000,
        rollout_id="ro-7f3a9c",
        attempt_id="at-1",
        sequence_id=3,
        attributes=dict(attributes or {}),
        status="ERROR" if status_description else "UNSET",
        status_description=status_description,
        events=list(events or []),
        resource=dict(resource or {}),
    )


def everywhere(text: str) -> Span:
    """``text`` in every place a value can hide: plain, tuple, JSON, event, status, resource."""
    return make_span(
        {
            "log.message": text,
            "http.request.body.lines": ("first line", text),
            semconv.OBJECT_JSON: orjson.dumps({"text": text, "nested": [{"note": text}]}).decode(),
            semconv.EVENT_PAYLOAD: json.dumps({"payload": text}),
            semconv.MESSAGE_BODY: text,
        },
        events=[SpanEvent("exception", 5, {semconv.EXCEPTION_MESSAGE: text, semconv.EXCEPTION_STACKTRACE: text})],
        status_description=text,
        resource={"process.command_line": text},
    )


# --- the corpus -------------------------------------------------------------------------------


@pytest.mark.parametrize("leak", LEAKS, ids=lambda leak: leak.kind)
def test_no_corpus_secret_survives_anywhere_in_the_encoded_span(leak: Leak) -> None:
    redacted = Redactor()(everywhere(leak.text))
    encoded = codec.encode_span(redacted).decode()
    for secret in leak.secrets:
        assert secret not in encoded, f"{leak.kind}: {secret!r} survived in {encoded}"


@pytest.mark.parametrize("leak", LEAKS, ids=lambda leak: leak.kind)
def test_no_corpus_secret_survives_hash_mode(leak: Leak) -> None:
    encoded = codec.encode_span(Redactor(mode="hash")(everywhere(leak.text))).decode()
    for secret in leak.secrets:
        assert secret not in encoded
    assert HASH_MARK.search(encoded)


def test_corpus_has_forty_plus_leaks_of_every_kind() -> None:
    assert len(LEAKS) >= 40
    kinds = {leak.kind for leak in LEAKS}
    assert {"openai", "aws", "github", "jwt", "bearer", "slack", "google", "pem", "url", "query"} <= kinds


@pytest.mark.parametrize(("key", "value", "secret"), SECRET_ATTRIBUTES, ids=[k for k, _, _ in SECRET_ATTRIBUTES])
def test_secret_key_names_have_their_whole_value_replaced(key: str, value: AttributeValue, secret: str) -> None:
    span = make_span({key: value}, events=[SpanEvent("e", 1, {key: value})], resource={key: value})
    redacted = Redactor()(span)
    assert redacted.attributes[key] == MASK
    assert redacted.events[0].attributes[key] == MASK
    assert redacted.resource[key] == MASK
    assert secret not in codec.encode_span(redacted).decode()


@pytest.mark.parametrize("text", NON_SECRET_TEXTS)
def test_look_alike_texts_survive_unchanged_and_the_span_is_returned_as_is(text: str) -> None:
    span = everywhere(text)
    assert Redactor()(span) is span


def test_look_alike_attributes_survive_unchanged() -> None:
    span = make_span(NON_SECRET_ATTRIBUTES, events=[SpanEvent("e", 1, dict(NON_SECRET_ATTRIBUTES))])
    redactor = Redactor()
    assert redactor(span) is span
    assert redactor.stats() == RedactionStats()


# --- where the rules apply --------------------------------------------------------------------


def test_only_the_secret_part_of_a_match_is_masked() -> None:
    r = Redactor()
    assert r.redact_text(f"Authorization: Bearer {OPAQUE_BEARER}") == f"Authorization: Bearer {MASK}"
    assert r.redact_text(f"bearer {OPAQUE_BEARER} sent") == f"bearer {MASK} sent"
    assert r.redact_text("postgres://app:s3cret-pw@db:5432/x") == f"postgres://app:{MASK}@db:5432/x"
    assert r.redact_text("a?user=bob&password=hunter2&next=/") == f"a?user=bob&password={MASK}&next=/"


def test_span_name_and_attribute_keys_are_never_changed() -> None:
    span = make_span({OPENAI_KEY: OPENAI_KEY}, name=f"call {OPENAI_KEY}")
    redacted = Redactor()(span)
    assert redacted.name == span.name
    assert redacted.attributes == {OPENAI_KEY: MASK}


def test_identity_keys_are_never_touched_even_if_they_look_like_secrets() -> None:
    attrs: dict[str, AttributeValue] = {semconv.ROLLOUT_ID: f"ro-{OPENAI_KEY}", semconv.ATTEMPT_ID: AWS_KEY_ID}
    span = make_span(attrs)
    assert Redactor(callback=lambda k, v: "changed")(span).attributes == {**attrs}


def test_a_redacted_span_is_a_new_object_and_the_original_is_untouched() -> None:
    original: dict[str, AttributeValue] = {"log.message": f"key {OPENAI_KEY}", "n": 1}
    span = make_span(original)
    redacted = Redactor()(span)
    assert redacted is not span
    assert span.attributes == original
    assert redacted.attributes == {"log.message": f"key {MASK}", "n": 1}
    assert list(redacted.attributes) == list(original)  # order kept


def test_event_attributes_status_description_and_resource_are_redacted() -> None:
    span = make_span(
        events=[SpanEvent("exception", 9, {"exception.message": f"bad key {OPENAI_KEY}"}), SpanEvent("ok", 10, {})],
        status_description=f"401 for {AWS_KEY_ID}",
        resource={"process.command_args": ("python", "agent.py", f"--api-key={OPENAI_KEY}")},
    )
    redacted = Redactor()(span)
    assert redacted.events[0].attributes == {"exception.message": f"bad key {MASK}"}
    assert redacted.events[1] is span.events[1]
    assert redacted.status_description == f"401 for {MASK}"
    assert redacted.resource["process.command_args"] == ("python", "agent.py", f"--api-key={MASK}")


@pytest.mark.parametrize(
    "key",
    [
        "password",
        "DB_PASSWORD",
        "db.Password",
        "http.request.header.authorization",
        "http.request.header.proxy-authorization",
        "http.response.header.set-cookie",
        "X-Api-Key",
        "xApiKey",
        "APIKey",
        "apikey",
        "access_token",
        "accessToken",
        "refresh-token",
        "client_secret",
        "clientSecret",
        "aws.secret_access_key",
        "session_id",
        "sessionId",
        "private_key",
        "my_secret_thing",
        "basic_auth",
        "credentials",
    ],
)
def test_key_name_variants_are_recognised(key: str) -> None:
    assert Redactor()(make_span({key: "value-1"})).attributes[key] == MASK


@pytest.mark.parametrize(
    "key",
    [
        "gen_ai.usage.input_tokens",
        "llm.token_count.prompt",
        "tokens",
        "max_tokens",
        "tokenizer",
        "author",
        "oauth",
        "session.id",
        "keyboard",
        "agentlightning.reward.0.name",
        "agentlightning.reward.token",
        "agentlightning.reward.password",
    ],
)
def test_non_secret_key_names_keep_their_values(key: str) -> None:
    span = make_span({key: "value-1"})
    assert Redactor()(span) is span


def test_numbers_are_masked_under_password_keys_but_kept_under_token_keys_and_bools_always_kept() -> None:
    attrs: dict[str, AttributeValue] = {
        "db.password": 1234,
        "pin_secret": 9.5,
        "gen_ai.server.time_to_first_token": 0.25,
        "llm.max_token": 512,
        "http.auth": True,
        "has_password": False,
        "auth.token": ("t1", "t2"),
        "auth.token_ids": (1, 2),
    }
    out = Redactor()(make_span(attrs)).attributes
    assert out == {
        "db.password": MASK,
        "pin_secret": MASK,
        "gen_ai.server.time_to_first_token": 0.25,
        "llm.max_token": 512,
        "http.auth": True,
        "has_password": False,
        "auth.token": MASK,
        "auth.token_ids": (1, 2),
    }


def test_normalize_key_folds_case_dashes_and_camel_case() -> None:
    assert {normalize_key(k) for k in ("X-Api-Key", "xApiKey", "X_API_KEY", "XApiKey")} == {"x_api_key"}


# --- JSON values ------------------------------------------------------------------------------


def test_json_values_are_redacted_structurally_and_stay_valid_json() -> None:
    doc = {
        "model": "gpt-4o",
        "headers": {"Authorization": f"Bearer {OPAQUE_BEARER}", "X-Api-Key": "k-1", "Accept": "*/*"},
        "password": None,
        "has_password": True,
        "messages": [{"role": "user", "content": f"my key is {OPENAI_KEY}"}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5},
        "big": 2**70,
    }
    span = make_span({semconv.OBJECT_JSON: json.dumps(doc)})
    out = json.loads(str(Redactor()(span).attributes[semconv.OBJECT_JSON]))
    assert out == {
        **doc,
        "headers": {"Authorization": MASK, "X-Api-Key": MASK, "Accept": "*/*"},
        "messages": [{"role": "user", "content": f"my key is {MASK}"}],
    }
    assert out["big"] == 2**70 and isinstance(out["big"], int)  # not turned into a float on the way


def test_a_numeric_password_in_json_is_masked_without_breaking_the_json() -> None:
    span = make_span({semconv.EVENT_PAYLOAD: '{"password": 12345, "retries": 3}'})
    payload = Redactor()(span).attributes[semconv.EVENT_PAYLOAD]
    assert orjson.loads(str(payload)) == {"password": MASK, "retries": 3}


def test_json_nested_inside_a_json_string_is_redacted_too() -> None:
    inner = json.dumps({"api_key": "k-123456789"})
    span = make_span({"input.value": json.dumps({"arguments": inner})})
    out = json.loads(str(Redactor()(span).attributes["input.value"]))
    assert json.loads(out["arguments"]) == {"api_key": MASK}


def test_unchanged_json_is_kept_byte_for_byte() -> None:
    text = '{ "usage" : {"total_tokens": 15},  "token_count": 3 }'
    span = make_span({semconv.OBJECT_JSON: text})
    assert Redactor()(span) is span


def test_text_that_only_looks_like_json_gets_the_pattern_rules() -> None:
    text = f"[INFO] {{'password': 'hunter2'}} key={OPENAI_KEY}"
    assert Redactor().redact_text(text) == f"[INFO] {{'password': '{MASK}'}} key={MASK}"


# --- user rules -------------------------------------------------------------------------------


def test_user_patterns_mask_the_whole_match_or_only_the_secret_group() -> None:
    r = Redactor(patterns=[r"\b\d{3}-\d{2}-\d{4}\b", re.compile(r"acct:(?P<secret>\d{6,})")])
    assert r.redact_text("ssn 123-45-6789 acct:12345678") == f"ssn {MASK} acct:{MASK}"


def test_user_patterns_apply_inside_json_and_keep_it_valid() -> None:
    r = Redactor(patterns=[r"\b\d{3}-\d{2}-\d{4}\b"])
    out = r(make_span({semconv.OBJECT_JSON: '{"ssn": "123-45-6789", "n": 1}'})).attributes[semconv.OBJECT_JSON]
    assert orjson.loads(str(out)) == {"ssn": MASK, "n": 1}


def test_a_user_pattern_that_matches_empty_strings_inserts_nothing() -> None:
    r = Redactor(patterns=[r"x*"])
    assert r.redact_text("abc xx d") == f"abc {MASK} d"


def test_user_keys_mask_any_value_type_including_bools() -> None:
    r = Redactor(keys=["customer_email", "acme.tenant"])
    span = make_span({"user.customerEmail": "a@b.c", "acme.tenant": True, "tenant": "t1"})
    assert r(span).attributes == {"user.customerEmail": MASK, "acme.tenant": MASK, "tenant": "t1"}
    json_span = make_span({semconv.OBJECT_JSON: '{"customerEmail": "a@b.c"}'})
    assert orjson.loads(str(r(json_span).attributes[semconv.OBJECT_JSON])) == {"customerEmail": MASK}


def test_callback_can_replace_drop_or_keep_values() -> None:
    def callback(key: str, value: AttributeValue) -> AttributeValue | None:
        if key == "user.email":
            return "<email>"
        if key == "debug.blob":
            return None
        return value

    redactor = Redactor(callback=callback)
    span = make_span({"user.email": "a@b.c", "debug.blob": "x", "keep": 1}, status_description="fine")
    out = redactor(span)
    assert out.attributes == {"user.email": "<email>", "keep": 1}
    assert out.status_description == "fine"
    assert redactor.stats() == RedactionStats(values_redacted=2, spans_redacted=1)


def test_callback_sees_the_status_description_under_its_own_key() -> None:
    seen: list[str] = []

    def callback(key: str, value: AttributeValue) -> AttributeValue | None:
        seen.append(key)
        return value

    Redactor(callback=callback)(make_span(status_description="boom"))
    assert seen == [STATUS_DESCRIPTION_KEY]


def test_a_raising_callback_loses_only_the_value_never_the_span() -> None:
    def callback(key: str, value: AttributeValue) -> AttributeValue | None:
        if key == "bad":
            raise RuntimeError("rule bug")
        return value

    redactor = Redactor(callback=callback)
    out = redactor(make_span({"good": "g", "bad": "b", "n": 2}))
    assert out.attributes == {"good": "g", "bad": ERROR_MASK, "n": 2}
    assert redactor.stats() == RedactionStats(values_redacted=1, spans_redacted=1, rule_errors=1)


def test_a_callback_returning_a_non_attribute_value_counts_as_a_rule_error() -> None:
    redactor = Redactor(callback=lambda key, value: {"not": "allowed"})  # type: ignore[arg-type,return-value]
    assert redactor(make_span({"k": "v"})).attributes == {"k": ERROR_MASK}
    assert redactor.stats().rule_errors == 1


def test_hash_mode_gives_equal_secrets_equal_tags_and_different_secrets_different_tags() -> None:
    r = Redactor(mode="hash")
    out = r(make_span({"a": f"key {OPENAI_KEY}", "b": f"again {OPENAI_KEY}", "c": f"other {AWS_KEY_ID}"})).attributes
    tag_a, tag_b, tag_c = (HASH_MARK.search(str(out[k])) for k in "abc")
    assert tag_a and tag_b and tag_c
    assert tag_a.group() == tag_b.group() != tag_c.group()


def test_disabled_redactor_returns_every_span_untouched() -> None:
    span = everywhere(f"key {OPENAI_KEY} " + "x" * 100_000)
    assert Redactor(enabled=False)(span) is span


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"mode": "blur"}, "mode 'blur'"),
        ({"patterns": ["(unclosed"]}, "pattern '(unclosed'"),
        ({"max_value_len": 5}, "max_value_len 5"),
        ({"max_tuple_len": 0}, "max_tuple_len 0"),
    ],
)
def test_bad_configuration_is_refused_naming_the_culprit(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=re.escape(message)):
        Redactor(**kwargs)


# --- size limits ------------------------------------------------------------------------------


def test_long_strings_are_cut_to_the_limit_with_the_explicit_marker() -> None:
    redactor = Redactor(max_value_len=100)
    out = redactor(make_span({"long": "a" * 1000, "short": "b" * 100})).attributes
    assert len(str(out["long"])) == 100
    assert str(out["long"]).endswith(semconv.TRUNCATED_SUFFIX)
    assert out["short"] == "b" * 100
    assert redactor.stats() == RedactionStats(truncated=1)


def test_a_secret_straddling_the_cut_is_masked_not_half_kept() -> None:
    text = "a" * 90 + f" {OPENAI_KEY} tail"
    out = Redactor(max_value_len=100).redact_text(text)
    assert len(out) <= 100 and out.endswith(semconv.TRUNCATED_SUFFIX)
    assert OPENAI_KEY[:12] not in out


def test_a_private_key_far_past_the_scan_window_is_masked_to_the_end() -> None:
    pem = "-----BEGIN PRIVATE KEY-----\n" + "QUJD" * 10_000 + "\n-----END PRIVATE KEY-----"
    out = Redactor(max_value_len=200).redact_text("x" * 150 + pem)
    assert "QUJD" not in out
    assert out.endswith(semconv.TRUNCATED_SUFFIX)


def test_cut_json_values_become_a_valid_json_string_and_the_object_span_is_marked() -> None:
    doc = json.dumps({"items": [f"item-{i}" for i in range(1000)]})
    span = make_span({semconv.OBJECT_JSON: doc, semconv.EVENT_PAYLOAD: doc})
    out = Redactor(max_value_len=300)(span).attributes
    for key in (semconv.OBJECT_JSON, semconv.EVENT_PAYLOAD):
        value = str(out[key])
        assert len(value) <= 300
        decoded = json.loads(value)
        assert isinstance(decoded, str) and decoded.endswith(semconv.TRUNCATED_SUFFIX)
    assert out[semconv.OBJECT_TRUNCATED] is True


def test_long_tuples_keep_their_first_items_and_gain_a_marker_attribute() -> None:
    redactor = Redactor(max_tuple_len=3)
    out = redactor(make_span({"ids": (1, 2, 3, 4, 5), "ok": (1, 2, 3)})).attributes
    assert out == {"ids": (1, 2, 3), "ok": (1, 2, 3), "ids.truncated": True}
    assert redactor.stats() == RedactionStats(truncated=1)


def test_truncation_is_idempotent() -> None:
    redactor = Redactor(max_value_len=64, max_tuple_len=2)
    span = make_span(
        {
            "s": "q" * 50 + AWS_KEY_ID + "ZZZZ",  # a secret right at the cut
            semconv.OBJECT_JSON: json.dumps(["\n" * 200]),  # escapes make the JSON string longer
            "t": ("a" * 100, "b", "c"),
        }
    )
    once = redactor(span)
    assert redactor(once) is once


# --- counters and concurrency -----------------------------------------------------------------


def test_stats_count_values_spans_truncations_and_errors() -> None:
    redactor = Redactor(max_value_len=50)
    redactor(make_span({"a": f"k {OPENAI_KEY}", "b": ("x", f"y {AWS_KEY_ID}", f"z {AWS_KEY_ID}"), "c": "long" * 50}))
    redactor(make_span({"password": "p"}))
    redactor(make_span({"plain": "nothing here"}))
    assert redactor.stats() == RedactionStats(values_redacted=3, spans_redacted=2, truncated=1, rule_errors=0)


def test_stats_stay_exact_when_several_threads_share_a_redactor() -> None:
    redactor = Redactor()
    span = make_span({"password": "p", "msg": f"key {OPENAI_KEY}"})

    def work() -> None:
        for _ in range(200):
            redactor(span)

    threads = [threading.Thread(target=work) for _ in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert redactor.stats() == RedactionStats(values_redacted=1600, spans_redacted=800)


# --- properties -------------------------------------------------------------------------------

_ANY_CHAR = st.characters(exclude_categories=())  # includes lone surrogates
_FRAGMENTS = st.sampled_from(
    [leak.text for leak in LEAKS]
    + list(NON_SECRET_TEXTS)
    + [MASK, ERROR_MASK, "[REDACTED:0123456789ab]", "password=", "Bearer ", "://u:", "@", "{", '"', "\\", "…"]
    + ["-----BEGIN PRIVATE KEY-----", "sk-", "AKIA", "eyJ", "ghp_", "Authorization: ", "Cookie: ", "x" * 300]
)
_TEXT = st.one_of(
    st.text(_ANY_CHAR, max_size=60),
    _FRAGMENTS,
    st.builds(lambda a, b, c: a + b + c, st.text(_ANY_CHAR, max_size=20), _FRAGMENTS, st.text(_ANY_CHAR, max_size=20)),
)
_JSON = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False, allow_infinity=False) | _TEXT,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.one_of(_TEXT, _FRAGMENTS), children, max_size=4)
    ),
    max_leaves=12,
).map(lambda doc: json.dumps(doc, ensure_ascii=False))
_INT64 = st.integers(-(2**63), 2**63 - 1)
_SCALAR = st.one_of(_TEXT, _INT64, st.floats(), st.booleans())
_VALUE = st.one_of(
    _SCALAR,
    _JSON,
    st.lists(_TEXT, max_size=4).map(tuple),
    st.lists(_INT64, max_size=4).map(tuple),
    st.lists(st.floats(), max_size=4).map(tuple),
    st.lists(st.booleans(), max_size=4).map(tuple),
)
_KEY = st.one_of(
    st.text(_ANY_CHAR, max_size=20),
    st.sampled_from([k for k, _, _ in SECRET_ATTRIBUTES] + list(NON_SECRET_ATTRIBUTES) + ["", ".", "a..b"]),
)
_ATTRS = st.dictionaries(_KEY, _VALUE, max_size=8)
_SPANS = st.builds(
    lambda attrs, event_attrs, description, resource: make_span(
        attrs, events=[SpanEvent("e", 1, event_attrs)], status_description=description, resource=resource
    ),
    _ATTRS,
    _ATTRS,
    st.none() | _TEXT,
    _ATTRS,
)
_REDACTORS = st.sampled_from(
    [Redactor(), Redactor(mode="hash"), Redactor(max_value_len=40, max_tuple_len=2), Redactor(patterns=[r"\d{4}"])]
)


@PROPERTY
@given(_SPANS, _REDACTORS)
def test_redaction_never_raises_and_is_idempotent(span: Span, redactor: Redactor) -> None:
    once = redactor(span)
    twice = redactor(once)
    assert repr(twice) == repr(once)  # repr: NaN-safe, and tells 1 from True and 0.0 from -0.0
    assert redactor.stats().rule_errors == 0


@PROPERTY
@given(
    st.dictionaries(
        st.sampled_from(
            [k for k, v in NON_SECRET_ATTRIBUTES.items() if type(v) in (int, float, tuple)]
            + ["gen_ai.usage.total_tokens", "llm.token_count.total", "count", "retries", "latency_ms"]
        ),
        st.one_of(
            _INT64, st.floats(), st.booleans(), st.lists(st.floats(), max_size=2).map(tuple)
        ),  # within every limit
    ),
    _REDACTORS,
)
def test_numeric_values_under_non_secret_keys_are_never_changed(
    attrs: dict[str, AttributeValue], redactor: Redactor
) -> None:
    span = make_span(attrs)
    assert redactor(span) is span


@PROPERTY
@given(st.lists(st.sampled_from(LEAKS), min_size=1, max_size=3), st.text(_ANY_CHAR, max_size=10))
def test_secrets_joined_by_arbitrary_text_do_not_survive(leaks: list[Leak], glue: str) -> None:
    # Separated as lines of a log are: a value with no separator at all may run into the next key.
    text = f"\n{glue} ".join(leak.text for leak in leaks)
    out = Redactor().redact_text(text)
    for leak in leaks:
        for secret in leak.secrets:
            assert secret not in out


# --- the fast check never decides differently from the full path -----------------------------


def _keep(key: str, value: AttributeValue) -> AttributeValue | None:
    return value


_CONFIGS: list[dict[str, Any]] = [
    {},
    {"mode": "hash"},
    {"max_value_len": 40, "max_tuple_len": 2},
    {"patterns": [r"\d{4}"]},
]


@PROPERTY
@given(_SPANS, st.sampled_from(_CONFIGS))
def test_the_fast_check_agrees_with_the_full_path_on_every_span(span: Span, config: dict[str, Any]) -> None:
    fast = Redactor(**config)
    full = Redactor(**config, callback=_keep)  # a callback must see every value, so it takes the full path
    expected = full(span)
    for _ in range(2):  # the second time, the fast check's caches already know the keys and short texts
        got = fast(span)
        assert repr(got) == repr(expected)
        assert (got is span) == (expected is span)
    assert fast.stats().values_redacted == 2 * full.stats().values_redacted


@PROPERTY
@given(_TEXT)
def test_text_without_a_trigger_cannot_match_any_built_in_pattern(text: str) -> None:
    if not may_match(text):
        for name, body in BUILTIN_RULES:
            assert re.search(body, text) is None, name
        assert PRIVATE_KEY.search(text) is None


@pytest.mark.parametrize(
    "text",
    ["paſſword=hunter2xyz", "SİGNATURE=abcdef", "sıgnature=abcdef", "cookİe: session=1", "Authorİzation: Basic abcdef"],
)
def test_letters_that_case_insensitive_matching_folds_still_trigger_the_pair_rules(text: str) -> None:
    assert MASK in Redactor().redact_text(text)
    assert MASK in str(Redactor()(make_span({"log.message": text})).attributes["log.message"])


def test_a_clean_text_seen_before_does_not_clear_a_secret_under_the_same_key() -> None:
    redactor = Redactor()
    clean = make_span({"log.message": "all good", "count": 3})
    assert redactor(clean) is clean
    leaked = make_span({"log.message": f"key {OPENAI_KEY}", "count": 3})
    assert redactor(leaked).attributes["log.message"] == f"key {MASK}"


def test_one_message_under_two_keys_is_masked_under_both() -> None:
    body = f"use {OPENAI_KEY} please"
    out = Redactor()(make_span({semconv.MESSAGE_BODY: body, semconv.MESSAGE_LEGACY: body})).attributes
    assert out[semconv.MESSAGE_BODY] == out[semconv.MESSAGE_LEGACY] == f"use {MASK} please"


def test_a_shared_resource_changed_in_place_is_checked_again() -> None:
    redactor = Redactor()
    resource: dict[str, AttributeValue] = {"service.name": "agent", "process.pid": 7}
    first = make_span({"reward": 1.0}, resource=resource)
    assert redactor(first) is first
    resource["service.token"] = "tok-123456789"
    assert redactor(make_span({"reward": 1.0}, resource=resource)).resource["service.token"] == MASK


def test_secret_keys_identity_keys_and_numbers_take_the_path_their_key_calls_for() -> None:
    span = make_span(
        {
            semconv.ROLLOUT_ID: "ro-7f3a9c",  # exempt, even though it is a str
            "time_to_first_token": 0.25,  # a number under a *token key is a count: kept
            "auth.enabled": True,  # a bool under a secret key holds no secret: kept
            "api_key": 12345,  # a number under a secret key: masked
        }
    )
    assert Redactor()(span).attributes == {**span.attributes, "api_key": MASK}


def test_a_non_str_key_never_makes_the_stage_raise() -> None:
    span = make_span({1: "x", "ok": "y"})  # type: ignore[dict-item]
    out = Redactor()(span)
    assert out.attributes["ok"] == "y"


def test_the_caches_stay_bounded_however_many_distinct_keys_and_texts_pass() -> None:
    redactor = Redactor()
    for i in range(10_000):
        redactor(make_span({f"key.{i}": f"text {i}"}))
    assert len(redactor._key_plans) <= 4096 and len(redactor._key_tiers) <= 4096
    assert len(redactor._clean_texts) <= 4096
    assert redactor(make_span({"key.1": f"{OPENAI_KEY}"})).attributes["key.1"] == MASK


def test_a_shared_resource_dict_with_a_value_changed_in_place_is_checked_again() -> None:
    # The redactor remembers the last resource it found clean; mutating that same dict must not let
    # a secret through on a later span.
    redactor = Redactor()
    resource: dict[str, AttributeValue] = {"service.name": "svc", "host": "worker-1"}
    first = make_span({"a": "b"})
    first.resource = resource
    assert redactor(first) is first
    resource["host"] = f"token {OPENAI_KEY}"
    second = make_span({"a": "b"})
    second.resource = resource
    out = redactor(second)
    assert OPENAI_KEY not in str(out.resource["host"])
