"""The handler's named SQL blocks (``queries.sql`` beside this module), in batcher's ``-- name:`` format."""

from __future__ import annotations

from importlib.resources import files


def _load() -> dict[str, str]:
    queries: dict[str, str] = {}
    name: str | None = None
    for line in files(__package__ or "handlers.agent_batch").joinpath("queries.sql").read_text().splitlines():
        if line.startswith("-- name:"):
            name = line.split(":", 1)[1].strip()
            queries[name] = ""
        elif name is not None and not line.startswith("--"):
            queries[name] += line + "\n"
    return {k: v.strip() for k, v in queries.items()}


Q = _load()
