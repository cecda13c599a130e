"""A :class:`SpanStore` that talks to an agentemit store server (``agentemit.server``) over HTTP.

Every server operation is idempotent (a span's key is stored once), so a request that failed in
transit is simply sent again: with backoff on connection errors, timeouts, 408/429 and 5xx (honouring
Retry-After), trying each backup URL in turn before waiting. A refused request (400, 413, ...) is
never retried: it raises :class:`HttpStoreRejected`, a ``ValueError`` like every store's refusal.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from typing import Any
from urllib.parse import quote

import httpx

from agentemit import codec
from agentemit.compression import check_compression, compress
from agentemit.pipeline.otlp import parse_retry_after
from agentemit.pipeline.sink import REFUSED_STATUSES
from agentemit.span import Span
from agentemit.stores._rows import StoreClosedError, abandon, register_fork_aware
from agentemit.stores.base import AttemptSelector, RolloutSummary, SpanStore

# Statuses retried here, in rounds with backoff; other failures go back to the caller at once (a refusal
# of the content as HttpStoreRejected, anything else as a retryable HttpStoreError for its spool).
RETRYABLE_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
_MAX_WAIT = 30.0  # a Retry-After longer than this is not slept through: the error carries it instead
_ERROR_CHARS = 300


class HttpStoreError(RuntimeError):
    """A server request that did not succeed; the message names the method, URL and status.

    ``retryable`` says whether sending the same request later may succeed; ``retry_after`` carries a
    server's requested wait (seconds) when it gave one; ``too_large`` says the server refused the
    request for its size (413), so a smaller batch may pass.
    """

    def __init__(
        self, message: str, *, status: int | None = None, retryable: bool = True, retry_after: float | None = None
    ) -> None:
        super().__init__(message)
        self.status = status
        self.retryable = retryable
        self.retry_after = retry_after
        self.too_large = status == 413


class HttpStoreRejected(HttpStoreError, ValueError):
    """The server refused the request as invalid (e.g. a malformed span or an oversize batch)."""


def _error_text(response: httpx.Response) -> str:
    try:
        body = codec.loads(response.content)
        text = str(body.get("error", body)) if isinstance(body, dict) else str(body)
    except codec.CodecError:
        text = response.text
    text = text.strip().replace("\n", " ")
    return text[:_ERROR_CHARS] or "(no body)"


def _check_url(url: str) -> str:
    if not isinstance(url, str) or not url.startswith(("http://", "https://")):
        raise ValueError(f"http store: {url!r} is not an http:// or https:// URL")
    return url.rstrip("/")


class HttpStore(SpanStore):
    """A store served by ``agentemit.server`` at ``url`` (and ``backup_urls`` when it is unreachable).

    One pooled keep-alive ``httpx.Client`` is shared by all threads. After a failover the store keeps
    using the URL that answered until it fails in turn.

    Args:
        url: the server's base URL, e.g. ``http://127.0.0.1:4747``.
        backup_urls: servers to try, in order, when the current one fails.
        token: sent as ``Authorization: Bearer <token>``.
        compression: ``"zstd"``, ``"gzip"`` or ``"none"``, for batches sent.
        timeout: seconds for connect/read/write of one request.
        max_retries: rounds over all URLs after the first, each preceded by a backoff.
        backoff: first wait in seconds; it doubles every round (a longer Retry-After wins).
        sleep: how to wait (injected in tests).
        lookup_timeout: per-URL time limit of the sequence-id lookup made when a rollout opens.

    Raises:
        ValueError: for a URL that is not http(s), an unknown compression or negative retry settings.
    """

    requires_rollout = True

    def __init__(
        self,
        url: str,
        *,
        backup_urls: Sequence[str] = (),
        token: str | None = None,
        compression: str = "zstd",
        timeout: float = 10.0,
        max_retries: int = 3,
        backoff: float = 0.2,
        sleep: Callable[[float], None] = time.sleep,
        lookup_timeout: float = 1.0,
    ) -> None:
        self.urls: tuple[str, ...] = (_check_url(url), *(_check_url(u) for u in backup_urls))
        self.compression = check_compression(compression)
        if type(max_retries) is not int or max_retries < 0:
            raise ValueError(f"http store: max_retries {max_retries!r} must be an int >= 0")
        if not backoff >= 0:
            raise ValueError(f"http store: backoff {backoff!r} must be >= 0")
        if not timeout > 0:
            raise ValueError(f"http store: timeout {timeout!r} must be > 0")
        self.timeout = timeout
        self.lookup_timeout = lookup_timeout
        self.max_retries = max_retries
        self.backoff = backoff
        self._sleep = sleep
        self._headers = {"Accept": "application/json", "User-Agent": "agentemit-http-store"}
        if token:
            self._headers["Authorization"] = f"Bearer {token}"
        self._active = 0  # index into urls of the server that answered last
        self._closed = False
        self._client = self._new_client()
        register_fork_aware(self)

    def __repr__(self) -> str:
        return f"HttpStore({self.urls[self._active]!r}, urls={len(self.urls)}, closed={self._closed})"

    def _new_client(self) -> httpx.Client:
        return httpx.Client(timeout=self.timeout, headers=self._headers)

    def _after_fork_in_child(self) -> None:
        # The parent's pooled sockets are not ours to use or close: start a fresh pool in the child.
        abandon(self._client)
        self._client = self._new_client()

    # --- transport ------------------------------------------------------------------------------

    def _request(
        self,
        method: str,
        path: str,
        *,
        content: bytes | None = None,
        headers: dict[str, str] | None = None,
        params: dict[str, Any] | None = None,
        retries: int | None = None,
        timeout: float | None = None,
    ) -> Any:
        """Send to the active URL, failing over and backing off; returns the decoded JSON answer.

        ``retries``/``timeout`` override the store's for calls an agent thread waits on.
        """
        if self._closed:
            raise StoreClosedError("http store: used after close(); open a new store")
        last_error = "no attempt made"
        max_retries = self.max_retries if retries is None else retries
        for round_no in range(max_retries + 1):
            retry_after: float | None = None
            start = self._active
            for step in range(len(self.urls)):
                index = (start + step) % len(self.urls)
                where = f"{method} {self.urls[index]}{path}"
                try:
                    response = self._client.request(
                        method,
                        self.urls[index] + path,
                        content=content,
                        headers=headers,
                        params=params,
                        timeout=self.timeout if timeout is None else timeout,
                    )
                except httpx.TransportError as exc:
                    last_error = f"{where}: {type(exc).__name__}: {exc}"
                    continue
                status = response.status_code
                if status < 300:
                    self._active = index
                    try:
                        return codec.loads(response.content)
                    except codec.CodecError as exc:
                        raise HttpStoreError(
                            f"http store: {where} answered {status} with {exc}", status=status
                        ) from exc
                last_error = f"{where} answered {status}: {_error_text(response)}"
                if status in REFUSED_STATUSES:
                    raise HttpStoreRejected(f"http store: {last_error}", status=status, retryable=False)
                if status not in RETRYABLE_STATUSES:  # 401, 404 ...: a later try, not this one, may succeed
                    raise HttpStoreError(f"http store: {last_error}", status=status)
                wait = parse_retry_after(response.headers.get("retry-after"))
                if wait is not None:
                    if wait > _MAX_WAIT:  # do not block the caller that long: let its retry layer schedule it
                        raise HttpStoreError(f"http store: {last_error}", status=status, retry_after=wait)
                    retry_after = max(retry_after or 0.0, wait)
            if round_no < max_retries:
                self._sleep(max(self.backoff * 2**round_no, retry_after or 0.0))
        raise HttpStoreError(
            f"http store: gave up after {max_retries + 1} rounds over {len(self.urls)} URL(s); last: {last_error}"
        )

    @staticmethod
    def _rollout_path(rollout_id: str, tail: str) -> str:
        # Every "." escaped too: httpx removes "." and ".." path segments, so those ids would name another URL.
        return f"/v1/rollouts/{quote(rollout_id, safe='').replace('.', '%2E')}/{tail}"

    # --- SpanStore ------------------------------------------------------------------------------

    def add_many_spans(self, spans: Sequence[Span]) -> int:
        """POST one checksummed batch; the server stores it whole or refuses it whole."""
        batch = list(spans)
        for index, span in enumerate(batch):
            if not isinstance(span, Span):
                raise ValueError(f"http store: batch item {index} is {type(span).__name__}, not a Span")
        if not batch:
            if self._closed:
                raise StoreClosedError("http store: used after close(); open a new store")
            return 0
        body = self._encode(batch)
        headers = {"Content-Type": "application/json"}
        if self.compression != "none":
            headers["Content-Encoding"] = self.compression
            body = compress(body, self.compression)
        answer = self._request("POST", "/v1/spans", content=body, headers=headers)
        return int(answer["stored"])

    @staticmethod
    def _encode(batch: list[Span]) -> bytes:
        try:
            return codec.encode_batch(batch)
        except (TypeError, ValueError, AttributeError):
            for index, span in enumerate(batch):  # find the culprit to name it
                try:
                    codec.encode_span(span)
                except (TypeError, ValueError, AttributeError) as exc:
                    raise ValueError(
                        f"http store: span {span.span_id!r} (batch item {index}): "
                        f"attributes, events or resource cannot be encoded: {exc}"
                    ) from exc
            raise

    def query_spans(
        self,
        rollout_id: str,
        attempt_id: AttemptSelector = None,
        *,
        name: str | None = None,
        limit: int | None = None,
        offset: int = 0,
    ) -> list[Span]:
        params = {"attempt_id": attempt_id, "name": name, "limit": limit, "offset": offset}
        answer = self._request(
            "GET", self._rollout_path(rollout_id, "spans"), params={k: v for k, v in params.items() if v is not None}
        )
        try:
            return [codec.span_from_obj(obj, f"$.spans[{i}]") for i, obj in enumerate(answer["spans"])]
        except (KeyError, TypeError, codec.CodecError) as exc:
            raise HttpStoreError(f"http store: spans of rollout {rollout_id!r} came back malformed: {exc}") from exc

    def list_rollouts(self, *, limit: int | None = None, offset: int = 0) -> list[RolloutSummary]:
        params: dict[str, Any] = {"offset": offset}
        if limit is not None:
            params["limit"] = limit
        answer = self._request("GET", "/v1/rollouts", params=params)
        try:
            return [RolloutSummary.from_dict(obj) for obj in answer]
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise HttpStoreError(f"http store: rollout summaries came back malformed: {exc}") from exc

    def get_next_span_sequence_id(self, rollout_id: str, attempt_id: str) -> int:
        """Asked when a rollout opens, on the agent's thread: one try per URL, ``lookup_timeout`` each."""
        answer = self._request(
            "GET",
            self._rollout_path(rollout_id, "next_sequence_id"),
            params={"attempt_id": attempt_id},
            retries=0,
            timeout=min(self.timeout, self.lookup_timeout),
        )
        return int(answer["next"])

    def close(self) -> None:
        """Close the connection pool; idempotent. Later calls raise ``StoreClosedError``."""
        if not self._closed:
            self._closed = True
            self._client.close()
