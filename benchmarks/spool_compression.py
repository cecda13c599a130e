"""Why the spool compresses with zstd (level 1) by default: spill-thread speed and bytes on disk.

For each workload and compression it fills a pipeline's spill buffer with raw records and times the
spill thread's own work (``Pipeline._drain_spill``: JSON rows, compression, append, one fsync per
2,000 records) on the caller's thread, best of three, then reads the spool's size per event.
Workloads: the bench's standard one (nine short messages, then a reward), the overload section's
(unique ~200-character messages) and a worst case whose messages are 200 random base64 characters.
Run `python benchmarks/spool_compression.py`; figures are in BENCHMARKS.md.
"""

import base64
import platform
import random
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from agentemit.bench import workload
from agentemit.bench.overload import FILLER
from agentemit.compression import Compression
from agentemit.pipeline import spool as spool_module
from agentemit.pipeline.config import PipelineConfig
from agentemit.pipeline.pipeline import Pipeline
from agentemit.pipeline.sink import ExportResult
from agentemit.span import Span
from agentemit.tracing.context import RawRecord

EVENTS = 200_000
REPEATS = 3
SETTINGS: tuple[tuple[Compression, int], ...] = (("none", 0), ("zstd", 1), ("zstd", 3), ("gzip", 1))


class NullSink:
    def export(self, batch: Sequence[Span]) -> ExportResult:
        return ExportResult.success(len(batch))

    def force_flush(self, timeout: float) -> bool:
        return True

    def shutdown(self, timeout: float) -> None:
        pass


_RANDOM = random.Random(7)


def _noise(n: int) -> str:
    """``n`` random bytes as base64 (200 characters for 150): text no compressor can shrink much."""
    return base64.b64encode(_RANDOM.randbytes(n)).decode()


def spill_once(records: list[RawRecord], compression: Compression, level: int) -> tuple[float, float, float]:
    """(events/s wall, events/s CPU, bytes on disk per event) of spilling ``records`` once."""
    spool_module._ZSTD_LEVEL = level  # the spool's zstd level is a constant; vary it for the comparison
    with tempfile.TemporaryDirectory() as tmp:
        config = PipelineConfig(spool_dir=Path(tmp), compression=compression, spool_max_bytes=16 << 30)
        pipeline = Pipeline(NullSink(), config, start=False)
        pipeline._spill.extend(records)
        wall, cpu = time.perf_counter(), time.process_time()
        pipeline._drain_spill()
        wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        size = pipeline.spool().pending_bytes()
        pipeline.shutdown(0.01)  # closes the spool; the events are not needed
    return len(records) / wall, len(records) / cpu, size / len(records)


def main() -> None:
    print(f"python {platform.python_version()}, {EVENTS:,} events, best of {REPEATS}")
    workloads = {
        "standard": workload.make_records(EVENTS, "spool"),
        "overload": workload.make_records(EVENTS, "spool", message=lambda i: f"{i} {FILLER}"),
        "random": workload.make_records(EVENTS, "spool", message=lambda i: _noise(150)),
    }
    for name, records in workloads.items():
        for compression, level in SETTINGS:
            runs = [spill_once(records, compression, level) for _ in range(REPEATS)]
            wall, cpu, size = max(runs)
            label = f"{compression} {level}" if level else compression
            print(f"{name:9} {label:7} {wall:>10,.0f} events/s  {cpu:>10,.0f} events/CPU-s  {size:6.1f} B/event")


if __name__ == "__main__":
    main()
