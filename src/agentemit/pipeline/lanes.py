"""Two bounded priority lanes: rewards and exceptions ahead of bulk messages, objects and spans.

Bounds are in items, derived from ``memory_threshold`` and a running estimate of bytes per record
(measured by the worker on what it drains), so the hot path pays two ``len`` calls per emit, not a
size computation. Both lanes share one budget: rewards and exceptions may fill all of it, bulk kinds
only ``1 - HIGH_RESERVE`` of it, so a flood of messages always leaves room for rewards.
"""

from __future__ import annotations

from collections import deque

from agentemit.pipeline.builder import estimate_bytes
from agentemit.pipeline.config import HIGH_PRIORITY_KINDS, PipelineConfig
from agentemit.tracing.context import RawRecord

HIGH_RESERVE = 0.2
_INITIAL_BYTES_PER_RECORD = 1024


class Lanes:
    """The queue. ``high``/``low`` are plain deques: append and popleft are atomic in CPython."""

    def __init__(self, config: PipelineConfig) -> None:
        self.config = config
        self.high: deque[RawRecord] = deque()
        self.low: deque[RawRecord] = deque()
        self.bytes_per_record = float(_INITIAL_BYTES_PER_RECORD)
        self.high_capacity = 1
        self.low_capacity = 1
        self._resize()

    def lane_for(self, kind: str) -> deque[RawRecord]:
        return self.high if kind in HIGH_PRIORITY_KINDS else self.low

    def _resize(self) -> None:
        budget_items = int(self.config.memory_threshold / max(self.bytes_per_record, 64.0))
        total = max(2, min(self.config.max_queue_size, budget_items))
        self.high_capacity = total  # limits on len(high) + len(low)
        self.low_capacity = max(1, int(total * (1.0 - HIGH_RESERVE)))

    def observe(self, records: list[RawRecord]) -> None:
        """Update the bytes-per-record estimate from a drained batch (worker thread)."""
        if not records:
            return
        step = max(1, len(records) // 8)
        sample = records[::step]
        mean = sum(estimate_bytes(r) for r in sample) / len(sample)
        self.bytes_per_record = 0.8 * self.bytes_per_record + 0.2 * mean
        self._resize()

    def take(self, limit: int) -> list[RawRecord]:
        """Up to ``limit`` records, high lane first."""
        out: list[RawRecord] = []
        for lane in (self.high, self.low):
            popleft = lane.popleft
            while len(out) < limit:
                try:
                    out.append(popleft())
                except IndexError:
                    break
        return out

    def __len__(self) -> int:
        return len(self.high) + len(self.low)

    def estimated_bytes(self) -> int:
        return int(len(self) * self.bytes_per_record)

    def clear(self) -> int:
        n = len(self)
        self.high.clear()
        self.low.clear()
        return n
