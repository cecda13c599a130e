"""Why the codec uses orjson: orjson vs msgspec (JSON and msgpack) vs stdlib json on a span batch.

Not part of the suite (msgspec is not a dependency): `pip install msgspec` in a scratch venv, then
`python benchmarks/codec_choice.py`. Figures are in BENCHMARKS.md.
"""

import json
import platform
import timeit
from collections.abc import Callable
from typing import Any

import msgspec
import orjson

BODY = "thinking about step 3 of the plan"
SPAN: dict[str, Any] = {
    "trace_id": "a" * 32,
    "span_id": "0000000700000001",
    "parent_id": "0000000900000001",
    "name": "agentlightning.message",
    "start_time": 1700000000000000000,
    "end_time": 1700000000000000000,
    "rollout_id": "rollout-1",
    "attempt_id": "attempt-0",
    "sequence_id": 12,
    "attributes": {
        "agentlightning.message.body": BODY,
        "message": BODY,
        "agentlightning.rollout_id": "rollout-1",
        "agentlightning.attempt_id": "attempt-0",
        "agentlightning.span_sequence_id": 12,
    },
    "status": "UNSET",
    "status_description": None,
    "events": [],
    "resource": {"service.name": "agentemit", "process.pid": 123},
}


def per_span(fn: Callable[[], object], n: int = 200) -> float:
    """Best of 5, µs per span of a 1,000-span batch."""
    return min(timeit.repeat(fn, number=n, repeat=5)) / n / 1000 * 1e6


def main() -> None:
    batch = [dict(SPAN, sequence_id=i) for i in range(1000)]
    encoder, decoder = msgspec.json.Encoder(), msgspec.json.Decoder()
    packer, unpacker = msgspec.msgpack.Encoder(), msgspec.msgpack.Decoder()
    as_json, as_msgspec, as_msgpack = orjson.dumps(batch), encoder.encode(batch), packer.encode(batch)
    print(f"python {platform.python_version()}, orjson {orjson.__version__}, msgspec {msgspec.__version__}")
    print("1000-span batch, us/span (best of 5)")
    print(
        f"encode  orjson {per_span(lambda: orjson.dumps(batch)):.3f}"
        f"  msgspec {per_span(lambda: encoder.encode(batch)):.3f}"
        f"  stdlib json {per_span(lambda: json.dumps(batch).encode(), 20):.3f}"
    )
    print(
        f"decode  orjson {per_span(lambda: orjson.loads(as_json)):.3f}"
        f"  msgspec {per_span(lambda: decoder.decode(as_msgspec)):.3f}"
        f"  stdlib json {per_span(lambda: json.loads(as_json), 20):.3f}"
    )
    print(
        f"msgpack encode {per_span(lambda: packer.encode(batch)):.3f}"
        f"  decode {per_span(lambda: unpacker.decode(as_msgpack)):.3f}"
        f"  size json {len(as_json) / 1000:.0f} B/span, msgpack {len(as_msgpack) / 1000:.0f} B/span"
    )


if __name__ == "__main__":
    main()
