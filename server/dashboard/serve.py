"""The `nbo dashboard` process: the catalog reloader, the log tail and the web app on one loop."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
from collections.abc import Callable
from dataclasses import dataclass

from aiohttp import web
from redis.exceptions import RedisError

from server.config import Settings
from server.dashboard.live import LiveState
from server.dashboard.tail import LogTail
from server.dashboard.web import Dashboard
from server.dashboard.window import RollingWindow
from server.state.keys import Keys
from server.state.redis_client import async_client, redacted, sync_client

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class DashboardOptions:
    host: str
    port: int  # 0: any free port
    window_seconds: int


async def serve_dashboard(
    settings: Settings,
    redis_url: str,
    options: DashboardOptions,
    *,
    announce: Callable[[str], None] = print,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve until SIGTERM/SIGINT (or `stop`); `announce` gets the page's URL once it listens."""
    keys = Keys(settings.key_prefix)
    # not the hot path's pooled client: its short socket timeout would cut the blocking XREAD
    client = async_client(redis_url, settings)
    blocking = sync_client(redis_url, settings)
    live = LiveState(client, blocking, keys, poll_seconds=settings.catalog_poll_seconds)
    tail = LogTail(client, keys, RollingWindow(options.window_seconds), live.campaign_of)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    runner = web.AppRunner(Dashboard(tail, live).app(), access_log=None)
    await runner.setup()
    try:
        # the catalog first: outcomes read back from the log need it to find their campaigns
        with contextlib.suppress(RedisError, OSError, ValueError):
            await live.reloader.check()
        live.reloader.start()
        following = asyncio.create_task(tail.run(stop), name="log-tail")
        site = web.TCPSite(runner, options.host, options.port)
        await site.start()
        port = runner.addresses[0][1]
        announce(f"dashboard on http://{_url_host(options.host)}:{port}/ (Redis {redacted(redis_url)})")
        await stop.wait()
        following.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await following
    finally:
        await live.reloader.stop()
        await runner.cleanup()
        await client.aclose()
        blocking.close()


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host
