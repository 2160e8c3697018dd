"""`nbo export` on real decisions: a real server (tests/integration/harness.py) decides and
records outcomes into the log streams of a real Redis; the export joins them into the dataset
that `nbo train` reads."""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import json
import math
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pytest
import redis

from server.cli import export as export_command
from server.gen.nbo.v1 import decisioning_pb2 as pb
from server.state.keys import Keys
from server.state.records import RecordError, decode_decision_record, decode_outcome_record
from tests.integration.harness import Clock, Harness
from tests.redis_cluster import redis_args, redis_url_on_both
from tests.unit.catalog_fixtures import BASE
from training.dataset import read_dataset
from training.export import ExportError, ExportOptions, export_log
from training.train import build_spec, encode, load_catalog

# every test here runs on a single Redis and on the 3-master cluster
redis_url = redis_url_on_both

KEYS = Keys()
DAY = 86_400.0
F32 = float(np.float32(0.1))  # feature vectors are float32: what the decision used


@dataclass(frozen=True)
class Logged:
    t0: float
    late: str  # vip2 on the call centre; accepted 31 days later
    accepted: str  # vip on the web; accepted (reported twice), the entry also redelivered
    declined: str  # vip2 on the web
    silent: str  # regular on the web; no response
    ghost: str  # an unknown customer: no offer
    fresh: str  # regular on the web, 31 days later: still inside its window at export time


async def _wait_for(client: redis.Redis, decisions: int, outcomes: int) -> None:
    for _ in range(300):
        if client.xlen(KEYS.decision_stream) >= decisions and client.xlen(KEYS.outcome_stream) >= outcomes:
            return
        await asyncio.sleep(0.01)
    raise AssertionError("the log writer did not write the records")


@pytest.fixture
async def logged(nbo: Harness, clock: Clock, redis_client: redis.Redis) -> AsyncIterator[Logged]:
    t0 = clock.now
    late = await nbo.decide("vip2", pb.CALL_CENTRE)
    accepted = await nbo.decide("vip", pb.WEB, context={"cart_value": 40.0})
    declined = await nbo.decide("vip2", pb.WEB, context={"cart_value": 10.0})
    silent = await nbo.decide("regular", pb.WEB)
    ghost = await nbo.decide("ghost", pb.WEB)
    assert [r.offers[0].offer_id for r in (late, accepted, declined, silent)] == ["o_adhoc"] * 3 + ["o_life"]
    assert not ghost.offers
    assert (await nbo.report(accepted.decision_id, "o_adhoc", pb.ACCEPTED)).recorded
    assert (await nbo.report(accepted.decision_id, "o_adhoc", pb.ACCEPTED)).duplicate  # a retried report
    assert (await nbo.report(declined.decision_id, "o_adhoc", pb.DECLINED)).recorded
    clock.now = t0 + 31 * DAY
    assert (await nbo.report(late.decision_id, "o_adhoc", pb.ACCEPTED)).recorded  # past the 30-day window
    fresh = await nbo.decide("regular", pb.WEB)
    await _wait_for(redis_client, decisions=6, outcomes=3)
    # at-least-once delivery: the writer may append an entry twice (a retried partial batch)
    for stream, decode, wanted in (
        (KEYS.decision_stream, decode_decision_record, accepted.decision_id),
        (KEYS.outcome_stream, decode_outcome_record, accepted.decision_id),
    ):
        fields = next(f for _, f in redis_client.xrange(stream) if decode(f).decision_id == wanted)
        redis_client.xadd(stream, fields)
    yield Logged(
        t0,
        late.decision_id,
        accepted.decision_id,
        declined.decision_id,
        silent.decision_id,
        ghost.decision_id,
        fresh.decision_id,
    )


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).isoformat()


def _run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="nbo")
    export_command.add_arguments(parser.add_subparsers(dest="command", required=True).add_parser("export"))
    opts = parser.parse_args(argv)
    return export_command.run(opts)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
