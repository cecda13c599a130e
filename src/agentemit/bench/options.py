"""How big each section runs: the full preset behind BENCHMARKS.md, and ``--quick`` for a smoke run."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from typing import Any

SECTIONS = ("micro", "sqlite", "otlp", "overload", "server", "profile")
OVERLOAD_POLICIES = ("spill", "block", "drop_oldest", "drop_newest")


@dataclass(frozen=True, slots=True)
class Options:
    """Sizes of every section; figures are medians over ``repeats`` runs."""

    quick: bool = False
    repeats: int = 5
    events: int = 200_000  # producer events per end-to-end run (SQLite, OTLP)
    micro_calls: int = 1_000  # calls per timed batch
    micro_batches: int = 100  # batches per repeat; the queue is drained (untimed) before each
    overload_seconds: float = 10.0
    overload_threshold: int = 50 << 20  # memory_threshold of the overload runs (bytes)
    overload_slowdown: float = 10.0  # the slow sink's capacity is the producer's rate divided by this
    server_spans: int = 100_000  # spans posted per server run, in batches of server_batch
    server_batch: int = 1_000
    server_clients: tuple[int, ...] = (1, 4)
    profile_events: int = 50_000
    pg_dsn: str | None = None

    @classmethod
    def preset(cls, quick: bool, **overrides: Any) -> Options:
        """The full or quick preset, with ``overrides`` (None values ignored) applied on top."""
        base = cls(pg_dsn=os.environ.get("AGENTEMIT_PG_DSN") or None)
        if quick:
            base = dataclasses.replace(
                base,
                quick=True,
                repeats=2,
                events=5_000,
                micro_calls=200,
                micro_batches=20,
                overload_seconds=2.0,
                server_spans=5_000,
                server_clients=(1,),
                profile_events=5_000,
            )
        chosen = {k: v for k, v in overrides.items() if v is not None}
        options = dataclasses.replace(base, **chosen)
        for name in ("repeats", "events", "micro_calls", "micro_batches", "server_spans", "server_batch"):
            if getattr(options, name) < 1:
                raise ValueError(f"bench: {name} must be >= 1, got {getattr(options, name)!r}")
        if not options.overload_seconds > 0:
            raise ValueError(f"bench: overload_seconds must be > 0, got {options.overload_seconds!r}")
        return options
