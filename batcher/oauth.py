"""OAuth2 access tokens for the HTTP client, and keeping credentials out of text (DESIGN §8).

This module owns:

- :class:`TokenProvider`, the protocol :mod:`batcher.http` calls for a bearer token, and
  :class:`OAuth2TokenProvider`, its implementation for the ``refresh_token`` and ``client_credentials``
  grants against a configurable token URL: the token is refreshed proactively ``refresh_early_s`` before
  it expires, concurrent callers share one refresh (single-flight per provider, and the runtime keeps
  one provider per credential), and :meth:`OAuth2TokenProvider.refresh` forces a refresh after a 401
  unless another caller already replaced the rejected token.
- :func:`safe_excerpt`: a short, redacted excerpt of a response body for error messages.

Every token, refresh token and client secret is registered with :func:`batcher.logs.register_secret`
as soon as it is known, so log lines and run records mask it; exception messages never contain one.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Literal, Protocol

from batcher.errors import PermanentError, TransientError
from batcher.logs import MASK, redact, register_secret

_SECRET_JSON_VALUE = re.compile(
    r'(?P<head>"(?:access_token|refresh_token|id_token|client_secret|password|api_key|apikey|token|secret)"'
    r'\s*:\s*")[^"]*(?P<tail>")', re.IGNORECASE)
_SECRET_FORM_VALUE = re.compile(
    r"(?P<head>\b(?:access_token|refresh_token|id_token|client_secret|password|authorization)"
    r"\s*[=:]\s*(?:(?:Bearer|Basic)\s+)?)[^&\s,;\"']+", re.IGNORECASE)


def safe_excerpt(body: bytes | str, limit: int = 200) -> str:
    """At most ``limit`` characters of ``body``, one line, with tokens and credentials masked."""
    text = body.decode("utf-8", "replace") if isinstance(body, bytes) else body
    text = _SECRET_JSON_VALUE.sub(lambda m: m["head"] + MASK + m["tail"], text)
    text = _SECRET_FORM_VALUE.sub(lambda m: m["head"] + MASK, text)
    text = redact(" ".join(text.split()))
    return text if len(text) <= limit else text[:limit] + "…"


class TokenProvider(Protocol):
    """Gives the HTTP client a bearer token for one credential."""

    async def token(self) -> str:
        """A token valid for a while yet (refreshing it first when it is about to expire)."""

    async def refresh(self, stale: str) -> str:
        """A new token after ``stale`` was rejected (401); no refresh when it was already replaced."""


class TokenEndpoint(Protocol):
    """Posts a form to a token URL: ``(status, body)``; network failures raise TransientError."""

    async def post_form(self, url: str, form: Mapping[str, str], headers: Mapping[str, str],
                        ) -> tuple[int, bytes]: ...


@dataclass(frozen=True)
class OAuth2Credentials:
    """What a grant needs. Secrets are excluded from ``repr``."""

    token_url: str
    client_id: str
    client_secret: str = field(repr=False)
    grant: Literal["refresh_token", "client_credentials"] = "refresh_token"
    refresh_token: str | None = field(default=None, repr=False)
    scope: str | None = None
    #: The message of the run's :class:`PermanentError` when the token endpoint answers ``invalid_grant``
    #: (the refresh token was revoked or expired): say what to do, e.g. "create a new refresh token".
    invalid_grant_message: str | None = None

    def key(self) -> str:
        """A stable identity of the credential: a hash of the token URL, client id, grant, scope and the
        secrets (no secret, nor anything it could be recovered from, appears in it)."""
        raw = "\0".join((self.token_url, self.client_id, self.grant, self.refresh_token or "",
                         self.scope or "", self.client_secret))
        return hashlib.sha256(raw.encode()).hexdigest()[:24]


class OAuth2TokenProvider:
    """Access tokens for one credential: proactive refresh, single-flight, forced refresh on 401."""

    def __init__(self, credentials: OAuth2Credentials, endpoint: TokenEndpoint, *,
                 refresh_early_s: float = 60.0, clock: Callable[[], float] = time.monotonic) -> None:
        if credentials.grant == "refresh_token" and not credentials.refresh_token:
            raise PermanentError("the refresh_token grant needs a refresh token")
        self._creds = credentials
        self._endpoint = endpoint
        self._early = refresh_early_s
        self._clock = clock
        self._lock = asyncio.Lock()
        self._access: str | None = None
        self._expires_at = 0.0
        self._refresh_token = credentials.refresh_token
        self.refreshes = 0  # how many token requests were made (for tests and metrics)
        for secret in (credentials.client_secret, credentials.refresh_token):
            if secret:
                register_secret(secret)

    def _fresh(self) -> bool:
        return self._access is not None and self._clock() < self._expires_at - self._early

    async def token(self) -> str:
        if self._fresh():
            assert self._access is not None
            return self._access
        async with self._lock:
            if not self._fresh():
                await self._fetch()
            assert self._access is not None
            return self._access

    async def refresh(self, stale: str) -> str:
        async with self._lock:
            if self._access is None or self._access == stale or not self._fresh():
                await self._fetch()
            assert self._access is not None
            return self._access

    def _form(self) -> dict[str, str]:
        form = {"grant_type": self._creds.grant, "client_id": self._creds.client_id,
                "client_secret": self._creds.client_secret}
        if self._creds.grant == "refresh_token":
            assert self._refresh_token is not None
            form["refresh_token"] = self._refresh_token
        if self._creds.scope:
            form["scope"] = self._creds.scope
        return form

    async def _fetch(self) -> None:
        url = self._creds.token_url.split("?", 1)[0]
        self.refreshes += 1
        status, body = await self._endpoint.post_form(
            self._creds.token_url, self._form(), {"Accept": "application/json"})
        if status == 429 or status >= 500:
            raise TransientError(f"OAuth2 token request to {url} failed: HTTP {status}: {safe_excerpt(body)}")
        if status >= 400:
            if _oauth_error(body) == "invalid_grant":
                raise PermanentError(self._creds.invalid_grant_message or (
                    f"OAuth2 token request to {url} was refused (invalid_grant): the refresh token was "
                    f"revoked or has expired; issue a new one"))
            raise PermanentError(f"OAuth2 token request to {url} was refused: HTTP {status}: "
                                 f"{safe_excerpt(body)}")
        self._accept(body, url)

    def _accept(self, body: bytes, url: str) -> None:
        try:
            data = json.loads(body)
            access = data["access_token"]
            expires_in = float(data.get("expires_in", 3600))
        except (ValueError, KeyError, TypeError):
            raise TransientError(f"OAuth2 token response from {url} is not a token: "
                                 f"{safe_excerpt(body)}") from None
        if not isinstance(access, str) or not access:
            raise TransientError(f"OAuth2 token response from {url} has no usable access_token")
        register_secret(access)
        rotated = data.get("refresh_token")
        if isinstance(rotated, str) and rotated:
            register_secret(rotated)
            self._refresh_token = rotated
        self._access = access
        self._expires_at = self._clock() + max(0.0, expires_in)


def _oauth_error(body: bytes) -> str | None:
    """The ``error`` code of an OAuth2 error response (RFC 6749 §5.2), or None. HubSpot's token endpoint
    answers a refused refresh token with ``{"status": "BAD_REFRESH_TOKEN", …}`` instead: that is
    ``invalid_grant`` too."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    if not isinstance(data, dict):
        return None
    if data.get("status") == "BAD_REFRESH_TOKEN":
        return "invalid_grant"
    code = data.get("error")
    return code if isinstance(code, str) else None
