"""One contract every SpanStore keeps, run against the memory, SQLite and PostgreSQL stores alike."""

from __future__ import annotations

import asyncio
import dataclasses
import importlib.util
import math
import os
import sqlite3
import threading
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from agentemit import codec, semconv, stores
from agentemit.span import Span, SpanEvent
from agentemit.stores import (
    InMemoryStore,
    PostgresStore,
    RolloutSummary,
    SqliteStore,
    StoreClosedError,
    open_store,
)

PG_DSN = os.environ.get("AGENTEMIT_PG_DSN")
PG_SKIP_REASON = "AGENTEMIT_PG_DSN is not set"
BACKENDS = ["memory", "sqlite", "postgres"]
Store = InMemoryStore | SqliteStore | PostgresStore  # every store here also offers verify()


# --- fixtures ----------------------------------------------------------------------------------


def _drop_schema(schema: str) -> None:
    assert PG_DSN is not None
    with psycopg.connect(PG_DSN, autocommit=True) as conn:
        conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


@pytest.fixture
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards, so parallel runs never collide."""
    if not PG_DSN:
        pytest.skip(PG_SKIP_REASON)
    schema = f"t_{uuid.uuid4().hex}"
    yield schema
    _drop_schema(schema)


@pytest.fixture(params=BACKENDS)
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Store]:
    kind = request.param
    made: Store
    if kind == "memory":
        made = InMemoryStore()
    elif kind == "sqlite":
        made = SqliteStore(tmp_path / "spans.db")
    else:
        schema = request.getfixturevalue("pg_schema")
        assert PG_DSN is not None
        made = PostgresStore(PG_DSN, schema=schema)
    yield made
    made.close()


# --- span factory ------------------------------------------------------------------------------


def make_span(
    seq: int = 0,
    *,
    rollout: str = "r1",
    attempt: str = "a1",
    span_id: str | None = None,
    name: str = "step",
    start: int | None = None,
    attributes: dict[str, Any] | None = None,
) -> Span:
    start_time = 1_000 + 10 * seq if start is None else start
    return Span(
        trace_id=f"{abs(hash(rollout)) % 2**64:032x}",
        span_id=span_id if span_id is not None else f"{seq:016x}",
        parent_id=None,
        name=name,
        start_time=start_time,
        end_time=start_time + 5,
        rollout_id=rollout,
        attempt_id=attempt,
        sequence_id=seq,
        attributes=attributes or {},
    )


def reward_span(seq: int, value: float, **kw: Any) -> Span:
    """A span carrying a primary reward in agentemit's indexed form."""
    attrs = {semconv.reward_name_key(0): "primary", semconv.reward_value_key(0): value}
    return make_span(seq, name=semconv.SPAN_REWARD, attributes=attrs, **kw)


def legacy_reward_span(seq: int, value: float, **kw: Any) -> Span:
    """A span carrying a reward the Agent Lightning 0.2 way."""
    return make_span(seq, name=semconv.SPAN_REWARD, attributes={semconv.REWARD_LEGACY: value}, **kw)


def ids(spans: list[Span]) -> list[str]:
    return [s.span_id for s in spans]


def encoded(spans: list[Span]) -> list[bytes]:
    return [codec.encode_span(s) for s in spans]


def tamper(target: Store, key: tuple[str, str, str], data: bytes, checksum: str | None = None) -> None:
    """Overwrite a stored row behind the store's back (as disk damage or a stray UPDATE would).

    ``checksum`` also rewrites the checksum column; by default it keeps the old one.
    """
    if isinstance(target, InMemoryStore):
        bucket = target._rollouts[key[0]]
        row = bucket[key]
        bucket[key] = row._replace(data=data, checksum=checksum or row.checksum)
    elif isinstance(target, SqliteStore):
        with sqlite3.connect(target.path) as conn:
            conn.execute(
                "UPDATE spans SET data = ?, checksum = COALESCE(?, checksum)"
                " WHERE rollout_id = ? AND attempt_id = ? AND span_id = ?",
                (data, checksum, *key),
            )
    elif isinstance(target, PostgresStore):
        assert PG_DSN is not None
        update = sql.SQL(
            "UPDATE {}.spans SET data = %s, checksum = COALESCE(%s, checksum)"
            " WHERE rollout_id = %s AND attempt_id = %s AND span_id = %s"
        ).format(sql.Identifier(target.schema))
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(update, (data, checksum, *key))
    else:
        raise AssertionError(f"no tamper for {type(target).__name__}")


