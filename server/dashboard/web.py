"""The dashboard's HTTP face: `GET /` (the page) and `GET /api/live` (its numbers).

A snapshot is taken once per second and kept for a few seconds, so any number of open pages
costs Redis at most one read of budgets and versions per second. `/api/live?at=<epoch second>`
answers for a second already past: the snapshot taken then while it is kept (so a test or a
script can check what a page showed at its `at`), else the log's counts of the window ending
then, with budgets and versions as they are now.
"""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Callable
from importlib import resources

from aiohttp import web
from redis.exceptions import RedisError

from server.dashboard.live import LiveState
from server.dashboard.snapshot import snapshot_json
from server.dashboard.tail import LogTail

PAGE = resources.files("server.dashboard").joinpath("page.html").read_text()
# the page loads nothing from anywhere: its script and styles are inline, its data from /api/live
PAGE_POLICY = (
    "default-src 'none'; connect-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:"
)
KEPT_SNAPSHOTS = 8


class BadQuery(ValueError):
    """A query parameter of /api/live that cannot be used; the message names it."""


class Dashboard:
    def __init__(self, tail: LogTail, live: LiveState, *, clock: Callable[[], float] = time.time) -> None:
        self.tail = tail
        self.live = live
        self.clock = clock
        self._snapshots: dict[int, bytes] = {}
        self._lock = asyncio.Lock()

    async def snapshot(self, at: int) -> bytes:
        """The JSON of the second `at`, read once however many pages ask for it."""
        async with self._lock:
            cached = self._snapshots.get(at)
            if cached is not None:
                return cached
            versions = await self.live.versions()
            budgets = await self.live.budgets(float(at))
            data = snapshot_json(self.tail.window, self.tail.stats, at, self.live.catalog, versions, budgets)
            body = json.dumps(data).encode()
            if self.tail.stats.caught_up:  # while the window is read back, each look is newer
                self._snapshots[at] = body
                for old in sorted(self._snapshots)[:-KEPT_SNAPSHOTS]:
                    del self._snapshots[old]
            return body

    def _at(self, request: web.Request) -> int:
        now = math.floor(self.clock())
        raw = request.query.get("at")
        if raw is None:
            return now
        try:
            at = int(raw)
        except ValueError:
            raise BadQuery(f"at: {raw!r} is not a whole number of epoch seconds") from None
        oldest = now - self.tail.window.seconds
        if not oldest < at <= now:
            raise BadQuery(f"at: {at} is not within the window held, ({oldest}, {now}]")
        return at

    async def live_json(self, request: web.Request) -> web.Response:
        try:
            body = await self.snapshot(self._at(request))
        except BadQuery as err:
            return _error(web.HTTPBadRequest.status_code, "INVALID_ARGUMENT", str(err))
        except (RedisError, OSError) as err:
            # the page keeps its last numbers and says why they stopped
            return _error(web.HTTPServiceUnavailable.status_code, "UNAVAILABLE", f"cannot read Redis: {err}")
        return web.Response(body=body, content_type="application/json", headers={"Cache-Control": "no-store"})

    async def page(self, request: web.Request) -> web.Response:
        return web.Response(
            text=PAGE,
            content_type="text/html",
            headers={"Cache-Control": "no-store", "Content-Security-Policy": PAGE_POLICY},
        )

    def app(self) -> web.Application:
        app = web.Application()
        app.router.add_get("/", self.page)
        app.router.add_get("/api/live", self.live_json)
        return app


def _error(status: int, code: str, message: str) -> web.Response:
    body = {"error": {"code": code, "message": message}}
    return web.Response(status=status, text=json.dumps(body), content_type="application/json")
