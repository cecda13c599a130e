"""The benchmark suite runs end to end in a tiny ``--quick`` mode and prints every section.

Only the shape of the output is pinned (sections, machine, verdicts): speed is the benchmark's
business, never a test's.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from agentemit.bench.report import Section, median, percentile, render_section, render_table

TINY = ["--quick", "--repeats", "1", "--events", "2000", "--overload-seconds", "0.2", "--server-spans", "2000"]
SECTION_TITLES = (
    "== micro:",
    "== SQLite end to end:",
    "== OTLP/HTTP end to end:",
    "== overload:",
    "== server:",
    "== worker path per span",
    "== cProfile of the worker",
    "== server ingest path per span",
    "== summary:",
)


def _bench(*args: str, timeout: float = 110.0) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "agentemit.bench", *args], capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess[str], dict[str, Any]]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    proc = _bench(*TINY, "--json", str(out))
    document = json.loads(out.read_text()) if out.exists() else {}
    return proc, document


def test_quick_bench_exits_zero_with_no_failed_section(
    quick_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    proc, document = quick_run
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert document["failed"] == {}


def test_quick_bench_prints_machine_and_package_versions(
    quick_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    out = quick_run[0].stdout
    for label in ("cpu", "cores", "python", "os", "agentemit", "opentelemetry-sdk", "orjson"):
        assert f"\n  {label} " in out, label


def test_quick_bench_prints_a_table_for_every_section(
    quick_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    out = quick_run[0].stdout
    for title in SECTION_TITLES:
        assert title in out, title
    for row in (
        "emit_reward(0.5)",
        "dict + deque append",
        "raw OTel SDK span",
        "@reward-decorated call",
        "executemany",
    ):
        assert row in out, row
    for policy in ("spill", "block", "drop_oldest", "drop_newest"):
        assert f"\n  {policy} " in out, policy
    if os.environ.get("AGENTEMIT_PG_DSN"):
        assert "PostgreSQL" in out


def test_every_target_has_a_pass_or_miss_verdict_in_output_and_json(
    quick_run: tuple[subprocess.CompletedProcess[str], dict[str, Any]],
) -> None:
    proc, document = quick_run
    checks = [c for s in document["sections"].values() for c in s["checks"]]
    assert {"micro", "sqlite", "otlp", "overload", "server"} <= set(document["sections"])
    assert len(checks) >= 20
    assert {c["verdict"] for c in checks} <= {"PASS", "MISS"}
    met = sum(c["verdict"] == "PASS" for c in checks)
    assert f"== summary: {met} of {len(checks)} targets met ==" in proc.stdout


def test_only_runs_just_the_named_section() -> None:
    proc = _bench("--quick", "--repeats", "1", "--events", "500", "--only", "sqlite", timeout=60.0)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "== SQLite end to end:" in proc.stdout
    assert "== micro:" not in proc.stdout
    assert "== overload:" not in proc.stdout


def test_percentile_is_nearest_rank_and_median_averages_the_middle_pair() -> None:
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 99) == 99.0
    assert percentile(values, 50) == 50.0
    assert percentile([5.0], 99) == 5.0
    assert median([1.0, 3.0, 2.0, 10.0]) == 2.5


def test_tables_align_columns_and_sections_show_verdicts() -> None:
    table = render_table(["call", "us"], [["a", "1.0"], ["longer name", "10.25"]]).splitlines()
    assert len({len(line) for line in table}) == 1
    section = Section("k", "title", ["call", "us"])
    section.add_row(["a", "1.0"], us=1.0)
    section.check("a median", "<= 1.5 us", "1.0 us", True)
    section.check("b median", "<= 1.5 us", "2.0 us", False)
    text = render_section(section)
    assert "PASS" in text
    assert "MISS" in text


def test_a_row_with_the_wrong_number_of_cells_is_refused_naming_the_section() -> None:
    section = Section("micro", "title", ["call", "us"])
    with pytest.raises(ValueError, match="'micro'"):
        section.add_row(["only one"])


def test_bench_package_does_not_import_from_tests() -> None:
    root = Path(__file__).resolve().parents[1] / "src" / "agentemit" / "bench"
    for path in root.glob("*.py"):
        assert "from tests" not in path.read_text() and "import tests" not in path.read_text(), path.name