# --- adding and idempotency --------------------------------------------------------------------


def test_add_many_spans_returns_the_count_of_new_spans(store: Store) -> None:
    assert store.add_many_spans([make_span(i) for i in range(5)]) == 5
    assert store.add_many_spans([make_span(i) for i in range(3, 8)]) == 3
    assert len(store.query_spans("r1")) == 8


def test_add_span_returns_false_when_its_key_is_already_stored(store: Store) -> None:
    assert store.add_span(make_span(0)) is True
    assert store.add_span(make_span(0)) is False


def test_same_span_id_in_another_attempt_or_rollout_is_a_different_span(store: Store) -> None:
    spans = [make_span(0), make_span(0, attempt="a2"), make_span(0, rollout="r2")]
    assert store.add_many_spans(spans) == 3


def test_re_adding_a_stored_key_keeps_the_first_version_instead_of_updating(store: Store) -> None:
    store.add_span(make_span(0, name="first"))
    assert store.add_many_spans([make_span(0, name="second", attributes={"x": 1})]) == 0
    [stored] = store.query_spans("r1")
    assert stored.name == "first" and stored.attributes == {}


def test_a_span_twice_in_one_batch_is_stored_once_counted_once_and_first_wins(store: Store) -> None:
    batch = [make_span(0, name="first"), make_span(1), make_span(0, name="second")]
    assert store.add_many_spans(batch) == 2
    assert [s.name for s in store.query_spans("r1")] == ["first", "step"]


def test_an_empty_batch_adds_nothing(store: Store) -> None:
    assert store.add_many_spans([]) == 0
    assert store.list_rollouts() == []


# --- validation: nothing partial -----------------------------------------------------------------

INVALID: list[tuple[str, dict[str, Any], str]] = [
    ("empty span_id", {"span_id": ""}, "span_id"),
    ("rollout_id not a str", {"rollout_id": 7}, "rollout_id"),
    ("empty rollout_id", {"rollout_id": ""}, "rollout_id"),
    ("attempt_id None", {"attempt_id": None}, "attempt_id"),
    ("sequence_id a str", {"sequence_id": "3"}, "sequence_id"),
    ("sequence_id a bool", {"sequence_id": True}, "sequence_id"),
    ("start_time beyond int64", {"start_time": 2**63}, "start_time"),
    ("unknown status", {"status": "FINE"}, "status"),
    ("NUL in name", {"name": "a\x00b"}, "name"),
    ("parent_id an int", {"parent_id": 5}, "parent_id"),
    ("object attribute", {"attributes": {"obj": object()}}, r"attributes \['obj'\]"),
    ("dict attribute that would not decode", {"attributes": {"d": {"a": 1}}}, r"attributes \['d'\]"),
    ("int attribute beyond 64 bits", {"attributes": {"big": 2**70}}, r"attributes\['big'\]"),
    ("non-str attribute key", {"resource": {1: "x"}}, "resource key 1"),
    ("event that is not a SpanEvent", {"events": [("e", 1)]}, r"events\[0\]"),
    ("event attribute list of lists", {"events": [SpanEvent("e", 1, {"l": ((1,),)})]}, r"events\[0\]\.attributes"),  # type: ignore[dict-item]
    ("lone surrogate in name", {"name": "bad \ud800"}, "name cannot be encoded"),
    ("key over 512 characters", {"rollout_id": "r" * 503}, "rollout_id is 503 characters.*limit of 512"),
]


@pytest.mark.parametrize(("case", "change", "field"), INVALID, ids=[c[0] for c in INVALID])
def test_an_invalid_span_refuses_the_whole_batch_naming_span_and_field(
    store: Store, case: str, change: dict[str, Any], field: str
) -> None:
    store.add_span(make_span(0))
    bad = dataclasses.replace(make_span(2, span_id=change.get("span_id", "bad-span")), **change)
    with pytest.raises(ValueError, match=field) as info:
        store.add_many_spans([make_span(1), bad, make_span(3)])
    if bad.span_id:
        assert "'bad-span'" in str(info.value)
    assert ids(store.query_spans("r1")) == [make_span(0).span_id]
    assert [s.rollout_id for s in store.list_rollouts()] == ["r1"]


