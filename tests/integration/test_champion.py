"""Champion and challenger on a running server: the split, the log, compare, promote, list."""

from __future__ import annotations

import asyncio
import csv
import dataclasses
import math
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis

from server.cli.main import main as nbo_main
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.models.compare import Z95, compare
from server.models.registry import finalize
from server.pipeline.control_groups import bucket, in_holdout
from server.state.keys import Keys
from server.state.log_reader import LogReader, stream_entries
from server.state.records import OutcomeRecord, record_data
from tests.integration.harness import Clock, Harness, load_customers, publish_text
from tests.integration.test_log_reader import DECISION
from tests.integration.test_models import OFFERS, live_schema, publish_dir
from tests.model_fixtures import make_artifact
from tests.unit.catalog_fixtures import BASE

CUSTOMERS = {
    f"c{i:02d}": {"tier": "A", "tenure_months": 3 + i, "churn_risk": 0.1, "consent_web": 1, "consent_call": 1}
    for i in range(60)
}
CONTROL = BASE.replace("min_expected_value: 0.5", "min_expected_value: 0.5\ncontrol_group: {fraction: 0.3, salt: ctl}")
SALT = "t"


@pytest.fixture
async def served(redis_url: str, tmp_path: Path) -> AsyncIterator[Harness]:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    publish_text(redis_url, CONTROL)
    harness = Harness(redis_url, Clock(), model_cache_dir=None)
    await harness.start()
    yield harness
    await harness.stop()


def nbo(redis_url: str, capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, str]:
    code = nbo_main(["model", *args, "--redis-url", redis_url])
    out, err = capsys.readouterr()
    return code, out, err


def two_models(redis_url: str, tmp_path: Path) -> tuple[str, str]:
    """(challenger, champion): two published models, the second one live."""
    make_artifact(tmp_path / "a", live_schema(redis_url), OFFERS, seed=1)
    make_artifact(tmp_path / "b", live_schema(redis_url), OFFERS, seed=5, favourite="o_adhoc")
    challenger = publish_dir(redis_url, tmp_path / "b")
    return challenger, publish_dir(redis_url, tmp_path / "a")


async def wait_for(served: Harness, champion: str, challenger: str | None) -> None:
    for _ in range(100):
        live = served.worker.service.live
        if live is not None and live.scorer.version == champion:
            now = None if live.challenger is None else live.challenger.scorer.version
            if now == challenger:
                return
        await asyncio.sleep(0.1)
    raise AssertionError(f"models {champion} / {challenger} not live after 10 s")


async def decision_log(redis_url: str, n: int) -> dict[str, dict[str, Any]]:
    """The decision records by id (as JSON objects), once the writer has flushed at least `n`."""
    client = redis.Redis.from_url(redis_url)
    try:
        for _ in range(100):
            entries = list(stream_entries(client, Keys().decision_stream))
            if len(entries) >= n:
                return {d["decision_id"]: d for d in (record_data(f) for _, f in entries)}
            await asyncio.sleep(0.05)
        raise AssertionError(f"fewer than {n} decisions logged")
    finally:
        client.close()


