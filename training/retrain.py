"""`nbo retrain`: export the recent log, train a challenger, compare it with the live model on the
most recent decisions, and publish it only when it is not worse.

1. The data: the decisions of the last `window_days` whose reward window has closed (those
   before `as_of - reward_window`), exported by training/export.py in the dataset schema. The
   most recent `holdout_fraction` of them (or those of the last `holdout_days`) are held out;
   whole decisions fall on one side, since the split is by decision time.
2. The challenger: training/train.py on the older part, seeded, with the live catalog and the
   live feature schema, exactly as `nbo train` would.
3. The comparison (training/retrain_compare.py): AUC, log loss, Brier and ECE of both models on
   the held-out rows with paired bootstrap intervals of the differences, and the DR value of
   the policy each model would run under the live catalog, with the paired difference.
4. The gate (`Gate`): publish through the model registry (the checks of `nbo model publish`)
   only when every criterion holds; otherwise the champion stays and the record says which
   criterion failed, with the numbers.

Every run, refused ones included, appends one JSON record to the Redis list
`Keys.retrain_comparisons` (training/retrain_store.py; `nbo retrain list`).
"""

from __future__ import annotations

import json
import math
import shutil
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import redis

from server.features.schema import FeatureSchema
from server.models.registry import ModelRejected, artifact_from_record, publish, verify_scores
from server.state.catalog_store import list_versions, stored_catalog
from server.state.keys import Keys
from training.dataset import read_dataset
from training.export import ExportError, ExportOptions, export_log
from training.ope_data import LoggedData, ScoringModel
from training.ope_data import Rules as LiveRules
from training.retrain_compare import Figures, Gate, PriorScorer, compare
from training.retrain_store import append_record
from training.train import TrainingError, TrainResult, load_catalog, train

DAY = 86_400.0
MIN_HOLDOUT_ROWS = 500
Trainer = Callable[..., TrainResult]


class Refused(Exception):
    """Too little (or unusable) data to compare; the message gives the counts."""


@dataclass(frozen=True)
class RetrainOptions:
    window_days: float = 14.0
    reward_window_days: float = 30.0
    since: float | None = None  # override the window's start (epoch seconds)
    until: float | None = None  # override its end
    as_of: float | None = None  # "now" for windows and outcomes: repeatable runs
    holdout_fraction: float = 0.2
    holdout_days: float | None = None
    min_holdout_rows: int = MIN_HOLDOUT_ROWS
    seed: int = 7
    valid_fraction: float = 0.2  # of the training part, for the challenger's early stopping
    rounds: int = 2000
    bootstrap: int = 400
    gate: Gate = field(default_factory=Gate)
    dry_run: bool = False
    work_dir: Path | None = None  # keep the export and the challenger here (default: a temp dir)


@dataclass(frozen=True)
class Outcome:
    """What a run decided, and the record stored for it."""

    verdict: str  # published, kept, passed (dry run), rejected, refused
    reason: str
    record: dict[str, Any]


def retrain(client: redis.Redis, keys: Keys, options: RetrainOptions, *, trainer: Trainer = train) -> Outcome:
    """One run: export, split, train, compare, gate, publish; the record is appended either way.

    `trainer` is training.train.train (a test may pass a wrapper that sabotages the challenger).
    """
    now = time.time() if options.as_of is None else options.as_of
    until = options.until if options.until is not None else now - options.reward_window_days * DAY
    since = options.since if options.since is not None else until - options.window_days * DAY
    record: dict[str, Any] = {
        "at": time.time(),
        "as_of": now,
        "window": {"since": since, "until": until, "reward_window_days": options.reward_window_days},
        "champion": _live_version(client, keys) or "prior",
        "challenger": None,
        "seed": options.seed,
        "dry_run": options.dry_run,
    }
    work = Path(tempfile.mkdtemp(prefix="nbo-retrain-")) if options.work_dir is None else options.work_dir
    work.mkdir(parents=True, exist_ok=True)
    try:
        outcome = _run(client, keys, options, trainer, work, since, until, now, record)
    except Refused as err:
        outcome = Outcome("refused", str(err), record)
    finally:
        if options.work_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    record.update(verdict=outcome.verdict, reason=outcome.reason)
    append_record(client, keys, record)
    return outcome


def _run(
    client: redis.Redis,
    keys: Keys,
    options: RetrainOptions,
    trainer: Trainer,
    work: Path,
    since: float,
    until: float,
    now: float,
    record: dict[str, Any],
) -> Outcome:
    schema = _schema(client, keys)
    catalog_path = work / "catalog.yaml"
    catalog_path.write_text(_live_catalog_text(client, keys))
    counts: dict[str, int] = record.setdefault("counts", {})
    train_path, holdout_path = _export_and_split(client, keys, options, work, (since, until, now), counts)
    try:
        result = trainer(
            train_path,
            work / "challenger",
            catalog=catalog_path,
            seed=options.seed,
            valid_fraction=options.valid_fraction,
            num_boost_round=options.rounds,
            progress=False,
            live_schema=schema,
        )
    except TrainingError as err:
        raise Refused(f"the challenger cannot be trained on the {counts['train']:,} older rows: {err}") from None
    challenger = ScoringModel.load(result.out, "challenger")
    record["challenger"] = challenger.version
    log = LoggedData.from_table(read_dataset(holdout_path), source=str(holdout_path), csv=False)
    rules = LiveRules.load(log, catalog_path, schema)
    champion = _champion(client, keys, None if record["champion"] == "prior" else record["champion"])
    figures = compare(
        log,
        rules,
        champion,
        challenger,
        offers=load_catalog(catalog_path),
        seed=options.seed,
        replicates=options.bootstrap,
    )
    record["figures"] = figures.to_json()
    return _decide(client, keys, options, figures, result.out, record)


