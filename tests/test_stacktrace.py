"""The fast stack-trace formatter writes what ``traceback`` writes, minus the ``^^^`` marker lines."""

from __future__ import annotations

import builtins
import re
import sys
import traceback
from collections.abc import Callable

import pytest

from agentemit.emit.stacktrace import format_stacktrace

_MARKERS = re.compile(r"^ *[\^~]+ *$")


def reference(exception: BaseException) -> str:
    """``traceback``'s own text with the caret/tilde marker lines of Python 3.11+ removed."""
    text = "".join(traceback.format_exception(type(exception), exception, exception.__traceback__))
    return "".join(line for line in text.splitlines(keepends=True) if not _MARKERS.match(line.rstrip("\n")))


def caught(fn: Callable[[], object]) -> BaseException:
    try:
        fn()
    except BaseException as exc:  # the test needs whatever was raised
        return exc
    raise AssertionError("expected an exception")


def deep(n: int) -> None:
    if n == 0:
        raise ValueError("bottom")
    deep(n - 1)


def recurse_forever() -> None:
    recurse_forever()


def cause() -> None:
    try:
        {}["missing"]
    except KeyError as exc:
        raise RuntimeError("lookup failed") from exc


def context() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        raise ValueError("while handling")  # noqa: B904 - the implicit context is the point


def suppressed() -> None:
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        raise ValueError("replaced") from None


def with_note() -> None:
    error = TypeError("typed")
    if hasattr(error, "add_note"):
        error.add_note("a note for the reader")
    raise error


class BrokenStr(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no str")


def broken() -> None:
    raise BrokenStr()


def syntax() -> None:
    compile("def f(:\n    pass", "<agent>", "exec")


CASES: dict[str, Callable[[], object]] = {
    "simple": lambda: deep(0),
    "several frames": lambda: deep(5),
    "recursion collapsed": recurse_forever,
    "direct cause": cause,
    "context": context,
    "suppressed context": suppressed,
    "notes": with_note,
    "broken __str__": broken,
}


@pytest.mark.parametrize("fn", CASES.values(), ids=CASES.keys())
def test_the_text_matches_traceback_without_the_marker_lines(fn: Callable[[], object]) -> None:
    exception = caught(fn)
    assert format_stacktrace(exception, exception.__traceback__) == reference(exception)


def test_a_syntax_error_keeps_its_position_marker() -> None:
    exception = caught(syntax)
    text = format_stacktrace(exception, exception.__traceback__)
    assert text.startswith("Traceback (most recent call last):\n")
    assert text.endswith("".join(traceback.format_exception_only(type(exception), exception)))
    assert "^" in text.splitlines()[-2]  # the marker under the offending column is part of the message


def test_an_exception_never_raised_has_only_its_message() -> None:
    exception = KeyError("k")
    assert format_stacktrace(exception, None) == "KeyError: 'k'\n"


def test_a_cause_cycle_is_printed_once() -> None:
    first, second = ValueError("a"), ValueError("b")
    first.__cause__, second.__cause__ = second, first
    text = format_stacktrace(first, None)
    assert text.count("ValueError: a") == 1 and text.count("ValueError: b") == 1


def test_the_traceback_given_is_used_not_the_exceptions_current_one() -> None:
    exception = caught(lambda: deep(0))
    at_emit = exception.__traceback__
    exception.__traceback__ = None  # later handling may replace it; the emit-time one is what counts
    assert "in deep" in format_stacktrace(exception, at_emit)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="exception groups are Python 3.11+")
def test_an_exception_group_is_formatted_by_traceback() -> None:
    group_type = getattr(builtins, "ExceptionGroup")  # noqa: B009 - absent on 3.10, where this test skips
    group = caught(lambda: (_ for _ in ()).throw(group_type("many", [ValueError("x"), KeyError("y")])))
    text = format_stacktrace(group, group.__traceback__)
    assert "ExceptionGroup: many" in text and "ValueError: x" in text