def test_a_key_of_512_four_byte_characters_is_stored_and_read_back_by_every_store(store: Store) -> None:
    # 2,048 bytes of UTF-8: the most the key limit lets in must fit PostgreSQL's index entry.
    rollout, attempt = "\U0001f600" * 250, "\U0001d11e" * 246
    span = make_span(0, rollout=rollout, attempt=attempt)
    assert len(rollout + attempt + span.span_id) == 512
    assert store.add_many_spans([span]) == 1
    assert store.query_spans(rollout, attempt) == [span]


def test_a_bad_resource_after_a_shared_good_one_still_refuses_the_batch(store: Store) -> None:
    # Spans of one pipeline share a resource dict, which validation checks once per batch; a span
    # with another resource must still be checked.
    shared = {"service.name": "svc", "process.pid": 7}
    good = [dataclasses.replace(make_span(i), resource=shared) for i in range(3)]
    bad = dataclasses.replace(make_span(3, span_id="bad-span"), resource={"service.name": object()})
    with pytest.raises(ValueError, match=r"'bad-span'.*resource"):
        store.add_many_spans([*good, bad])
    assert store.query_spans("r1") == []
    store.add_many_spans(good)
    assert [s.resource for s in store.query_spans("r1")] == [shared] * 3


def test_a_shared_resource_needing_the_careful_encoder_is_encoded_carefully_for_every_span(store: Store) -> None:
    # The one-pass check skips a resource it found plain for an earlier span of the batch. A resource
    # first seen on a span that took the careful path (here for its list attribute) was not found
    # plain, so the next span sharing it must not be written by the fast path (NaN would become null).
    shared = {"service.name": "svc", "load": math.nan, "peak": math.inf}
    careful = dataclasses.replace(make_span(0, attributes={"ids": [1, 2]}), resource=shared)
    plain = dataclasses.replace(make_span(1), resource=shared)
    assert store.add_many_spans([careful, plain]) == 2
    for got in store.query_spans("r1"):
        assert math.isnan(got.resource["load"]) and got.resource["peak"] == math.inf  # type: ignore[arg-type]


def test_a_batch_of_several_thousand_spans_is_stored_whole_or_not_at_all(store: Store) -> None:
    # Larger than one multi-row statement (SQLite writes 1,000 rows per statement): the failure comes
    # in the last chunk, after earlier chunks were already written inside the transaction.
    batch = [make_span(i) for i in range(2_500)]
    bad = dataclasses.replace(batch[2_400], span_id="bad-span", name="bad \ud800")
    with pytest.raises(ValueError, match=r"'bad-span'.*name"):
        store.add_many_spans([*batch[:2_400], bad, *batch[2_401:]])
    assert store.query_spans("r1") == []
    assert store.add_many_spans(batch) == 2_500
    assert store.add_many_spans(batch) == 0
    assert ids(store.query_spans("r1", limit=3, offset=2_497)) == ids(batch[2_497:])


def test_a_batch_item_that_is_not_a_span_is_refused_by_position(store: Store) -> None:
    with pytest.raises(ValueError, match="batch item 1 is dict"):
        store.add_many_spans([make_span(0), {"span_id": "x"}])  # type: ignore[list-item]
    assert store.query_spans("r1") == []


# --- query_spans --------------------------------------------------------------------------------


def test_query_spans_orders_by_sequence_id_then_span_id_by_code_point(store: Store) -> None:
    tied = [make_span(5, span_id=sid) for sid in ["é", "a", "Z", "B"]]
    store.add_many_spans([make_span(9), *tied, make_span(1)])
    assert ids(store.query_spans("r1")) == [f"{1:016x}", "B", "Z", "a", "é", f"{9:016x}"]


