"""The public face: ``agentemit.__all__`` is sorted, complete and resolvable, and ``agentemit.testing``
exports what its users import.
"""

from __future__ import annotations

import ast
import inspect

import agentemit
import agentemit.testing


def _public_names_bound_in_init() -> set[str]:
    """Every public name ``agentemit/__init__.py`` binds at top level: its imports from agentemit
    modules, its functions and classes, and ``__version__``. (``Any`` and the like, imported from
    the standard library for annotations, are not part of the API.)
    """
    tree = ast.parse(inspect.getsource(agentemit))
    names: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("agentemit"):
            names.update(alias.asname or alias.name for alias in node.names)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, ast.Assign):
            names.update(t.id for t in node.targets if isinstance(t, ast.Name))
    return {n for n in names if not n.startswith("_") or n == "__version__"} - {"__all__"}


def test_all_is_sorted() -> None:
    assert agentemit.__all__ == sorted(agentemit.__all__)


def test_all_has_no_duplicates() -> None:
    assert len(agentemit.__all__) == len(set(agentemit.__all__))


def test_every_name_in_all_exists() -> None:
    missing = [name for name in agentemit.__all__ if not hasattr(agentemit, name)]
    assert missing == []


def test_every_public_name_bound_in_init_is_in_all() -> None:
    assert _public_names_bound_in_init() - set(agentemit.__all__) == set()


def test_all_lists_nothing_init_does_not_bind() -> None:
    assert set(agentemit.__all__) - _public_names_bound_in_init() == set()


def test_star_import_gives_exactly_all() -> None:
    namespace: dict[str, object] = {}
    exec("from agentemit import *", namespace)
    assert set(namespace) - {"__builtins__"} == set(agentemit.__all__)


def test_the_emit_and_reader_calls_of_issue_2_are_public() -> None:
    required = {
        "emit_message",
        "emit_reward",
        "emit_exception",
        "emit_object",
        "reward",
        "get_reward_value",
        "get_rewards",
        "is_reward_span",
        "find_reward_spans",
        "find_final_reward",
        "get_message_value",
        "get_object_value",
        "Tracer",
        "OtelTracer",
        "Span",
        "stats",
    }
    assert required <= set(agentemit.__all__)


def test_public_callables_have_docstrings() -> None:
    undocumented = [
        name
        for name in agentemit.__all__
        if (inspect.isfunction(getattr(agentemit, name)) or inspect.isclass(getattr(agentemit, name)))
        and not inspect.getdoc(getattr(agentemit, name))
    ]
    assert undocumented == []


def test_testing_module_all_is_sorted_and_resolvable() -> None:
    names = agentemit.testing.__all__
    assert names == sorted(names)
    assert all(hasattr(agentemit.testing, n) for n in names)
    assert {"CapturedSpans", "capture_spans", "sequential_ids"} <= set(names)
