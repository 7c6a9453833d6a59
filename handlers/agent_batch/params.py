"""The agent handler's params: the nine batch types and everything a job configures."""

from __future__ import annotations

import datetime as dt
import re
from enum import StrEnum
from typing import Any

from pydantic import Field, field_validator, model_validator

from batcher import HandlerParams, Secret

FREQUENCIES = ("hourly", "daily", "weekly", "biweekly", "monthly")
_TIME = re.compile(r"([01]\d|2[0-3]):[0-5]\d")


class BatchType(StrEnum):
    """Processing method × data source, the preference dimension, and combined."""

    INDIVIDUAL_USERS = "INDIVIDUAL_USERS"
    INDIVIDUAL_CATEGORIES = "INDIVIDUAL_CATEGORIES"
    BATCH_USERS = "BATCH_USERS"
    BATCH_CATEGORIES = "BATCH_CATEGORIES"
    PREFERENCE_INDIVIDUAL_USERS = "PREFERENCE_INDIVIDUAL_USERS"
    PREFERENCE_INDIVIDUAL_CATEGORIES = "PREFERENCE_INDIVIDUAL_CATEGORIES"
    PREFERENCE_BATCH_USERS = "PREFERENCE_BATCH_USERS"
    PREFERENCE_BATCH_CATEGORIES = "PREFERENCE_BATCH_CATEGORIES"
    COMBINED = "COMBINED"

    @property
    def preference(self) -> bool:
        return self.startswith("PREFERENCE_")

    @property
    def individual(self) -> bool:
        return "INDIVIDUAL" in self

    @property
    def categories(self) -> bool:
        return self.endswith("CATEGORIES") or self is BatchType.COMBINED


class Group(HandlerParams):
    """One preference group (set on the jobs derived per group; absent: every group at once)."""

    frequency: str
    time_of_day: str
    timezone: str


def check_time(value: str) -> str:
    if not _TIME.fullmatch(value):
        raise ValueError("must be HH:MM (24-hour)")
    return value


class AgentParams(HandlerParams):
    """An agent batch job: which items, how they are sent, and (preference types) the group schedules."""

    base_url: str = Field(..., description="the processing service, e.g. https://agent.example.com")
    api_key: Secret = Field(..., description="the service's API key (Bearer)")
    batch_type: BatchType = BatchType.INDIVIDUAL_USERS
    category_type: str | None = Field(None, min_length=1, description="category types: which items")
    categories: tuple[str, ...] = Field((), description="COMBINED: the category types sent together")
    filters: dict[str, Any] = Field(default_factory=dict, description="category items whose data contains "
                                    "these (jsonb @>)")
    users: tuple[str, ...] = Field((), description="user types: these user ids (default: every active user)")
    tenant_id: str | None = Field(None, min_length=1, description="only users of this tenant")
    limit: int | None = Field(None, ge=1, description="at most this many users or items")
    chunk_size: int = Field(100, ge=1, le=10_000, description="items validated and committed together")
    concurrency: int = Field(8, ge=1, le=256, description="requests in flight (individual types)")
    max_attempts: int = Field(3, ge=1, le=20, description="attempts per item (5xx, timeouts)")
    retry_base_seconds: float = Field(0.5, ge=0, le=60, description="per-item backoff: base × 2^(attempt-1)")
    template: str = Field("default", min_length=1, description="the request template (users may override)")
    feature_type: str = Field("default", min_length=1, description="the preference feature")
    distribution: tuple[str, ...] = Field((), description="users who receive the results (referenced in "
                                          "the context; batch types: a result row each)")
    default_frequency: str = Field("daily", description="preference for users without a row")
    default_time_of_day: str = Field("09:00", description="HH:MM, for users without a row")
    default_timezone: str = Field("UTC", description="IANA zone, for users without a row")
    weekly_day: int = Field(1, ge=0, le=6, description="weekly/biweekly groups: day of week (0 = Sunday)")
    monthly_day: int = Field(1, ge=1, le=28, description="monthly groups: day of month")
    biweekly_anchor: dt.date = Field(dt.date(2026, 1, 5), description="biweekly groups run in the week of "
                                     "this date and every other week from it")
    cache_ttl_seconds: float = Field(60.0, ge=0, description="in-process cache of category pages and "
                                     "preference groups (0: off); dropped when the tables change")
    context_list_limit: int = Field(1000, ge=0, description="at most this many users per list in the context")
    group: Group | None = Field(None, description="set by the scheduler on per-group jobs")

    @field_validator("default_time_of_day")
    @classmethod
    def _time(cls, value: str) -> str:
        return check_time(value)

    @field_validator("default_frequency")
    @classmethod
    def _frequency(cls, value: str) -> str:
        if value not in FREQUENCIES:
            raise ValueError(f"must be one of {', '.join(FREQUENCIES)}")
        return value

    @model_validator(mode="after")
    def _sources(self) -> AgentParams:
        t = self.batch_type
        if t is BatchType.COMBINED and not self.categories:
            raise ValueError("COMBINED needs categories (the category types sent together)")
        if t.categories and t is not BatchType.COMBINED and self.category_type is None:
            raise ValueError(f"{t.value} needs category_type")
        return self

    def category_types(self) -> list[str]:
        if self.batch_type is BatchType.COMBINED:
            return list(self.categories)
        return [self.category_type] if self.category_type else []

    @property
    def context_tenant(self) -> str:
        """The batch_contexts key: the tenant filter, or '' when the run spans tenants."""
        return self.tenant_id or ""