def test_query_spans_filters_by_attempt_and_by_name(store: Store) -> None:
    store.add_many_spans([make_span(0, name="llm"), make_span(1, name="tool"), make_span(2, attempt="a2", name="llm")])
    assert [(s.attempt_id, s.sequence_id) for s in store.query_spans("r1", "a1")] == [("a1", 0), ("a1", 1)]
    assert [(s.attempt_id, s.sequence_id) for s in store.query_spans("r1", name="llm")] == [("a1", 0), ("a2", 2)]
    assert [s.sequence_id for s in store.query_spans("r1", "a1", name="llm")] == [0]
    assert store.query_spans("r1", "a3") == []


def test_latest_attempt_is_the_one_whose_newest_span_starts_last(store: Store) -> None:
    # a2 began first but its last span is newer than anything in a1.
    store.add_many_spans(
        [
            make_span(0, attempt="a2", start=100),
            make_span(0, attempt="a1", start=200),
            make_span(1, attempt="a1", start=300),
            make_span(1, attempt="a2", start=400),
        ]
    )
    assert {s.attempt_id for s in store.query_spans("r1", "latest")} == {"a2"}


def test_latest_attempt_breaks_a_start_time_tie_by_the_higher_sequence_id(store: Store) -> None:
    store.add_many_spans([make_span(7, attempt="a1", start=500), make_span(3, attempt="a2", start=500)])
    assert ids(store.query_spans("r1", "latest")) == [f"{7:016x}"]


def test_latest_is_chosen_over_all_spans_before_the_name_filter(store: Store) -> None:
    store.add_many_spans([make_span(0, attempt="a1", name="llm"), make_span(1, attempt="a2", name="tool")])
    assert store.query_spans("r1", "latest", name="llm") == []
    assert [s.attempt_id for s in store.query_spans("r1", "latest", name="tool")] == ["a2"]


def test_an_unknown_rollout_queries_as_empty(store: Store) -> None:
    store.add_span(make_span(0))
    assert store.query_spans("nope") == []
    assert store.query_spans("nope", "latest") == []


def test_a_nul_character_in_a_read_parameter_matches_nothing(store: Store) -> None:
    store.add_span(make_span(0))
    assert store.query_spans("r\x00") == []
    assert store.query_spans("r1", "a\x00") == []
    assert store.query_spans("r1", name="\x00") == []
    assert store.query_spans("r1", "latest", name="a\x00b") == []
    assert store.get_next_span_sequence_id("r\x00", "a1") == 0
    assert store.get_next_span_sequence_id("r1", "a\x00") == 0


def test_limit_and_offset_page_through_spans_in_order(store: Store) -> None:
    store.add_many_spans([make_span(i) for i in range(10)])
    assert [s.sequence_id for s in store.query_spans("r1", limit=3)] == [0, 1, 2]
    assert [s.sequence_id for s in store.query_spans("r1", limit=3, offset=8)] == [8, 9]
    assert [s.sequence_id for s in store.query_spans("r1", offset=7)] == [7, 8, 9]
    assert store.query_spans("r1", limit=0) == []


@pytest.mark.parametrize(("limit", "offset"), [(-1, 0), (None, -1), (2**63, 0), (None, 2**63)])
def test_a_limit_or_offset_outside_int64_or_negative_is_refused(store: Store, limit: int | None, offset: int) -> None:
    with pytest.raises(ValueError, match=r"limit|offset"):
        store.query_spans("r1", limit=limit, offset=offset)
    with pytest.raises(ValueError, match=r"limit|offset"):
        store.list_rollouts(limit=limit, offset=offset)


