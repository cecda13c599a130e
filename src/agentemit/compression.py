"""gzip and zstd, one place, shared by the spool, the HTTP client and the server."""

from __future__ import annotations

import gzip
from typing import Literal, TypeAlias

import zstandard

Compression: TypeAlias = Literal["none", "gzip", "zstd"]
COMPRESSIONS: tuple[Compression, ...] = ("none", "gzip", "zstd")

_ZSTD_MAX_OUTPUT = 512 * 1024 * 1024  # refuse zstd frames that claim more than this when decompressed


class CompressionError(ValueError):
    """Data could not be decompressed with the named encoding."""


def check_compression(name: str) -> Compression:
    """Validate a compression name, with an error that lists the choices."""
    if name not in COMPRESSIONS:
        raise ValueError(f"compression {name!r} is not one of {', '.join(COMPRESSIONS)}")
    return name


def compress(data: bytes, compression: Compression, *, zstd_level: int = 3) -> bytes:
    """Compress ``data``; ``"none"`` returns it unchanged. gzip always uses level 1 (speed first)."""
    if compression == "none":
        return data
    if compression == "gzip":
        return gzip.compress(data, compresslevel=1)
    if compression == "zstd":
        return zstandard.ZstdCompressor(level=zstd_level).compress(data)  # one per call: not thread-safe
    raise ValueError(f"compression {compression!r} is not one of {', '.join(COMPRESSIONS)}")


def decompress(data: bytes, encoding: str | None) -> bytes:
    """Undo :func:`compress`; ``encoding`` is a compression name or an HTTP Content-Encoding."""
    name = (encoding or "none").strip().lower()
    try:
        if name in ("none", "identity", ""):
            return data
        if name == "gzip":
            return gzip.decompress(data)
        if name == "zstd":
            return zstandard.ZstdDecompressor().decompress(data, max_output_size=_ZSTD_MAX_OUTPUT)
    except (OSError, EOFError, zstandard.ZstdError) as exc:
        raise CompressionError(f"body is not valid {name}: {exc}") from exc
    raise CompressionError(f"content encoding {encoding!r} is not one of {', '.join(COMPRESSIONS)}")
