"""HttpStore against real store servers on 127.0.0.1: the store contract over HTTP, retries and failover."""

from __future__ import annotations

import asyncio
import dataclasses
import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from _ports import closed_port_url
from agentemit import codec, semconv
from agentemit.server.runner import ServerThread
from agentemit.span import Span
from agentemit.stores import StoreClosedError, open_store
from agentemit.stores.base import SpanStore
from agentemit.stores.http import HttpStore, HttpStoreError, HttpStoreRejected

pytest_plugins = ["_server_fixtures"]  # backend, serve_app
Serve = Callable[..., ServerThread]  # what the serve_app fixture returns

TOKEN = "tkn"


class FakeClock:
    """Monotonic seconds that move only when told to; its ``sleep`` advances it instead of waiting."""

    def __init__(self) -> None:
        self.now = 0.0
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        self.now += seconds


def make_span(seq: int, *, rollout: str = "r1", attempt: str = "a1", name: str = "step", **kw: Any) -> Span:
    start = 1_000 + 10 * seq
    return Span(
        trace_id=f"{7:032x}",
        span_id=f"{seq:016x}",
        parent_id=None,
        name=name,
        start_time=start,
        end_time=start + 5,
        rollout_id=rollout,
        attempt_id=attempt,
        sequence_id=seq,
        **kw,
    )


def ids(spans: list[Span]) -> list[str]:
    return [s.span_id for s in spans]


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(serve_app: Serve, clock: FakeClock) -> Iterator[HttpStore]:
    made = HttpStore(serve_app(token=TOKEN).url, token=TOKEN, sleep=clock.sleep)
    yield made
    made.close()


# --- the store contract, over HTTP ------------------------------------------------------------------------


def test_add_returns_new_spans_and_a_repeated_key_is_stored_once(store: HttpStore, backend: SpanStore) -> None:
    assert store.add_many_spans([make_span(0), make_span(1), make_span(0)]) == 2
    assert store.add_many_spans([make_span(1), make_span(2)]) == 1
    assert store.add_span(make_span(2)) is False
    assert store.add_many_spans([]) == 0
    assert ids(backend.query_spans("r1")) == ids([make_span(i) for i in range(3)])


def test_a_round_trip_through_the_server_is_lossless(store: HttpStore) -> None:
    original = make_span(
        3,
        rollout="ro/ünï?&#%",
        attempt="latest-but-not-literally",
        attributes={"t": (1, 2), "nan": float("nan"), "s": "a\x00b"},
        status="ERROR",
        status_description="boom",
        resource={"service.name": "svc"},
    )
    assert store.add_span(original)
    [got] = store.query_spans("ro/ünï?&#%")
    assert codec.encode_span(got) == codec.encode_span(original)
    assert store.get_next_span_sequence_id("ro/ünï?&#%", "latest-but-not-literally") == 4
    assert store.get_next_span_sequence_id("ro/ünï?&#%", "other") == 0


def test_rollout_ids_with_dot_segments_or_line_breaks_read_back(store: HttpStore) -> None:
    for rollout in [".", "..", "a/../b", "./x", "line\nbreak", "\n", "tab\tcr\r"]:
        assert store.add_span(make_span(0, rollout=rollout))
        assert [s.rollout_id for s in store.query_spans(rollout)] == [rollout], rollout
        assert store.get_next_span_sequence_id(rollout, "a1") == 1, rollout


INVALID: list[tuple[str, dict[str, Any]]] = [
    ("rollout_id", {"rollout_id": ""}),
    ("rollout_id", {"rollout_id": 7}),
    ("attempt_id", {"attempt_id": None}),
    ("sequence_id", {"sequence_id": "3"}),
    ("sequence_id", {"sequence_id": True}),
    ("start_time", {"start_time": 2**63}),
    ("status", {"status": "FINE"}),
    ("name", {"name": "a\x00b"}),
    ("parent_id", {"parent_id": 5}),
    ("attributes", {"attributes": {"obj": object()}}),
]