def test_spans_round_trip_losslessly(store: Store) -> None:
    original = Span(
        trace_id="0af7651916cd43dd8448eb211c80319c",
        span_id="b7ad6b7169203331",
        parent_id="00f067aa0ba902b7",
        name="agentlightning.message ✓",
        start_time=1_700_000_000_123_456_789,
        end_time=1_700_000_000_223_456_789,
        rollout_id="rollout-ünï",
        attempt_id="attempt-🙂",
        sequence_id=2**40,
        attributes={
            "tuple.int": (1, 2, 3),
            "tuple.str": ("a", "β"),
            "tuple.float": (1.5, math.inf),
            "nan": math.nan,
            "inf": math.inf,
            "ninf": -math.inf,
            "float.whole": 2.0,
            "bool": True,
            "int.big": 2**62,
            "text": 'line1\nline2\t"quoted" 中文 \x00 nul',
        },
        status="ERROR",
        status_description="boom: ∅",
        events=[
            SpanEvent("exception", 1_700_000_000_200_000_000, {"exception.type": "ValueError", "n": (math.nan,)}),
            SpanEvent("empty", 1_700_000_000_210_000_000),
        ],
        resource={"service.name": "svc", "host.cores": 8, "tags": ("x", "y")},
    )
    assert store.add_span(original)
    [got] = store.query_spans("rollout-ünï")
    assert codec.encode_span(got) == codec.encode_span(original)
    assert got.attributes["tuple.int"] == (1, 2, 3) and isinstance(got.attributes["tuple.str"], tuple)
    assert math.isnan(got.attributes["nan"])  # type: ignore[arg-type]
    assert got.attributes["inf"] == math.inf and got.attributes["ninf"] == -math.inf
    assert isinstance(got.attributes["float.whole"], float) and got.attributes["bool"] is True
    assert got.events[0].attributes["exception.type"] == "ValueError" and got.events[1].attributes == {}
    assert got.resource == {"service.name": "svc", "host.cores": 8, "tags": ("x", "y")}
    assert (got.status, got.status_description, got.parent_id) == ("ERROR", "boom: ∅", "00f067aa0ba902b7")


def test_a_read_span_is_a_copy_unaffected_by_later_mutation(store: Store) -> None:
    span = make_span(0, attributes={"k": "v"})
    store.add_span(span)
    span.attributes["k"] = "changed"
    first = store.query_spans("r1")[0]
    first.attributes["k"] = "mutated"
    assert store.query_spans("r1")[0].attributes == {"k": "v"}


# --- list_rollouts ------------------------------------------------------------------------------


def test_list_rollouts_orders_by_first_span_time_then_rollout_id(store: Store) -> None:
    store.add_many_spans(
        [
            make_span(0, rollout="late", start=900),
            make_span(0, rollout="b-tied", start=100),
            make_span(0, rollout="a-tied", start=100),
            make_span(1, rollout="late", start=50),  # a later sequence_id, but the earliest start
            make_span(0, rollout="mid", start=300),
        ]
    )
    assert [r.rollout_id for r in store.list_rollouts()] == ["late", "a-tied", "b-tied", "mid"]


def test_list_rollouts_summarizes_counts_attempts_names_and_times(store: Store) -> None:
    store.add_many_spans(
        [
            make_span(0, attempt="second", start=200, name="llm"),
            make_span(0, attempt="first", start=100, name="llm"),
            make_span(1, attempt="first", start=150, name="tool"),
            make_span(1, attempt="second", start=250, name="llm"),
            make_span(0, attempt="third", start=180, name="tool"),
        ]
    )
    [summary] = store.list_rollouts()
    assert summary == RolloutSummary(
        rollout_id="r1",
        attempt_ids=["first", "third", "second"],
        span_count=5,
        spans_by_name={"llm": 3, "tool": 2},
        final_reward=None,
        first_time=100,
        last_time=255,
    )


def test_attempts_first_seen_at_the_same_time_are_ordered_by_sequence_id_then_id(store: Store) -> None:
    store.add_many_spans(
        [make_span(4, attempt="a", start=10), make_span(2, attempt="c", start=10), make_span(2, attempt="b", start=10)]
    )
    assert store.list_rollouts()[0].attempt_ids == ["b", "c", "a"]


def test_final_reward_is_the_highest_sequence_reward_of_the_latest_attempt(store: Store) -> None:
    store.add_many_spans(
        [
            reward_span(5, 0.9, attempt="old", start=100),  # an older attempt's reward never counts
            reward_span(1, 0.25, attempt="new", start=200),
            legacy_reward_span(3, 0.75, attempt="new", start=210),
            reward_span(2, 0.5, attempt="new", start=400),  # newest by time, not by sequence
            make_span(4, attempt="new", start=220),
        ]
    )
    assert store.list_rollouts()[0].final_reward == 0.75


