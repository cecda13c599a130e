"""What every section reports: rows of figures, targets with an honest PASS/MISS, and the machine.

Sections build a :class:`Section` from measured numbers only; this module formats them (plain-text
tables for the terminal and BENCHMARKS.md, a dict for ``--json``). Nothing here measures anything.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
import sqlite3
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from importlib import metadata
from typing import Any

PACKAGES = ("agentemit", "opentelemetry-sdk", "orjson", "httpx", "uvicorn", "psycopg")


@dataclass(frozen=True, slots=True)
class Check:
    """One target from the issue next to the figure measured for it."""

    what: str
    target: str
    measured: str
    passed: bool

    @property
    def verdict(self) -> str:
        return "PASS" if self.passed else "MISS"


@dataclass(slots=True)
class Section:
    """One table of figures plus the targets it is judged against.

    ``rows`` are the formatted cells shown; ``records`` keep the raw numbers for ``--json``.
    """

    key: str
    title: str
    columns: list[str]
    rows: list[list[str]] = field(default_factory=list)
    records: list[dict[str, Any]] = field(default_factory=list)
    checks: list[Check] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def add_row(self, cells: Sequence[str], **numbers: Any) -> None:
        if len(cells) != len(self.columns):
            raise ValueError(f"bench section {self.key!r}: row has {len(cells)} cells for {len(self.columns)} columns")
        self.rows.append(list(cells))
        self.records.append({"row": cells[0], **numbers})

    def check(self, what: str, target: str, measured: str, passed: bool) -> None:
        self.checks.append(Check(what, target, measured, passed))

    def to_dict(self) -> dict[str, Any]:
        return {
            "title": self.title,
            "columns": self.columns,
            "rows": self.rows,
            "records": self.records,
            "checks": [{**asdict(c), "verdict": c.verdict} for c in self.checks],
            "notes": self.notes,
        }


# --- statistics ---------------------------------------------------------------------------------


def median(values: Sequence[float]) -> float:
    """The median; NaN for no values (a section that measured nothing says so instead of crashing)."""
    if not values:
        return math.nan
    ordered = sorted(values)
    mid = len(ordered) // 2
    return float(ordered[mid]) if len(ordered) % 2 else (ordered[mid - 1] + ordered[mid]) / 2.0


def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0-100): always a value that was actually observed."""
    if not values:
        return math.nan
    if not 0.0 <= q <= 100.0:
        raise ValueError(f"percentile: q {q!r} must be in 0..100")
    ordered = sorted(values)
    rank = max(1, math.ceil(q / 100.0 * len(ordered)))
    return float(ordered[rank - 1])


# --- formatting ---------------------------------------------------------------------------------


def fmt_num(value: float, digits: int = 2) -> str:
    if value != value:
        return "n/a"
    return f"{value:,.{digits}f}"


def fmt_int(value: float) -> str:
    if value != value:
        return "n/a"
    return f"{round(value):,}"


def fmt_bytes(value: float) -> str:
    if value != value:
        return "n/a"
    if abs(value) >= 1 << 30:
        return f"{value / (1 << 30):,.2f} GiB"
    return f"{value / (1 << 20):,.1f} MiB"


def fmt_ratio(value: float) -> str:
    return "n/a" if value != value or math.isinf(value) else f"{value:,.1f}x"


def render_table(columns: Sequence[str], rows: Sequence[Sequence[str]], indent: str = "  ", left: int = 1) -> str:
    """Columns padded to their widest cell: the first ``left`` left-aligned (labels), the rest right-aligned."""
    widths = [len(c) for c in columns]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: Sequence[str]) -> str:
        parts = [c.ljust(w) if i < left else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths, strict=True))]
        return (indent + "  ".join(parts)).rstrip()

    rule = (indent + "  ".join("-" * w for w in widths)).rstrip()
    return "\n".join([line(columns), rule, *(line(r) for r in rows)])


def render_section(section: Section) -> str:
    out = [f"== {section.title} ==", render_table(section.columns, section.rows)]
    if section.checks:
        out.append("")
        out.append(
            render_table(
                ["target", "goal", "measured", "verdict"],
                [[c.what, c.target, c.measured, c.verdict] for c in section.checks],
            )
        )
    out.extend(f"  note: {n}" for n in section.notes)
    return "\n".join(out) + "\n"


# --- machine and versions -----------------------------------------------------------------------


def cpu_model() -> str:
    """The CPU's marketing name (Linux /proc/cpuinfo; elsewhere whatever ``platform`` knows)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="utf-8", errors="replace") as f:
        for line in f:
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine() or "unknown"


def machine() -> dict[str, str]:
    load = ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"
    affinity = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {
        "cpu": cpu_model(),
        "cores": f"{os.cpu_count()} logical ({affinity} usable by this process)",
        "python": f"{platform.python_implementation()} {platform.python_version()} ({sys.executable})",
        "os": platform.platform(),
        "sqlite": sqlite3.sqlite_version,
        "load average at start": load,
    }


def versions() -> dict[str, str]:
    found: dict[str, str] = {}
    for name in PACKAGES:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = "not installed"
    return found


def render_header(info: dict[str, str], packages: dict[str, str], command: str) -> str:
    width = max(len(k) for k in [*info, *packages])
    lines = ["agentemit benchmarks", f"  command: {command}"]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in info.items()]
    lines += [f"  {k.ljust(width)}  {v}" for k, v in packages.items()]
    return "\n".join(lines) + "\n"


def render_summary(sections: Sequence[Section], failed: dict[str, str]) -> str:
    rows = [[s.key, c.what, c.measured, c.target, c.verdict] for s in sections for c in s.checks]
    rows += [[key, "section failed to run", error[:60], "", "ERROR"] for key, error in failed.items()]
    passed = sum(1 for s in sections for c in s.checks if c.passed)
    total = sum(len(s.checks) for s in sections)
    head = f"== summary: {passed} of {total} targets met =="
    return head + "\n" + render_table(["section", "target", "measured", "goal", "verdict"], rows, left=2) + "\n"
