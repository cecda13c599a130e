"""Overload: a producer flat out against a sink ten times too slow, once per overflow policy.

Each policy runs in a fresh interpreter (``python -m agentemit.bench.overload run ...``) because
``ru_maxrss`` is a high-water mark of the whole process: only a fresh process gives each policy its
own peak. A calibration child first measures how fast the producer emits; the slow sink then sleeps
in proportion to each batch so that it takes ``rate / slowdown`` events per second. After the
producer stops the sink is made fast and the pipeline flushed, so the spill policy shows whether
everything it wrote to disk comes back.
"""

from __future__ import annotations

import argparse
import json
import resource
import sys
import tempfile
import time
from array import array
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from agentemit import OtelTracer, PipelineConfig, emit_message, semconv
from agentemit.bench import workload
from agentemit.bench._proc import run_child
from agentemit.bench.options import OVERLOAD_POLICIES, Options
from agentemit.bench.report import Section, fmt_bytes, fmt_int, fmt_num
from agentemit.pipeline.sink import ExportResult
from agentemit.span import Span

SAMPLE_EVERY = 16  # one emit in this many is timed on its own
FILLER = "observation " * 16  # ~200 characters, made unique per event by a counter prefix
DRAIN_TIMEOUT = 900.0
SPOOL_MAX_BYTES = 16 << 30  # the spill run must not hit the spool's cap: that would be a different test


class CountingSink:
    """Counts distinct emitted messages by sequence id, one bit each, so counting costs no memory."""

    def __init__(self) -> None:
        self.bits = bytearray(1 << 16)
        self.distinct = 0
        self.duplicates = 0

    def export(self, batch: Sequence[Span]) -> ExportResult:
        bits = self.bits
        for span in batch:
            if span.name != semconv.SPAN_MESSAGE:
                continue
            byte, mask = span.sequence_id >> 3, 1 << (span.sequence_id & 7)
            if byte >= len(bits):
                bits.extend(bytes(max(byte + 1 - len(bits), len(bits))))
            if bits[byte] & mask:
                self.duplicates += 1
            else:
                bits[byte] |= mask
                self.distinct += 1
        return ExportResult.success(len(batch))

    def force_flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        pass


class ThrottledSink:
    """Wraps a sink and sleeps ``len(batch) / rate`` seconds per export; ``rate=None`` is full speed."""

    def __init__(self, inner: CountingSink, rate: float | None, sleep: Callable[[float], None] = time.sleep) -> None:
        self.inner = inner
        self.rate = rate
        self._sleep = sleep

    def export(self, batch: Sequence[Span]) -> ExportResult:
        rate = self.rate
        if rate:
            self._sleep(len(batch) / rate)
        return self.inner.export(batch)

    def force_flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        pass


def produce_for(seconds: float, samples: array[int]) -> tuple[int, int, float]:
    """Emit unique ~200-character messages flat out for ``seconds``; every 16th emit is timed.

    Returns (emitted, samples taken, wall seconds). ``samples`` is preallocated by the caller so that
    recording latencies does not itself grow the process's memory.
    """
    emit, clock, filler = emit_message, time.perf_counter_ns, FILLER
    capacity = len(samples)
    taken = n = 0
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        if not n & 1023 and time.perf_counter() >= deadline:
            break
        text = f"{n} {filler}"
        if n % SAMPLE_EVERY or taken >= capacity:
            emit(text)
        else:
            t0 = clock()
            emit(text)
            samples[taken] = clock() - t0
            taken += 1
        n += 1
    return n, taken, time.perf_counter() - started


def peak_rss_bytes() -> int:
    """This process's peak resident memory.

    Linux's ``VmHWM`` first: it belongs to the address space this process exec'd into. ``ru_maxrss``
    is a fallback only, because on Linux a child inherits its parent's peak through fork and exec,
    so a child of a large benchmark process would report no growth at all.
    """
    try:
        with open("/proc/self/status", encoding="ascii") as status:
            for line in status:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # Linux reports KiB, macOS bytes


def _nearest_rank(values: Sequence[int], q: float) -> float:
    ordered = sorted(values)
    return (
        float(ordered[max(0, min(len(ordered) - 1, int(q / 100.0 * len(ordered) + 0.999999) - 1))]) if ordered else 0.0
    )