def test_final_reward_is_none_when_the_latest_attempt_has_no_reward(store: Store) -> None:
    store.add_many_spans([reward_span(0, 1.0, attempt="a1", start=100), make_span(0, attempt="a2", start=200)])
    [summary] = store.list_rollouts()
    assert summary.final_reward is None and summary.attempt_ids == ["a1", "a2"]


@pytest.mark.parametrize("odd", [math.nan, math.inf, -math.inf])
def test_a_non_finite_reward_counts_as_no_reward_in_every_store(store: Store, odd: float) -> None:
    """NaN cannot be ranked and JSON has no infinity (the server sent it as null): every backend, and
    every summary over HTTP, treats such a reward as none; the span itself is stored as it was."""
    store.add_many_spans([reward_span(0, 0.5), reward_span(1, odd)])
    assert store.list_rollouts()[0].final_reward == 0.5


def test_list_rollouts_pages_with_limit_and_offset(store: Store) -> None:
    store.add_many_spans([make_span(0, rollout=f"r{i}", start=i) for i in range(6)])
    assert [r.rollout_id for r in store.list_rollouts(limit=2)] == ["r0", "r1"]
    assert [r.rollout_id for r in store.list_rollouts(limit=2, offset=4)] == ["r4", "r5"]
    assert [r.rollout_id for r in store.list_rollouts(offset=5)] == ["r5"]
    paged = store.list_rollouts(limit=1, offset=2)[0]
    assert paged.span_count == 1 and paged.spans_by_name == {"step": 1}


# --- sequence ids -------------------------------------------------------------------------------


def test_next_sequence_id_is_one_past_the_highest_of_that_attempt(store: Store) -> None:
    assert store.get_next_span_sequence_id("r1", "a1") == 0
    store.add_many_spans([make_span(3), make_span(11), make_span(40, attempt="a2")])
    assert store.get_next_span_sequence_id("r1", "a1") == 12
    assert store.get_next_span_sequence_id("r1", "a2") == 41
    assert store.get_next_span_sequence_id("r1", "a3") == 0


def test_next_sequence_id_after_the_largest_int64_is_2_to_the_63_in_every_store(store: Store) -> None:
    store.add_span(make_span(2**63 - 1, start=5))
    assert store.get_next_span_sequence_id("r1", "a1") == 2**63


# --- verify -------------------------------------------------------------------------------------


def test_verify_reports_nothing_for_untouched_rows(store: Store) -> None:
    store.add_many_spans([make_span(i) for i in range(5)])
    assert store.verify() == []


def test_verify_names_a_row_whose_data_no_longer_matches_its_checksum(store: Store) -> None:
    store.add_many_spans([make_span(0), make_span(1)])
    damaged = make_span(1)
    tamper(store, damaged.key, codec.encode_span(dataclasses.replace(damaged, name="forged")))
    [(key, problem)] = store.verify()
    assert key == damaged.key and "checksum mismatch" in problem


def test_verify_names_a_row_whose_data_belongs_to_another_key(store: Store) -> None:
    store.add_many_spans([make_span(0), make_span(1)])
    forged = codec.encode_span(make_span(0))  # intact bytes and checksum, but span 0's, under span 1's key
    tamper(store, make_span(1).key, forged, checksum=codec.checksum(forged))
    [(key, problem)] = store.verify()
    assert key == make_span(1).key and "not the row's key" in problem


# --- async twins --------------------------------------------------------------------------------


def test_async_twins_give_the_same_answers_as_the_sync_methods(store: Store) -> None:
    async def scenario() -> tuple[Any, ...]:
        added = await store.aadd_many_spans([make_span(0), make_span(1), reward_span(2, 0.5)])
        again = await store.aadd_span(make_span(0))
        fresh = await store.aadd_span(make_span(3))
        spans = await store.aquery_spans("r1", "latest", name="step", limit=5, offset=1)
        rollouts = await store.alist_rollouts(limit=10)
        next_seq = await store.aget_next_span_sequence_id("r1", "a1")
        await store.aclose()
        return added, again, fresh, spans, rollouts, next_seq

    added, again, fresh, spans, rollouts, next_seq = asyncio.run(scenario())
    assert (added, again, fresh, next_seq) == (3, False, True, 4)
    assert [s.sequence_id for s in spans] == [1, 3]
    assert [(r.rollout_id, r.span_count, r.final_reward) for r in rollouts] == [("r1", 4, 0.5)]
    with pytest.raises(StoreClosedError):
        store.query_spans("r1")


