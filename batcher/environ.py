"""Secret references: the one resolver of ``*_env`` params (with settings.py, the only reader of os.environ).

Persisted params hold a secret ``foo`` only as ``foo_env = "VARIABLE"``. At load time
:func:`params_for_validation` checks that shape (a literal secret is rejected unless allowed, as for a
foreground ``run-job``) and substitutes a placeholder so the handler's model can validate the rest. When
a run starts, :func:`resolve_params` reads the variables and yields the handler's real params, every
secret value registered for redaction (:func:`batcher.logs.register_secret`).
Error messages name variables, never values.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any, get_args

from pydantic import BaseModel, SecretStr, ValidationError

from batcher.errors import ConfigError, PermanentError
from batcher.handler import SECRET_MARKER
from batcher.logs import register_secret

_PLACEHOLDER = "__batcher_secret_placeholder__"


def _marks_secret(annotation: Any) -> bool:
    """Whether a type is ``batcher.Secret``, also inside ``Secret | None`` and other unions."""
    if any(m is SECRET_MARKER for m in getattr(annotation, "__metadata__", ())):
        return True
    return any(_marks_secret(arg) for arg in get_args(annotation))


def secret_fields(model: type[BaseModel]) -> set[str]:
    """Names of the fields of ``model`` declared with the ``batcher.Secret`` type (optional or not)."""
    out = set()
    for name, info in model.model_fields.items():
        if any(m is SECRET_MARKER for m in info.metadata) or _marks_secret(info.annotation):
            out.add(name)
    return out


def params_for_validation(model: type[BaseModel], params: Mapping[str, Any], *,
                          allow_literal_secrets: bool = False) -> dict[str, Any]:
    """Params with secret references checked and replaced by placeholders (no environment read)."""
    out = dict(params)
    for field in secret_fields(model):
        ref = f"{field}_env"
        if field in out and not allow_literal_secrets:
            raise ConfigError(f"literal secret {field!r} is not allowed here; reference an environment "
                              f"variable with {ref} = \"NAME\"", key=f"params.{field}")
        if ref in out:
            if not isinstance(out[ref], str) or not out[ref]:
                raise ConfigError("must name an environment variable", key=f"params.{ref}")
            out.pop(ref)
            out.setdefault(field, _PLACEHOLDER)
    return out


def _registered(value: str) -> SecretStr:
    """``value`` as a secret param, registered for redaction first: whatever text it later reaches (an
    upstream's error body, an exception message, a traceback) is masked in logs, run logs and run errors."""
    register_secret(value)
    return SecretStr(value)


def resolve_params(model: type[BaseModel], params: Mapping[str, Any],
                   literal_secrets: Mapping[str, str] | None = None,
                   environ: Mapping[str, str] | None = None) -> BaseModel:
    """The handler's params with every ``*_env`` reference read from the environment, validated."""
    env = os.environ if environ is None else environ
    values = dict(params)
    for field in secret_fields(model):
        ref = f"{field}_env"
        if literal_secrets and field in literal_secrets:
            values.pop(ref, None)
            values[field] = _registered(literal_secrets[field])
        elif ref in values:
            var = values.pop(ref)
            if not env.get(var):
                raise PermanentError(f"environment variable {var} (for param {field!r}) is not set")
            values[field] = _registered(env[var])
    try:
        return model.model_validate(values)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise PermanentError(f"invalid params: {loc}: {err['msg']}") from None
