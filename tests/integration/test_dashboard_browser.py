"""`nbo dashboard` in a real headless browser, against decisions a real server made.

A real redis-server and gRPC server (the integration harness) make a fixed set of decisions and
outcomes; `nbo dashboard` runs as a subprocess on a free port; Debian's chromium (installed here
when missing, so a fresh machine runs this too) loads the page after its script ran, and every
number the page shows must equal `/api/live` at the page's second and the truth: the test's own
counts from the gRPC answers, the budget counters and pace, and the published versions.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import aiohttp
import pytest
import redis

from server.catalog.budgets import PaceOver, Pacing, Period
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.state.keys import Keys
from server.state.log_reader import LogReader
from tests.integration.conftest import CUSTOMERS
from tests.integration.dom import DomNumbers, js_fixed, js_int, js_pct, read_dom
from tests.integration.harness import Clock, Harness, load_customers, publish_text

CATALOG = """\
name: live page
timezone: UTC
consent: {web: consent_web}
contact_policy:
  window_hours: 24
  max_per_window: {web: 50}
  max_presented_without_response: 50
bandit: {seed: 7}
channels:
  web: {capacity_per_hour: 100}
campaigns:
  - id: spring
    name: Spring upgrade
    type: ad_hoc
    priority: 90
    channels: [web]
    budget: {total_awards: 20, daily_awards: 6, total_spend: 50, pacing: {over: day, slack: 0.5}}
  - id: loyalty
    name: Loyalty thanks
    type: lifecycle
    channels: [web]
offers:
  - id: o_spring
    campaign: spring
    title: Spring upgrade
    value: 100
    cost: 2
    prior_propensity: 0.3
  - id: o_loyal
    campaign: loyalty
    title: Thank you voucher
    value: 10
    prior_propensity: 0.2
"""
# nine decisions for customers who consent to the web (each considers both campaigns), one for a
# customer who does not (no offer)
CUSTOMER_ORDER = ["vip", "vip2", "regular"] * 3 + ["no_web"]
PACING = Pacing(PaceOver.DAY, 0.5)
BROWSER_SECONDS = 120


class WallClock(Clock):
    """The real time: the dashboard counts seconds of the wall clock, and budgets the real day."""

    def __call__(self) -> float:
        return time.time()


# -- chromium ------------------------------------------------------------------------------------
def _apt(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    return subprocess.run(["apt-get", *args], env=env, capture_output=True, text=True, timeout=900, check=False)


def ensure_chromium() -> tuple[str, float | None]:
    """Debian's chromium, installed with apt-get when missing: (its path, seconds the install took)."""
    found = shutil.which("chromium")
    if found is not None:
        return found, None
    started = time.monotonic()
    install = ("install", "-y", "--no-install-recommends", "chromium")
    done = _apt(*install)
    if done.returncode != 0:  # a fresh machine's package lists may be missing or stale
        _apt("update")
        done = _apt(*install)
    found = shutil.which("chromium")
    if done.returncode != 0 or found is None:
        pytest.fail(
            "the browser test needs Debian's chromium and could not install it with "
            f"`apt-get install -y --no-install-recommends chromium` (exit {done.returncode}; needs root and "
            f"the Debian archive): {done.stderr.strip()[-2000:]}",
            pytrace=False,
        )
    return found, time.monotonic() - started


@pytest.fixture(scope="session")
def chromium() -> str:
    path, took = ensure_chromium()
    if took is not None:
        sys.stderr.write(f"\ninstalled chromium in {took:.0f} s\n")
    return path


async def run_chromium(chromium: str, profile: Path, *args: str) -> str:
    """Run headless chromium once (its own profile); its standard output."""
    proc = await asyncio.create_subprocess_exec(
        chromium,
        "--headless=new",
        "--no-sandbox",  # root in a container has no user namespace for the sandbox
        "--disable-gpu",
        "--disable-dev-shm-usage",
        "--no-first-run",
        f"--user-data-dir={profile}",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), timeout=BROWSER_SECONDS)
    assert proc.returncode == 0, f"chromium exited {proc.returncode}: {err.decode(errors='replace')[-2000:]}"
    return out.decode()


# -- the server, its traffic and the dashboard -----------------------------------------------------
@pytest.fixture
async def server(redis_url: str, tmp_path: Path) -> AsyncIterator[tuple[Harness, str]]:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    version = publish_text(redis_url, CATALOG)
    harness = Harness(redis_url, WallClock())
    await harness.start()
    try:
        yield harness, version
    finally:
        await harness.stop()