# --- concurrency --------------------------------------------------------------------------------


def _run_threads(count: int, work: Callable[[int], int]) -> list[int]:
    results = [0] * count
    errors: list[BaseException] = []
    barrier = threading.Barrier(count)

    def run(index: int) -> None:
        try:
            barrier.wait(timeout=30)
            results[index] = work(index)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    return results


def test_eight_concurrent_writers_store_every_span_exactly_once(store: Store) -> None:
    def write(worker: int) -> int:
        spans = [make_span(worker * 500 + i, attempt=f"a{worker % 2}") for i in range(500)]
        added = sum(store.add_many_spans(spans[i : i + 50]) for i in range(0, 450, 50))
        return added + sum(store.add_span(s) for s in spans[450:])

    results = _run_threads(8, write)
    assert sum(results) == 4000 and results == [500] * 8
    assert len(store.query_spans("r1")) == 4000
    assert store.list_rollouts()[0].span_count == 4000


def test_concurrent_writers_of_the_same_spans_count_each_span_once(store: Store) -> None:
    spans = [make_span(i) for i in range(500)]
    results = _run_threads(8, lambda worker: sum(store.add_many_spans(spans[i : i + 100]) for i in range(0, 500, 100)))
    assert sum(results) == 500
    assert len(store.query_spans("r1")) == 500


# --- lifecycle ----------------------------------------------------------------------------------


def test_close_is_idempotent_and_any_later_use_raises_a_clear_error(store: Store) -> None:
    store.add_span(make_span(0))
    store.close()
    store.close()
    calls: list[Callable[[], object]] = [
        lambda: store.add_many_spans([make_span(1)]),
        lambda: store.add_span(make_span(1)),
        lambda: store.query_spans("r1"),
        lambda: store.list_rollouts(),
        lambda: store.get_next_span_sequence_id("r1", "a1"),
        lambda: store.verify(),
    ]
    for call in calls:
        with pytest.raises(StoreClosedError, match="after close"):
            call()


def test_a_store_used_as_a_context_manager_closes_on_exit(store: Store) -> None:
    with store as same:
        same.add_span(make_span(0))
    with pytest.raises(StoreClosedError):
        store.query_spans("r1")


# --- backend specifics --------------------------------------------------------------------------


def test_sqlite_refuses_an_unknown_synchronous_mode(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="synchronous 'SOMETIMES'"):
        SqliteStore(tmp_path / "x.db", synchronous="SOMETIMES")


def test_sqlite_refuses_a_file_from_a_newer_schema_version(tmp_path: Path) -> None:
    path = tmp_path / "future.db"
    with sqlite3.connect(path) as conn:
        conn.execute("CREATE TABLE schema_version (version INTEGER NOT NULL)")
        conn.execute("INSERT INTO schema_version VALUES (99)")
    store = SqliteStore(path)
    with pytest.raises(ValueError, match="schema version 99 is newer"):
        store.query_spans("r1")
    store.close()


def test_sqlite_creates_the_schema_version_table_and_missing_parent_folders(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "spans.db"
    with SqliteStore(path) as store:
        store.add_span(make_span(0))
    with sqlite3.connect(path) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(1,)]
        columns = [row[1] for row in conn.execute("PRAGMA table_info(spans)")]
    assert columns == list(stores._rows.COLUMNS)


def test_postgres_refuses_a_schema_name_that_is_not_a_plain_identifier() -> None:
    with pytest.raises(ValueError, match="schema 'x; DROP TABLE spans'"):
        PostgresStore("postgresql://unused", schema="x; DROP TABLE spans")