def _decide(
    client: redis.Redis, keys: Keys, options: RetrainOptions, figures: Figures, directory: Path, record: dict[str, Any]
) -> Outcome:
    checks = options.gate.checks(figures)
    record["gate"] = {
        "auc_tolerance": options.gate.auc_tolerance,
        "log_loss_tolerance": options.gate.log_loss_tolerance,
        "value_tolerance": options.gate.value_tolerance,
        "checks": [{"criterion": c.criterion, "passed": c.passed, "detail": c.detail} for c in checks],
    }
    failed = [c for c in checks if not c.passed]
    if failed:
        reason = "; ".join(f"{c.criterion} failed: {c.detail}" for c in failed)
        return Outcome("kept", f"the champion stays: {reason}", record)
    passed = "every criterion holds: " + "; ".join(c.detail for c in checks)
    if options.dry_run:
        return Outcome("passed (dry run)", passed + "; dry run, nothing published", record)
    if (_live_version(client, keys) or "prior") != record["champion"]:
        # someone published meanwhile: the challenger was never compared with that model
        return Outcome("kept", f"the live model changed during the run (was {record['champion']}); run again", record)
    try:
        version = publish(client, keys, directory, _schema(client, keys))
    except ModelRejected as err:
        return Outcome("rejected", f"the challenger passed the gate but publishing refused it: {err}", record)
    return Outcome("published", f"{version} is live; {passed}", record)


# -- the data ----------------------------------------------------------------------------------
def _export_and_split(
    client: redis.Redis,
    keys: Keys,
    options: RetrainOptions,
    work: Path,
    times: tuple[float, float, float],
    counts: dict[str, int],
) -> tuple[Path, Path]:
    """The window's closed decisions, older part and held-out recent part as Parquet files;
    `counts` (stored with the record, refusals included) says how many rows went where."""
    since, until, now = times
    exported = work / "recent.parquet"
    window = ExportOptions(window_seconds=options.reward_window_days * DAY, since=since, until=until, as_of=now)
    try:
        summary = export_log(client, keys, exported, window)
    except ExportError as err:
        raise Refused(f"the log cannot be exported: {err}") from None
    counts.update(decisions=summary.decisions, rows=summary.rows, accepted=summary.accepted, open=summary.open)
    if not summary.rows:
        raise Refused(
            f"no closed decision to learn from in the window ({summary.open:,} still open, "
            f"{summary.outside_range:,} outside it)"
        )
    table = read_dataset(exported)
    ts = np.asarray(table.column("timestamp").to_numpy(zero_copy_only=False), dtype=np.float64)
    if options.holdout_days is not None:
        cut = until - options.holdout_days * DAY
    else:
        # the decision time above which the newest holdout_fraction of rows lie
        cut = float(np.sort(ts)[max(0, ts.size - math.ceil(ts.size * options.holdout_fraction))])
    held = ts >= cut
    y = np.asarray(table.column("outcome").to_numpy(zero_copy_only=False), dtype=np.float64)
    counts.update(
        train=int((~held).sum()),
        holdout=int(held.sum()),
        holdout_accepted=int(y[held].sum()),
        train_accepted=int(y[~held].sum()),
    )
    if counts["holdout"] < options.min_holdout_rows or counts["holdout_accepted"] in (0, counts["holdout"]):
        raise Refused(
            f"too little data: {counts['holdout']:,} held-out rows ({counts['holdout_accepted']:,} accepted) of "
            f"{counts['rows']:,} exported; the comparison needs at least {options.min_holdout_rows:,}, "
            "with accepted and not-accepted rows"
        )
    paths = (work / "train.parquet", work / "holdout.parquet")
    for path, mask in zip(paths, (~held, held), strict=True):
        pq.write_table(table.filter(pa.array(mask)), str(path))
    return paths[0], paths[1]


# -- the live state ----------------------------------------------------------------------------
def _schema(client: redis.Redis, keys: Keys) -> FeatureSchema:
    from server.state.catalog_store import current_schema

    schema = current_schema(client, keys)
    if schema is None:
        raise Refused("no feature schema in Redis: load customer features first (nbo features load)")
    return schema


def _live_catalog_text(client: redis.Redis, keys: Keys) -> str:
    live = [version for _, version, _, _, is_live in list_versions(client, keys) if is_live]
    if not live:
        raise Refused("no catalog published: run `nbo catalog load FILE`")
    return stored_catalog(client, keys, live[0]).text


def _live_version(client: redis.Redis, keys: Keys) -> str | None:
    raw = client.get(keys.model_current)
    return None if raw is None else raw.decode() if isinstance(raw, bytes) else str(raw)


def _champion(client: redis.Redis, keys: Keys, version: str | None) -> ScoringModel | PriorScorer:
    """The live model as the servers load it from Redis; the catalog priors when none is live."""
    raw = None if version is None else client.get(keys.model(version))
    if raw is None:
        return PriorScorer()
    artifact = artifact_from_record(json.loads(raw))
    booster = lgb.Booster(model_str=artifact.model_text)
    try:
        verify_scores(artifact, lambda rows: booster.predict(rows, num_threads=1))
    except ModelRejected as err:
        raise Refused(f"the live model {version} cannot be compared: {err}") from None
    return ScoringModel(f"live model {artifact.version}", artifact.version, artifact.spec, booster)
