"""Run the store server: :func:`serve` in the foreground, or :class:`ServerThread` in the background.

``serve`` refuses to listen beyond this machine without a token: spans hold prompts and outputs, and
an open port on a shared network would hand them to anyone.
"""

from __future__ import annotations

import gc
import ipaddress
import os
import threading
import time
from types import TracebackType
from typing import Any

import uvicorn

from agentemit.server import DEFAULT_MAX_BODY_BYTES, DEFAULT_RATE_BURST, DEFAULT_RATE_LIMIT
from agentemit.server.app import create_app
from agentemit.stores import TOKEN_ENV, open_store

SERVER_GC_THRESHOLD = 10_000  # allocations between young collections (CPython's default is 700)


def tune_gc_for_serving() -> None:
    """Garbage collection settings for a process that exists to serve the store (``agentemit serve``).

    A request decodes a batch into some 20,000 objects that live until it is stored, so at CPython's
    defaults every request runs a dozen collections, some of which walk the whole heap (FastAPI,
    pydantic and uvicorn: ~55,000 objects): 12-15% of the ingest path (BENCHMARKS.md). Freezing what
    exists once the app is built (modules, classes, routes: all live as long as the process) takes it
    out of every later collection, and a higher young-generation threshold runs far fewer of them.
    Cyclic garbage is still collected. Only for a process the server owns: the library never changes
    its host's collector.
    """
    gc.collect()
    gc.freeze()
    _, older, oldest = gc.get_threshold()
    gc.set_threshold(SERVER_GC_THRESHOLD, older, oldest)


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def serve(
    store_url: str,
    *,
    host: str = "127.0.0.1",
    port: int = 4747,
    token: str | None = None,
    log_level: str = "info",
    max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    rate_limit_per_s: float | None = DEFAULT_RATE_LIMIT,
    rate_burst: int = DEFAULT_RATE_BURST,
) -> None:
    """Open the store at ``store_url`` and serve it until interrupted; the store is closed on exit.

    Args:
        store_url: anything :func:`agentemit.stores.open_store` accepts.
        host, port: where to listen.
        token: bearer token clients must send; defaults to the ``AGENTEMIT_TOKEN`` environment variable.
        log_level: uvicorn's log level.
        max_body_bytes, rate_limit_per_s, rate_burst: as for :func:`~agentemit.server.app.create_app`;
            a serving process rate-limits by default (None turns it off).

    Raises:
        ValueError: ``host`` is not a loopback address and no token was given, or the store URL is invalid.
    """
    token = token or os.environ.get(TOKEN_ENV) or None
    if token is None and not is_loopback(host):
        raise ValueError(
            f"serve: refusing to listen on {host!r} without a token: anyone who can reach it could read and "
            f"write spans. Pass token=... or set {TOKEN_ENV}, or listen on 127.0.0.1."
        )
    store = open_store(store_url)
    try:
        app = create_app(
            store, token=token, max_body_bytes=max_body_bytes, rate_limit_per_s=rate_limit_per_s, rate_burst=rate_burst
        )
        tune_gc_for_serving()
        uvicorn.run(app, host=host, port=port, log_level=log_level)
    finally:
        store.close()


class ServerThread:
    """Runs an ASGI app under uvicorn in a daemon thread, on an ephemeral port by default.

    Use as a context manager; ``url`` is ``http://host:port`` once started. Starting and stopping wait
    at most ``timeout`` seconds each, and raise ``RuntimeError`` rather than hang.
    """

    def __init__(
        self, app: Any, host: str = "127.0.0.1", port: int = 0, *, timeout: float = 10.0, log_level: str = "warning"
    ) -> None:
        # log_config=None: leave the host's logging configuration (and pytest's capture) alone.
        config = uvicorn.Config(app, host=host, port=port, log_level=log_level, log_config=None, access_log=False)
        self.server = uvicorn.Server(config)
        self.host = host
        self.timeout = timeout
        self.port: int | None = None
        self._thread = threading.Thread(target=self.server.run, name=f"agentemit-server-{host}:{port}", daemon=True)

    @property
    def url(self) -> str:
        if self.port is None:
            raise RuntimeError("ServerThread: not started")
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    def start(self) -> ServerThread:
        self._thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            if not self._thread.is_alive():
                raise RuntimeError(f"ServerThread: uvicorn exited before listening on {self.host} (port in use?)")
            if time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"ServerThread: not listening after {self.timeout}s")
            self._thread.join(0.005)
        self.port = int(self.server.servers[0].sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        """Ask uvicorn to exit gracefully, then forcibly if it has not within the timeout."""
        if not self._thread.is_alive():
            return
        self.server.should_exit = True
        self._thread.join(self.timeout)
        if self._thread.is_alive():
            self.server.force_exit = True
            self._thread.join(self.timeout)
        if self._thread.is_alive():
            raise RuntimeError(
                f"ServerThread: server on {self.host}:{self.port} did not stop within {2 * self.timeout}s"
            )

    def __enter__(self) -> ServerThread:
        return self.start()

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop()
