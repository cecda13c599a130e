"""Head sampling, decided once per rollout (kept or dropped whole), and adaptive load shedding."""

from __future__ import annotations

import hashlib
import itertools
import os
import threading
import time
from collections.abc import Callable, Iterable

from agentemit.pipeline.config import HIGH_PRIORITY_KINDS, PipelineConfig

LOW_PRIORITY_KINDS = frozenset({"message", "object", "otel"})
BUILTIN_KINDS = frozenset({"message", "reward", "exception", "object", "otel"})


def sample_point(rollout_id: str) -> float:
    """A deterministic point in [0, 1) for a rollout: the same decision in every process.

    One point per rollout, not per (rollout, kind): a kind is kept when the point is below its rate,
    so every kind at the global rate is kept or dropped together (the rollout whole), and a kind with
    a lower rate is kept in a subset of the rollouts where the others are kept.
    """
    digest = hashlib.blake2b(rollout_id.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") / 2**64


class HeadSampler:
    """Which kinds of a rollout are sampled out. Rewards and exceptions are kept unless configured.

    Args:
        config: the rates (``sample_rate`` and ``kind_sample_rates``).
        kinds: further kinds to decide for (registered event types); the built-in kinds and every
            kind named in ``config.kind_sample_rates`` are always decided for.
    """

    def __init__(self, config: PipelineConfig, kinds: Iterable[str] = ()) -> None:
        self.config = config
        self.kinds = set(kinds) | BUILTIN_KINDS | set(config.kind_sample_rates)

    def sampled_out(self, rollout_id: str) -> frozenset[str]:
        """The kinds this rollout drops (empty when it is kept whole, the common case)."""
        point: float | None = None
        out = set()
        for kind in self.kinds:
            rate = self.config.sample_rate_for(kind)
            if rate >= 1.0:
                continue
            if point is None:
                point = sample_point(rollout_id)
            if point >= rate:
                out.add(kind)
        return frozenset(out)


def process_cpu_seconds() -> float:
    """User plus system CPU time of this process so far (``os.times``: no extra dependency)."""
    t = os.times()
    return t.user + t.system


class CpuMonitor:
    """This process's CPU utilisation over the interval since the previous reading.

    1.0 means one core busy all the time, as ``top`` shows it. A Python process is bound to about one
    core by the GIL, so that is when the agent and the pipeline worker compete; measuring against
    every core of a large machine would never cross a 90% threshold. Readings are capped at 1.0.

    Args:
        clock: wall-clock seconds (monotonic).
        cpu_time: CPU seconds used by the process so far (injectable for tests).
        cpus: cores to measure against (default 1, see above).
    """

    def __init__(
        self,
        clock: Callable[[], float] = time.monotonic,
        cpus: int = 1,
        *,
        cpu_time: Callable[[], float] = process_cpu_seconds,
    ) -> None:
        if not isinstance(cpus, int) or isinstance(cpus, bool) or cpus < 1:
            raise ValueError(f"CpuMonitor: cpus must be an int >= 1, got {cpus!r}")
        self.clock = clock
        self.cpu_time = cpu_time
        self.cpus = cpus
        self._last_wall = clock()
        self._last_cpu = cpu_time()

    def utilisation(self) -> float:
        """Fraction (0.0-1.0) of ``cpus`` cores this process used since the last call."""
        wall, cpu = self.clock(), self.cpu_time()
        dt = wall - self._last_wall
        used = cpu - self._last_cpu
        self._last_wall, self._last_cpu = wall, cpu
        if dt <= 0:
            return 0.0
        return max(0.0, min(1.0, used / (dt * self.cpus)))


class AdaptiveShedder:
    """Sheds low-priority kinds while CPU stays above ``high`` and restores them below ``low``.

    Shedding starts after ``sustain`` consecutive readings above ``high`` (one reading per flush
    interval tick), so a short spike sheds nothing. Between ``low`` and ``high`` the state holds
    (hysteresis). While shedding, one low-priority event in ``keep_one_in`` is kept; the pipeline
    counts the rest as ``shed``. Rewards, exceptions and custom event kinds are never shed.
    """

    def __init__(self, high: float = 0.9, low: float = 0.7, sustain: int = 3, keep_one_in: int = 4) -> None:
        if not 0.0 <= low <= high <= 1.0:
            raise ValueError(f"AdaptiveShedder: need 0 <= low <= high <= 1, got low={low!r}, high={high!r}")
        if sustain < 1 or keep_one_in < 1:
            raise ValueError(
                f"AdaptiveShedder: sustain and keep_one_in must be >= 1, got {sustain!r} and {keep_one_in!r}"
            )
        self.high, self.low, self.sustain, self.keep_one_in = high, low, sustain, keep_one_in
        self.shedding = False
        self._above = 0
        self._ticks = itertools.count(1)  # next() is atomic in CPython: emitting threads share it

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
        """While shedding, keep one low-priority event in ``keep_one_in``; everything else passes."""
        if not self.shedding or kind in HIGH_PRIORITY_KINDS or kind not in LOW_PRIORITY_KINDS:
            return True
        return next(self._ticks) % self.keep_one_in == 0


class TokenBucket:
    """A per-kind rate limit; ``allow`` is called on the emitting thread (one lock, no I/O).

    Holds up to ``burst`` tokens (default: one second's worth, at least 1) and refills at ``rate``
    per second of ``clock``. A clock that steps back refills nothing (it never removes tokens).
    """

    def __init__(self, rate: float, burst: float | None = None, clock: Callable[[], float] = time.monotonic) -> None:
        if not rate > 0:
            raise ValueError(f"TokenBucket: rate must be > 0 events per second, got {rate!r}")
        self.rate = rate
        self.capacity = burst if burst is not None else max(1.0, rate)
        self.tokens = self.capacity
        self.clock = clock
        self._last = clock()
        self._lock = threading.Lock()

    def fresh(self) -> TokenBucket:
        """A full bucket of the same rate and burst with a new lock: a forked child's copy of
        ``_lock`` may be held for good, by a parent thread that does not exist in the child."""
        return TokenBucket(self.rate, self.capacity, self.clock)

    def allow(self) -> bool:
        with self._lock:
            now = self.clock()
            if now > self._last:
                self.tokens = min(self.capacity, self.tokens + (now - self._last) * self.rate)
                self._last = now
            if self.tokens >= 1.0:
                self.tokens -= 1.0
                return True
            return False
