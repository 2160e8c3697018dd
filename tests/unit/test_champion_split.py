"""The champion/challenger split: deterministic by customer, salted, of the share asked."""

from __future__ import annotations

import dataclasses

from server.catalog.compiler import parse_catalog
from server.models.champion import Challenger
from server.models.scorers import PriorScorer
from server.pipeline.context import LiveConfig
from server.pipeline.scoring import choose_model
from server.state.records import decode_decision_record, record_data
from tests.integration.test_log_reader import DECISION
from tests.unit.catalog_fixtures import BASE, SCHEMA

IDS = [f"customer-{i}" for i in range(100_000)]


class Named(PriorScorer):
    def __init__(self, version: str) -> None:
        self.version = version


def live(share: float, salt: str) -> LiveConfig:
    catalog = parse_catalog(BASE, SCHEMA)
    return LiveConfig(catalog, SCHEMA, frozenset({1}), Named("A"), challenger=Challenger(Named("B"), share, salt))


def challengers(config: LiveConfig) -> set[str]:
    out = set()
    for cid in IDS:
        scorer, role = choose_model(config, cid)
        assert (scorer.version, role) in {("A", "champion"), ("B", "challenger")}
        if role == "challenger":
            out.add(cid)
    return out


def test_the_split_is_deterministic_exact_and_salted() -> None:
    first = challengers(live(0.1, "s1"))
    # the share asked, within 3 binomial standard deviations (sqrt(100000 * 0.1 * 0.9) = 94.9),
    # and exactly this many under this salt: the same ids on every replica and every restart
    assert abs(len(first) - 10_000) < 3 * 94.9
    assert len(first) == 10_014
    assert challengers(live(0.1, "s1")) == first
    # a larger share under the same salt keeps every challenger customer (a bucket below 0.1 is below 0.2)
    assert first < challengers(live(0.2, "s1"))
    # another salt draws an independent split: the overlap is about 0.1 x 0.1 of the customers
    second = challengers(live(0.1, "s2"))
    assert abs(len(second) - 10_000) < 3 * 94.9
    assert abs(len(first & second) - 1_000) < 3 * 31.5  # sqrt(100000 * 0.01 * 0.99)
    assert len(first & second) == 965 and len(second) == 10_026


def test_without_a_challenger_every_decision_is_the_live_model_and_no_role() -> None:
    config = dataclasses.replace(live(0.5, "s"), challenger=None)
    assert {choose_model(config, cid)[1] for cid in IDS[:1000]} == {""}
    assert {choose_model(config, cid)[0].version for cid in IDS[:1000]} == {"A"}


RECORD = dataclasses.replace(DECISION, model_version="A")


def test_the_model_role_is_logged_only_while_a_split_is_on() -> None:
    plain = RECORD.to_fields()
    assert "model_role" not in record_data(plain)  # records without a split: byte layout unchanged
    assert decode_decision_record(plain).model_role == ""
    tagged = dataclasses.replace(RECORD, model_role="challenger").to_fields()
    assert record_data(tagged)["model_role"] == "challenger"
    assert decode_decision_record(tagged) == dataclasses.replace(RECORD, model_role="challenger")
