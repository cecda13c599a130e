"""The sink contract (OpenTelemetry's SpanExporter, smaller) and the store sink.

A sink takes a batch of finished spans. Behaviour such as retry, failover and spooling is added by
wrapping a sink (see ``retry.py``, ``failover.py``), never by subclassing one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol, runtime_checkable

from agentemit.span import Span
from agentemit.stores.base import SpanStore

#: HTTP statuses that refuse a request for what it carries (malformed, too large, unprocessable): the
#: pipeline splits such a batch to find the span at fault. Any other failing status (401/403: a wrong
#: token, 404: a wrong URL, 5xx) says nothing about the spans, so the batch stays in the spool and is
#: retried with backoff until the receiver takes it: splitting it would drop every span as invalid.
REFUSED_STATUSES = frozenset({400, 413, 422})


@dataclass(frozen=True, slots=True)
class ExportResult:
    """What one export attempt achieved.

    ``retryable`` is False for a batch the receiver refused as invalid: sending it again cannot help.
    ``too_large`` (never retryable) says the receiver refused it for its size (HTTP 413): the pipeline
    splits the batch, and a span refused alone is dropped as ``oversize`` rather than ``invalid``.
    ``retry_after`` carries a server's Retry-After (seconds) when it gave one. ``rejected`` counts the
    spans of an accepted batch the receiver still refused (OTLP partial success; it does not say which):
    the pipeline counts them as ``invalid``, not exported.
    """

    ok: bool
    retryable: bool = True
    retry_after: float | None = None
    error: str | None = None
    stored: int = 0  # spans newly stored (duplicates of already stored spans are not counted)
    too_large: bool = False
    rejected: int = 0

    @classmethod
    def success(cls, stored: int = 0) -> ExportResult:
        return cls(ok=True, stored=stored)

    @classmethod
    def failure(
        cls, error: str, *, retryable: bool = True, retry_after: float | None = None, too_large: bool = False
    ) -> ExportResult:
        retryable = retryable and not too_large
        return cls(ok=False, retryable=retryable, retry_after=retry_after, error=error, too_large=too_large)


@runtime_checkable
class Sink(Protocol):
    """Receives batches from the pipeline worker; must not raise (failures are results)."""

    def export(self, batch: Sequence[Span]) -> ExportResult: ...

    def force_flush(self, timeout: float) -> bool: ...

    def shutdown(self, timeout: float) -> None: ...


class StoreSink:
    """Writes each batch with one ``add_many_spans`` call (one transaction).

    ``close_store``: close the store at shutdown. Off when the store belongs to the caller (a tracer
    given a store must leave it usable for the trainer or runner that shares it).
    """

    def __init__(self, store: SpanStore, *, close_store: bool = True) -> None:
        self.store = store
        self.close_store = close_store

    def export(self, batch: Sequence[Span]) -> ExportResult:
        try:
            return ExportResult.success(self.store.add_many_spans(batch))
        except ValueError as exc:  # the store refused the batch as invalid: sending it again cannot help
            return ExportResult.failure(
                f"{type(self.store).__name__}: {exc}", retryable=False, too_large=getattr(exc, "too_large", False)
            )
        except Exception as exc:  # a store failure is a result for the retry/spool layers, not a crash
            return ExportResult.failure(
                f"{type(self.store).__name__}: {type(exc).__name__}: {exc}",
                retryable=getattr(exc, "retryable", True),
                retry_after=getattr(exc, "retry_after", None),
            )

    def force_flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        if self.close_store:
            self.store.close()
