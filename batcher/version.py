"""The installed version of batcher, for ``batcher --version``.

The version pip installed (the distribution's metadata: what a wheel or ``pip install -e`` recorded) is
the truth; ``batcher.__version__`` is the fallback for code run from a checkout that was never installed.
``importlib.metadata`` costs ~0.1 s to import, so it is imported only when the version is asked for.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any


def installed_version() -> str:
    """The installed distribution's version, else ``batcher.__version__``."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("batcher")
    except PackageNotFoundError:
        from batcher import __version__

        return __version__


class VersionAction(argparse.Action):
    """``--version``: print ``batcher <installed version>`` and exit 0 (the version looked up only then)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        kwargs.setdefault("help", "show the installed version and exit")
        super().__init__(option_strings, dest, nargs=0, default=argparse.SUPPRESS, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        sys.stdout.write(f"batcher {installed_version()}\n")  # stdout, as argparse's own version action
        parser.exit()
