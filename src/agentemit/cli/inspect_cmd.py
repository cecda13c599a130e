"""The read-side commands: ``inspect`` (rollouts table, one rollout's span tree) and ``verify``.

Both only read, so they refuse a SQLite file that does not exist instead of creating an empty one.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from agentemit.cli import render
from agentemit.span import Span
from agentemit.stores import SpanStore, SqliteStore, open_store
from agentemit.stores.base import RolloutSummary


class CliError(Exception):
    """A user-facing failure: printed as one line on stderr, exit code 2."""


def open_existing_store(db: str | None, store_url: str | None) -> tuple[SpanStore, str]:
    """The store to read and a label for messages; an absent SQLite file is an error, not a new file.

    Raises:
        CliError: the SQLite file does not exist, or the URL is not one ``open_store`` accepts.
    """
    if store_url is not None:
        try:
            store = open_store(store_url)
        except ValueError as exc:
            raise CliError(str(exc)) from exc
        label = render.safe_url(store_url)
    else:
        path = Path(db or "agentemit.db")
        store, label = SqliteStore(path), str(path)
    if isinstance(store, SqliteStore) and store.path != ":memory:" and not Path(store.path).is_file():
        store.close()
        raise CliError(f"no database at {store.path!r} (run `agentemit demo` first, or pass --db/--store)")
    return store, label


def rollout_duration_ms(summary: RolloutSummary) -> float:
    return max(0, summary.last_time - summary.first_time) / 1e6


def inspect_rollouts(store: SpanStore, label: str, *, limit: int, as_json: bool, out: TextIO) -> int:
    """Print the newest ``limit`` rollouts (all of them fetched: the store orders oldest first)."""
    summaries = store.list_rollouts()
    shown = summaries[-limit:] if limit > 0 else []
    if as_json:
        payload = [dict(s.to_dict(), duration_ms=rollout_duration_ms(s)) for s in shown]
        json.dump({"store": label, "total": len(summaries), "rollouts": payload}, out, indent=2)
        out.write("\n")
        return 0
    if not summaries:
        out.write(f"{label}: no rollouts stored\n")
        return 0
    rows = [
        (
            s.rollout_id,
            len(s.attempt_ids),
            s.span_count,
            render.format_reward(s.final_reward),
            f"{rollout_duration_ms(s):.1f}ms",
        )
        for s in shown
    ]
    headers = ("rollout", "attempts", "spans", "final reward", "duration")
    for line in render.table(headers, rows, right=(1, 2, 3, 4)):
        out.write(line + "\n")
    note = f"{len(shown)} of {len(summaries)} rollouts in {label}"
    if len(shown) < len(summaries):
        note += f" (newest {len(shown)}; raise --limit for more)"
    out.write(note + "\n")
    return 0


def _by_attempt(spans: Sequence[Span]) -> dict[str, list[Span]]:
    """Spans grouped by attempt, attempts in the order they started (sequence ids restart per attempt)."""
    groups: dict[str, list[Span]] = {}
    for span in spans:
        groups.setdefault(span.attempt_id, []).append(span)
    started = {a: min(s.start_time for s in group) for a, group in groups.items()}
    return {a: groups[a] for a in sorted(groups, key=lambda a: (started[a], a))}


def inspect_rollout(
    store: SpanStore, rollout_id: str, attempt: str | None, *, limit: int | None, as_json: bool, out: TextIO
) -> int:
    """Print one rollout's spans as a tree per attempt.

    Raises:
        CliError: the rollout (or the requested attempt of it) has no spans.
    """
    spans = store.query_spans(rollout_id, attempt, limit=limit)
    if not spans:
        if attempt is not None and store.query_spans(rollout_id, limit=1):
            raise CliError(f"rollout {rollout_id!r} has no attempt {attempt!r}")
        raise CliError(f"no rollout {rollout_id!r} in the store (see `agentemit inspect` for the list)")
    groups = _by_attempt(spans)
    if as_json:
        attempts = [{"attempt_id": a, "tree": render.tree_json(render.build_tree(s))} for a, s in groups.items()]
        json.dump({"rollout_id": rollout_id, "span_count": len(spans), "attempts": attempts}, out, indent=2)
        out.write("\n")
        return 0
    for attempt_id, attempt_spans in groups.items():
        out.write(f"rollout {rollout_id}  attempt {attempt_id}  ({len(attempt_spans)} spans)\n")
        for line in render.tree_lines(render.build_tree(attempt_spans)):
            out.write("  " + line + "\n")
    return 0


def verify(store: SpanStore, label: str, *, out: TextIO) -> int:
    """Re-check every row's checksum: 0 when intact, 1 when any row is damaged.

    Raises:
        CliError: the store cannot verify its rows (e.g. a remote HTTP store).
    """
    try:
        rows = sum(s.span_count for s in store.list_rollouts())
        problems = store.verify()
    except NotImplementedError as exc:
        raise CliError(f"verify: {exc}") from exc
    if not problems:
        out.write(f"intact: {rows} rows checked in {label}, no damage found\n")
        return 0
    out.write(f"DAMAGED: {len(problems)} of {rows} rows in {label} fail their checks\n")
    for (rollout_id, attempt_id, span_id), problem in problems:
        out.write(f"  rollout {rollout_id} attempt {attempt_id} span {span_id}: {problem}\n")
    return 1
