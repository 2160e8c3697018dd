"""Peak memory of `nbo export` against the length of the log: it must stay flat.

Fills a fresh Redis (started here on a free port) with a synthetic decision and outcome log of
N decisions written as the server writes them (typed records, one feature schema and catalog
version), then runs `nbo export` on it in a child process and reads the child's peak RSS
(resource.getrusage RUSAGE_CHILDREN), for each N asked:

    .venv/bin/python -m loadtest.bench_export 200000 1000000 --partitioned

`fill_log` is also the tests' log of known labels (tests/integration/test_export_partitioned.py):
every rewarding outcome is logged some time after its decision (up to days later, so in a later
chunk of the stream), a few entries twice, and it returns each decision's true label.
"""

from __future__ import annotations

import argparse
import json
import math
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import redis

from server.features.schema import FeatureSchema, FeatureSpec
from server.state.catalog_store import content_hash, version_label
from server.state.embedded_redis import EmbeddedRedis
from server.state.keys import Keys
from server.state.records import Candidates, DecisionRecord, OutcomeRecord

T0 = 1_767_225_600.0  # 2026-01-01 UTC
DAY = 86_400.0
OFFERS = tuple(f"o{i}" for i in range(8))
SCHEMA = FeatureSchema(
    1,
    (
        FeatureSpec("tier", "categorical", ("A", "B", "C")),
        FeatureSpec("tenure_months", "numeric"),
        FeatureSpec("churn_risk", "numeric"),
    ),
)
CATALOG = "context_keys: [cart_value]\noffers:\n" + "".join(
    f"  - {{id: {o}, value: {10 * (i + 1)}}}\n" for i, o in enumerate(OFFERS)
)
_PIPELINE = 2000
# the export in a child that reports its own peak RSS last on stderr (RUSAGE_CHILDREN would count
# the Redis servers too)
_CHILD = (
    "import resource, sys; from server.cli.main import main; rc = main(sys.argv[1:]); "
    "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, file=sys.stderr); sys.exit(rc)"
)


def store_versions(client: redis.Redis, keys: Keys) -> str:
    """The feature schema and catalog version the synthetic decisions name; returns the catalog version."""
    client.set(keys.schema(SCHEMA.version), SCHEMA.to_json())
    record = {"text": CATALOG, "hash": content_hash(CATALOG), "source": "bench", "schema_version": 1}
    client.set(keys.catalog(1), json.dumps({**record, "published_at": T0}))
    return version_label(1, CATALOG)


def _decision(rng: np.random.Generator, i: int, ts: float, catalog: str) -> DecisionRecord:
    web = bool(rng.random() < 0.7)
    shown = [OFFERS[k] for k in rng.choice(len(OFFERS), size=3, replace=False)]
    weights = rng.random(3) + 0.2
    probabilities = [float(w) for w in weights / weights.sum()]
    pick = int(rng.choice(3, p=probabilities))
    features = [float(rng.integers(0, 3)), float(rng.integers(0, 120)), float(rng.random())]
    return DecisionRecord(
        decision_id=f"D{i:09d}",
        ts=ts,
        customer_id=f"C{int(rng.integers(0, 50_000)):06d}",
        channel="web" if web else "call_centre",
        placement="home" if web else "",
        context={"cart_value": round(float(rng.uniform(0, 200)), 2)} if web else {},
        events=[],
        request_id="",
        schema_version=SCHEMA.version,
        features=features,
        candidates=Candidates(
            offer_id=shown,
            campaign_id=["c"] * 3,
            propensity=[0.1] * 3,
            expected_value=[1.0] * 3,
            score=[1.0] * 3,
            selection_probability=probabilities,
            status=["chosen" if k == pick else "ranked lower" for k in range(3)],
        ),
        chosen=[shown[pick]],
        no_offer_reason="",
        model_version="prior",
        catalog_version=catalog,
        bandit_version="",
        degraded=False,
        control_group=False,
        would_offer=[],
    )