def test_an_invalid_span_refuses_the_whole_batch_with_a_value_error_naming_span_and_field(
    store: HttpStore, backend: SpanStore, clock: FakeClock
) -> None:
    for field, change in INVALID:
        bad = dataclasses.replace(make_span(2), span_id="bad-span", **change)
        with pytest.raises(ValueError, match=field) as info:
            store.add_many_spans([make_span(1), bad, make_span(3)])
        assert "'bad-span'" in str(info.value), str(info.value)
    with pytest.raises(ValueError, match="batch item 1 is dict"):
        store.add_many_spans([make_span(0), {"span_id": "x"}])  # type: ignore[list-item]
    assert backend.list_rollouts() == []
    assert clock.sleeps == []  # a refused batch is never retried


def test_queries_filter_order_and_page_like_every_store(store: HttpStore) -> None:
    store.add_many_spans([make_span(0), make_span(1, name="reward"), make_span(2, attempt="a2")])
    assert ids(store.query_spans("r1")) == ids([make_span(i) for i in range(3)])
    assert ids(store.query_spans("r1", "a1", name="reward")) == [make_span(1).span_id]
    assert ids(store.query_spans("r1", "latest")) == [make_span(2).span_id]
    assert ids(store.query_spans("r1", limit=1, offset=1)) == [make_span(1).span_id]
    assert store.query_spans("nobody") == []
    assert store.query_spans("") == []
    [summary] = store.list_rollouts()
    assert (summary.rollout_id, summary.attempt_ids, summary.span_count) == ("r1", ["a1", "a2"], 3)
    assert store.list_rollouts(limit=0) == [] and store.list_rollouts(offset=1) == []
    with pytest.raises(ValueError, match="limit"):
        store.query_spans("r1", limit=-1)
    with pytest.raises(ValueError, match="offset"):
        store.list_rollouts(offset=-1)


def test_final_reward_in_the_summary_comes_through(store: HttpStore) -> None:
    attrs = {semconv.reward_name_key(0): "primary", semconv.reward_value_key(0): 0.75}
    store.add_many_spans([make_span(0), make_span(1, name=semconv.SPAN_REWARD, attributes=attrs)])
    assert store.list_rollouts()[0].final_reward == 0.75


def test_async_twins_answer_like_the_sync_methods(store: HttpStore) -> None:
    async def run() -> tuple[int, list[Span], int]:
        added = await store.aadd_many_spans([make_span(0), make_span(1)])
        return added, await store.aquery_spans("r1"), await store.aget_next_span_sequence_id("r1", "a1")

    added, spans, following = asyncio.run(run())
    assert (added, ids(spans), following) == (2, ids(store.query_spans("r1")), 2)


def test_eight_threads_sharing_one_client_store_every_span_exactly_once(store: HttpStore, backend: SpanStore) -> None:
    counts: list[int] = []

    def writer(worker: int) -> None:
        spans = [make_span(i, attempt=f"w{worker}") for i in range(20)]
        counts.append(store.add_many_spans(spans[:10]) + store.add_many_spans(spans))  # half re-sent

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert counts == [20] * 8
    assert backend.list_rollouts()[0].span_count == 160


def test_close_is_idempotent_and_later_use_raises_store_closed(store: HttpStore) -> None:
    store.close()
    store.close()
    with pytest.raises(StoreClosedError, match="after close"):
        store.query_spans("r1")
    with pytest.raises(StoreClosedError, match="after close"):
        store.add_many_spans([])


def test_open_store_gives_an_http_store_for_an_http_url() -> None:
    with open_store("http://127.0.0.1:4747") as opened:
        assert isinstance(opened, HttpStore) and opened.requires_rollout


def test_bad_settings_are_refused_naming_them() -> None:
    with pytest.raises(ValueError, match="'ftp://x' is not an http"):
        HttpStore("ftp://x")
    with pytest.raises(ValueError, match="compression 'lz4'"):
        HttpStore("http://127.0.0.1:1", compression="lz4")
    with pytest.raises(ValueError, match="max_retries -1"):
        HttpStore("http://127.0.0.1:1", max_retries=-1)


# --- errors, retries, failover ----------------------------------------------------------------------------


@pytest.mark.parametrize("compression", ["none", "gzip", "zstd"])
def test_every_compression_is_accepted_by_the_server(serve_app: Serve, backend: SpanStore, compression: str) -> None:
    with HttpStore(serve_app().url, compression=compression) as store:
        assert store.add_many_spans([make_span(0), make_span(1)]) == 2
    assert len(backend.query_spans("r1")) == 2


