"""`nbo budgets` and `nbo budgets reconcile` against awards made by a real server on real Redis."""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Iterator

import pytest
import redis

from server.catalog.budgets import Limits, PaceOver, Pacing, Usage
from server.cli import main as cli
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.state.budget_counters import scope_row
from server.state.budget_migrate import warn_if_legacy
from server.state.budget_reconcile import Drift, plan_reconcile
from server.state.catalog_store import live_catalog
from server.state.keys import Keys
from tests.integration.harness import Harness, publish_text
from tests.records import decision_record
from tests.unit.catalog_fixtures import BASE

KEYS = Keys()
DAY = "2027-01-15"  # the harness clock: 1_800_000_000 = 2027-01-15T08:00:00Z
HOUR = "2027-01-15T08"
AT = "2027-01-15T08:00:00Z"

BUDGETED = (
    BASE.replace(
        "    cost: 1\n",
        "    cost: 1\n    budget: {total_awards: 5, daily_awards: 3, total_spend: 100, per_customer: 1}\n",
    )
    .replace("    events: [cart_abandoned]\n", "    events: [cart_abandoned]\n    budget: {per_customer: 2}\n")
    .replace(
        "  - id: life\n    type: lifecycle\n    channels: [web, call_centre]\n",
        "  - id: life\n    type: lifecycle\n    channels: [web, call_centre]\n"
        "    budget: {daily_awards: 4, pacing: {over: day, slack: 0.1}}\n",
    )
    + "channels:\n  call_centre: {capacity_per_hour: 10}\n"
)