async def make_traffic(nbo: Harness) -> dict[str, Any]:
    """Ten decisions and a few outcomes; what the test knows from the answers."""
    answers = [await nbo.decide(c) for c in CUSTOMER_ORDER]
    awards = [(a.decision_id, o.offer_id, o.campaign_id) for a in answers for o in a.offers]
    no_offer = Counter(pb.NoOfferReason.Name(a.no_offer_reason).lower() for a in answers if not a.offers)
    spring = [a for a in awards if a[2] == "spring"]
    loyalty = [a for a in awards if a[2] == "loyalty"]
    # whatever the time of day, pacing lets 3 to 6 spring awards through, and loyalty gets the rest
    assert 3 <= len(spring) <= 6 and len(spring) + len(loyalty) == 9, awards
    reports = [
        (spring[0], pb.PRESENTED),
        (spring[0], pb.ACCEPTED),
        (spring[0], pb.CONVERTED),  # the same acceptance again
        (spring[1], pb.DECLINED),
        (loyalty[0], pb.ACCEPTED),
        (loyalty[1], pb.PRESENTED),
    ]
    for (decision_id, offer_id, _), kind in reports:
        assert (await nbo.report(decision_id, offer_id, kind)).recorded
    return {
        "decisions": len(answers),
        "awards": Counter(c for _, _, c in awards),
        "acceptances": {"spring": 1, "loyalty": 1},
        "no_offer": dict(no_offer),
        "outcomes": len(reports),
    }


@pytest.fixture
def dashboard(redis_url: str, tmp_path: Path) -> Iterator[str]:
    """`nbo dashboard` as a subprocess on a free port (it prints the URL it serves); that URL."""
    command = [sys.executable, "-m", "server.cli", "dashboard", "--redis", redis_url, "--port", "0", "--window", "600"]
    log = tmp_path / "dashboard.log"
    with log.open("w") as errors:
        proc = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=errors, text=True)
    try:
        line = proc.stdout.readline() if proc.stdout is not None else ""
        assert line.startswith("dashboard on http://127.0.0.1:"), (line, log.read_text())
        yield line.split()[2]
    finally:
        proc.terminate()
        assert proc.wait(timeout=10) == 0, log.read_text()


async def get_live(session: aiohttp.ClientSession, url: str, **params: int) -> dict[str, Any]:
    async with session.get(url + "api/live", params=params) as response:
        assert response.status == 200, await response.text()
        data: dict[str, Any] = await response.json()
        return data


async def wait_until_counted(url: str, truth: dict[str, Any]) -> None:
    async with aiohttp.ClientSession() as session:
        for _ in range(600):  # 30 s: the machine may be busy
            data = await get_live(session, url)
            log = data["log"]
            if (
                log["caught_up"]
                and log["decisions_read"] == truth["decisions"]
                and (log["outcomes_read"] == truth["outcomes"])
            ):
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"the dashboard did not count the traffic: {data['log']}")


# -- the test ----------------------------------------------------------------------------------------
@pytest.mark.timeout(900)  # a fresh machine installs chromium first
async def test_the_page_shows_the_api_and_the_truth(
    chromium: str, server: tuple[Harness, str], dashboard: str, redis_url: str, tmp_path: Path
) -> None:
    nbo, catalog_version = server
    truth = await make_traffic(nbo)
    await wait_until_counted(dashboard, truth)

    dom = read_dom(
        await run_chromium(chromium, tmp_path / "profile", "--dump-dom", "--virtual-time-budget=8000", dashboard)
    )
    assert dom.loaded, "the page's script did not render /api/live"
    async with aiohttp.ClientSession() as session:
        api = await get_live(session, dashboard, at=dom.at)
    assert api["at"] == dom.at

    check_page_equals_api(dom, api)
    check_api_equals_truth(api, truth, catalog_version, redis_url)

    shot = tmp_path / "dashboard.png"
    await run_chromium(
        chromium,
        tmp_path / "profile-shot",
        f"--screenshot={shot}",
        "--window-size=1280,1000",
        "--hide-scrollbars",
        "--virtual-time-budget=8000",
        dashboard,
    )
    keep_screenshot(shot)


def keep_screenshot(shot: Path) -> None:
    """A PNG of the page; copied to NBO_SCREENSHOT_DIR when set (for notes and reviews)."""
    assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and shot.stat().st_size > 20_000
    if os.environ.get("NBO_SCREENSHOT_DIR"):
        keep = Path(os.environ["NBO_SCREENSHOT_DIR"])
        keep.mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, keep / "dashboard.png")


