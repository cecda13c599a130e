"""Fixtures shared by the server and HttpStore tests: a real store behind a real server on loopback."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from agentemit.server.app import create_app
from agentemit.server.runner import ServerThread
from agentemit.stores import InMemoryStore, SqliteStore
from agentemit.stores.base import SpanStore

Serve = Callable[..., ServerThread]


@pytest.fixture(params=["memory", "sqlite"])
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[SpanStore]:
    """The store the server writes to (memory and a SQLite file)."""
    made: SpanStore = InMemoryStore() if request.param == "memory" else SqliteStore(tmp_path / "spans.db")
    yield made
    made.close()


@pytest.fixture
def serve_app(backend: SpanStore) -> Iterator[Serve]:
    """Start the app over ``backend`` with the given create_app options; every server is stopped after the test."""
    started: list[ServerThread] = []

    def start(**options: Any) -> ServerThread:
        server = ServerThread(create_app(backend, **options)).start()
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