def fill_log(
    client: redis.Redis,
    keys: Keys,
    decisions: int,
    *,
    seed: int,
    days: float,
    window_days: float,
    repeats: int = 0,
    held_back: int = 0,
) -> dict[str, int]:
    """Append `decisions` decisions over `days` days and their outcomes; return each decision's label
    (1: accepted within `window_days`). `repeats` entries of each stream are appended twice, far
    from their first copy, and every `held_back`-th decision of the first day only after all the
    others (after its outcome, too), as a replayed spill file would."""
    rng = np.random.default_rng(seed)
    catalog = store_versions(client, keys)
    times = T0 + np.sort(rng.uniform(0, days * DAY, size=decisions))
    labels: dict[str, int] = {}
    outcomes: list[OutcomeRecord] = []
    late: list[dict[str, str]] = []
    pipe = client.pipeline(transaction=False)
    for i, ts in enumerate(times):
        rec = _decision(rng, i, float(ts), catalog)
        if held_back and i % held_back == 0 and ts < T0 + DAY:
            late.append(rec.to_fields())
        else:
            pipe.xadd(keys.decision_stream, rec.to_fields())
        labels[rec.decision_id] = 0
        if rng.random() < 0.15:  # accepted, some time later: up to days, past the window for some
            lag = float(rng.exponential(window_days * DAY / 2))
            labels[rec.decision_id] = int(lag <= window_days * DAY)
            outcomes.append(_outcome(rec, "accepted", rec.ts + lag, float(rng.choice([0.0, 25.0]))))
        elif rng.random() < 0.2:
            outcomes.append(_outcome(rec, "declined", rec.ts + 60.0, 0.0))
        if len(pipe) >= _PIPELINE:
            pipe.execute()
    outcomes.sort(key=lambda o: o.ts)  # the outcome stream is in the order outcomes are reported
    for outcome in outcomes:
        pipe.xadd(keys.outcome_stream, outcome.to_fields())
        if len(pipe) >= _PIPELINE:
            pipe.execute()
    for fields in late:
        pipe.xadd(keys.decision_stream, fields)  # type: ignore[arg-type]
    pipe.execute()
    for stream in (keys.decision_stream, keys.outcome_stream)[: 2 if repeats else 0]:
        entries = client.xrange(stream, count=repeats)
        for _, fields in entries:
            client.xadd(stream, fields)
    return labels


def _outcome(rec: DecisionRecord, outcome: str, ts: float, value: float) -> OutcomeRecord:
    offer = rec.chosen[0]
    return OutcomeRecord(
        event_id=f"{rec.decision_id}:{offer}:{outcome}",
        decision_id=rec.decision_id,
        customer_id=rec.customer_id,
        offer_id=offer,
        outcome=outcome,
        value=value,
        ts=ts,
        channel=rec.channel,
        propensity=math.nan,
        prior_sd=math.nan,
    )


def _measure(url: str, out: Path, as_of: float, partitioned: bool) -> tuple[float, float, str]:
    """Seconds and peak RSS (MiB) of one `nbo export` in a child process, and its summary line."""
    argv = [sys.executable, "-c", _CHILD, "export", str(out), "--redis-url", url, "--window-days", "7"]
    argv += ["--as-of", datetime.fromtimestamp(as_of, UTC).isoformat()]
    argv += ["--partitioned"] if partitioned else []
    started = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, check=True)
    seconds = time.perf_counter() - started
    peak_mib = int(done.stderr.strip().splitlines()[-1]) / 1024  # ru_maxrss: kilobytes on Linux
    return seconds, peak_mib, done.stdout.strip()


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("sizes", type=int, nargs="+", help="decisions in the log, one export each (ascending)")
    ap.add_argument("--partitioned", action="store_true", help="export to a partitioned directory")
    ap.add_argument("--days", type=float, default=60.0)
    ap.add_argument("--seed", type=int, default=7)
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        for n in args.sizes:
            with EmbeddedRedis(Path(tmp) / f"redis{n}", persist=False) as server:
                client = redis.Redis.from_url(server.url)
                started = time.perf_counter()
                fill_log(client, Keys(), n, seed=args.seed, days=args.days, window_days=7)
                filled = time.perf_counter() - started
                out = Path(tmp) / (f"out{n}" if args.partitioned else f"out{n}.parquet")
                used = int(client.info("memory")["used_memory"]) / 2**20
                seconds, peak, line = _measure(server.url, out, T0 + (args.days + 8) * DAY, args.partitioned)
                client.close()
            print(
                f"{n:>9,} decisions (filled in {filled:.0f}s, Redis {used:.0f} MiB): export {seconds:.1f}s, "
                f"peak RSS {peak:.0f} MiB\n          {line}",
                flush=True,
            )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