# --- child side ----------------------------------------------------------------------------------


def child_calibrate(seconds: float) -> dict[str, Any]:
    """The producer's own rate with a fast sink (and room for everything it emits)."""
    with tempfile.TemporaryDirectory(prefix="agentemit-bench-") as tmp:
        cfg = workload.config(Path(tmp), memory_threshold=2 << 30, adaptive_sampling=False)
        tracer = OtelTracer(sink=CountingSink(), config=cfg, keep_last_trace=False)
        tracer.init_worker("calibrate")
        try:
            with tracer.trace_context("bench-calibrate"):
                emitted, _, wall = produce_for(seconds, array("q"))
        finally:
            tracer.teardown_worker()
    return {"rate": emitted / wall, "emitted": emitted, "seconds": wall}


def child_run(
    policy: str, seconds: float, sink_rate: float, threshold: int, sample_capacity: int, spool_max_bytes: int
) -> dict[str, Any]:
    """One policy under overload; every figure comes from this process alone."""
    samples = array("q", bytes(8 * sample_capacity))
    counter = CountingSink()
    sink = ThrottledSink(counter, sink_rate)
    with tempfile.TemporaryDirectory(prefix="agentemit-bench-") as tmp:
        cfg = workload.config(
            Path(tmp),
            memory_threshold=threshold,
            overflow=policy,
            adaptive_sampling=False,
            spool_max_bytes=spool_max_bytes,
        )
        tracer = OtelTracer(sink=sink, config=cfg, keep_last_trace=False)
        tracer.init_worker(f"overload-{policy}")
        pipeline = tracer.pipeline
        assert pipeline is not None
        try:
            with tracer.trace_context(f"bench-overload-{policy}"):
                rss_before = peak_rss_bytes()
                emitted, taken, wall = produce_for(seconds, samples)
                at_stop = tracer.stats()
                delivered_at_stop = counter.distinct
                rss_producer = peak_rss_bytes()
                spool_bytes = pipeline.spool().pending_bytes() if policy == "spill" else 0
                sink.rate = None  # the sink recovers: everything still queued or spooled can now drain
                drain_started = time.perf_counter()
                report = tracer.force_flush(DRAIN_TIMEOUT, drain_spool=True)
                drain_seconds = time.perf_counter() - drain_started
                after = tracer.stats()
        finally:
            tracer.teardown_worker()
    latencies = samples[:taken]
    return {
        "policy": policy,
        "emitted": emitted,
        "seconds": wall,
        "rate": emitted / wall,
        "sink_rate": sink_rate,
        "threshold": threshold,
        "spool_max_bytes": spool_max_bytes,
        "p50_ns": _nearest_rank(latencies, 50),
        "p99_ns": _nearest_rank(latencies, 99),
        "max_ns": float(max(latencies, default=0)),
        "samples": taken,
        "rss_growth_producer": rss_producer - rss_before,
        "rss_growth_total": peak_rss_bytes() - rss_before,
        "delivered_at_stop": delivered_at_stop,
        "pending_at_stop": at_stop.get("pending", 0),
        "in_spool_at_stop": at_stop.get("in_spool", 0),
        "spool_bytes_at_stop": spool_bytes,
        "dropped": after.get("dropped", {}),
        "delivered": counter.distinct,
        "duplicates": counter.duplicates,
        "recovered_after_stop": counter.distinct - delivered_at_stop,
        "replayed": after.get("replayed", 0),
        "in_spool_after": after.get("in_spool", 0),
        "drain_seconds": drain_seconds,
        "flush_completed": bool(report),
        "lost": emitted - counter.distinct,
    }


def child_main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m agentemit.bench.overload")
    sub = parser.add_subparsers(dest="mode", required=True)
    cal = sub.add_parser("calibrate")
    cal.add_argument("--seconds", type=float, required=True)
    run = sub.add_parser("run")
    run.add_argument("--policy", choices=OVERLOAD_POLICIES, required=True)
    run.add_argument("--seconds", type=float, required=True)
    run.add_argument("--sink-rate", type=float, required=True)
    run.add_argument("--threshold", type=int, required=True)
    run.add_argument("--samples", type=int, required=True)
    run.add_argument("--spool-max-bytes", type=int, default=SPOOL_MAX_BYTES)
    args = parser.parse_args(argv)
    if args.mode == "calibrate":
        answer = child_calibrate(args.seconds)
    else:
        answer = child_run(
            args.policy, args.seconds, args.sink_rate, args.threshold, args.samples, args.spool_max_bytes
        )
    print(json.dumps(answer), flush=True)


