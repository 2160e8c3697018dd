"""Budget burn and pace as Prometheus gauges, read from Redis when the one endpoint is scraped.

Only the supervisor of `nbo serve` reads them, once per scrape (not once per decision, not once
per worker), through the same report `nbo budgets` prints (server.state.budget_counters), so
the dashboard and the command agree. The live catalog is compiled once per catalog version.
"""

from __future__ import annotations

import logging
import threading
import time
from datetime import datetime, timedelta
from typing import cast
from zoneinfo import ZoneInfo

import redis
from prometheus_client.metrics_core import Metric

from server.catalog.compiled import Catalog
from server.config import Settings
from server.metrics import BudgetSample, budget_families
from server.state.budget_counters import ScopeRow, build_report
from server.state.catalog_store import NoCatalog, live_catalog
from server.state.keys import Keys
from server.state.redis_client import sync_client

log = logging.getLogger(__name__)
SCRAPE_TIMEOUT_SECONDS = 2.0  # a scrape must answer even when Redis does not
WARN_EVERY_SECONDS = 60.0


def day_end(now: float, tz: ZoneInfo) -> float:
    """The next midnight in the catalog's time zone (daily caps start again then)."""
    local = datetime.fromtimestamp(now, tz)
    return (local + timedelta(days=1)).replace(hour=0, minute=0, second=0, microsecond=0).timestamp()


def scope_samples(row: ScopeRow, campaign: str, window_end: float | None, today_end: float) -> list[BudgetSample]:
    """One sample per cap of `row`: total awards, daily awards, total spend (currency units)."""
    over = row.pacing.split()[0] if row.pacing else None
    out = []

    def add(unit: str, period: str, used: int | None, cap: int | None, paced: int | None, scale: float) -> None:
        if cap is None:
            return
        end = today_end if period == "day" else window_end
        pace = None if paced is None else paced / scale
        out.append(BudgetSample(row.kind, row.id, campaign, unit, period, (used or 0) / scale, cap / scale, pace, end))

    add("awards", "total", row.used_total, row.total_awards, row.paced_awards if over == "window" else None, 1.0)
    add("awards", "day", row.used_today, row.daily_awards, row.paced_awards if over == "day" else None, 1.0)
    add("spend", "total", row.spend_cents, row.total_spend_cents, row.paced_spend_cents, 100.0)
    return out


def budget_samples(client: redis.Redis, keys: Keys, catalog: Catalog, now: float) -> list[BudgetSample]:
    report = build_report(client, keys, catalog, now)
    ends = {c.id: c.end for c in catalog.campaigns}
    campaign_of = {o.id: o.campaign_id for o in catalog.offers}
    today_end = day_end(now, catalog.timezone)
    samples = []
    for row in report.scopes:
        campaign = row.id if row.kind == "campaign" else campaign_of[row.id]
        samples.extend(scope_samples(row, campaign, ends.get(campaign), today_end))
    return samples


class BudgetGauges:
    """Scrape-time budget gauges; on any Redis or catalog trouble the scrape goes on without them."""

    def __init__(self, redis_url: str, settings: Settings) -> None:
        self._url = redis_url
        self._settings = settings
        self._keys = Keys(settings.key_prefix)
        self._client: redis.Redis | None = None
        self._catalog: tuple[bytes, Catalog] | None = None
        self._lock = threading.Lock()  # scrapes may overlap; one Redis client, one cache
        self._warned = 0.0

    def families(self) -> list[Metric]:
        with self._lock:
            try:
                return budget_families(self._read())
            except (redis.RedisError, OSError, NoCatalog) as err:
                if time.monotonic() - self._warned > WARN_EVERY_SECONDS:
                    self._warned = time.monotonic()
                    log.warning("budget gauges left out of this scrape: %s", err)
                return []

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None

    def _read(self) -> list[BudgetSample]:
        if self._client is None:
            self._client = sync_client(
                self._url,
                self._settings,
                socket_timeout=SCRAPE_TIMEOUT_SECONDS,
                socket_connect_timeout=SCRAPE_TIMEOUT_SECONDS,
            )
        seq = self._client.get(self._keys.catalog_current)
        if seq is None:
            return []
        if self._catalog is None or self._catalog[0] != seq:
            self._catalog = (cast(bytes, seq), live_catalog(self._client, self._keys))
        return budget_samples(self._client, self._keys, self._catalog[1], time.time())
