"""Reward models q(x, a) for the doubly robust estimate of `nbo ope`.

q_outcome(x, a) is P(accept); q_value(x, a) = q_outcome(x, a) x the offer's value when accepted
(its mean realised value among accepted logged rows, else its catalog value, else the mean over
all offers).

`CrossFittedReward` (the default) is a small LightGBM classifier on the log itself, encoded like
`nbo train` encodes it (training.train.build_spec / encode). Rows are split into K folds by
decision id; each fold is predicted by the model fitted on the other folds, so a row's own
outcome never shapes the q that corrects it and DR stays honest. `ArtifactReward` is a model
artifact given with `--reward-model DIR`, scored like the server scores it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import lightgbm as lgb
import numpy as np
import pyarrow as pa

from training.ope_data import F64, I64, LoggedData, Rules, ScoringModel, Str
from training.train import OfferTable, build_spec, encode

FOLDS = 2
MIN_FIT_ROWS = 200  # below this (or with one class) a fold's model is its mean outcome
PARAMS: dict[str, Any] = {
    "objective": "binary",
    "learning_rate": 0.1,
    "num_leaves": 15,
    "min_data_in_leaf": 40,
    "lambda_l2": 1.0,
    "feature_fraction": 0.9,
    "bagging_fraction": 0.8,
    "bagging_freq": 1,
    "cat_smooth": 10.0,
    "deterministic": True,
    "force_row_wise": True,
    "num_threads": 1,  # small data: threads cost more than they save, and spin under contention
    "verbosity": -1,
}
MAX_ROUNDS = 200  # q only has to be decent: DR stays unbiased whatever it is; this bounds the cost
PREDICT_CHUNK = 100_000
PATIENCE = 30


class RewardModel(Protocol):
    @property
    def name(self) -> str: ...

    def predict(self, log: LoggedData, row: I64, offer_id: Str) -> tuple[F64, F64]:
        """(q_outcome, q_value) of each (row, offer) pair."""
        ...


@dataclass(frozen=True)
class OfferValues:
    """Value when accepted, per offer: logged mean, else catalog, else the overall mean."""

    by_offer: Mapping[str, float]
    default: float

    @classmethod
    def from_rows(cls, log: LoggedData, rows: I64, catalog: Mapping[str, float]) -> OfferValues:
        accepted = rows[log.outcome[rows] == 1]
        sums: dict[str, float] = {}
        counts: dict[str, int] = {}
        for o, v in zip(log.offer_id[accepted].tolist(), log.value[accepted].tolist(), strict=True):
            sums[o] = sums.get(o, 0.0) + v
            counts[o] = counts.get(o, 0) + 1
        logged = {o: sums[o] / counts[o] for o in sums}
        default = float(log.value[accepted].mean()) if accepted.size else 0.0
        return cls({**catalog, **logged}, default)

    def of(self, offer_id: Str) -> F64:
        return np.array([self.by_offer.get(o, self.default) for o in offer_id.tolist()], dtype=np.float64)


@dataclass(frozen=True)
class _Fold:
    booster: lgb.Booster | None
    constant: float
    values: OfferValues


@dataclass(frozen=True)
class CrossFittedReward:
    spec: Any  # server.models.inputs.InputSpec
    offers: OfferTable
    fold: I64  # per log row
    models: tuple[_Fold, ...]  # models[k] was fitted without fold k
    name: str = f"LightGBM, {FOLDS}-fold cross-fitted on the log"

    @classmethod
    def fit(
        cls,
        log: LoggedData,
        *,
        seed: int = 0,
        folds: int = FOLDS,
        offers: OfferTable | None = None,
        catalog_values: Mapping[str, float] | None = None,
    ) -> CrossFittedReward:
        offers = offers or OfferTable.empty()
        rng = np.random.default_rng(seed)
        # whole decisions go to one fold: rows of a multi-offer decision share their customer and time
        _, decision = np.unique(log.decision_id, return_inverse=True)
        fold_of_decision = rng.permutation(np.arange(decision.max() + 1) % folds)
        fold = fold_of_decision[decision].astype(np.int64)
        spec = build_spec(log.table, offers)
        x = encode(log.table, spec, offers)
        y = log.outcome
        models = []
        for k in range(folds):
            train = np.flatnonzero(fold != k)
            values = OfferValues.from_rows(log, train, catalog_values or {})
            models.append(_fit_fold(x[train], y[train], spec, seed + k, values))
        return cls(spec, offers, fold, tuple(models), name=f"LightGBM, {folds}-fold cross-fitted on the log")

    def predict(self, log: LoggedData, row: I64, offer_id: Str) -> tuple[F64, F64]:
        q = np.empty(row.size)
        qv = np.empty(row.size)
        # in chunks: each pair is a copy of its log row, so a large log would not fit at once
        for start in range(0, row.size, PREDICT_CHUNK):
            sl = slice(start, start + PREDICT_CHUNK)
            q[sl], qv[sl] = self._predict(log, row[sl], offer_id[sl])
        return q, qv

    def _predict(self, log: LoggedData, row: I64, offer_id: Str) -> tuple[F64, F64]:
        q = np.empty(row.size)
        v = np.empty(row.size)
        table = log.table.take(pa.array(row))
        table = table.set_column(
            table.column_names.index("offer_id"), "offer_id", pa.array(offer_id.tolist(), type=pa.string())
        )
        x = encode(table, self.spec, self.offers)
        for k, model in enumerate(self.models):
            sel = np.flatnonzero(self.fold[row] == k)
            if not sel.size:
                continue
            if model.booster is None:
                q[sel] = model.constant
            else:
                q[sel] = np.asarray(model.booster.predict(x[sel], num_threads=0), dtype=np.float64)  # all cores
            v[sel] = model.values.of(offer_id[sel])
        return q, q * v


def _fit_fold(x: F64, y: F64, spec: Any, seed: int, values: OfferValues) -> _Fold:
    mean = float(y.mean()) if y.size else 0.0
    if y.size < MIN_FIT_ROWS or y.min() == y.max():
        return _Fold(None, mean, values)
    rng = np.random.default_rng([seed, 1])
    inner = rng.random(y.size) < 0.2  # early stopping watches an inner split, never the predicted fold
    train = lgb.Dataset(
        x[~inner],
        label=y[~inner],
        feature_name=spec.names,
        categorical_feature=spec.categorical_indices,
        params={"verbosity": -1},
    )
    valid = lgb.Dataset(x[inner], label=y[inner], reference=train)
    booster = lgb.train(
        {**PARAMS, "seed": seed},
        train,
        num_boost_round=MAX_ROUNDS,
        valid_sets=[valid],
        callbacks=[lgb.early_stopping(PATIENCE, verbose=False)],
    )
    return _Fold(booster, mean, values)


@dataclass(frozen=True)
class ArtifactReward:
    """A propensity model artifact as q_outcome (offers unknown to it and to the catalog: the
    log's mean outcome)."""

    model: ScoringModel
    rules: Rules
    values: OfferValues
    mean_outcome: float

    @property
    def name(self) -> str:
        return f"model artifact {self.model.version}"

    @classmethod
    def create(cls, model: ScoringModel, rules: Rules, log: LoggedData) -> ArtifactReward:
        catalog = {o.id: o.value for o in rules.catalog.offers}
        values = OfferValues.from_rows(log, np.arange(len(log), dtype=np.int64), catalog)
        return cls(model, rules, values, float(log.outcome.mean()))

    def predict(self, log: LoggedData, row: I64, offer_id: Str) -> tuple[F64, F64]:
        q = self.model.score(self.rules, log, row, offer_id)
        q = np.where(np.isnan(q), self.mean_outcome, q)
        return q, q * self.values.of(offer_id)
