"""Head sampling, decided once per rollout (kept or dropped whole), and adaptive load shedding."""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable

from agentemit.pipeline.config import HIGH_PRIORITY_KINDS, PipelineConfig

LOW_PRIORITY_KINDS = frozenset({"message", "object", "otel"})


def sample_point(rollout_id: str, kind: str) -> float:
    """A deterministic point in [0, 1) for (rollout, kind): the same decision in every process."""
    digest = hashlib.blake2b(f"{rollout_id}\x00{kind}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class HeadSampler:
    """Which kinds of a rollout are sampled out. Rewards and exceptions are kept unless configured."""

    def __init__(self, config: PipelineConfig, kinds: Iterable[str] = ()) -> None:
        self.config = config
        self.kinds = set(kinds) | {"message", "reward", "exception", "object", "otel"}

    def sampled_out(self, rollout_id: str) -> frozenset[str]:
        out = set()
        for kind in self.kinds:
            rate = self.config.sample_rate_for(kind)
            if rate >= 1.0:
                continue
            if rate <= 0.0 or sample_point(rollout_id, kind) >= rate:
                out.add(kind)
        return frozenset(out)


class CpuMonitor:
    """Process CPU utilisation over the last interval, from ``os.times`` (no extra dependency)."""

    def __init__(self, clock: Callable[[], float] = time.monotonic, cpus: int | None = None) -> None:
        self.clock = clock
        self.cpus = cpus or os.cpu_count() or 1
        self._last_wall = clock()
        self._last_cpu = self._cpu()

    @staticmethod
    def _cpu() -> float:
        t = os.times()
        return t.user + t.system

    def utilisation(self) -> float:
        """Fraction of one CPU... of all CPUs (0.0-1.0) used by this process since the last call."""
        wall, cpu = self.clock(), self._cpu()
        dt = wall - self._last_wall
        used = cpu - self._last_cpu
        self._last_wall, self._last_cpu = wall, cpu
        if dt <= 0:
            return 0.0
        return min(1.0, used / (dt * self.cpus))


class AdaptiveShedder:
    """Sheds low-priority kinds while CPU stays above ``high`` and restores them below ``low``.

    ``keep_one_in`` low-priority events are kept while shedding; the rest are counted as ``shed``.
    ``observe`` is called by the worker once per flush interval tick.
    """

    def __init__(self, high: float = 0.9, low: float = 0.7, sustain: int = 3, keep_one_in: int = 4) -> None:
        self.high, self.low, self.sustain, self.keep_one_in = high, low, sustain, keep_one_in
        self.shedding = False
        self._above = 0
        self._lock = threading.Lock()
        self._tick = 0

    def observe(self, utilisation: float) -> bool:
        """Feed one CPU reading; returns whether shedding is on afterwards."""
        if utilisation > self.high:
            self._above += 1
            if self._above >= self.sustain:
                self.shedding = True
        else:
            self._above = 0
            if utilisation < self.low:
                self.shedding = False
        return self.shedding

    def admit(self, kind: str) -> bool:
        """While shedding, keep one low-priority event in ``keep_one_in``; high priority always passes."""
        if not self.shedding or kind in HIGH_PRIORITY_KINDS or kind not in LOW_PRIORITY_KINDS:
            return True
        self._tick += 1  # approximate under races; only the share kept varies, every drop is counted
        return self._tick % self.keep_one_in == 0


class TokenBucket:
    """A per-kind rate limit; ``allow`` is called on the emitting thread (one lock, no I/O)."""

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = self.clock()
            self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
            self._last = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return True
            return False
