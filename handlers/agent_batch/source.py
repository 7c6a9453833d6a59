"""What a run processes: users or category items, read in chunks and validated against ``system_users``.

Every chunk of candidates costs one validation query (``valid_users``): a user that is missing or
inactive, listed under another tenant than the reference names, or — with ``tenant_id`` — of another
tenant, is invalid; a category item whose ``user_ref`` is invalid is filtered out. Items without a
``user_ref`` belong to nobody and stay valid. Candidates come in a stable order (keyset pages on
``user_id`` / ``item_id``), so a resumed run meets the same items.

- user types: ``users`` as given (sorted), else every active user (of ``tenant_id``);
- category types: the items of ``category_type`` whose data contains ``filters``; COMBINED: each of
  ``categories`` in turn;
- preference types: the users of the job's group (their own preference row, or the defaults for active
  users without one), each with their template override; category variants then take the items of the
  chunk's valid users.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from batcher import json_dumps
from handlers.agent_batch.cache import CACHE
from handlers.agent_batch.params import AgentParams, BatchType
from handlers.agent_batch.sql import Q


@dataclass(frozen=True)
class Unit:
    """One user or item to process: its result key, owner and request input."""

    key: str
    user_id: str
    tenant_id: str
    template: str
    input: dict[str, Any]


@dataclass
class Chunk:
    """A validated chunk: the units to process and the validation facts."""

    units: list[Unit] = field(default_factory=list)
    valid_users: list[tuple[str, str]] = field(default_factory=list)
    invalid_users: list[str] = field(default_factory=list)
    filtered_items: int = 0
    candidates: int = 0


@dataclass(frozen=True)
class Member:
    user_id: str
    tenant_id: str | None = None  # the tenant the reference names (None: any)
    template: str | None = None


class Source:
    """Reads and validates the candidates of one run."""

    def __init__(self, reader: Any, params: AgentParams, versions: Mapping[str, int]) -> None:
        self.reader = reader
        self.p = params
        self.versions = versions
        self.limit = params.limit

    async def validate(self, refs: Sequence[Member]) -> tuple[dict[str, str], list[str]]:
        """One query: (valid user → tenant, invalid user ids in order)."""
        ids = sorted({m.user_id for m in refs})
        found = {r["user_id"]: r["tenant_id"] for r in await self.reader.fetch(Q["valid_users"], ids)} if ids else {}
        valid = {m.user_id: found[m.user_id] for m in refs
                 if m.user_id in found and m.tenant_id in (None, found[m.user_id])}
        return valid, [u for u in ids if u not in valid]

    async def total(self) -> int:
        """Candidates before validation (the progress total until validation refines it)."""
        p, t = self.p, self.p.batch_type
        if t.preference and not t.categories:
            n = await self.reader.fetchval(Q["member_count"], *self._member_args())
        elif t.categories and not t.preference:
            n = 0
            for category in p.category_types():
                n += await self.reader.fetchval(Q["item_count"], category, p.filters)
        elif p.users:
            n = len(set(p.users))
        elif t.preference:
            return 0  # items of the group's users: counted as the chunks come
        else:
            n = await self.reader.fetchval(Q["user_count"], p.tenant_id)
        return min(int(n), self.limit) if self.limit else int(n)

    async def chunks(self) -> AsyncIterator[Chunk]:
        """Validated chunks in a stable order, at most ``limit`` candidates in all."""
        t = self.p.batch_type
        if t.categories and not t.preference:
            for category in self.p.category_types():
                async for items in self._item_pages(category):
                    yield await self._item_chunk(items)
            return
        async for members in self._member_pages():
            chunk = await self._user_chunk(members)
            if t.categories:
                chunk = await self._owned_items(chunk, members)
            yield chunk

    # -- users ------------------------------------------------------------------------------------
    async def _member_pages(self) -> AsyncIterator[list[Member]]:
        p, left = self.p, self.limit
        if p.users and not p.batch_type.preference:
            ordered = sorted(set(p.users))[:left] if left else sorted(set(p.users))
            for lo in range(0, len(ordered), p.chunk_size):
                yield [Member(u, p.tenant_id) for u in ordered[lo:lo + p.chunk_size]]
            return
        after = ""
        while left is None or left > 0:
            size = min(p.chunk_size, left) if left is not None else p.chunk_size
            page = await self._page(after, size)
            if not page:
                return
            yield page
            after = page[-1].user_id
            left = None if left is None else left - len(page)
            if len(page) < size:
                return

    async def _page(self, after: str, size: int) -> list[Member]:
        if not self.p.batch_type.preference:
            rows = await self.reader.fetch(Q["user_page"], self.p.tenant_id, after, size)
            return [Member(r["user_id"]) for r in rows]
        args = (*self._member_args(), after, size)
        rows = await CACHE.get(("members", args), self.versions, self.p.cache_ttl_seconds, self.reader.fetch,
                               Q["members"], *args)
        return [Member(r["user_id"], r["tenant_id"], r["template_override"]) for r in rows]

    def _member_args(self) -> tuple[Any, ...]:
        p, g = self.p, self.p.group
        return (p.feature_type, p.default_frequency, _time(p.default_time_of_day), p.default_timezone,
                g.frequency if g else None, _time(g.time_of_day) if g else None, g.timezone if g else None,
                p.tenant_id)

    async def _user_chunk(self, members: list[Member]) -> Chunk:
        valid, invalid = await self.validate(members)
        chunk = Chunk(invalid_users=invalid, candidates=len(members))
        for m in members:
            if m.user_id not in valid:
                continue
            tenant = valid[m.user_id]
            chunk.valid_users.append((m.user_id, tenant))
            chunk.units.append(Unit(f"user:{m.user_id}", m.user_id, tenant, m.template or self.p.template,
                                    {"key": f"user:{m.user_id}", "user_id": m.user_id, "tenant_id": tenant}))
        return chunk

    # -- category items ---------------------------------------------------------------------------
    async def _item_pages(self, category: str) -> AsyncIterator[list[Mapping[str, Any]]]:
        p, after = self.p, ""
        filters = p.filters
        while self.limit is None or self.limit > 0:
            size = min(p.chunk_size, self.limit) if self.limit is not None else p.chunk_size
            key = ("items", category, json_dumps(filters), after, size)
            rows = await CACHE.get(key, self.versions, p.cache_ttl_seconds, self.reader.fetch, Q["item_page"],
                                   category, filters, after, size)
            if not rows:
                return
            yield [{**dict(r), "category_type": category} for r in rows]
            after = rows[-1]["item_id"]
            self.limit = None if self.limit is None else self.limit - len(rows)
            if len(rows) < size:
                return

    async def _item_chunk(self, items: list[Mapping[str, Any]]) -> Chunk:
        refs = [Member(i["user_ref"], self.p.tenant_id) for i in items if i["user_ref"] is not None]
        valid, invalid = await self.validate(refs)
        chunk = Chunk(invalid_users=invalid, candidates=len(items))
        chunk.valid_users = sorted({(u, t) for u, t in valid.items()})
        for item in items:
            owner = item["user_ref"]
            if owner is not None and owner not in valid:
                chunk.filtered_items += 1
                continue
            chunk.units.append(item_unit(item, owner or "", valid.get(owner or "", ""), self.p.template))
        return chunk

    async def _owned_items(self, chunk: Chunk, members: list[Member]) -> Chunk:
        """Preference category types: the items of the chunk's valid users, with each user's template."""
        users = {u.user_id: u for u in chunk.units}
        chunk.units = []
        if not users:
            return chunk
        category = self.p.category_type
        owners = sorted(users)
        key = ("owned", category, json_dumps(self.p.filters), tuple(owners))
        rows = await CACHE.get(key, self.versions, self.p.cache_ttl_seconds, self.reader.fetch,
                               Q["items_of_users"], category, self.p.filters, owners)
        for r in rows:
            owner = users[r["user_ref"]]
            chunk.units.append(item_unit({**dict(r), "category_type": category}, owner.user_id,
                                         owner.tenant_id, owner.template))
        return chunk


def item_unit(item: Mapping[str, Any], user_id: str, tenant_id: str, template: str) -> Unit:
    key = f"{item['category_type']}:{item['item_id']}"
    return Unit(key, user_id, tenant_id, template,
                {"key": key, "category_type": item["category_type"], "item_id": item["item_id"],
                 "data": item["data"]})


def _time(hhmm: str) -> Any:
    import datetime as dt

    return dt.time.fromisoformat(hhmm)


def is_user_type(batch_type: BatchType) -> bool:
    return not batch_type.categories
