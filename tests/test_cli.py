"""The ``agentemit`` command line, run in-process through ``main([...])`` and once as a real subprocess.

Every test works on a real SQLite file under tmp_path (one demo database is shared by the read-only
tests of a module); server tests use a real uvicorn server on 127.0.0.1.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import sqlite3
import subprocess
import sys
import uuid
from pathlib import Path
from typing import Any

import pytest

from agentemit import semconv
from agentemit.cli import render
from agentemit.cli.inspect_cmd import CliError
from agentemit.cli.main import main
from agentemit.server import runner
from agentemit.server.app import create_app
from agentemit.server.runner import ServerThread
from agentemit.span import Span
from agentemit.stores import InMemoryStore, SqliteStore

PG_DSN = os.environ.get("AGENTEMIT_PG_DSN")


def run(argv: list[str]) -> tuple[int, str, str]:
    """``main(argv)`` with stdout and stderr captured: (exit code, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = main(argv)
    return code, out.getvalue(), err.getvalue()


def summary_counts(output: str) -> dict[str, tuple[int, int]]:
    """The demo's per-kind table: kind -> (emitted, stored)."""
    return {m[1]: (int(m[2]), int(m[3])) for m in re.finditer(r"^\s+(\w+)\s+(\d+)\s+(\d+)$", output, re.M)}


def spans_of_run(db: Path, prefix: str = "demo-") -> list[Span]:
    with SqliteStore(db) as store:
        ids = [r.rollout_id for r in store.list_rollouts() if r.rollout_id.startswith(prefix)]
        return [span for rollout_id in ids for span in store.query_spans(rollout_id)]


@pytest.fixture(scope="module")
def demo_db(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str]:
    """One demo run shared by the read-only tests: (db path, demo output)."""
    db = tmp_path_factory.mktemp("demo") / "agentemit.db"
    code, out, err = run(["demo", "--db", str(db)])
    assert code == 0, out + err
    return db, out


def rollout_with_two_attempts(db: Path) -> str:
    with SqliteStore(db) as store:
        return next(r.rollout_id for r in store.list_rollouts() if len(r.attempt_ids) == 2)


# --- demo ------------------------------------------------------------------------------------------


def test_demo_stores_exactly_what_its_summary_reports(demo_db: tuple[Path, str]) -> None:
    db, out = demo_db
    counts = summary_counts(out)
    assert set(counts) == {"message", "reward", "exception", "object", "other", "total"}
    assert all(emitted == stored for emitted, stored in counts.values()), counts
    assert "rollouts  20 " in out and "0 lost" in out and "dropped 0" in out
    spans = spans_of_run(db)
    with SqliteStore(db) as store:
        summaries = store.list_rollouts()
    assert len(summaries) == 20
    assert len(spans) == counts["total"][1]
    by_name: dict[str, int] = {}
    for span in spans:
        by_name[span.name] = by_name.get(span.name, 0) + 1
    assert by_name[semconv.SPAN_REWARD] == counts["reward"][1] > 0
    assert by_name[semconv.SPAN_EXCEPTION] == counts["exception"][1] > 0
    assert by_name[semconv.SPAN_MESSAGE] == counts["message"][1]
    assert by_name[semconv.SPAN_OBJECT] == counts["object"][1]
    assert by_name["llm.call"] > 0 and by_name["demo-rollout"] >= 20
    assert by_name["llm.call"] + by_name["demo-rollout"] == counts["other"][1]
    assert all(s.final_reward is not None for s in summaries)


def test_demo_exception_spans_carry_the_tool_error_and_its_stack(demo_db: tuple[Path, str]) -> None:
    errors = [s for s in spans_of_run(demo_db[0]) if s.name == semconv.SPAN_EXCEPTION]
    assert errors
    for span in errors:
        assert span.attributes[semconv.EXCEPTION_TYPE] == "agentemit.cli.demo.ToolError"
        assert "Traceback" in str(span.attributes[semconv.EXCEPTION_STACKTRACE])
        assert span.attributes["tool"] == "calculator"


def test_demo_run_twice_keeps_both_runs_and_reports_only_its_own(tmp_path: Path) -> None:
    db = tmp_path / "twice.db"
    first = run(["demo", "--db", str(db), "--rollouts", "5", "--threads", "2"])
    second = run(["demo", "--db", str(db), "--rollouts", "3", "--seed", "7"])
    assert first[0] == second[0] == 0
    assert "rollouts  3 " in second[1]
    with SqliteStore(db) as store:
        ids = [r.rollout_id for r in store.list_rollouts()]
    runs = {rollout_id.rsplit("-", 1)[0] for rollout_id in ids}
    assert len(ids) == 8 and len(runs) == 2
    second_run = ids[-1].rsplit("-", 1)[0]
    assert all(rollout_id.startswith(second_run) for rollout_id in ids[-3:])
    assert len(spans_of_run(db, second_run)) == summary_counts(second[1])["total"][1]


def test_demo_exits_1_and_names_the_reason_when_configured_sampling_drops_events(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AGENTEMIT_KIND_SAMPLE_RATES", "message=0")  # a real pipeline setting, not a fault
    code, out, _ = run(["demo", "--db", str(tmp_path / "lossy.db"), "--rollouts", "3"])
    assert code == 1
    emitted, stored = summary_counts(out)["message"]
    assert emitted > 0 and stored == 0
    assert f"LOST {emitted} event(s); drops by reason: {{'sampled_out': {emitted}}}" in out


def test_demo_as_python_dash_m_subprocess_exits_0_with_nothing_lost(tmp_path: Path) -> None:
    db = tmp_path / "sub" / "agentemit.db"
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGENTEMIT_")}
    proc = subprocess.run(
        [sys.executable, "-m", "agentemit", "demo", "--db", str(db)],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        env=env,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "0 lost" in proc.stdout
    counts = summary_counts(proc.stdout)
    assert len(spans_of_run(db)) == counts["total"][1] > 0


def test_demo_into_a_memory_store_reads_back_before_teardown() -> None:
    code, out, _ = run(["demo", "--store", "memory", "--rollouts", "4"])
    assert code == 0, out
    assert "0 lost" in out and "(default spool directory)" in out


def test_demo_through_a_real_store_server_then_inspect_over_http(tmp_path: Path) -> None:
    with ServerThread(create_app(SqliteStore(tmp_path / "served.db"))) as server:
        code, out, err = run(["demo", "--store", server.url, "--rollouts", "4", "--threads", "2"])
        assert code == 0, out + err
        code, listing, _ = run(["inspect", "--store", server.url, "--json"])
    assert code == 0
    assert json.loads(listing)["total"] == 4


@pytest.mark.skipif(not PG_DSN, reason="AGENTEMIT_PG_DSN is not set")
def test_demo_into_postgres_stores_every_event() -> None:
    import psycopg
    from psycopg import sql

    assert PG_DSN is not None
    schema = f"cli_{uuid.uuid4().hex}"
    sep = "&" if "?" in PG_DSN else "?"
    try:
        code, out, err = run(["demo", "--store", f"{PG_DSN}{sep}schema={schema}", "--rollouts", "4"])
        assert code == 0, out + err
        assert "0 lost" in out
    finally:
        with psycopg.connect(PG_DSN, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP SCHEMA IF EXISTS {} CASCADE").format(sql.Identifier(schema)))


# --- inspect ---------------------------------------------------------------------------------------


def test_inspect_lists_rollouts_with_attempts_spans_and_final_reward(demo_db: tuple[Path, str]) -> None:
    code, out, _ = run(["inspect", "--db", str(demo_db[0])])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].split() == ["rollout", "attempts", "spans", "final", "reward", "duration"]
    assert len([line for line in lines if line.startswith("demo-")]) == 20
    assert lines[-1] == f"20 of 20 rollouts in {demo_db[0]}"


def test_inspect_limit_shows_the_newest_rollouts(demo_db: tuple[Path, str]) -> None:
    code, out, _ = run(["inspect", "--db", str(demo_db[0]), "--limit", "3", "--json"])
    assert code == 0
    data = json.loads(out)
    with SqliteStore(demo_db[0]) as store:
        newest = [r.rollout_id for r in store.list_rollouts()][-3:]
    assert data["total"] == 20
    assert [r["rollout_id"] for r in data["rollouts"]] == newest


def test_inspect_rollout_json_nests_llm_call_under_the_root_and_step_reward_under_llm_call(
    demo_db: tuple[Path, str],
) -> None:
    rollout_id = rollout_with_two_attempts(demo_db[0])
    code, out, _ = run(["inspect", "--db", str(demo_db[0]), "--rollout", rollout_id, "--json"])
    assert code == 0
    data: dict[str, Any] = json.loads(out)
    assert [a["attempt_id"] for a in data["attempts"]] == ["attempt-0", "attempt-1"]
    for attempt in data["attempts"]:
        [root] = attempt["tree"]
        assert root["name"] == "demo-rollout" and root["parent_id"] is None
        children = root["children"]
        assert [c["sequence_id"] for c in children] == sorted(c["sequence_id"] for c in children)
        llm_calls = [c for c in children if c["name"] == "llm.call"]
        assert llm_calls
        nested = [g for call in llm_calls for g in call["children"]]
        assert {g["name"] for g in nested} <= {semconv.SPAN_REWARD, semconv.SPAN_EXCEPTION}
        assert any(g["name"] == semconv.SPAN_REWARD and g["value"].startswith("primary=") for g in nested)
        assert children[-1]["name"] == semconv.SPAN_REWARD and children[-1]["value"].startswith("score=")


def test_inspect_rollout_text_draws_the_tree_with_values(demo_db: tuple[Path, str]) -> None:
    rollout_id = rollout_with_two_attempts(demo_db[0])
    code, out, _ = run(["inspect", "--db", str(demo_db[0]), "--rollout", rollout_id, "--attempt", "latest"])
    assert code == 0
    lines = out.splitlines()
    assert lines[0].startswith(f"rollout {rollout_id}  attempt attempt-1")
    assert lines[1].startswith("  demo-rollout  #0")
    assert any(line.startswith("  ├─ llm.call  #") for line in lines)
    assert any(re.match(r"  │  └─ agentlightning\.(reward|exception)  #\d+  ", line) for line in lines)
    assert any("agentlightning.message" in line and "'step 1: reach" in line for line in lines)
    assert any("agentlightning.object" in line and "PuzzleState {" in line for line in lines)
    assert lines[-1].startswith("  └─ agentlightning.reward") and "score=" in lines[-1]


def test_inspect_unknown_rollout_or_attempt_exits_2_naming_it(demo_db: tuple[Path, str]) -> None:
    code, out, err = run(["inspect", "--db", str(demo_db[0]), "--rollout", "no-such-rollout"])
    assert (code, out) == (2, "")
    assert "no rollout 'no-such-rollout'" in err and "Traceback" not in err
    rollout_id = rollout_with_two_attempts(demo_db[0])
    code, _, err = run(["inspect", "--db", str(demo_db[0]), "--rollout", rollout_id, "--attempt", "attempt-9"])
    assert code == 2 and f"rollout {rollout_id!r} has no attempt 'attempt-9'" in err


def test_inspect_and_verify_of_a_missing_db_exit_2_without_creating_it(tmp_path: Path) -> None:
    missing = tmp_path / "missing.db"
    for command in (["inspect", "--db", str(missing)], ["verify", "--db", str(missing)]):
        code, _, err = run(command)
        assert code == 2 and f"no database at {str(missing)!r}" in err
    code, _, err = run(["inspect", "--store", f"sqlite:///{missing}"])
    assert code == 2 and "no database" in err
    assert not missing.exists()


def test_inspect_of_an_empty_store_says_so(tmp_path: Path) -> None:
    db = tmp_path / "empty.db"
    SqliteStore(db).list_rollouts()
    code, out, _ = run(["inspect", "--db", str(db)])
    assert code == 0 and out == f"{db}: no rollouts stored\n"


# --- verify ----------------------------------------------------------------------------------------


def test_verify_reports_an_intact_db_then_names_a_tampered_row_and_exits_1(tmp_path: Path) -> None:
    db = tmp_path / "v.db"
    assert run(["demo", "--db", str(db), "--rollouts", "3"])[0] == 0
    total = len(spans_of_run(db))
    code, out, _ = run(["verify", "--db", str(db)])
    assert (code, out) == (0, f"intact: {total} rows checked in {db}, no damage found\n")
    with contextlib.closing(sqlite3.connect(db)) as conn, conn:
        key = conn.execute("SELECT rollout_id, attempt_id, span_id FROM spans WHERE name = 'llm.call'").fetchone()
        data = conn.execute("SELECT data FROM spans WHERE span_id = ?", (key[2],)).fetchone()[0]
        tampered = bytes(data).replace(b"llm.call", b"llm.CALL")
        conn.execute("UPDATE spans SET data = ? WHERE span_id = ?", (tampered, key[2]))  # checksum kept
    code, out, _ = run(["verify", "--store", f"sqlite:///{db}"])
    assert code == 1
    lines = out.splitlines()
    assert lines[0] == f"DAMAGED: 1 of {total} rows in sqlite:///{db} fail their checks"
    assert lines[1].startswith(f"  rollout {key[0]} attempt {key[1]} span {key[2]}: checksum mismatch")


# --- serve, stats, errors --------------------------------------------------------------------------


def test_stats_without_url_prints_this_process_counters_as_json() -> None:
    code, out, _ = run(["stats"])
    assert code == 0
    assert set(json.loads(out)) == {"no_tracer", "after_shutdown", "orphan_spans", "pipelines"}


def test_stats_with_url_reads_a_real_server_and_sends_the_token() -> None:
    with ServerThread(create_app(InMemoryStore(), token="s3cret")) as server:
        code, out, _ = run(["stats", "--url", server.url, "--token", "s3cret"])
        assert code == 0
        assert json.loads(out)["requests"] >= 1
        code, out, err = run(["stats", "--url", server.url, "--token", "wrong"])
        assert (code, out) == (2, "") and "answered 401" in err


def test_inspect_verify_and_demo_send_the_agentemit_token_to_an_http_store(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGENTEMIT_TOKEN", "s3cret")
    with ServerThread(create_app(InMemoryStore(), token="s3cret")) as server:
        assert run(["demo", "--store", server.url, "--rollouts", "1", "--threads", "1"])[0] == 0
        code, listing, err = run(["inspect", "--store", server.url, "--json"])
        assert code == 0 and json.loads(listing)["total"] >= 1, err
        code, _, err = run(["verify", "--store", server.url])
        assert "401" not in err


def test_stats_of_an_unreachable_server_exits_2_with_one_line() -> None:
    code, _, err = run(["stats", "--url", "http://127.0.0.1:9"])
    assert code == 2 and err.startswith("agentemit stats: error: cannot reach http://127.0.0.1:9/v1/stats")
    assert err.count("\n") == 1


def test_serve_refuses_a_public_address_without_a_token(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("AGENTEMIT_TOKEN", raising=False)
    code, _, err = run(["serve", "--store", str(tmp_path / "s.db"), "--host", "0.0.0.0"])
    assert code == 2 and "refusing to listen on '0.0.0.0' without a token" in err


def test_serve_rate_limits_by_default_and_passes_its_limit_flags(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict[str, Any]] = []
    monkeypatch.setattr(runner, "serve", lambda store, **options: calls.append({"store": store, **options}))
    assert run(["serve", "--store", "memory"])[0] == 0
    flags = ["--rate-limit", "2.5", "--rate-burst", "3", "--max-body-bytes", "4096"]
    assert run(["serve", "--store", "memory", *flags])[0] == 0
    assert run(["serve", "--store", "memory", "--rate-limit", "0"])[0] == 0
    limits = [(c["rate_limit_per_s"], c["rate_burst"], c["max_body_bytes"]) for c in calls]
    assert limits == [(1000.0, 2000, 32 << 20), (2.5, 3, 4096), (None, 2000, 32 << 20)]
    assert run(["serve", "--store", "memory", "--rate-limit", "-1"])[0] == 2


def test_bad_arguments_exit_2_with_a_usage_message() -> None:
    for argv in ([], ["demo", "--rollouts", "0"], ["inspect", "--db", "a.db", "--store", "b.db"], ["frobnicate"]):
        code, _, err = run(argv)
        assert code == 2 and "usage: agentemit" in err, argv
    assert run(["--version"])[0] == 0


def test_an_unknown_store_url_is_one_line_but_agentemit_debug_shows_the_traceback(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    code, _, err = run(["verify", "--store", "bogus://x"])
    assert code == 2 and err.startswith("agentemit verify: error: open_store: cannot open 'bogus://x'")
    monkeypatch.setenv("AGENTEMIT_DEBUG", "1")
    with pytest.raises(CliError, match="bogus://x"):
        run(["verify", "--store", "bogus://x"])


def test_store_urls_are_printed_without_their_password() -> None:
    assert render.safe_url("postgresql://u:pw@h:5432/db?schema=s") == "postgresql://u:***@h:5432/db?schema=s"
    assert render.safe_url("sqlite:///x.db") == "sqlite:///x.db"


# --- rendering -------------------------------------------------------------------------------------


def _span(span_id: str, parent: str | None, seq: int, name: str = "s") -> Span:
    return Span("0" * 32, span_id, parent, name, 0, 0, "r", "a", seq)


def test_tree_orders_children_by_sequence_and_shows_orphans_as_roots() -> None:
    spans = [_span("b", "a", 2, "late"), _span("a", None, 0, "root"), _span("c", "a", 1, "early")]
    spans.append(_span("d", "gone", 3, "orphan"))
    assert render.tree_lines(render.build_tree(spans)) == ["root  #0", "├─ early  #1", "└─ late  #2", "orphan  #3"]


def test_table_aligns_columns_and_right_aligns_numbers() -> None:
    assert render.table(("name", "n"), [("a", 10), ("bbb", 2)], right=(1,)) == ["name   n", "a     10", "bbb    2"]