async def test_customers_split_by_salted_hash_and_every_decision_names_its_model(
    served: Harness, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    challenger, champion = two_models(redis_url, tmp_path)
    await wait_for(served, champion, None)
    code, out, _ = nbo(redis_url, capsys, "challenger", challenger, "--share", "0.5", "--salt", SALT)
    assert code == 0 and f"challenger {challenger} decides for 0.5 of customers" in out
    await wait_for(served, champion, challenger)

    answers = {cid: await served.decide(cid, max_offers=1) for cid in CUSTOMERS}
    role = {cid: "challenger" if bucket(SALT, cid) < 0.5 else "champion" for cid in CUSTOMERS}
    assert 0 < sum(r == "challenger" for r in role.values()) < len(CUSTOMERS)
    for cid, r in answers.items():
        assert r.model_version == (challenger if role[cid] == "challenger" else champion), cid
    logged = await decision_log(redis_url, len(CUSTOMERS))
    for cid, r in answers.items():
        record = logged[r.decision_id]
        assert (record["model_version"], record["model_role"]) == (r.model_version, role[cid])
    # the same customer meets the same model again
    again = await served.decide("c07", max_offers=1)
    assert again.model_version == answers["c07"].model_version

    code, out, _ = nbo(redis_url, capsys, "challenger", "--off")
    assert code == 0 and f"split ended: {challenger} no longer decides" in out
    await wait_for(served, champion, None)
    r = await served.decide("c08", max_offers=1)
    assert r.model_version == champion
    assert "model_role" not in (await decision_log(redis_url, len(CUSTOMERS) + 2))[r.decision_id]


async def report(served: Harness, decision_id: str, offer_id: str, value: float) -> None:
    request = pb.ReportOutcomeRequest(decision_id=decision_id, offer_id=offer_id, outcome=pb.ACCEPTED, value=value)
    assert (await served.stub.ReportOutcome(request, timeout=5)).recorded


def expected(values: list[float], awarded: int, accepted: int) -> tuple[float, float, float, float]:
    """Acceptance, its standard error, mean value per decision, its standard error (as documented)."""
    p = accepted / awarded
    mean = sum(values) / len(values)
    var = sum((v - mean) ** 2 for v in values) / (len(values) - 1)
    return p, math.sqrt(p * (1 - p) / awarded), mean, math.sqrt(var / len(values))


async def test_compare_gives_exact_figures_from_real_decisions_and_outcomes(
    served: Harness, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    challenger, champion = two_models(redis_url, tmp_path)
    assert nbo(redis_url, capsys, "challenger", challenger, "--share", "0.5", "--salt", SALT)[0] == 0
    await wait_for(served, champion, challenger)
    figures: dict[str, list[Any]] = {champion: [[], 0, 0], challenger: [[], 0, 0]}
    held = 0
    for i, cid in enumerate(CUSTOMERS):
        r = await served.decide(cid, max_offers=1)
        if in_holdout("ctl", cid, 0.3):
            held += 1
            assert r.no_offer_reason == pb.CONTROL_GROUP
            continue
        value = 0.0
        for offer in r.offers:
            if i % 3 != 0:  # two in three awarded offers accepted, each worth 10 + i
                await report(served, r.decision_id, offer.offer_id, 10.0 + i)
                value += 10.0 + i
                figures[r.model_version][2] += 1
        figures[r.model_version][0].append(value)
        figures[r.model_version][1] += len(r.offers)
    assert held == sum(in_holdout("ctl", cid, 0.3) for cid in CUSTOMERS) > 0
    await decision_log(redis_url, len(CUSTOMERS))
    client = redis.Redis.from_url(redis_url)
    for _ in range(100):  # outcomes are logged through the writer too
        if client.xlen(Keys().outcome_stream) >= figures[champion][2] + figures[challenger][2]:
            break
        await asyncio.sleep(0.05)
    result = compare(LogReader(client, Keys()), min_n=2)
    client.close()
    assert dict(result.excluded) == {"control group": held}
    groups = {(g.version, g.role): g for g in result.groups}
    assert set(groups) == {(champion, "champion"), (challenger, "challenger")}
    for (version, _), g in groups.items():
        values, awarded, accepted = figures[version]
        assert (g.decisions, g.awarded, g.accepted) == (len(values), awarded, accepted)
        p, p_se, mean, mean_se = expected(values, awarded, accepted)
        acceptance, value = g.acceptance(2), g.value(2)
        assert acceptance is not None and value is not None
        assert (acceptance.value, acceptance.low, acceptance.high) == pytest.approx((p, p - Z95 * p_se, p + Z95 * p_se))
        assert (value.value, value.low, value.high) == pytest.approx((mean, mean - Z95 * mean_se, mean + Z95 * mean_se))
    [diff] = result.differences
    assert (diff.challenger.version, diff.champion.version) == (challenger, champion)
    p1, s1, m1, e1 = expected(*figures[challenger])
    p0, s0, m0, e0 = expected(*figures[champion])
    assert diff.acceptance is not None and diff.value is not None
    assert diff.acceptance.value == pytest.approx(p1 - p0)
    assert diff.acceptance.high - diff.acceptance.value == pytest.approx(Z95 * math.hypot(s1, s0))
    assert diff.value.value == pytest.approx(m1 - m0)
    assert diff.value.high - diff.value.value == pytest.approx(Z95 * math.hypot(e1, e0))

    code, out, _ = nbo(redis_url, capsys, "compare", "--min-n", "2", "--csv", str(tmp_path / "cmp.csv"))
    assert code == 0
    assert f"left out: {held} control group" in out
    assert f"challenger {challenger} - champion {champion}: acceptance {diff.acceptance.value:+.4f}" in out
    with (tmp_path / "cmp.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [(r["row"], r["role"]) for r in rows] == [
        ("model", "champion"),
        ("model", "challenger"),
        ("difference", "challenger - champion"),
    ] or [(r["row"], r["role"]) for r in rows] == [
        ("model", "challenger"),
        ("model", "champion"),
        ("difference", "challenger - champion"),
    ]
    assert float(rows[-1]["value_per_decision"]) == pytest.approx(m1 - m0)
    # the default minimum (30 decisions a group) is more than either side has here
    code, out, _ = nbo(redis_url, capsys, "compare")
    assert "value per decision not enough data" in out and "acceptance not enough data" in out
    # a window with no decision in it
    code, out, _ = nbo(redis_url, capsys, "compare", "--until", "2020-01-01")
    assert code == 0 and "no decision to compare: not enough data" in out


async def test_hot_swap_of_the_challenger_under_load_loses_no_request(
    served: Harness, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    challenger, champion = two_models(redis_url, tmp_path)
    await wait_for(served, champion, None)

    async def hammer(k: int) -> list[str]:
        versions = []
        for i in range(30):
            r = await served.decide(f"c{(k * 7 + i) % 60:02d}", max_offers=1)
            versions.append(r.model_version)
        return versions

    load = [asyncio.create_task(hammer(k)) for k in range(6)]
    for _ in range(3):
        assert nbo(redis_url, capsys, "challenger", challenger, "--share", "0.5")[0] == 0
        await asyncio.sleep(0.15)
        assert nbo(redis_url, capsys, "challenger", "--off")[0] == 0
        await asyncio.sleep(0.15)
    results = await asyncio.gather(*load)  # a failed call would raise here
    assert sum(len(v) for v in results) == 180 and {v for vs in results for v in vs} <= {champion, challenger}
    await wait_for(served, champion, None)


async def test_promote_makes_the_challenger_live_and_ends_the_split(
    served: Harness, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    challenger, champion = two_models(redis_url, tmp_path)
    assert nbo(redis_url, capsys, "challenger", challenger, "--share", "0.2")[0] == 0
    await wait_for(served, champion, challenger)
    code, out, _ = nbo(redis_url, capsys, "promote")
    assert code == 0 and f"model {challenger} is live; no challenger is on" in out
    await wait_for(served, challenger, None)
    assert {(await served.decide(cid, max_offers=1)).model_version for cid in list(CUSTOMERS)[:10]} == {challenger}
    client = redis.Redis.from_url(redis_url)
    assert client.get(Keys().model_challenger) is None
    client.close()
    # a named version may be promoted too (here: back to the first)
    assert nbo(redis_url, capsys, "promote", champion)[0] == 0
    await wait_for(served, champion, None)


@pytest.mark.parametrize(
    ("args", "code", "message"),
    [
        (["challenger", "nope", "--share", "0.1"], 1, "error: unknown model version 'nope'"),
        (["challenger", "{b}", "--share", "1.5"], 1, "error: share must be between 0 and 1 (exclusive), not 1.5"),
        (["challenger", "{b}", "--share", "0"], 1, "error: share must be between 0 and 1 (exclusive), not 0"),
        (["challenger", "{b}", "--share", "nan"], 1, "error: share must be between 0 and 1 (exclusive), not nan"),
        (["challenger", "{a}", "--share", "0.1"], 1, "is the live model; a challenger must be another version"),
        (["challenger", "{b}"], 2, "error: give a VERSION and --share (or --off)"),
        (["challenger", "{b}", "--off"], 2, "error: --off takes no version, --share or --salt"),
        (["promote"], 1, "error: no challenger to promote; name a version"),
        (["promote", "nope"], 1, "error: unknown model version 'nope'"),
        (["compare", "--min-n", "1"], 2, "error: --min-n must be at least 2"),
    ],
)
def test_bad_inputs_get_clear_errors(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str], args: list[str], code: int, message: str
) -> None:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    b, a = two_models(redis_url, tmp_path)
    got, out, err = nbo(redis_url, capsys, *(x.format(a=a, b=b) for x in args))
    assert got == code and message in err, (out, err)


def test_no_challenger_without_a_live_model(redis_url: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    make_artifact(tmp_path / "a", live_schema(redis_url), OFFERS, seed=1)
    version = publish_dir(redis_url, tmp_path / "a")
    client = redis.Redis.from_url(redis_url)
    client.delete(Keys().model_current)
    client.close()
    code, _, err = nbo(redis_url, capsys, "challenger", version, "--share", "0.1")
    assert code == 1 and "no live model: publish a champion before adding a challenger" in err


def test_list_keeps_rolled_back_models_marks_live_and_challenger_and_warns_on_auc(
    redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    load_customers(redis_url, CUSTOMERS, tmp_path)
    data = tmp_path / "data.csv"
    data.write_text("same training data\n")
    schema = live_schema(redis_url)
    versions = []
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        make_artifact(tmp_path / name, schema, OFFERS, seed=seed)
        # every model validated on the same data and split
        finalize(tmp_path / name, data_path=data, metrics={"auc": 0.7 + seed / 100, "n_valid": 500})
        versions.append(publish_dir(redis_url, tmp_path / name))
    a, b, c = versions
    assert nbo(redis_url, capsys, "rollback")[0] == 0  # c is rolled back, b live
    assert nbo(redis_url, capsys, "challenger", a, "--share", "0.25")[0] == 0
    code, out, err = nbo(redis_url, capsys, "list")
    assert code == 0
    assert out.splitlines() == [
        f"c {a}  auc=0.71  ece=None  challenger for 0.25 of customers",
        f"* {b}  auc=0.72  ece=None  live",
        f"r {c}  auc=0.73  ece=None  rolled back",
    ]
    assert "not comparable" not in err
    # a second rollback goes past the rolled-back one, to a
    assert nbo(redis_url, capsys, "rollback")[0] == 0
    code, out, _ = nbo(redis_url, capsys, "list")
    assert out.splitlines() == [
        f"* {a}  auc=0.71  ece=None  live",  # the split ended: a cannot challenge itself
        f"r {b}  auc=0.72  ece=None  rolled back",
        f"r {c}  auc=0.73  ece=None  rolled back",
    ]
    # a model trained (and validated) on other data: its AUC is not comparable with the others
    other = tmp_path / "other.csv"
    other.write_text("other training data\n")
    make_artifact(tmp_path / "d", schema, OFFERS, seed=4)
    finalize(tmp_path / "d", data_path=other, metrics={"auc": 0.9, "n_valid": 500})
    publish_dir(redis_url, tmp_path / "d")
    code, out, err = nbo(redis_url, capsys, "list")
    assert "r " + c in out and "warning: these AUCs come from different (or unrecorded) validation sets" in err
    assert "not comparable" in err


def test_compare_leaves_out_degraded_undelivered_and_control_decisions(redis_client: redis.Redis) -> None:
    base = dataclasses.replace(
        DECISION,
        customer_id="c1",
        chosen=["o1"],
        model_version="A",
        catalog_version="1-abcdef12",
        model_role="champion",
    )
    stream = Keys().decision_stream
    flags = [{}, {}, {}, {"degraded": True}, {"undelivered": True}, {"control_group": True}, {"control_group": True}]
    for i, extra in enumerate(flags):
        redis_client.xadd(stream, dataclasses.replace(base, decision_id=f"d{i}", ts=base.ts + i, **extra).to_fields())
    redis_client.xadd(
        stream, dataclasses.replace(base, decision_id="x", model_version="B", model_role="challenger").to_fields()
    )
    for i, value in ((0, 5.0), (1, 2.0), (3, 99.0)):  # d3 is degraded: its outcome is not counted
        outcome = OutcomeRecord(f"e{i}", f"d{i}", "c1", "o1", "converted", value, base.ts + 9, "web", 0.1, 0.1)
        redis_client.xadd(Keys().outcome_stream, outcome.to_fields())
    redis_client.xadd(
        Keys().outcome_stream,
        OutcomeRecord("e9", "d0", "c1", "o1", "accepted", 1.0, base.ts + 9, "web", 0.1, 0.1).to_fields(),
    )
    result = compare(LogReader(redis_client, Keys()), min_n=2)
    assert dict(result.excluded) == {"degraded": 1, "undelivered": 1, "control group": 2}
    a, b = result.groups
    assert (a.version, a.decisions, a.awarded, a.accepted, a.values) == ("A", 3, 3, 2, [5.0, 2.0, 0.0])
    assert a.value(2) is not None and a.value(2).value == pytest.approx(7 / 3)  # accepted then converted: the larger
    assert (b.version, b.decisions, b.value(2), b.acceptance(2)) == ("B", 1, None, None)  # one decision: not enough
    [diff] = result.differences
    assert (diff.acceptance, diff.value) == (None, None)
    # the window: [since, until)
    assert compare(LogReader(redis_client, Keys()), since=base.ts + 1, until=base.ts + 3).groups[0].decisions == 2