# --- parent side ---------------------------------------------------------------------------------


def run(options: Options) -> Section:
    seconds = options.overload_seconds
    calibration = run_child(__name__, ["calibrate", "--seconds", str(min(1.0, seconds))], timeout=120 + 2 * seconds)
    rate = float(calibration["rate"])
    sink_rate = rate / options.overload_slowdown
    sample_capacity = int(rate * seconds * 1.5 / SAMPLE_EVERY) + 1_000
    variants = [(policy, policy, SPOOL_MAX_BYTES) for policy in OVERLOAD_POLICIES]
    default_cap = PipelineConfig().spool_max_bytes
    variants.append((f"spill, default {fmt_bytes(default_cap)} spool cap", "spill", default_cap))
    results = []
    for label, policy, spool_cap in variants:
        args = ["run", "--policy", policy, "--seconds", str(seconds), "--sink-rate", str(sink_rate)]
        args += ["--threshold", str(options.overload_threshold), "--samples", str(sample_capacity)]
        args += ["--spool-max-bytes", str(spool_cap)]
        results.append({"label": label, **run_child(__name__, args, timeout=DRAIN_TIMEOUT + 120 + seconds)})
    return _section(options, rate, sink_rate, results)


def _section(options: Options, rate: float, sink_rate: float, results: list[dict[str, Any]]) -> Section:
    threshold = options.overload_threshold
    section = Section(
        "overload",
        f"overload: producer flat out for {options.overload_seconds:g} s against a sink {options.overload_slowdown:g}x "
        f"too slow ({fmt_int(sink_rate)} events/s; producer calibrated at {fmt_int(rate)}/s), memory_threshold "
        f"{fmt_bytes(threshold)}, one fresh process per policy",
        [
            "policy",
            "emitted",
            "emits/s",
            "p50 us",
            "p99 us",
            "RSS growth",
            "incl. drain",
            "dropped",
            "in spool at stop",
            "recovered after",
            "lost",
        ],
    )
    for r in results:
        dropped = sum(int(v) for v in r["dropped"].values())
        section.add_row(
            [
                r["label"],
                fmt_int(r["emitted"]),
                fmt_int(r["rate"]),
                fmt_num(r["p50_ns"] / 1e3, 2),
                fmt_num(r["p99_ns"] / 1e3, 2),
                fmt_bytes(r["rss_growth_producer"]),
                fmt_bytes(r["rss_growth_total"]),
                fmt_int(dropped),
                fmt_int(r["in_spool_at_stop"]),
                fmt_int(r["recovered_after_stop"]),
                fmt_int(r["lost"]),
            ],
            **r,
        )
        for phase, growth in (("under overload", r["rss_growth_producer"]), ("incl. drain", r["rss_growth_total"])):
            section.check(
                f"{r['label']}: RSS growth {phase}",
                f"<= {fmt_bytes(threshold)}",
                fmt_bytes(growth),
                growth <= threshold,
            )
        if r["policy"] == "spill":
            lost_ok = r["lost"] == 0 and r["in_spool_after"] == 0
            section.check(f"{r['label']}: lost after drain", "0", fmt_int(r["lost"]), lost_ok)
    section.notes.append(
        "p50/p99 are of single emits (one in 16 timed); RSS growth is the rise of peak RSS (VmHWM) from just "
        "before the producer started to its stop ('incl. drain': to the end of the drain); "
        "lost = emitted - distinct messages the sink received"
    )
    section.notes.append(
        "after the producer stops the sink is made fast and force_flush drains queue and spool; 'recovered after' "
        "counts messages delivered in that drain (queued or spooled at the stop)"
    )
    section.notes.append("adaptive_sampling is off in these runs so that only the overflow policy decides what is kept")
    section.notes.append(
        f"the policy rows give the spool a {fmt_bytes(SPOOL_MAX_BYTES)} cap so that only the policy is measured; the "
        "last row keeps the default cap, and the spool evicts (counted as dropped spool_full) once it is full"
    )
    return section


if __name__ == "__main__":
    child_main()