async def test_export_writes_decisions_joined_with_their_outcomes(
    logged: Logged, redis_url: str, tmp_path: Path, suffix: str, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / f"log{suffix}"
    as_of = logged.t0 + 31 * DAY + 3600
    assert _run(["export", str(out), *redis_args(redis_url), "--as-of", _iso(as_of)]) == 0
    assert capsys.readouterr().out == (
        f"exported 4 rows (1 accepted) from 4 decisions to {out}; skipped 1 open (younger than the 30-day "
        "reward window), 0 control group, 0 degraded, 1 without an offer; ignored 2 duplicate entries "
        "and 1 reward after the window\n"
    )
    table = read_dataset(out)
    assert table.column_names == [
        "decision_id",
        "timestamp",
        "customer_id",
        "channel",
        "placement",
        "offer_id",
        "selection_probability",
        "outcome",
        "value",
        "unavailable",
        "tier",
        "tenure_months",
        "churn_risk",
        "consent_web",
        "consent_call",
        "ctx_cart_value",
    ]
    rows = table.to_pylist()  # missing (NaN when written) reads back as null: None
    t0 = logged.t0
    assert rows == [
        {
            "decision_id": logged.late,
            "timestamp": t0,
            "customer_id": "vip2",
            "channel": "call_centre",
            "placement": "",
            "offer_id": "o_adhoc",
            "selection_probability": 1.0,
            "outcome": 0,  # its ACCEPTED came 31 days later
            "value": 0.0,
            "unavailable": "",
            "tier": "A",
            "tenure_months": 12.0,
            "churn_risk": float(np.float32(0.7)),
            "consent_web": 1.0,
            "consent_call": 1.0,
            "ctx_cart_value": None,
        },
        {
            "decision_id": logged.accepted,
            "timestamp": t0,
            "customer_id": "vip",
            "channel": "web",
            "placement": "",
            "offer_id": "o_adhoc",
            "selection_probability": 1.0,
            "outcome": 1,
            "value": 100.0,  # reported without a value: the offer's value in the catalog
            "unavailable": "",
            "tier": "A",
            "tenure_months": 40.0,
            "churn_risk": F32,
            "consent_web": 1.0,
            "consent_call": 1.0,
            "ctx_cart_value": 40.0,
        },
        {
            "decision_id": logged.declined,
            "timestamp": t0,
            "customer_id": "vip2",
            "channel": "web",
            "placement": "",
            "offer_id": "o_adhoc",
            "selection_probability": 1.0,
            "outcome": 0,
            "value": 0.0,
            "unavailable": "",
            "tier": "A",
            "tenure_months": 12.0,
            "churn_risk": float(np.float32(0.7)),
            "consent_web": 1.0,
            "consent_call": 1.0,
            "ctx_cart_value": 10.0,
        },
        {
            "decision_id": logged.silent,
            "timestamp": t0,
            "customer_id": "regular",
            "channel": "web",
            "placement": "",
            "offer_id": "o_life",
            "selection_probability": 1.0,
            "outcome": 0,
            "value": 0.0,
            "unavailable": "",
            "tier": "B",
            "tenure_months": 5.0,
            "churn_risk": float(np.float32(0.2)),
            "consent_web": 1.0,
            "consent_call": 1.0,
            "ctx_cart_value": None,
        },
    ]
    # nbo train's path: its input spec and matrix build from the export
    catalog = tmp_path / "catalog.yaml"
    catalog.write_text(BASE)
    offers = load_catalog(catalog)
    spec = build_spec(table, offers)
    assert "unavailable" not in {c.name for c in spec.columns}  # describes the decision, not a feature
    x = encode(table, spec, offers)
    assert x.shape[0] == 4 and not np.isnan(x[:, [c.name for c in spec.columns].index("tenure_months")]).any()


async def test_the_window_the_time_range_and_open_decisions(
    logged: Logged, redis_client: redis.Redis, tmp_path: Path
) -> None:
    out = tmp_path / "log.parquet"
    closed = ExportOptions(as_of=logged.t0 + 31 * DAY + 3600)  # the first five decisions are 31 days old

    def ids(options: ExportOptions) -> list[str]:
        summary = export_log(redis_client, KEYS, out, options)
        return [str(d) for d in read_dataset(out).column("decision_id").to_pylist()] if summary.rows else []

    everything = dataclasses.replace(closed, include_open=True)
    assert ids(everything) == [logged.late, logged.accepted, logged.declined, logged.silent, logged.fresh]
    assert ids(dataclasses.replace(everything, since=logged.t0 + DAY)) == [logged.fresh]
    assert ids(dataclasses.replace(closed, until=logged.t0 + 1)) == [
        logged.late,
        logged.accepted,
        logged.declined,
        logged.silent,
    ]
    # a 32-day window takes the late acceptance in, and keeps the 31-day-old decisions open
    wide = export_log(redis_client, KEYS, out, dataclasses.replace(everything, window_seconds=32 * DAY))
    assert (wide.rows, wide.accepted, wide.late_rewards, wide.open) == (5, 2, 0, 0)
    table = read_dataset(out).to_pylist()
    assert [(r["decision_id"], r["outcome"], r["value"]) for r in table if r["outcome"]] == [
        (logged.late, 1, 100.0),
        (logged.accepted, 1, 100.0),
    ]
    # judged at the decisions' own time, everything is open and nothing is written
    none = export_log(redis_client, KEYS, tmp_path / "none.csv", ExportOptions(as_of=logged.t0 + 60))
    assert (none.rows, none.open) == (0, 5)
    assert not (tmp_path / "none.csv").exists()


async def test_a_missing_selection_probability_stops_the_export_unless_clipped(
    logged: Logged, redis_client: redis.Redis, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # a record whose logging policy left no usable probability for the offer it awarded
    _, fields = redis_client.xrange(KEYS.decision_stream, count=1)[0]
    rec = decode_decision_record(fields)
    broken = dataclasses.replace(
        rec,
        decision_id=rec.decision_id + "x",
        candidates=dataclasses.replace(rec.candidates, selection_probability=[0.0] * len(rec.candidates.offer_id)),
    )
    redis_client.xadd(KEYS.decision_stream, broken.to_fields())
    out = tmp_path / "log.csv"
    as_of = _iso(logged.t0 + 31 * DAY + 3600)
    assert _run(["export", str(out), *redis_args(redis_url), "--as-of", as_of]) == 1
    assert capsys.readouterr().err == (
        f"error: decision {broken.decision_id}: offer o_adhoc has selection probability 0, not in (0, 1]; "
        "--min-probability P exports missing and smaller probabilities as P\n"
    )
    assert not out.exists()
    with pytest.raises(ExportError, match=broken.decision_id):
        export_log(redis_client, KEYS, out, ExportOptions(as_of=logged.t0 + 31 * DAY + 3600))
    clipped = export_log(
        redis_client, KEYS, out, ExportOptions(as_of=logged.t0 + 31 * DAY + 3600, min_probability=0.05)
    )
    assert (clipped.rows, clipped.clipped) == (5, 1)
    probabilities = {r["decision_id"]: r["selection_probability"] for r in read_dataset(out).to_pylist()}
    assert probabilities[broken.decision_id] == 0.05
    assert probabilities[logged.late] == 1.0


async def test_records_from_before_newer_fields_existed_read_with_defaults(
    logged: Logged, redis_client: redis.Redis, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # the first record layout: candidates as one object per offer, no selection probability,
    # bandit version, would_offer; outcomes without channel, propensity and prior
    catalog_version = decode_decision_record(redis_client.xrange(KEYS.decision_stream, count=1)[0][1]).catalog_version
    old_decision = {
        "decision_id": "01OLD.vip",
        "ts": logged.t0 - DAY,
        "customer_id": "vip",
        "channel": "web",
        "placement": "home",
        "context": {},
        "events": [],
        "request_id": "",
        "schema_version": 1,
        "features": [0.0, 3.0, None, 1.0, 1.0],
        "candidates": [{"offer_id": "o_life", "campaign_id": "life", "propensity": 0.2, "status": "chosen"}],
        "chosen": ["o_life"],
        "no_offer_reason": "NONE",
        "model_version": "prior",
        "catalog_version": catalog_version,
        "degraded": False,
        "control_group": False,
    }
    old_outcome = {
        "decision_id": "01OLD.vip",
        "offer_id": "o_life",
        "outcome": "converted",
        "value": 7.5,
        "ts": logged.t0,
    }
    redis_client.xadd(KEYS.decision_stream, {"v": "1", "r": json.dumps(old_decision)})
    redis_client.xadd(KEYS.outcome_stream, {"v": "1", "r": json.dumps(old_outcome)})
    rec = decode_decision_record({b"v": b"1", b"r": json.dumps(old_decision).encode()})
    assert (rec.bandit_version, rec.would_offer, rec.candidates.campaign_id) == ("", [], ["life"])
    assert math.isnan(rec.candidates.selection_probability[0]) and math.isnan(rec.candidates.score[0])
    assert rec.features is not None and math.isnan(rec.features[2])
    outcome = decode_outcome_record({"v": "1", "r": json.dumps(old_outcome)})
    assert (outcome.event_id, outcome.channel, outcome.customer_id) == ("01OLD.vip:o_life:converted", "", "")
    assert math.isnan(outcome.propensity) and math.isnan(outcome.prior_sd)
    with pytest.raises(RecordError, match="without 'ts'"):
        decode_outcome_record({"r": json.dumps({k: v for k, v in old_outcome.items() if k != "ts"})})
    with pytest.raises(RecordError, match="without a record field 'r'"):
        decode_decision_record({b"v": b"1"})

    out = tmp_path / "log.csv"
    as_of = _iso(logged.t0 + 31 * DAY + 3600)
    assert _run(["export", str(out), *redis_args(redis_url), "--as-of", as_of]) == 1
    assert "error: decision 01OLD.vip: offer o_life has selection probability missing" in capsys.readouterr().err
    args = ["export", str(out), *redis_args(redis_url), "--as-of", as_of, "--min-probability", "0.2"]
    assert _run(args) == 0
    assert "1 probability raised to --min-probability" in capsys.readouterr().out
    rows = read_dataset(out).to_pylist()
    assert [r["decision_id"] for r in rows][-1] == "01OLD.vip"  # in log order
    row = rows[-1]
    assert (row["placement"], row["selection_probability"], row["outcome"], row["value"]) == ("home", 0.2, 1, 7.5)
    assert (row["tier"], row["tenure_months"], row["churn_risk"]) == ("A", 3.0, None)


async def test_offers_the_contact_policy_kept_from_the_customer_are_listed_unavailable(
    nbo: Harness, clock: Clock, redis_client: redis.Redis, tmp_path: Path
) -> None:
    first = await nbo.decide("vip2", pb.WEB)
    offer = first.offers[0].offer_id
    assert (await nbo.report(first.decision_id, offer, pb.DECLINED)).recorded
    second = await nbo.decide("vip2", pb.WEB)  # the decline cooldown keeps `offer` from them now
    assert second.offers and second.offers[0].offer_id != offer
    await _wait_for(redis_client, decisions=2, outcomes=1)
    out = tmp_path / "log.parquet"
    assert export_log(redis_client, KEYS, out, ExportOptions(include_open=True)).rows == 2
    table = read_dataset(out)
    unavailable = dict(
        zip(table.column("decision_id").to_pylist(), table.column("unavailable").to_pylist(), strict=True)
    )
    assert unavailable == {first.decision_id: "", second.decision_id: offer}
