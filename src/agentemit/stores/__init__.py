"""Span stores behind one interface, and :func:`open_store` to pick one from a URL."""

from __future__ import annotations

import importlib
import os
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from agentemit.stores._rows import StoreClosedError
from agentemit.stores.base import RolloutSummary, SpanStore
from agentemit.stores.memory import InMemoryStore
from agentemit.stores.sqlite import SqliteStore

if TYPE_CHECKING:
    from agentemit.stores.postgres import PostgresStore

__all__ = [
    "InMemoryStore",
    "PostgresStore",
    "RolloutSummary",
    "SpanStore",
    "SqliteStore",
    "StoreClosedError",
    "open_store",
]

TOKEN_ENV = "AGENTEMIT_TOKEN"  # the bearer token for an agentemit server: sent by open_store, required by serve

ACCEPTED_FORMS = (
    "memory (or memory://)",
    "sqlite:///relative/path.db or sqlite:////absolute/path.db",
    "a bare file path ending .db, .sqlite or .sqlite3",
    "postgresql://... or postgres://... (optional ?schema=name)",
    "http://... or https://... (an agentemit server)",
)
_SQLITE_SUFFIXES = (".db", ".sqlite", ".sqlite3")


def __getattr__(name: str) -> Any:
    # PostgresStore is loaded on first use: importing psycopg costs ~50 ms that SQLite users never need.
    if name == "PostgresStore":
        from agentemit.stores.postgres import PostgresStore

        return PostgresStore
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _postgres(url: str) -> PostgresStore:
    """Split our ``schema`` query parameter off the URL; libpq would refuse it."""
    from agentemit.stores.postgres import PostgresStore

    parts = urlsplit(url)
    query = parse_qsl(parts.query, keep_blank_values=True)
    schema = [v for k, v in query if k == "schema"]
    dsn = urlunsplit(parts._replace(query=urlencode([(k, v) for k, v in query if k != "schema"])))
    return PostgresStore(dsn, schema=schema[-1]) if schema else PostgresStore(dsn)


def _http(url: str) -> SpanStore:
    # Imported lazily: the HTTP client pulls in httpx, which local stores never need.
    module = importlib.import_module("agentemit.stores.http")
    store = module.HttpStore(url, token=os.environ.get(TOKEN_ENV) or None)
    if not isinstance(store, SpanStore):
        raise TypeError(f"open_store: agentemit.stores.http.HttpStore is not a SpanStore ({type(store).__name__})")
    return store


def open_store(url: str | os.PathLike[str]) -> SpanStore:
    """Open the store a URL names.

    ``memory`` → :class:`InMemoryStore`; ``sqlite:///path.db`` or a bare ``*.db`` path →
    :class:`SqliteStore`; ``postgresql://`` / ``postgres://`` → :class:`PostgresStore`;
    ``http://`` / ``https://`` → ``agentemit.stores.http.HttpStore``, sending the bearer token in
    ``AGENTEMIT_TOKEN`` when set (as ``agentemit serve`` reads it).

    Raises:
        ValueError: when the URL matches none of the accepted forms (the message lists them).
    """
    text = os.fspath(url)
    lowered = text.lower()
    if lowered in ("memory", "memory://"):
        return InMemoryStore()
    if lowered.startswith("sqlite:///"):
        path = text[len("sqlite:///") :]
        if path:
            return SqliteStore(path)
    elif lowered.startswith(("postgresql://", "postgres://")):
        return _postgres(text)
    elif lowered.startswith(("http://", "https://")):
        return _http(text)
    elif "://" not in text and lowered.endswith(_SQLITE_SUFFIXES):
        return SqliteStore(text)
    raise ValueError(f"open_store: cannot open {text!r}; expected one of: {'; '.join(ACCEPTED_FORMS)}")
