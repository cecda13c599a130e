"""CPU instructions per event, counted by valgrind's callgrind: a figure the machine's noise cannot move.

Wall-clock figures on these shared 2-core machines move by up to 40% between runs minutes apart, so
a change worth 5% cannot be seen in them. Callgrind counts the instructions a process executes; the
same code and inputs give the same count within ~0.5% (thread interleaving moves batch sizes a
little). Each workload runs twice in a child process under callgrind, with a small and a large
event count, and the difference divided by the extra events is the cost per event, start-up and
teardown cancelled out.

Workloads:

* ``emit``: ``emit_reward(0.5)`` and ``emit_message("hello")`` in a trace context, the pipeline's
  worker parked (large batch size) so only the emitting thread's work is counted; per pair.
* ``sqlite``: the bench's end-to-end run (9 messages : 1 reward) into ``SqliteStore`` through the
  pipeline until ``force_flush`` returns: emitter, worker and store together; per event.
* ``object`` and ``exception``: ``emit_object`` of the micro bench's dict and ``emit_exception`` of its
  caught exception, 1,000 calls at a time with the queue emptied in between (as the micro bench
  drains it between timed batches), worker parked; per call.

Needs valgrind (Debian's package). Counts are not times: a C routine may take another path under
valgrind (OpenSSL's sha256 counts like its generic code there), so compare counts with counts. Run
``python benchmarks/instructions.py [emit|sqlite|object|exception ...]``; figures are in BENCHMARKS.md.
"""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

SIZES = {"emit": (0, 20_000), "sqlite": (1_000, 21_000), "object": (0, 20_000), "exception": (0, 20_000)}
PER = {"emit": 2, "sqlite": 1, "object": 1, "exception": 1}  # events per unit of the workload's count


def _child(workload: str, count: int) -> None:
    """The measured process: run ``workload`` with ``count`` units, then leave without teardown noise."""
    from agentemit import emit_exception, emit_message, emit_object, emit_reward
    from agentemit.bench import workload as bench_workload
    from agentemit.bench.e2e import timed_run
    from agentemit.bench.micro import caught_exception

    directory = Path(tempfile.mkdtemp(prefix="agentemit-instructions-"))
    try:
        if workload == "emit":
            tracer, _ = bench_workload.sqlite_tracer(
                directory, memory_threshold=4 << 30, batch_size=1_000_000, flush_interval=3600
            )
            with tracer.trace_context("instructions"):
                for _ in range(count):
                    emit_reward(0.5)
                    emit_message("hello")
                tracer.pipeline.lanes.clear()
        elif workload in ("object", "exception"):
            tracer, _ = bench_workload.sqlite_tracer(
                directory, memory_threshold=4 << 30, batch_size=1_000_000, flush_interval=3600
            )
            exception, obj = caught_exception(), bench_workload.OBJECT
            call = (lambda: emit_object(obj)) if workload == "object" else (lambda: emit_exception(exception))
            with tracer.trace_context("instructions"):
                for start in range(0, count, 1_000):
                    for _ in range(min(1_000, count - start)):
                        call()
                    tracer.pipeline.lanes.clear()
        else:
            tracer, store = bench_workload.sqlite_tracer(directory)
            run = timed_run(tracer, count, functools.partial(bench_workload.count_events, directory / "bench.db"))
            if run["lost"]:
                raise SystemExit(f"lost {run['lost']:.0f} events")
            tracer.teardown_worker()
            store.close()
    finally:
        shutil.rmtree(directory, ignore_errors=True)
    os._exit(0)  # skip interpreter teardown: the same for both counts, but slow under valgrind


def _instructions(workload: str, count: int) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += [sys.executable, __file__, "--child", workload, str(count)]
    done = subprocess.run(command, capture_output=True, text=True)
    found = re.search(r"Collected : (\d+)", done.stderr)
    if done.returncode != 0 or found is None:
        failed = f"{workload} x {count} failed under callgrind (exit {done.returncode})"
        raise SystemExit(f"{failed}:\n{done.stderr[-2000:]}")
    return int(found.group(1))


def main(argv: list[str]) -> None:
    if argv[:1] == ["--child"]:
        _child(argv[1], int(argv[2]))
    if shutil.which("valgrind") is None:
        raise SystemExit("needs valgrind (apt-get install valgrind)")
    for workload in argv or list(SIZES):
        small, large = SIZES[workload]
        extra = _instructions(workload, large) - _instructions(workload, small)
        per_event = extra / ((large - small) * PER[workload])
        print(f"{workload:8} {per_event:10,.0f} instructions per event ({large - small:,} extra units)")


if __name__ == "__main__":
    main(sys.argv[1:])
