"""Plain-text rendering for the CLI: aligned tables, span trees and one-line span values.

Pure functions from data to lines, so commands stay about what to show and tests can check layout
without a terminal.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import orjson

from agentemit import semconv
from agentemit.emit.readers import get_message_value, get_object_value, get_rewards
from agentemit.span import Span

VALUE_WIDTH = 72  # key values are cut to this many characters in tree lines


def table(headers: Sequence[str], rows: Iterable[Sequence[object]], *, right: Iterable[int] = ()) -> list[str]:
    """Rows aligned under ``headers``; columns listed in ``right`` are right-aligned (numbers)."""
    cells = [[str(h) for h in headers], *[["" if c is None else str(c) for c in row] for row in rows]]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    align_right = set(right)
    lines = []
    for row in cells:
        parts = [
            c.rjust(w) if i in align_right else c.ljust(w) for i, (c, w) in enumerate(zip(row, widths, strict=True))
        ]
        lines.append("  ".join(parts).rstrip())
    return lines


def safe_url(url: str) -> str:
    """``url`` with any password masked, fit to print (store URLs may carry credentials)."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rpartition("@")
    user = netloc[0].partition(":")[0]
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc[2]}"))


def shorten(text: str, width: int = VALUE_WIDTH) -> str:
    """One line of at most ``width`` characters (newlines shown as ``⏎``, cut text ends in ``…``)."""
    flat = text.replace("\r\n", "\n").replace("\n", "⏎")
    return flat if len(flat) <= width else flat[: width - 1] + "…"


def duration_ms(span: Span) -> float:
    """The span's duration in milliseconds (0 for instant event spans)."""
    return max(0, span.end_time - span.start_time) / 1e6


def format_duration(span: Span) -> str:
    """``12.3ms``, or empty for an instant event span (start == end)."""
    ms = duration_ms(span)
    if ms <= 0:
        return ""
    return f"{ms:.1f}ms" if ms < 1000 else f"{ms / 1000:.2f}s"


def format_reward(value: float | None) -> str:
    return "-" if value is None else f"{value:.3f}"


def span_value(span: Span) -> str:
    """The one thing worth seeing about a span: message text, reward(s), object, or exception."""
    attrs = span.attributes
    if span.name == semconv.SPAN_EXCEPTION or semconv.EXCEPTION_TYPE in attrs:
        return f"{attrs.get(semconv.EXCEPTION_TYPE, '?')}: {attrs.get(semconv.EXCEPTION_MESSAGE, '')}"
    rewards = get_rewards(span)
    if rewards:
        return " ".join(f"{name}={value:.3f}" for name, value in rewards.items())
    message = get_message_value(span)
    if message is not None:
        return repr(message)
    if span.name == semconv.SPAN_OBJECT:
        kind = attrs.get(semconv.OBJECT_TYPE, "object")
        try:
            value = get_object_value(span)
            text = orjson.dumps(value, default=repr).decode() if not isinstance(value, str) else repr(value)
        except (orjson.JSONDecodeError, orjson.JSONEncodeError, TypeError, ValueError):
            text = str(attrs.get(semconv.OBJECT_JSON, ""))
        return f"{kind} {text}"
    if span.status == "ERROR":
        return f"ERROR: {span.status_description or ''}".rstrip()
    return ""


@dataclass
class TreeNode:
    """One span and its children (ordered by sequence id)."""

    span: Span
    children: list[TreeNode] = field(default_factory=list)


def build_tree(spans: Sequence[Span]) -> list[TreeNode]:
    """Spans of one attempt as a forest: roots first, children by ``sequence_id``.

    A span whose parent is not among ``spans`` (cut off by a limit, or a parent outside the
    rollout) is shown as a root rather than hidden.
    """
    ordered = sorted(spans, key=lambda s: (s.sequence_id, s.span_id))
    nodes = {s.span_id: TreeNode(s) for s in ordered}
    roots: list[TreeNode] = []
    for span in ordered:
        parent = nodes.get(span.parent_id) if span.parent_id else None
        if parent is None or parent.span is span:
            roots.append(nodes[span.span_id])
        else:
            parent.children.append(nodes[span.span_id])
    return roots


def tree_lines(roots: Sequence[TreeNode]) -> list[str]:
    """Box-drawing lines, one per span: ``name  #seq  duration  value``."""
    lines: list[str] = []

    def walk(node: TreeNode, lead: str, branch: str) -> None:
        span = node.span
        parts = [f"{branch}{span.name}", f"#{span.sequence_id}"]
        for extra in (format_duration(span), shorten(span_value(span))):
            if extra:
                parts.append(extra)
        lines.append("  ".join(parts))
        for i, child in enumerate(node.children):
            last = i == len(node.children) - 1
            walk(child, lead + ("   " if last else "│  "), lead + ("└─ " if last else "├─ "))

    for root in roots:
        walk(root, "", "")
    return lines


def tree_json(roots: Sequence[TreeNode]) -> list[dict[str, Any]]:
    """The forest as nested JSON objects: the span's fields plus ``duration_ms``, ``value``, ``children``."""

    def node_json(node: TreeNode) -> dict[str, Any]:
        out = node.span.to_dict()
        out["duration_ms"] = duration_ms(node.span)
        out["value"] = span_value(node.span)
        out["children"] = [node_json(child) for child in node.children]
        return out

    return [node_json(root) for root in roots]
