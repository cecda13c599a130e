"""Two bounded priority lanes: rewards and exceptions ahead of bulk messages, objects and spans.

The queue is bounded in items (``max_queue_size``) and in estimated bytes (``memory_threshold``). Each
raw record carries its estimated size (field 12, set on the emitting thread by whoever knows the big
strings: the message body, the object's JSON, the stack trace), so admission is two ``len`` calls and
one comparison, and a stalled worker or a sudden jump in record size cannot push the queue past its
budget. Both lanes share the budget: rewards and exceptions may fill all of it, bulk kinds only
``1 - HIGH_RESERVE`` of it, so a flood of messages always leaves room for rewards. A tenth of
``memory_threshold`` is kept for the spill buffer (see ``Pipeline``).
"""

from __future__ import annotations

from collections import deque

from agentemit.pipeline.config import HIGH_PRIORITY_KINDS, PipelineConfig
from agentemit.tracing.context import RawRecord

HIGH_RESERVE = 0.2
# Shares of memory_threshold: the lanes, the spill buffer, and (the rest, 5%) the working set of the
# worker and spill threads (a batch being built and exported, a spool record being replayed), which
# the queue accounting does not see.
QUEUE_SHARE = 0.85
SPILL_SHARE = 0.10


class Lanes:
    """The queue. ``high``/``low`` are plain deques: append and popleft are atomic in CPython.

    ``queued_bytes`` is bumped by emitting threads without a lock (an int ``+=`` may rarely lose an
    update under thread switches); it is an estimate, re-zeroed whenever the worker finds the lanes
    empty, so any drift cannot accumulate.
    """

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.high: deque[RawRecord] = deque()
        self.low: deque[RawRecord] = deque()
        self.queued_bytes = 0
        budget = int(config.memory_threshold * QUEUE_SHARE)
        self.high_capacity = max(2, config.max_queue_size)  # items, on len(high) + len(low)
        self.low_capacity = max(1, int(self.high_capacity * (1.0 - HIGH_RESERVE)))
        self.high_budget = max(1, budget)  # estimated bytes
        self.low_budget = max(1, int(budget * (1.0 - HIGH_RESERVE)))

    def lane_for(self, kind: str) -> deque[RawRecord]:
        return self.high if kind in HIGH_PRIORITY_KINDS else self.low

    def has_room(self, high: bool) -> bool:
        """Room for one more record of the high or a bulk lane (``Pipeline.submit`` inlines this test)."""
        if high:
            return len(self.high) + len(self.low) < self.high_capacity and self.queued_bytes < self.high_budget
        return len(self.high) + len(self.low) < self.low_capacity and self.queued_bytes < self.low_budget

    def take(self, limit: int) -> list[RawRecord]:
        """Up to ``limit`` records, high lane first; their bytes leave the budget."""
        out: list[RawRecord] = []
        for lane in (self.high, self.low):
            popleft = lane.popleft
            while len(out) < limit:
                try:
                    out.append(popleft())
                except IndexError:
                    break
        if not self.high and not self.low:
            self.queued_bytes = 0
        else:
            self.queued_bytes -= sum(r[12] for r in out)
        return out

    def __len__(self) -> int:
        return len(self.high) + len(self.low)

    def estimated_bytes(self) -> int:
        return max(0, self.queued_bytes)

    def clear(self) -> int:
        n = len(self)
        self.high.clear()
        self.low.clear()
        self.queued_bytes = 0
        return n
