"""``batcher --version``: the installed distribution's version (importlib.metadata), falling back to
``batcher.__version__`` when batcher runs from a checkout that was never installed."""

from __future__ import annotations

import importlib.metadata

import pytest

import batcher
from batcher.cli import main


def test_version_prints_the_installed_distribution_version(monkeypatch: pytest.MonkeyPatch,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    """The version pip recorded wins over the source constant (here made to differ), on stdout, exit 0."""
    monkeypatch.setattr(batcher, "__version__", "0.0.0+source-constant")
    assert main(["--version"]) == 0
    out = capsys.readouterr().out
    assert out == f"batcher {importlib.metadata.version('batcher')}\n"


def test_version_falls_back_to_the_source_constant_when_not_installed(monkeypatch: pytest.MonkeyPatch,
                                                                      capsys: pytest.CaptureFixture[str]) -> None:
    """No distribution metadata (a bare checkout on sys.path): ``batcher.__version__``."""
    def not_installed(name: str) -> str:
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "version", not_installed)
    monkeypatch.setattr(batcher, "__version__", "9.8.7")
    assert main(["--version"]) == 0
    assert capsys.readouterr().out == "batcher 9.8.7\n"