def test_postgres_stores_racing_to_create_one_schema_all_succeed(pg_schema: str) -> None:
    assert PG_DSN is not None
    made = [PostgresStore(PG_DSN, schema=pg_schema, max_size=2) for _ in range(4)]
    try:
        results = _run_threads(4, lambda i: made[i].add_many_spans([make_span(i), make_span(9)]))
        assert sum(results) == 5
        assert made[0].get_next_span_sequence_id("r1", "a1") == 10
    finally:
        for one in made:
            one.close()


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_postgres_forked_child_uses_its_own_pool_and_leaves_the_parents_sessions_alone(pg_schema: str) -> None:
    assert PG_DSN is not None
    store = PostgresStore(PG_DSN, schema=pg_schema, min_size=2, max_size=2)
    store.add_span(make_span(0))
    pid = os.fork()
    if pid == 0:  # child: closing its store must not end the parent's pooled sessions
        code = 2
        try:
            code = 0 if store.add_span(make_span(1)) else 1
            store.close()
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0
    for seq in (2, 3, 4):  # more uses than pool connections: every inherited session still works
        assert store.add_span(make_span(seq))
    assert [s.sequence_id for s in store.query_spans("r1")] == [0, 1, 2, 3, 4]
    store.close()


def test_postgres_keeps_the_exact_bytes_the_checksum_covers(pg_schema: str) -> None:
    assert PG_DSN is not None
    span = make_span(0, attributes={"z": 1, "a": 2.50, "u": "ü"})
    with PostgresStore(PG_DSN, schema=pg_schema) as store:
        store.add_span(span)
    with psycopg.connect(PG_DSN) as conn:
        row = conn.execute(sql.SQL("SELECT data, checksum FROM {}.spans").format(sql.Identifier(pg_schema))).fetchone()
    assert row is not None
    assert bytes(row[0]) == codec.encode_span(span) and row[1] == codec.checksum(codec.encode_span(span))


# --- open_store ---------------------------------------------------------------------------------


@pytest.mark.parametrize("url", ["memory", "memory://", "MEMORY"])
def test_open_store_memory_urls_give_an_in_memory_store(url: str) -> None:
    with open_store(url) as store:
        assert isinstance(store, InMemoryStore)


def test_open_store_sqlite_url_with_three_slashes_is_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    with open_store("sqlite:///sub/rel.db") as store:
        assert isinstance(store, SqliteStore)
        store.add_span(make_span(0))
    assert (tmp_path / "sub" / "rel.db").is_file()


def test_open_store_sqlite_url_with_four_slashes_is_absolute(tmp_path: Path) -> None:
    with open_store(f"sqlite:///{tmp_path}/abs.db") as store:
        assert isinstance(store, SqliteStore) and store.path == f"{tmp_path}/abs.db"


@pytest.mark.parametrize("name", ["spans.db", "spans.sqlite", "spans.sqlite3"])
def test_open_store_bare_database_path_gives_a_sqlite_store(tmp_path: Path, name: str) -> None:
    with open_store(tmp_path / name) as store:
        assert isinstance(store, SqliteStore) and store.path == str(tmp_path / name)


def test_open_store_postgres_url_takes_an_optional_schema_parameter(pg_schema: str) -> None:
    assert PG_DSN is not None
    url = PG_DSN.replace("postgresql://", "postgres://", 1)
    with open_store(f"{url}{'&' if '?' in url else '?'}schema={pg_schema}") as store:
        assert isinstance(store, PostgresStore) and store.schema == pg_schema
        assert store.add_span(make_span(0))
        assert "schema=" not in store.dsn


def test_open_store_routes_http_urls_to_the_http_store() -> None:
    if importlib.util.find_spec("agentemit.stores.http") is None:
        with pytest.raises(ModuleNotFoundError, match=r"agentemit\.stores\.http"):
            open_store("http://127.0.0.1:9/")
        return
    store = open_store("http://127.0.0.1:9/")
    try:
        assert type(store).__name__ == "HttpStore"
    finally:
        store.close()


@pytest.mark.parametrize("url", ["ftp://host/x", "spans.txt", "sqlite:///", "sqlite://rel.db", ""])
def test_open_store_refuses_an_unknown_form_naming_the_url_and_accepted_forms(url: str) -> None:
    with pytest.raises(ValueError, match="cannot open") as info:
        open_store(url)
    assert repr(url) in str(info.value) and "memory" in str(info.value) and "postgresql://" in str(info.value)


def test_stores_all_is_sorted_and_every_name_resolves() -> None:
    assert stores.__all__ == sorted(stores.__all__)
    for name in stores.__all__:
        assert getattr(stores, name) is not None
