"""batcher.environ.resolve_params registers every secret value it resolves for redaction (issue 20's
secret scan found them unregistered: an upstream error body echoing the key reached the run's errors)."""

from __future__ import annotations

from batcher import logs
from batcher.environ import resolve_params
from handlers.datasync import DataSyncParams
from handlers.hubspot import HubSpotParams


def test_resolved_secret_params_are_registered_for_redaction() -> None:
    """A secret from a ``*_env`` reference and a literal one (``run-job --param``) are both masked by
    :func:`batcher.logs.redact` once resolved, URL-encoded forms included; other params are not."""
    try:
        env_key, literal = "env-resolved-key+1/2", "literal-token+3/4"
        resolve_params(DataSyncParams, {"base_url": "http://upstream.test", "api_key_env": "SCAN_KEY"},
                       environ={"SCAN_KEY": env_key})
        resolve_params(HubSpotParams, {"base_url": "http://upstream.test"}, literal_secrets={"access_token": literal})
        text = f"{env_key} {literal} env-resolved-key%2B1%2F2 http://upstream.test"
        assert logs.redact(text) == "*** *** *** http://upstream.test"
    finally:
        logs.forget_secrets()
