"""Issue 18: no module of batcher/ names a job type. Job types belong to their handlers (handlers/ or a
plugin); the runtime reaches them only through the registry, so a handler's commands, routes and
environment aliases are contributed through the handler API (batcher.extension) instead.

The check parses each module of batcher/ and flags every string constant (docstrings and comments are not
code and are ignored) that equals a registered job type, or holds one as a TOML ``type = "…"`` entry.
``batcher/fakes/`` is exempt: those modules are stand-ins for the upstream services, not the runtime.
"""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

from batcher.registry import load_registry

ROOT = Path(__file__).resolve().parents[2]
EXEMPT = ("batcher/fakes/",)


def job_type_mentions(source: str, job_types: set[str]) -> list[tuple[int, str]]:
    """(line, text) of each string constant outside docstrings that names one of ``job_types``."""
    tree = ast.parse(source)
    docstrings = {id(node.body[0].value) for node in ast.walk(tree)
                  if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef)
                  and node.body and isinstance(node.body[0], ast.Expr)
                  and isinstance(node.body[0].value, ast.Constant)}
    toml = re.compile(r"""type\s*=\s*["']([^"']+)["']""")
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            text = node.value
            if text in job_types or any(m in job_types for m in toml.findall(text)):
                found.append((node.lineno, text[:60]))
    return found


def runtime_modules() -> list[Path]:
    return sorted(p for p in (ROOT / "batcher").rglob("*.py")
                  if not str(p.relative_to(ROOT)).startswith(EXEMPT))


def test_no_module_of_batcher_names_a_job_type() -> None:
    """Every registered job type (built-ins and plugins) is absent from the code of batcher/."""
    job_types = set(load_registry())
    assert {"synthetic", "datasync", "usage_aggregation"} <= job_types
    offenders = {str(p.relative_to(ROOT)): hits for p in runtime_modules()
                 if (hits := job_type_mentions(p.read_text(encoding="utf-8"), job_types))}
    assert offenders == {}, f"job type names in batcher/ (move them to their handler): {offenders}"


@pytest.mark.parametrize("snippet", [
    'USAGE_TYPE = "usage_aggregation"',
    'jobs = {"x": {"type": "datasync"}}',
    'TOML = """[jobs.a]\\ntype = "synthetic"\\n"""',
])
def test_detector_finds_job_type_names(snippet: str) -> None:
    """A constant, a dict value and a TOML text naming a job type are all flagged."""
    assert job_type_mentions(snippet, {"synthetic", "datasync", "usage_aggregation"})


def test_detector_ignores_docstrings_and_other_words() -> None:
    """Docstrings may mention job types; other strings (``"datasync_url"``) are not job types."""
    source = '"""The usage_aggregation handler."""\ndef f():\n    """datasync"""\n    return "datasync_url"\n'
    assert job_type_mentions(source, {"datasync", "usage_aggregation"}) == []


def test_import_graph_has_no_circle() -> None:
    """The acyclic contract (tools/import_contracts.py, run by `make lint`) holds on batcher/ and handlers/,
    and its detector finds a circle such as the former cli ↔ clicommands ↔ aggregate one."""
    import grimp

    from tools.import_contracts import import_cycles

    graph = grimp.build_graph("batcher", "handlers", exclude_type_checking_imports=True)
    modules = graph.modules
    assert import_cycles(graph, {m for m in modules if m.split(".")[0] in ("batcher", "handlers")}) == []
    graph.add_import(importer="batcher.clicommands", imported="batcher.cli")
    assert import_cycles(graph, set(graph.modules)) == [["batcher.cli", "batcher.clicommands"]]
