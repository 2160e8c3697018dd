"""What the page shows beside the log's counts: the live catalog, budgets and versions.

The catalog is followed as every worker follows it (server.state.catalog_store.CatalogReloader:
the same pointers, compiled off the event loop); budgets are the report `nbo budgets` prints
(server.state.budget_counters.build_report: the counters, their caps and the pace allowed now);
the model, challenger and bandit versions are the keys the workers' reloaders poll.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

import redis
import redis.asyncio as aioredis

from server.catalog.compiled import Catalog
from server.metrics import Metrics
from server.models.registry import Split, text
from server.state.budget_counters import BudgetReport, build_report
from server.state.catalog_store import CatalogReloader, LiveSnapshot
from server.state.keys import Keys


@dataclass(frozen=True, slots=True)
class LiveVersions:
    catalog: str | None  # None: no catalog published (or none compiles)
    schema: int | None
    model: str | None
    challenger: Split | None
    bandit: str | None  # "arms-<n>" as decisions log it, "off" when the catalog turns it off


class LiveState:
    """The live catalog (kept current in the background) and reads of budgets and versions."""

    def __init__(
        self, client: aioredis.Redis, sync_client: redis.Redis, keys: Keys, *, poll_seconds: float = 2.0
    ) -> None:
        self.client = client
        self.sync_client = sync_client
        self.keys = keys
        self.live: LiveSnapshot | None = None
        self._campaign_of: dict[str, str] = {}
        # the dashboard's own registry: nothing scrapes it, the reloader only needs somewhere to count
        self.reloader = CatalogReloader(client, keys, Metrics(), self._swap, poll_seconds=poll_seconds)

    def _swap(self, live: LiveSnapshot) -> None:
        self._campaign_of = {o.id: o.campaign_id for o in live.catalog.offers}
        self.live = live

    @property
    def catalog(self) -> Catalog | None:
        return None if self.live is None else self.live.catalog

    def campaign_of(self, offer_id: str) -> str | None:
        """The campaign of an offer in the live catalog (None: the catalog has no such offer)."""
        return self._campaign_of.get(offer_id)

    async def versions(self) -> LiveVersions:
        # a pipeline of GETs, not one MGET: the bandit's key is in another Cluster slot
        pipe = self.client.pipeline(transaction=False)
        for key in (self.keys.model_current, self.keys.model_challenger, self.keys.bandit_version):
            pipe.get(key)
        model, challenger, bandit = await pipe.execute()
        catalog = self.catalog
        arms = f"arms-{int(bandit or 0)}"
        return LiveVersions(
            catalog=None if catalog is None else catalog.version,
            schema=None if self.live is None else self.live.schema.version,
            model=None if model is None else text(model),
            challenger=None if challenger is None else Split.from_json(challenger),
            bandit=None if catalog is None else arms if catalog.bandit.enabled else "off",
        )

    async def budgets(self, at: float) -> BudgetReport | None:
        """`nbo budgets`' report at `at` (the counters as they are now); None without a catalog."""
        catalog = self.catalog
        if catalog is None:
            return None
        return await asyncio.to_thread(build_report, self.sync_client, self.keys, catalog, at)


def versions_json(v: LiveVersions) -> dict[str, Any]:
    challenger = None if v.challenger is None else {"version": v.challenger.version, "share": v.challenger.share}
    return {"catalog": v.catalog, "schema": v.schema, "model": v.model, "challenger": challenger, "bandit": v.bandit}
