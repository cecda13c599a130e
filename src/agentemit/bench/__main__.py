"""Command line of the benchmark suite; see the package docstring."""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
import time
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from agentemit.bench import e2e, micro, overload, profile, report, server
from agentemit.bench.options import SECTIONS, Options

Runner = Callable[[Options], "report.Section | list[report.Section]"]

RUNNERS: dict[str, Runner] = {
    "micro": micro.run,
    "sqlite": e2e.run_sqlite,
    "otlp": e2e.run_otlp,
    "overload": overload.run,
    "server": server.run,
    "profile": profile.run,
}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m agentemit.bench", description="agentemit benchmarks: figures next to the issue's targets."
    )
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke run in seconds, figures rough")
    parser.add_argument(
        "--only", nargs="+", choices=SECTIONS, metavar="SECTION", help=f"run only: {', '.join(SECTIONS)}"
    )
    parser.add_argument("--json", metavar="PATH", help="also write every figure and verdict to this JSON file")
    parser.add_argument("--repeats", type=int, help="runs per figure (the median is reported)")
    parser.add_argument("--events", type=int, help="events per end-to-end run (sqlite, otlp)")
    parser.add_argument("--overload-seconds", type=float, help="how long the overload producer runs per policy")
    parser.add_argument("--server-spans", type=int, help="spans posted per server run")
    return parser.parse_args(argv)


def _load() -> str:
    return ", ".join(f"{x:.2f}" for x in os.getloadavg()) if hasattr(os, "getloadavg") else "n/a"


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    options = Options.preset(
        args.quick,
        repeats=args.repeats,
        events=args.events,
        overload_seconds=args.overload_seconds,
        server_spans=args.server_spans,
    )
    command = "python -m agentemit.bench " + shlex.join(sys.argv[1:] if argv is None else list(argv))
    info, packages = report.machine(), report.versions()
    print(report.render_header(info, packages, command.strip()), flush=True)
    sections: list[report.Section] = []
    failed: dict[str, str] = {}
    timings: dict[str, float] = {}
    for key in args.only or SECTIONS:
        started = time.perf_counter()
        print(f"[bench] running {key} ...", file=sys.stderr, flush=True)
        try:
            produced = RUNNERS[key](options)
        except Exception as exc:
            failed[key] = f"{type(exc).__name__}: {exc}"
            traceback.print_exc()
            print(f"== {key}: FAILED: {failed[key]} ==\n", flush=True)
            continue
        finally:
            timings[key] = time.perf_counter() - started
        for section in produced if isinstance(produced, list) else [produced]:
            sections.append(section)
            print(report.render_section(section), flush=True)
    print(report.render_summary(sections, failed), flush=True)
    print(
        f"load average at end: {_load()}; section wall times: "
        + ", ".join(f"{k} {v:.1f}s" for k, v in timings.items()),
        flush=True,
    )
    if args.json:
        document: dict[str, Any] = {
            "command": command.strip(),
            "machine": info,
            "versions": packages,
            "options": {k: getattr(options, k) for k in options.__dataclass_fields__ if k != "pg_dsn"},
            "postgres": bool(options.pg_dsn),
            "sections": {s.key: s.to_dict() for s in sections},
            "failed": failed,
            "section_seconds": timings,
            "load_average_end": _load(),
        }
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump(document, f, indent=2, default=str)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