def check_page_equals_api(dom: DomNumbers, api: dict[str, Any]) -> None:
    """Every number the page shows is the API's, formatted as the page formats it."""
    expected: dict[str, tuple[Any, str]] = {
        "rates.last_10s": (api["rates"]["last_10s"], js_fixed(api["rates"]["last_10s"], 2)),
        "rates.last_60s": (api["rates"]["last_60s"], js_fixed(api["rates"]["last_60s"], 2)),
        "totals.acceptance_rate": (api["totals"]["acceptance_rate"], js_pct(api["totals"]["acceptance_rate"])),
        "budgets.day_fraction": (api["budgets"]["day_fraction"], js_pct(api["budgets"]["day_fraction"])),
    }
    for name in ("decisions", "awards", "acceptances"):
        expected[f"totals.{name}"] = (api["totals"][name], js_int(api["totals"][name]))
    for c in api["campaigns"]:
        for name in ("decisions", "awards", "acceptances"):
            expected[f"campaign.{c['id']}.{name}"] = (c[name], js_int(c[name]))
        expected[f"campaign.{c['id']}.acceptance_rate"] = (c["acceptance_rate"], js_pct(c["acceptance_rate"]))
    for s in api["budgets"]["scopes"]:
        key = f"budget.{s['kind']}.{s['id']}."
        for name in ("used_total", "total_awards", "used_today", "daily_awards", "paced_awards"):
            expected[key + name] = (s[name], js_int(s[name]))
        for name in ("spend_cents", "total_spend_cents"):
            expected[key + name] = (s[name], "–" if s[name] is None else f"{s[name] / 100:,.2f}")
        left = s["left_now"] if s["left_now"] is not None else s["left"]
        expected[key + "left_now"] = (left, js_int(left))
        expected[key + "pacing"] = (s["pacing"], s["pacing"] or "–")
    for r in api["no_offer"]:
        expected[f"no_offer.{r['reason']}.decisions"] = (r["decisions"], js_int(r["decisions"]))
        expected[f"no_offer.{r['reason']}.share"] = (r["share"], js_pct(r["share"]))
    for name in ("catalog", "model", "bandit", "schema"):
        live = api["versions"][name]
        expected[f"version.{name}"] = (live, "–" if live is None else str(live))
        if name != "schema":
            seen = api["latest_decision"][name]
            expected[f"latest.{name}"] = (seen, str(seen))
    # no challenger in this test (the truth check says so); decisions log no challenger or schema
    expected["version.challenger"] = expected["latest.challenger"] = expected["latest.schema"] = (None, "–")
    for key, (value, text) in expected.items():
        shown, shown_text = dom.number(key)
        assert (_value(shown, value), shown_text) == (value, text), key
    # nothing on the page that the API does not have
    assert set(dom.numbers) - set(expected) == {"window.seconds"}
    assert dom.numbers["window.seconds"] == (str(api["window"]["seconds"]), "10 minutes")
    assert dom.spark == api["per_second"]


def _value(shown: str, like: Any) -> Any:
    """The page's data-v (JavaScript's String(value)) read back as the type of the API's value."""
    if shown == "":
        return None
    if isinstance(like, bool | str):
        return shown
    return float(shown) if isinstance(like, float) else int(shown)


def check_api_equals_truth(api: dict[str, Any], truth: dict[str, Any], catalog_version: str, redis_url: str) -> None:
    """The API's numbers are what the server did: the test's counts, the counters, the versions."""
    totals = api["totals"]
    assert totals["decisions"] == truth["decisions"]
    assert totals["awards"] == sum(truth["awards"].values())
    assert totals["acceptances"] == 2
    assert {r["reason"]: r["decisions"] for r in api["no_offer"]} == truth["no_offer"]
    campaigns = {c["id"]: c for c in api["campaigns"]}
    assert list(campaigns) == ["spring", "loyalty"]
    for cid in campaigns:
        assert campaigns[cid]["decisions"] == 9  # every decision for a consenting customer considered both
        assert campaigns[cid]["awards"] == truth["awards"][cid]
        assert campaigns[cid]["acceptances"] == truth["acceptances"][cid]
        assert campaigns[cid]["acceptance_rate"] == round(truth["acceptances"][cid] / truth["awards"][cid], 4)
    # the budget: what was awarded, and the pace the catalog's pacing allows at that second
    spring = next(s for s in api["budgets"]["scopes"] if (s["kind"], s["id"]) == ("campaign", "spring"))
    awarded = truth["awards"]["spring"]
    period = Period.at(api["at"], ZoneInfo("UTC"))
    assert (spring["used_total"], spring["used_today"], spring["spend_cents"]) == (awarded, awarded, 200 * awarded)
    assert (spring["total_awards"], spring["daily_awards"], spring["total_spend_cents"]) == (20, 6, 5000)
    assert spring["paced_awards"] == PACING.allowed(6, period.day_fraction)
    assert spring["left_now"] == max(0, PACING.allowed(6, period.day_fraction) - awarded)
    assert api["versions"] == {
        "catalog": catalog_version,
        "schema": 1,
        "model": None,
        "challenger": None,
        "bandit": "arms-0",
    }
    assert api["latest_decision"]["catalog"] == catalog_version
    assert api["latest_decision"]["bandit"] == "arms-0"
    # decisions per second: the log's own timestamps, read here without the dashboard
    client = redis.Redis.from_url(redis_url)
    try:
        seconds = Counter(int(r.ts) for r in LogReader(client, Keys()).decisions())
    finally:
        client.close()
    at = api["at"]
    assert api["per_second"] == [seconds.get(s, 0) for s in range(at - 60, at)]
    assert api["rates"]["last_60s"] == round(sum(api["per_second"]) / 60, 3)
    assert api["rates"]["last_10s"] == round(sum(api["per_second"][-10:]) / 10, 3)