def test_a_wrong_token_raises_at_once_naming_url_and_status(serve_app: Serve, clock: FakeClock) -> None:
    """No retry here (the same token fails again), but retryable for a pipeline: its spans are sound, so
    they wait in the spool until the token is fixed instead of being split and dropped as invalid."""
    url = serve_app(token=TOKEN).url
    with HttpStore(url, token="wrong", sleep=clock.sleep) as store, pytest.raises(HttpStoreError) as info:
        store.list_rollouts()
    assert f"GET {url}/v1/rollouts answered 401: wrong bearer token" in str(info.value)
    assert (info.value.status, info.value.retryable, clock.sleeps) == (401, True, [])
    assert not isinstance(info.value, ValueError)


def test_an_oversize_batch_is_refused_without_retrying(serve_app: Serve, clock: FakeClock) -> None:
    url = serve_app(max_body_bytes=2048).url
    spans = [make_span(i, attributes={"pad": f"{i}" * 300}) for i in range(20)]
    with HttpStore(url, compression="none", sleep=clock.sleep) as store, pytest.raises(HttpStoreRejected) as info:
        store.add_many_spans(spans)
    assert info.value.status == 413 and "2048-byte limit" in str(info.value) and clock.sleeps == []


def test_429_is_retried_after_the_servers_retry_after(serve_app: Serve, clock: FakeClock) -> None:
    url = serve_app(rate_limit_per_s=0.25, rate_burst=1, clock=clock).url
    with HttpStore(url, backoff=0.01, sleep=clock.sleep) as store:
        assert store.list_rollouts() == []
        assert store.add_many_spans([make_span(0)]) == 1  # refused once, waits 4 s (injected), succeeds
    assert clock.sleeps == [4.0]


def test_a_failing_store_is_retried_with_doubling_backoff_then_raises_naming_the_url(
    serve_app: Serve, backend: SpanStore, clock: FakeClock
) -> None:
    url = serve_app().url
    backend.close()  # the server now answers 500 for every store call
    with HttpStore(url, max_retries=3, backoff=0.2, sleep=clock.sleep) as store, pytest.raises(HttpStoreError) as info:
        store.add_many_spans([make_span(0)])
    assert clock.sleeps == pytest.approx([0.2, 0.4, 0.8])
    assert f"gave up after 4 rounds over 1 URL(s); last: POST {url}/v1/spans answered 500" in str(info.value)
    assert info.value.retryable


def test_an_unreachable_primary_fails_over_to_the_backup_without_waiting(
    serve_app: Serve, backend: SpanStore, clock: FakeClock
) -> None:
    dead = closed_port_url()
    backup = serve_app().url
    with HttpStore(dead, backup_urls=[backup], sleep=clock.sleep) as store:
        assert store.add_many_spans([make_span(0), make_span(1)]) == 2
        assert ids(store.query_spans("r1")) == ids(backend.query_spans("r1"))
        assert "HttpStore('" + backup in repr(store)  # sticks with the server that answered
    assert clock.sleeps == []


def test_when_every_url_is_unreachable_the_error_names_the_last_one(clock: FakeClock) -> None:
    first, second = closed_port_url(), closed_port_url()
    expected = rf"2 rounds over 2 URL\(s\); last: GET {second}/v1/rollouts: Connect"
    store = HttpStore(first, backup_urls=[second], max_retries=1, sleep=clock.sleep)
    with store, pytest.raises(HttpStoreError, match=expected):
        store.list_rollouts()
    assert clock.sleeps == [0.2]


def test_a_retry_after_too_long_to_block_on_is_raised_with_the_wait_instead_of_slept(
    serve_app: Serve, clock: FakeClock
) -> None:
    url = serve_app(rate_limit_per_s=0.01, rate_burst=1, clock=clock).url
    with HttpStore(url, sleep=clock.sleep) as store:
        store.list_rollouts()
        with pytest.raises(HttpStoreError, match="answered 429") as info:
            store.list_rollouts()
    assert (info.value.retryable, info.value.retry_after, clock.sleeps) == (True, 100.0, [])
