"""HubSpot API access for the ``hubspot`` handler: auth, the two rate-limit namespaces, error mapping.

Owns what every HubSpot request shares: the bearer token (a private app's ``access_token``, or an OAuth2
app's refresh credentials through the runtime's OAuth2 support — :func:`credentials`), the
``hubspot:api:`` and ``hubspot:search:`` namespaces with their default limits (:data:`RATE_LIMITS`), and
HubSpot's error bodies:

- a 429 whose body says ``"policyName": "DAILY"`` ends the run at once (never retried): the daily quota
  only comes back at midnight in the account's time zone (``account_timezone``, UTC by default), which
  the message names; committed pages and checkpoints stay, so the next run continues;
- any other 429 (``TEN_SECONDLY_ROLLING``, or a search's per-second limit — searches carry no rate-limit
  headers) pauses the namespace for every process, then retries: ``pause_seconds`` (default 10 s, the
  whole rolling window) or ``search_pause_seconds`` (default 1 s) unless the response names a delay;
- 401 fails the run permanently: the token is invalid, expired or revoked. No message carries a secret;
- 5xx, timeouts and resets are retried by the HTTP client (searches are marked idempotent: they read).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo

from batcher import HttpClient, OAuth2Credentials, PermanentError, RateLimit, RunContext

API_NAMESPACE = "hubspot:api:"
SEARCH_NAMESPACE = "hubspot:search:"
#: The handler's default rate limits (``HubSpotHandler.default_rate_limits``); a TOML entry overrides one.
RATE_LIMITS = {
    # HubSpot private apps, Free/Starter: 100 requests per 10 s per app per account ("burst" limit;
    # Professional/Enterprise 190/10 s). https://developers.hubspot.com/docs/api/usage-details
    API_NAMESPACE: RateLimit(interval_ms=10_000, max_in_interval=100),
    # HubSpot CRM search endpoints: 5 requests per second per account (same page, "Search" section).
    SEARCH_NAMESPACE: RateLimit(interval_ms=1_000, max_in_interval=5),
}
REFRESH_REFUSED = ("the HubSpot refresh token was revoked or has expired (invalid_grant / BAD_REFRESH_TOKEN): "
                   "re-authorize the app and configure its new refresh token as refresh_token_env")


class DailyLimitError(PermanentError):
    """HubSpot's daily quota is used up: the run stops (resumable), it is not retried."""


def credentials(params: Any) -> tuple[dict[str, str], OAuth2Credentials | None]:
    """The auth of every request: a private app's token as a header, or OAuth2 refresh credentials whose
    access tokens the runtime fetches, shares across runs and refreshes (proactively, and once on a 401)."""
    if params.access_token is not None:
        return {"Authorization": f"Bearer {params.access_token.get_secret_value()}"}, None
    return {}, OAuth2Credentials(
        token_url=params.token_url, client_id=params.client_id,
        client_secret=params.client_secret.get_secret_value(),
        refresh_token=params.refresh_token.get_secret_value(), invalid_grant_message=REFRESH_REFUSED)


def daily_reset(now: datetime, zone: str) -> datetime:
    """The next midnight in ``zone`` after ``now``: when HubSpot's daily quota comes back."""
    local = now.astimezone(ZoneInfo(zone))
    return datetime.combine(local.date() + timedelta(days=1), time(0), tzinfo=local.tzinfo)


def _policy(response: Any) -> str | None:
    try:
        body = json.loads(response.body)
    except (ValueError, TypeError, AttributeError):
        return None
    policy = body.get("policyName") if isinstance(body, dict) else None
    return policy if isinstance(policy, str) else None


@dataclass
class HubSpotApi:
    """GET/POST against one account through the two namespaces, with HubSpot's errors mapped."""

    api: HttpClient
    search: HttpClient
    base_url: str
    headers: Mapping[str, str]
    timezone: str = "UTC"
    pause_s: float = 10.0
    search_pause_s: float = 1.0
    clock: Any = None  # () -> aware datetime; tests may fix it

    def _on_429(self, pause_s: float) -> Any:
        def hook(response: Any) -> float:
            if _policy(response) == "DAILY":
                now = self.clock() if self.clock else datetime.now().astimezone()
                reset = daily_reset(now, self.timezone)
                raise DailyLimitError(
                    f"HubSpot's daily API limit is used up (429, policy DAILY); it resets at "
                    f"{reset.isoformat()} (midnight, account_timezone={self.timezone}). Records and "
                    f"checkpoints committed so far are kept: the next run after the reset continues.")
            return pause_s
        return hook

    async def get(self, path: str, params: Mapping[str, str] | None = None) -> Any:
        try:
            return await self.api.get_json(self.base_url + path, params=params, headers=self.headers,
                                           on_throttled=self._on_429(self.pause_s))
        except PermanentError as exc:
            raise _mapped(exc) from None

    async def post(self, path: str, body: Any, *, search: bool = False) -> Any:
        client, pause = (self.search, self.search_pause_s) if search else (self.api, self.pause_s)
        try:
            return await client.request_json("POST", self.base_url + path, idempotent=True, json=body,
                                             headers=self.headers, on_throttled=self._on_429(pause))
        except PermanentError as exc:
            raise _mapped(exc) from None


def _mapped(exc: PermanentError) -> PermanentError:
    if isinstance(exc, DailyLimitError):
        return exc
    status = getattr(exc, "status", None)
    if status == 401:
        return PermanentError("HubSpot rejected the access token (401): it is invalid, expired or revoked; "
                              "create a new private-app token and configure it as access_token_env")
    if status == 403:
        return PermanentError(f"HubSpot refused the request (403): the token lacks a scope: {exc}")
    return exc


def open_api(ctx: RunContext, params: Any) -> HubSpotApi:
    """The run's API access (namespaces get ``portal_id`` as a credential discriminator when given)."""
    headers, oauth = credentials(params)
    suffix = params.portal_id or ""
    return HubSpotApi(api=ctx.http(API_NAMESPACE + suffix, oauth=oauth),
                      search=ctx.http(SEARCH_NAMESPACE + suffix, oauth=oauth),
                      base_url=params.base_url, headers=headers, timezone=params.account_timezone,
                      pause_s=params.pause_seconds, search_pause_s=params.search_pause_seconds)
