"""The benchmark suite: ``python -m agentemit.bench [--quick] [--only SECTION ...] [--json out.json]``.

It prints the machine, package versions and, per section, medians of repeated runs next to the
targets from the issue, each marked PASS or MISS from what was measured (nothing is hard-coded).
Sections: ``micro`` (per-call emit cost vs baselines), ``sqlite`` and ``otlp`` (end-to-end
throughput), ``overload`` (overflow policies against a slow sink), ``server`` (HTTP ingest) and
``profile`` (where the worker's and the server's time goes). BENCHMARKS.md records a full run.
"""