@pytest.fixture
def client(redis_url: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[redis.Redis]:
    """A client of the test Redis, which `nbo` commands run in-process also use."""
    monkeypatch.setenv("REDIS_URL", redis_url)
    client = redis.Redis.from_url(redis_url)
    yield client
    client.close()


def run(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = cli.main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


async def use_catalog(nbo: Harness, redis_url: str, text: str) -> str:
    version = publish_text(redis_url, text)
    for _ in range(50):
        live = nbo.worker.service.live
        if live is not None and live.catalog.version == version:
            return version
        await asyncio.sleep(0.1)
    raise AssertionError(f"catalog {version} not live after 5 s")


async def wait_for_log(client: redis.Redis, records: int) -> None:
    for _ in range(200):
        if client.xlen(KEYS.decision_stream) == records:
            return
        await asyncio.sleep(0.01)
    raise AssertionError(f"{client.xlen(KEYS.decision_stream)} records logged, expected {records}")


async def make_awards(nbo: Harness, client: redis.Redis) -> None:
    """Three o_adhoc awards on the call centre (its daily cap), two paced o_life awards on the web."""
    calls = [await nbo.decide(c, pb.CALL_CENTRE) for c in ("vip", "vip2", "no_web", "no_consent_flag")]
    assert [[o.offer_id for o in r.offers] for r in calls] == [["o_adhoc"], ["o_adhoc"], ["o_adhoc"], []]
    assert calls[-1].no_offer_reason == pb.BUDGET_EXHAUSTED
    # vip has had o_adhoc (per customer 1); life is paced to 2 awards so far today
    web = [await nbo.decide(c, pb.WEB) for c in ("vip", "regular", "vip2")]
    assert [[o.offer_id for o in r.offers] for r in web] == [["o_life"], ["o_life"], []]
    await wait_for_log(client, 7)


def snapshot(client: redis.Redis, keys: list[str]) -> dict[str, dict[bytes, bytes]]:
    return {key: client.hgetall(key) for key in keys}


async def test_budgets_shows_caps_use_and_what_is_left(
    nbo: Harness, redis_url: str, client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    version = await use_catalog(nbo, redis_url, BUDGETED)
    await make_awards(nbo, client)

    code, out, err = run(capsys, "budgets", "--at", AT)
    assert (code, err) == (0, "")
    assert out == (
        f"budgets at 2027-01-15T08:00:00+00:00, catalog {version} (time zone UTC): "
        f"day {DAY} (33% elapsed), hour {HOUR}\n"
        "\n"
        "kind      id       total  daily   spend  per customer  pacing    used today  used total  spend used"
        "  paced now  left  spend left  left now\n"
        "offer     o_adhoc      5      3  100.00             1  -                  3           3        3.00"
        "          -     0       97.00         -\n"
        "campaign  trig         -      -       -             2  -                  -           -           -"
        "          -     -           -         -\n"
        "campaign  life         -      4       -             -  day +10%           2           2        0.00"
        "          2     2           -         0\n"
        "caps: total/daily in awards, spend in currency units; left: awards that fit every limit; -: none\n"
        "\n"
        "channel      capacity/hour  hour           used  left\n"
        "call_centre             10  2027-01-15T08     3     7\n"
    )

    # the next day: today's counts start again; totals, spend and the hour's capacity do not
    code, out, _ = run(capsys, "budgets", "--at", "2027-01-16T08:00:00", "--json")
    assert code == 0
    report = json.loads(out)
    assert (report["day"], report["hour"], report["catalog_version"]) == ("2027-01-16", "2027-01-16T08", version)
    rows = {r["id"]: r for r in report["scopes"]}
    assert rows["o_adhoc"] == {
        "kind": "offer",
        "id": "o_adhoc",
        "total_awards": 5,
        "daily_awards": 3,
        "total_spend_cents": 10000,
        "per_customer": 1,
        "pacing": None,
        "used_today": 0,
        "used_total": 3,
        "spend_cents": 300,
        "paced_awards": None,
        "paced_spend_cents": None,
        "left": 2,
        "left_spend_cents": 9700,
        "left_now": None,
    }
    assert (rows["life"]["used_today"], rows["life"]["paced_awards"], rows["life"]["left_now"]) == (0, 2, 2)
    assert report["channels"] == [
        {"channel": "call_centre", "capacity_per_hour": 10, "hour": "2027-01-16T08", "used": 0, "left": 10}
    ]


async def test_reconcile_reports_and_restores_lost_writes(
    nbo: Harness, redis_url: str, client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    await use_catalog(nbo, redis_url, BUDGETED)
    await make_awards(nbo, client)
    total, day, vip = KEYS.budget_total("adhoc"), KEYS.budget_day("adhoc", DAY), KEYS.contacts("vip")
    hour, life = KEYS.budget_hour("call_centre", HOUR), KEYS.budget_total("life")
    before = snapshot(client, [total, day, hour, vip, life])
    assert before[total] == {b"o:o_adhoc:n": b"3", b"o:o_adhoc:spend": b"300"}
    assert before[life] == {b"c:life:n": b"2"}
    assert before[vip] == {b"a:o:o_adhoc": b"1", b"a:c:adhoc": b"1"}

    code, out, _ = run(capsys, "budgets", "reconcile", "--dry-run")
    assert code == 0
    assert out.splitlines()[-1] == "no drift: every counter matches the decision log"

    # lost increments on the award, a lost per-customer count, and a release that never landed
    client.hincrby(total, "o:o_adhoc:n", -1)
    client.hincrby(day, "o:o_adhoc:n", -1)
    client.hdel(vip, "a:o:o_adhoc")
    client.hincrby(hour, "ch:call_centre:n", 2)
    lost = snapshot(client, [total, day, hour, vip, life])

    code, out, err = run(capsys, "budgets", "reconcile", "--dry-run")
    assert (code, err) == (1, "")
    assert out.splitlines() == [
        "decision log: 7 decisions from 2027-01-15T08:00:00+00:00 to 2027-01-15T08:00:00+00:00; "
        "5 awards counted, 0 degraded decisions skipped",
        "hash                                     field             stored  from log  difference",
        "nbo:{b:adhoc}:total                      o:o_adhoc:n            2         3          +1",
        "nbo:{b:adhoc}:day:2027-01-15             o:o_adhoc:n            2         3          +1",
        "nbo:{ch:call_centre}:hour:2027-01-15T08  ch:call_centre:n       5         3          -2",
        "nbo:{c:vip}:contacts                     a:o:o_adhoc            0         1          +1",
        "4 drifts in 4 hashes (3 budget counters, 1 per-customer count); dry run: nothing written",
    ]
    assert snapshot(client, [total, day, hour, vip, life]) == lost
    plan = plan_reconcile(
        client, KEYS, live_catalog(client, KEYS), maxlen=1_000_000, history_ttl=86_400, now=1_800_000_000.0
    )
    assert plan.all_drifts == [
        Drift(total, "o:o_adhoc:n", 2, 3),
        Drift(day, "o:o_adhoc:n", 2, 3),
        Drift(hour, "ch:call_centre:n", 5, 3),
        Drift(vip, "a:o:o_adhoc", 0, 1),
    ]
    assert plan.gaps == []

    code, out, _ = run(capsys, "budgets", "reconcile")
    assert code == 0
    assert out.splitlines()[-1] == "4 drifts in 4 hashes (3 budget counters, 1 per-customer count): fixed"
    assert snapshot(client, [total, day, hour, vip, life]) == before
    assert 0 < client.ttl(day) <= 40 * 86_400 and 0 < client.ttl(hour) <= 3 * 86_400

    code, out, _ = run(capsys, "budgets", "reconcile")
    assert (code, out.splitlines()[-1]) == (0, "no drift: every counter matches the decision log")


async def test_reconcile_counts_a_decision_logged_twice_once(
    nbo: Harness, redis_url: str, client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    await use_catalog(nbo, redis_url, BUDGETED)
    await make_awards(nbo, client)
    # what the log writer leaves when it retries a batch that was partly written
    for _, fields in client.xrange(KEYS.decision_stream):
        client.xadd(KEYS.decision_stream, fields)
    code, out, _ = run(capsys, "budgets", "reconcile", "--dry-run")
    assert code == 0
    assert out.splitlines()[:2] == [
        "decision log: 7 decisions from 2027-01-15T08:00:00+00:00 to 2027-01-15T08:00:00+00:00; "
        "5 awards counted, 0 degraded decisions skipped",
        "note: 7 repeated log entries of decisions already counted, skipped",
    ]
    assert out.splitlines()[-1] == "no drift: every counter matches the decision log"


async def test_reconcile_refuses_a_log_that_starts_after_a_budgeted_campaign(
    nbo: Harness, redis_url: str, client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    started = BUDGETED.replace("    type: lifecycle\n", "    type: lifecycle\n    start: 2027-01-01\n")
    await use_catalog(nbo, redis_url, started)
    await make_awards(nbo, client)
    total, day = KEYS.budget_total("adhoc"), KEYS.budget_day("adhoc", DAY)
    client.hincrby(total, "o:o_adhoc:n", -1)
    client.hincrby(day, "o:o_adhoc:n", -1)
    lost = snapshot(client, [total, day])

    code, out, err = run(capsys, "budgets", "reconcile")
    assert code == 3
    assert err.splitlines() == [
        "warning: the decision log starts at 2027-01-15T08:00:00+00:00, after budgeted campaign life started "
        "(2027-01-01T00:00:00+00:00)",
        "refused: awards before the log starts cannot be rebuilt from it; nothing was written. "
        "Pass --force to set the counters to what the log holds anyway.",
    ]
    assert snapshot(client, [total, day]) == lost

    # forced: totals take the log's values; the log's first day is only partly in it, so it stays
    code, out, _ = run(capsys, "budgets", "reconcile", "--force")
    assert code == 0
    assert f"note: {day} is not (fully) covered by the log; left as it is" in out.splitlines()
    assert out.splitlines()[-1] == "1 drift in 1 hash (1 budget counter, 0 per-customer counts): fixed"
    assert client.hget(total, "o:o_adhoc:n") == b"3"
    assert client.hget(day, "o:o_adhoc:n") == b"2"


async def test_reconcile_refuses_a_trimmed_log(
    nbo: Harness,
    redis_url: str,
    client: redis.Redis,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    version = await use_catalog(nbo, redis_url, BUDGETED)
    await make_awards(nbo, client)
    before = snapshot(client, [KEYS.budget_total("adhoc"), KEYS.budget_total("life")])
    # a busy log at its cap: the writer's MAXLEN trimmed the awards above out of it
    monkeypatch.setenv("NBO_DECISION_STREAM_MAXLEN", "1000")
    record = decision_record(
        decision_id="d",
        ts=1_800_000_100.0,
        customer_id="nobody",
        no_offer_reason="unknown_customer",
        model_version="prior",
        catalog_version=version,
    )
    pipe = client.pipeline(transaction=False)
    for _ in range(1000):
        pipe.xadd(KEYS.decision_stream, record.to_fields(), maxlen=1000, approximate=False)
    pipe.execute()

    code, _, err = run(capsys, "budgets", "reconcile")
    assert code == 3
    assert err.splitlines()[0] == (
        "warning: the decision log holds 1000 decisions, its cap (decision_stream_maxlen 1000): older ones were trimmed"
    )
    assert snapshot(client, [KEYS.budget_total("adhoc"), KEYS.budget_total("life")]) == before


def test_window_pacing_holds_back_what_the_window_has_not_reached() -> None:
    limits = Limits(total_awards=100, total_spend_cents=1000, pacing=Pacing(PaceOver.WINDOW, 0.05))
    usage = Usage(total=10, spend_cents=500, today=4, spend_today_cents=200)
    row = scope_row("offer", "o1", limits, usage, cost_cents=100, day=0.9, window=0.25)
    # a quarter of the window: 25 + 5 awards and 2.50 + 0.50 of spend allowed so far
    assert (row.paced_awards, row.paced_spend_cents, row.pacing) == (30, 300, "window +5%")
    # spend allows 5 more awards in all, none yet: 5.00 spent is ahead of the 3.00 paced
    assert (row.left, row.left_spend_cents, row.left_now) == (5, 500, 0)


async def test_migrate_moves_one_slot_counters_to_their_campaigns_and_decisions_see_them(
    nbo: Harness, redis_url: str, client: redis.Redis, capsys: pytest.CaptureFixture[str]
) -> None:
    await use_catalog(nbo, redis_url, BUDGETED)
    # what a server before per-campaign slots left: o_adhoc's daily cap (3) used up today
    old_total, old_day, old_hour = "nbo:{b}:total", f"nbo:{{b}}:day:{DAY}", f"nbo:{{b}}:hour:{HOUR}"
    client.hset(old_total, mapping={"o:o_adhoc:n": 3, "o:o_adhoc:spend": 300, "c:life:n": 1, "o:gone:n": 7})
    client.hset(old_day, mapping={"o:o_adhoc:n": 3, "c:life:n": 1})
    client.hset(old_hour, "ch:call_centre:n", 3)
    client.expire(old_day, 1000)
    code, _, err = run(capsys, "budgets")
    assert code == 0 and "run `nbo budgets migrate`" in err

    code, out, _ = run(capsys, "budgets", "migrate", "--dry-run")
    assert (code, out.splitlines()[-1]) == (1, "would move 6 fields into 5 hashes")
    assert client.exists(KEYS.budget_total("adhoc")) == 0

    code, out, err = run(capsys, "budgets", "migrate")
    assert code == 1
    assert out.splitlines()[-1] == "moved 6 fields into 5 hashes"
    assert err.strip() == "left (no such offer or campaign in the live catalog): nbo:{b}:total o:gone:n"
    assert client.hgetall(KEYS.budget_total("adhoc")) == {b"o:o_adhoc:n": b"3", b"o:o_adhoc:spend": b"300"}
    assert client.hgetall(KEYS.budget_total("life")) == {b"c:life:n": b"1"}
    assert client.hgetall(KEYS.budget_day("adhoc", DAY)) == {b"o:o_adhoc:n": b"3"}
    assert client.hgetall(KEYS.budget_hour("call_centre", HOUR)) == {b"ch:call_centre:n": b"3"}
    assert 0 < client.ttl(KEYS.budget_day("adhoc", DAY)) <= 1000
    assert client.hgetall(old_total) == {b"o:gone:n": b"7"} and client.exists(old_day, old_hour) == 0

    # the migrated daily count holds: o_adhoc is exhausted for today
    r = await nbo.decide("vip", pb.CALL_CENTRE)
    assert (list(r.offers), r.no_offer_reason) == ([], pb.BUDGET_EXHAUSTED)


def test_serve_warns_at_start_up_when_one_slot_counters_are_left(
    client: redis.Redis, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="server.state.budget_migrate"):
        warn_if_legacy(client, KEYS)
        assert caplog.records == []
        client.hset("nbo:{b}:total", "o:o_adhoc:n", 1)
        warn_if_legacy(client, KEYS)
    assert [r.getMessage() for r in caplog.records] == [
        "budget counters of the one-slot layout (nbo:{b}:*) are not read by this version: budgets count from zero "
        "until `nbo budgets migrate` moves them"
    ]
