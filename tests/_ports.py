"""Loopback ports for tests: one that nothing listens on, and a URL pointing at it."""

from __future__ import annotations

import socket


def free_port() -> int:
    """A loopback port nothing listens on right now (bound, then released)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def closed_port_url(path: str = "") -> str:
    """An http URL on loopback that nothing listens on, with ``path`` appended."""
    return f"http://127.0.0.1:{free_port()}{path}"
