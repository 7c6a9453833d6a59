"""Architecture rules that import-linter cannot express, checked on the source tree.

DESIGN §2/§3: only ``batcher/settings.py`` and ``batcher/environ.py`` read the process environment;
everything else gets its values from the settings tree or from ``environ.py``'s resolver. The check parses
the code (so docstrings that *mention* ``os.environ`` are fine) and finds every way of reaching the
environment through :mod:`os`: ``os.environ``, ``os.getenv``, ``environ[...]`` after
``from os import environ``, aliases included. Library ownership is import-linter's job (``make lint``).
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCANNED = ("batcher", "handlers")
ALLOWED = {Path("batcher/settings.py"), Path("batcher/environ.py")}
ENV_ATTRIBUTES = {"environ", "environb", "getenv", "getenvb", "putenv", "unsetenv"}


def environment_reads(source: str) -> list[int]:
    """Line numbers where ``source`` touches the process environment through :mod:`os`."""
    tree = ast.parse(source)
    os_names = {"os"}
    env_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            os_names |= {a.asname or a.name for a in node.names if a.name == "os"}
        elif isinstance(node, ast.ImportFrom) and node.module == "os":
            env_names |= {a.asname or a.name for a in node.names if a.name in ENV_ATTRIBUTES}
    found = (node for node in ast.walk(tree) if isinstance(node, ast.expr | ast.stmt))
    return sorted({node.lineno for node in found if _reads_environment(node, os_names, env_names)})


def _reads_environment(node: ast.AST, os_names: set[str], env_names: set[str]) -> bool:
    if isinstance(node, ast.Attribute):
        return node.attr in ENV_ATTRIBUTES and isinstance(node.value, ast.Name) and node.value.id in os_names
    if isinstance(node, ast.Name):
        return node.id in env_names
    if isinstance(node, ast.ImportFrom):
        return node.module == "os" and any(a.name in ENV_ATTRIBUTES for a in node.names)
    return False


def python_files() -> list[Path]:
    return sorted(p.relative_to(ROOT) for d in SCANNED for p in (ROOT / d).rglob("*.py"))


def test_only_settings_and_environ_read_the_environment() -> None:
    """No module of batcher/ or handlers/ other than settings.py and environ.py reads os.environ/getenv."""
    offenders = {
        str(path): lines
        for path in python_files() if path not in ALLOWED
        if (lines := environment_reads((ROOT / path).read_text(encoding="utf-8")))
    }
    assert offenders == {}, f"environment read outside settings.py/environ.py (file: lines): {offenders}"


def test_the_scan_covers_both_packages() -> None:
    """The scan sees the package roots and the modules allowed to read the environment exist."""
    files = set(python_files())
    assert Path("batcher/__init__.py") in files
    assert Path("handlers/__init__.py") in files
    assert Path("batcher/settings.py") in files


@pytest.mark.parametrize("snippet", [
    "import os\nos.environ['X']",
    "import os\nos.environ.get('X')",
    "import os\nos.getenv('X')",
    "import os as system\nsystem.environ['X']",
    "from os import environ\nenviron['X']",
    "from os import getenv as g\ng('X')",
    "import os\ndef f(env=os.environ): return env",
])
def test_detector_finds_environment_reads(snippet: str) -> None:
    """The detector flags each way of reading the environment, aliases included."""
    assert environment_reads(snippet)


@pytest.mark.parametrize("snippet", [
    '"""Never reads os.environ; see settings."""',
    "import os\nos.path.join('a', 'b')",
    "def f(environ): return environ['X']",
    "# os.getenv('X') in a comment",
])
def test_detector_ignores_mentions_and_other_os_use(snippet: str) -> None:
    """Docstrings, comments, other os functions and unrelated ``environ`` parameters are not flagged."""
    assert environment_reads(snippet) == []
