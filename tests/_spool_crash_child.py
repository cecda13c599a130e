"""Child process for the spool crash test: appends batches forever until SIGKILLed.

Usage: ``python _spool_crash_child.py <directory>``. After each append call returns (one fsync under
durability "batch") it prints ``appended <i>``, so every index printed is durable on disk.
"""

from __future__ import annotations

import sys

from agentemit.codec import encode_batch
from agentemit.pipeline.spool import Spool
from agentemit.span import Span

MAX_BATCHES = 100_000  # a bound, so a parent that forgets to kill us does not fill the disk


def batch_payload(i: int) -> bytes:
    """The payload of batch ``i``: a real encoded batch of 3 spans, about 1.5 KB."""
    spans = [
        Span(
            trace_id=f"{i:032x}",
            span_id=f"{i * 4 + k + 1:016x}",
            parent_id=None,
            name="agentemit.crash_test",
            start_time=i,
            end_time=i + 1,
            rollout_id=f"rollout-{i}",
            attempt_id="attempt-0",
            sequence_id=k,
            attributes={"batch": i, "filler": "x" * 300},
        )
        for k in range(3)
    ]
    return encode_batch(spans)


def main() -> None:
    spool = Spool(sys.argv[1], durability="batch", segment_bytes=64 * 1024)
    for i in range(MAX_BATCHES):
        result = spool.append([batch_payload(i)], priority=i % 4)
        if result.stored != 1:
            raise SystemExit(f"crash child: append {i} was not stored: {result}")
        print(f"appended {i}", flush=True)


if __name__ == "__main__":
    main()
