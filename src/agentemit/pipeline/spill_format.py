"""The payload format of spool records written by the pipeline.

``b"AE1" + form + owner(8) + count(u32 BE) + body`` where form is ``R`` (raw records, not yet built,
redacted or filtered: written on queue overflow, where speed matters) or ``B`` (built spans, an
:func:`agentemit.codec.encode_batch` document: written when a sink fails). ``owner`` identifies the
pipeline instance that wrote it, so a replay can tell its own spills from those a previous process
left behind (counted as ``recovered``). The count lets eviction be accounted in spans without decoding.
"""

from __future__ import annotations

import struct
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, cast

import orjson

from agentemit import codec
from agentemit.pipeline.builder import build_span, resolve_deferred
from agentemit.span import Span, decode_attributes, encode_attributes
from agentemit.tracing.context import RawRecord, as_attributes

MAGIC = b"AE1"
_HEADER = struct.Struct(">3sc8sI")
HEADER_SIZE = _HEADER.size


@dataclass(frozen=True, slots=True)
class SpillHeader:
    form: bytes
    owner: bytes
    count: int


def read_header(payload: bytes) -> SpillHeader | None:
    """The header of a payload, or None when it is not one of ours."""
    if len(payload) < HEADER_SIZE:
        return None
    magic, form, owner, count = _HEADER.unpack_from(payload)
    if magic != MAGIC or form not in (b"R", b"B"):
        return None
    return SpillHeader(form, owner, count)


def encode_raw(records: Sequence[RawRecord], owner: bytes, resource: Mapping[str, Any]) -> bytes:
    """Raw records as compact JSON rows; third-party spans are built first (they hold SDK objects)."""
    rows: list[Any] = []
    for r in records:
        if r[0] == "otel":
            rows.append(["otel", build_span(r, dict(resource)).to_dict()])
        else:
            attrs = as_attributes(r[4])
            if r[0] == "exception":
                resolve_deferred(attrs)
            row: list[Any] = list(r[:11])
            row[4] = encode_attributes(attrs)  # JSON has no NaN/inf: tag them as the codec does
            rows.append(row)
    return _HEADER.pack(MAGIC, b"R", owner, len(records)) + orjson.dumps(rows)


def encode_built(spans: Sequence[Span], owner: bytes) -> bytes:
    return _HEADER.pack(MAGIC, b"B", owner, len(spans)) + codec.encode_batch(spans)


def decode_batches(header: SpillHeader, payload: bytes, size: int, skip: int = 0) -> Iterator[list[RawRecord | Span]]:
    """The payload's events ``size`` at a time, from event ``skip`` on.

    Form ``R`` gives raw records (and Spans for third-party spans built at spill time), still to be
    built and staged; form ``B`` gives built Spans. The JSON is parsed once; each batch is converted
    only when asked for and the parsed rows it came from are released, so besides the parsed
    document only one batch is held decoded at a time.
    """
    body = memoryview(payload)[HEADER_SIZE:]
    items: list[Any] = codec.decode_batch(bytes(body)) if header.form == b"B" else orjson.loads(body)
    convert: Callable[[Any], RawRecord | Span] = _same if header.form == b"B" else _raw_record
    del body
    for start in range(skip, len(items), size):
        stop = min(start + size, len(items))
        batch = [convert(item) for item in items[start:stop]]
        items[start:stop] = [None] * (stop - start)
        yield batch


def _raw_record(row: Any) -> RawRecord | Span:
    """One raw row back to a raw record (or a Span for a third-party span built at spill time)."""
    if row[0] == "otel":
        return Span.from_dict(row[1])
    row[4] = decode_attributes(row[4])  # tagged non-finite floats back, lists back to tuples
    return (*row, None, 0)


def _same(span: Any) -> Span:
    return cast(Span, span)
