"""`nbo retrain` against a real Redis holding a synthetic world's history as the server's records
(training/retrain_world.py): a challenger better than a weak live model is published, one trained
on corrupted labels is refused and the champion stays, too little data is refused with the
counts, and every run is listed in order."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import redis

from server.cli.main import main as nbo
from server.models.registry import publish
from server.state.catalog_store import current_schema
from server.state.keys import Keys
from server.state.records import decode_decision_record
from training.dataset import write_dataset
from training.retrain import RetrainOptions, retrain
from training.retrain_store import list_records
from training.retrain_world import log_history, setup_world
from training.train import TrainResult, train
from training.world import DEFAULT_START_TS, World

KEYS = Keys()
DAY = 86_400.0
DECISIONS = 8_000
AS_OF = DEFAULT_START_TS + 31 * DAY  # the 30-day history has closed (1-day reward window)
WINDOW = ["--window-days", "30", "--reward-window-days", "1", "--as-of", "2026-01-31T12:00:00"]


@dataclass(frozen=True)
class Logged:
    columns: dict[str, Any]
    weak: str  # the live model: 3 boosting rounds on the first 1,500 decisions
    weak_dir: Path


def _options(**kw: Any) -> RetrainOptions:
    return RetrainOptions(window_days=30, reward_window_days=1, as_of=AS_OF, seed=1, bootstrap=200, **kw)


def _live(client: redis.Redis) -> str | None:
    raw = client.get(KEYS.model_current)
    return None if raw is None else raw.decode()


@pytest.fixture
def logged(redis_client: redis.Redis, tmp_path: Path) -> Iterator[Logged]:
    world = World.create(n_customers=2000, n_offers=10, seed=3)
    version = setup_world(redis_client, KEYS, world, tmp_path)
    columns = world.simulate_log(DECISIONS, seed=11, days=30)
    assert log_history(redis_client, KEYS, columns, version) == DECISIONS
    write_dataset(tmp_path / "early.parquet", {k: np.asarray(v)[:1500] for k, v in columns.items()})
    (tmp_path / "catalog.yaml").write_text(world.catalog_yaml())
    schema = current_schema(redis_client, KEYS)
    train(
        tmp_path / "early.parquet",
        tmp_path / "weak",
        catalog=tmp_path / "catalog.yaml",
        num_boost_round=3,
        progress=False,
        live_schema=schema,
    )
    yield Logged(columns, publish(redis_client, KEYS, tmp_path / "weak", schema), tmp_path / "weak")


def corrupted_trainer(data: Path, out: Path, **kw: Any) -> TrainResult:
    """The real `nbo train` on the training part with its outcomes shuffled (seeded)."""
    table = pq.read_table(str(data))
    y = np.asarray(table.column("outcome").to_numpy())
    shuffled = np.random.default_rng(5).permutation(y)
    table = table.set_column(table.column_names.index("outcome"), "outcome", pa.array(shuffled))
    pq.write_table(table, str(data))
    return train(data, out, **kw)


def test_a_better_challenger_is_published_then_a_corrupted_one_is_refused(
    logged: Logged, redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    first = retrain(redis_client, KEYS, _options())
    assert first.verdict == "published", first.reason
    record = first.record
    assert record["champion"] == logged.weak
    assert _live(redis_client) == record["challenger"] != logged.weak
    # the counts: every decision closed; the newest fifth held out, by decision time
    y = np.asarray(logged.columns["outcome"])
    assert record["counts"] == {
        "decisions": DECISIONS,
        "rows": DECISIONS,
        "accepted": int(y.sum()),
        "open": 0,
        "train": 6_400,
        "holdout": 1_600,
        "train_accepted": int(y[:6_400].sum()),
        "holdout_accepted": int(y[6_400:].sum()),
    }
    f = record["figures"]
    assert f["scored_rows"] == 1_600 and f["dr_rows"] == 1_600 and f["bootstrap"] == 200
    for group, name in (("difference", "auc"), ("difference", "log_loss"), ("dr_difference", "value")):
        d = f[group][name]
        assert d["low"] < d["estimate"] < d["high"], (group, name)
    assert f["difference"]["auc"]["low"] > 0.02 and f["difference"]["log_loss"]["high"] < 0
    assert f["dr_difference"]["value"]["low"] > 0
    assert all(c["passed"] for c in record["gate"]["checks"])

    second = retrain(redis_client, KEYS, _options(), trainer=corrupted_trainer)
    assert second.verdict == "kept"
    assert _live(redis_client) == record["challenger"]  # the champion stays
    assert second.record["champion"] == record["challenger"]
    failed = [c["criterion"] for c in second.record["gate"]["checks"] if not c["passed"]]
    assert "auc" in failed and "log_loss" in failed
    assert second.reason.startswith("the champion stays: auc failed: AUC difference -")
    assert second.record["figures"]["difference"]["auc"]["high"] < -0.05

    # someone publishes another model while a run trains: the run does not replace what it never compared
    def racing_trainer(data: Path, out: Path, **kw: Any) -> TrainResult:
        result = train(data, out, **kw)
        publish(redis_client, KEYS, logged.weak_dir, current_schema(redis_client, KEYS))
        return result

    third = retrain(redis_client, KEYS, _options(), trainer=racing_trainer)
    assert third.verdict == "kept" and _live(redis_client) == logged.weak
    assert third.reason == f"the live model changed during the run (was {record['challenger']}); run again"

    # every run is stored, oldest first, and listed
    assert [r["verdict"] for r in list_records(redis_client, KEYS)] == ["published", "kept", "kept"]
    assert nbo(["retrain", "list", "--redis-url", redis_url]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 4 and lines[0].split()[:3] == ["#", "run", "at"]
    assert lines[1].split()[0] == "1" and lines[1].endswith("published")
    assert lines[2].split()[0] == "2" and lines[2].endswith("kept")
    assert lines[3].split()[0] == "3" and lines[3].endswith("kept")
    assert logged.weak in lines[1] and record["challenger"] in lines[2]
    assert nbo(["retrain", "list", "--json", "--redis-url", redis_url]) == 0
    assert json.loads(capsys.readouterr().out) == list_records(redis_client, KEYS)


def test_a_dry_run_compares_without_publishing_and_repeats_exactly(
    logged: Logged, redis_client: redis.Redis, redis_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["retrain", "--redis-url", redis_url, *WINDOW, "--seed", "1", "--bootstrap", "100", "--dry-run", "--json"]
    runs = []
    for _ in range(2):
        assert nbo(argv) == 0
        runs.append(json.loads(capsys.readouterr().out))
    assert _live(redis_client) == logged.weak
    assert runs[0]["verdict"] == "passed (dry run)" and runs[0]["reason"].endswith("dry run, nothing published")
    # --as-of and the seeds make the run repeatable: the same challenger (its version is the
    # training time and the artifact's checksum) and the same figures
    assert runs[0]["challenger"].split("-")[-1] == runs[1]["challenger"].split("-")[-1]
    assert runs[0]["figures"] == runs[1]["figures"]
    assert (
        runs[0]["window"]
        == runs[1]["window"]
        == {
            "since": DEFAULT_START_TS - 0.5 * DAY,
            "until": DEFAULT_START_TS + 29.5 * DAY,
            "reward_window_days": 1.0,
        }
    )
    # decisions of the last half day are still open; the newest fifth of the others is held out
    rows = int((np.asarray(logged.columns["timestamp"]) < DEFAULT_START_TS + 29.5 * DAY).sum())
    held = math.ceil(rows * 0.2)
    # the people's view of the same run
    assert nbo(["retrain", "--redis-url", redis_url, *WINDOW, "--seed", "1", "--bootstrap", "100", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert f"trained on {rows - held:,} older rows, held out the newest {held:,}" in out
    assert f"champion {logged.weak}; challenger 2" in out and runs[0]["challenger"][-9:] in out
    assert "verdict: passed (dry run): every criterion holds" in out


def test_too_little_data_is_refused_with_the_counts(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    world = World.create(n_customers=500, n_offers=10, seed=3)
    version = setup_world(redis_client, KEYS, world, tmp_path)
    columns = world.simulate_log(1_000, seed=11, days=30)
    log_history(redis_client, KEYS, columns, version)
    assert nbo(["retrain", "--redis-url", redis_url, *WINDOW]) == 1
    out = capsys.readouterr().out
    rows = int((np.asarray(columns["timestamp"]) < DEFAULT_START_TS + 29.5 * DAY).sum())
    held = math.ceil(rows * 0.2)
    accepted = int(np.asarray(columns["outcome"])[rows - held : rows].sum())
    assert (
        f"verdict: refused: too little data: {held} held-out rows ({accepted} accepted) of {rows:,} exported; "
        "the comparison needs at least 500, with accepted and not-accepted rows"
    ) in out
    # --holdout-days: the last days of the window are held out, whatever their share
    ts = np.asarray(columns["timestamp"])
    until = DEFAULT_START_TS + 30 * DAY
    refused = retrain(redis_client, KEYS, _options(holdout_days=6, min_holdout_rows=10**6))
    assert refused.verdict == "refused"
    assert refused.record["counts"]["holdout"] == int((ts >= until - 6 * DAY).sum())
    assert refused.record["counts"]["train"] == int((ts < until - 6 * DAY).sum())
    assert refused.reason.startswith(f"too little data: {refused.record['counts']['holdout']} held-out rows")
    # a window whose rewards are all still open
    open_window = ["--as-of", "2026-01-20T00:00:00", "--reward-window-days", "30"]
    assert nbo(["retrain", "--redis-url", redis_url, *open_window]) == 1
    assert "verdict: refused: no closed decision to learn from in the window (" in capsys.readouterr().out
    records = list_records(redis_client, KEYS)
    assert [r["verdict"] for r in records] == ["refused", "refused", "refused"]
    assert all(r["champion"] == "prior" and r["challenger"] is None for r in records)
    assert redis_client.get(KEYS.model_current) is None


def test_the_drift_history_of_the_documented_example_is_logged_with_a_live_champion(
    redis_client: redis.Redis, redis_url: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from training.retrain_world import main as retrain_world

    argv = ["--redis-url", redis_url, "--out", str(tmp_path), "--customers", "1000", "--offers", "10"]
    assert retrain_world([*argv, "--decisions", "1500", "--before-decisions", "1200"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("logged 2,700 decisions; drift at day 30 changed ")
    assert len(out.splitlines()[0].split("changed ")[1].split(", ")) == 8
    # every decision once (the two periods' ids differ), the champion trained before the drift is live
    assert redis_client.xlen(KEYS.decision_stream) == 2_700
    ids = {decode_decision_record(f).decision_id for _, f in redis_client.xrange(KEYS.decision_stream)}
    assert len(ids) == 2_700
    assert _live(redis_client) is not None


def test_every_repeats_and_outlives_an_unreachable_redis() -> None:
    import socket
    import subprocess
    import sys

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    argv = [
        sys.executable,
        "-m",
        "server.cli",
        "retrain",
        "--every",
        "0.2s",
        "--redis-url",
        f"redis://127.0.0.1:{port}",
    ]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None
        lines = [proc.stdout.readline() for _ in range(2)]
    finally:
        proc.kill()
        _, err = proc.communicate()
    assert lines == ["next run in 0.2 s\n"] * 2
    assert err.count("error: cannot reach Redis:") >= 2
