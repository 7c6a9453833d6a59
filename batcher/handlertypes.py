"""What each job type takes: its params (name, type, default, secret or not, description, bounds), read from
the handler's pydantic Params model. Shown by ``batcher types`` (a table, or ``--json``) and listed in the
"unknown key" error of a bad param.
"""

from __future__ import annotations

import types
from collections.abc import Mapping
from typing import Annotated, Any, Literal, Union, get_args, get_origin

from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from batcher.environ import secret_fields
from batcher.handler import Handler

_BOUNDS = (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<"), ("min_length", "length >="),
           ("max_length", "length <="))


def type_name(annotation: Any) -> str:
    """A readable type: ``int``, ``int | None``, ``'run' | 'job'``, ``date``."""
    origin = get_origin(annotation)
    if origin is Annotated:
        return type_name(get_args(annotation)[0])
    if origin is Union or origin is types.UnionType:
        return " | ".join(type_name(a) for a in get_args(annotation))
    if origin is Literal:
        return " | ".join(repr(a) for a in get_args(annotation))
    if annotation is type(None):
        return "None"
    if isinstance(annotation, type):
        return annotation.__name__
    return str(annotation).replace("typing.", "")


def _bounds(info: FieldInfo) -> str:
    found = [f"{sign} {getattr(m, attr)}" for m in info.metadata for attr, sign in _BOUNDS
             if getattr(m, attr, None) is not None]
    return ", ".join(found)


def describe_params(model: type[BaseModel]) -> list[dict[str, Any]]:
    """One entry per param of ``model``, in declaration order. A secret is configured as ``<name>_env``."""
    secrets = secret_fields(model)
    out = []
    for name, info in model.model_fields.items():
        secret = name in secrets
        required = info.is_required()
        default = None if required or info.default is PydanticUndefined else info.default
        out.append({"name": name, "type": "secret" if secret else type_name(info.annotation),
                    "required": required, "default": default, "secret": secret,
                    "bounds": _bounds(info) or None,
                    "description": " ".join(filter(None, (info.description, (
                        f"(secret: configure as {name}_env = \"VARIABLE\")" if secret else None))))})
    return out


def describe_handlers(registry: Mapping[str, type[Handler]]) -> list[dict[str, Any]]:
    """Every job type, sorted by name, with its params."""
    return [{"type": name, "display_name": cls.display_name, "accepts_windows": cls.accepts_windows,
             "params": describe_params(cls.Params)} for name, cls in sorted(registry.items())]


def valid_keys(model: type[BaseModel]) -> list[str]:
    """The keys a job's params may hold: every field, a secret one as ``<name>_env``."""
    secrets = secret_fields(model)
    return [f"{name}_env" if name in secrets else name for name in model.model_fields]


def render_table(handlers: list[dict[str, Any]]) -> str:
    """Plain text: per job type a heading, then one aligned row per param."""
    blocks = []
    for h in handlers:
        rows = [("PARAM", "TYPE", "DEFAULT", "BOUNDS", "DESCRIPTION")]
        for p in h["params"]:
            default = "(required)" if p["required"] else ("-" if p["default"] is None else _text(p["default"]))
            rows.append((p["name"], p["type"], default, p["bounds"] or "", p["description"]))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        lines = ["  " + "  ".join(c.ljust(w) for c, w in zip(r[:4], widths, strict=True)) + "  " + r[4]
                 for r in rows]
        extra = ", accepts date windows (backfill)" if h["accepts_windows"] else ""
        blocks.append(f"{h['type']} ({h['display_name']}{extra})\n" + "\n".join(x.rstrip() for x in lines))
    return "\n\n".join(blocks)


def _text(value: Any) -> str:
    return repr(value) if isinstance(value, str) else str(value)
