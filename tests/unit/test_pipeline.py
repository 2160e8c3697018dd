"""The whole decision pipeline on InMemoryStateStore: cases that are awkward to produce in Redis
(a race between reservation and commit, a fault in one script call) with exact results."""

from __future__ import annotations

import asyncio
import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import pytest

from server.catalog.budgets import Period
from server.catalog.compiler import parse_catalog
from server.config import Settings
from server.domain import Channel, DecideRequest, Decision, NoOfferReason, Outcome, OutcomeReport
from server.ids import DecisionIds
from server.learning.posterior import NO_ARMS
from server.metrics import Metrics
from server.models.scorers import PriorScorer
from server.pipeline.context import LiveConfig
from server.pipeline.control_groups import in_holdout
from server.pipeline.delivery import Delivery
from server.pipeline.service import DecisionService
from server.state.memory_store import InMemoryLog, InMemoryStateStore
from server.state.records import DecisionRecord, record_data
from server.state.store import StateUnavailable
from tests.unit.catalog_fixtures import BASE, SCHEMA

NOW = 1_800_000_000.0  # 2027-01-15 08:00 UTC
# tier, tenure_months, churn_risk, consent_web, consent_call (tier: level index, 0 = "A")
VIP = [0, 40, 0.2, 1, 1]
REGULAR = [1, 10, 0.2, 1, 1]
NO_WEB = [0, 40, 0.2, 0, 1]
DAY = 86400.0


IDS = DecisionIds(b"a fixed test secret")


def numbered_ids() -> Callable[[str, float], str]:
    """Decision ids fixed by call order (the bandit's draw is seeded by the decision id)."""
    count = iter(range(1_000_000))
    return lambda customer_id, now: IDS.seal(f"01JBQ0000000000000000000{next(count):02d}", customer_id)


@dataclass
class Rig:
    service: DecisionService
    store: InMemoryStateStore
    log: InMemoryLog
    metrics: Metrics
    calls: dict[str, int] = field(default_factory=dict)

    async def decide(self, customer_id: str, channel: Channel = Channel.WEB, **kw: object) -> Decision:
        return await self.service.decide(DecideRequest(customer_id=customer_id, channel=channel, **kw))  # type: ignore[arg-type]

    def record(self) -> DecisionRecord:
        (record,) = self.log.decisions
        return record

    def metric(self, name: str, **labels: str) -> float:
        value = self.metrics.registry.get_sample_value(name, labels)
        return 0.0 if value is None else value


def rig(text: str = BASE, customers: dict[str, Sequence[float]] | None = None) -> Rig:
    store = InMemoryStateStore()
    for cid, vector in (customers or {"vip": VIP, "regular": REGULAR, "no_web": NO_WEB}).items():
        store.put_features(cid, vector)
    log = InMemoryLog(store)
    metrics = Metrics()
    service = DecisionService(store, log, metrics, Settings(), clock=lambda: NOW, new_id=numbered_ids(), ids=IDS)
    catalog = parse_catalog(text, SCHEMA, version="1-test")
    service.live = LiveConfig(catalog, SCHEMA, frozenset({SCHEMA.version}), PriorScorer(), NO_ARMS)
    return Rig(service, store, log, metrics)


def budgeted(budget: str) -> str:
    """BASE with a budget on o_adhoc (the VIP's top offer on the web)."""
    return BASE.replace("    cost: 1\n", f"    cost: 1\n    budget: {budget}\n")


def counters(store: InMemoryStateStore) -> list[dict[str, str]]:
    """o_adhoc's campaign counters (total, today) and the web channel's hour."""
    return list(store.budget_counters("adhoc", "web", Period.at(NOW, parse_catalog(BASE, SCHEMA).timezone)))


# -- award ----------------------------------------------------------------------------------------
async def test_a_commit_refused_after_a_reservation_releases_it_and_tries_the_next_candidate() -> None:
    nbo = rig(budgeted("{total_awards: 10, per_customer: 1}"))
    seen_at_commit: list[list[dict[str, str]]] = []

    def concurrent_award() -> None:
        # another decision for the same customer took o_adhoc's per-customer cap since our read
        if not seen_at_commit:
            nbo.store.hashes.setdefault(nbo.store.keys.contacts("vip"), {})["a:o:o_adhoc"] = "1"
        seen_at_commit.append([dict(h) for h in counters(nbo.store)])

    nbo.store.before["commit"] = concurrent_award
    d = await nbo.decide("vip", max_offers=1)

    assert [o.offer_id for o in d.offers] == ["o_life"]
    assert d.no_offer_reason is NoOfferReason.NONE
    # the first commit saw o_adhoc reserved; the second saw it given back
    assert seen_at_commit[0][0]["o:o_adhoc:n"] == "1"
    assert "o:o_adhoc:n" not in seen_at_commit[1][0]  # a counter given back to 0 is removed
    assert all(v == "0" for h in counters(nbo.store) for v in h.values())
    assert list(nbo.store.sent[nbo.store.keys.channel_contacts("vip", "web")]) == [f"{d.decision_id[:26]}:o_life"]
    record = nbo.record()
    assert dict(zip(record.candidates.offer_id, record.candidates.status, strict=True)) == {
        "o_adhoc": "contact policy: per-customer limit of the offer reached",
        "o_life": "chosen",
    }
    assert nbo.metric("nbo_award_refusals_total", step="commit") == 1.0


async def test_a_reservation_error_degrades_to_send_nothing_and_records_no_contact() -> None:
    nbo = rig(budgeted("{total_awards: 10}"))
    commits: list[int] = []

    def down() -> None:
        raise StateUnavailable("connection refused")

    nbo.store.before["reserve"] = down
    nbo.store.before["commit"] = lambda: commits.append(1)
    d = await nbo.decide("vip", max_offers=2, request_id="r-1")

    assert (d.offers, d.no_offer_reason, d.degraded) == ((), NoOfferReason.DEGRADED, True)
    assert commits == []
    assert nbo.store.sent == {} and nbo.store.strings == {}
    assert nbo.store.hashes == {}  # no counter, contact, decision or stored answer (a retry decides anew)
    # logged, flagged, so the log shows every answer; readers skip degraded records
    [record] = nbo.log.decisions
    assert (record.degraded, record.chosen, record.request_id) == (True, [], "r-1")
    assert nbo.metric("nbo_redis_errors_total", op="reserve") == 1.0


async def test_a_budget_exhausted_walks_to_the_next_candidate_and_counts_only_awards() -> None:
    nbo = rig(budgeted("{total_awards: 1}"))
    first = await nbo.decide("vip", max_offers=1)
    second = await nbo.decide("vip", max_offers=1, explain=True)
    assert [o.offer_id for o in first.offers] == ["o_adhoc"]
    assert [o.offer_id for o in second.offers] == ["o_life"]
    assert {s.offer_id: s.reason for s in second.suppressed}["o_adhoc"] == (
        "budget exhausted: offer o_adhoc total awards: 1 of 1 used"
    )
    assert counters(nbo.store)[0] == {"o:o_adhoc:n": "1", "o:o_adhoc:spend": "100"}


# -- no offer -------------------------------------------------------------------------------------
SENT_TWICE = "sent twice on the web in the window"


@pytest.mark.parametrize(
    ("text", "customer", "channel", "history", "reason", "suppressed"),
    [
        (
            BASE,
            "regular",
            Channel.CALL_CENTRE,
            None,
            NoOfferReason.NO_ELIGIBLE_OFFER,
            {"o_adhoc": "customer not in a target group of the campaign"},
        ),
        (
            BASE,
            "vip",
            Channel.WEB,
            SENT_TWICE,
            NoOfferReason.CONTACT_POLICY,
            {
                "o_adhoc": "contact policy: channel limit of 2 offers reached",
                "o_trig": "trigger event not present",
                "o_life": "contact policy: channel limit of 2 offers reached",
            },
        ),
        (
            BASE.replace("min_expected_value: 0.5", "min_expected_value: 50"),
            "vip",
            Channel.WEB,
            None,
            NoOfferReason.BELOW_THRESHOLD,
            {
                "o_adhoc": "expected value below the catalog minimum",
                "o_trig": "trigger event not present",
                "o_life": "expected value below the catalog minimum",
            },
        ),
        (
            BASE.replace("    cost: 1\n", "    cost: 1\n    budget: {total_awards: 0}\n").replace(
                "    lever: 2\n", "    lever: 2\n    budget: {daily_awards: 0}\n"
            ),
            "vip",
            Channel.WEB,
            None,
            NoOfferReason.BUDGET_EXHAUSTED,
            {
                "o_adhoc": "budget exhausted: offer o_adhoc total awards: 0 of 0 used",
                "o_trig": "trigger event not present",
                "o_life": "budget exhausted: offer o_life awards today: 0 of 0 used",
            },
        ),
        (BASE, "no_web", Channel.WEB, None, NoOfferReason.OPTED_OUT, {}),
        (BASE, "nobody", Channel.WEB, None, NoOfferReason.UNKNOWN_CUSTOMER, {}),
    ],
)
async def test_when_every_candidate_is_filtered_the_furthest_stage_names_the_reason(
    text: str,
    customer: str,
    channel: Channel,
    history: str | None,
    reason: NoOfferReason,
    suppressed: dict[str, str],
) -> None:
    nbo = rig(text)
    if history == SENT_TWICE:
        sent = nbo.store.sent.setdefault(nbo.store.keys.channel_contacts(customer, "web"), {})
        sent.update({"d1:o_life": NOW - 3600, "d2:o_life": NOW - 60, "d0:o_life": NOW - 2 * DAY})
    d = await nbo.decide(customer, channel, max_offers=2, explain=True)
    assert (d.offers, d.no_offer_reason, d.degraded) == ((), reason, False)
    assert {s.offer_id: s.reason for s in d.suppressed} == suppressed
    assert nbo.record().no_offer_reason == reason.value
    assert all(v == "0" for h in counters(nbo.store) for v in h.values())


async def test_a_declined_offer_is_in_cooldown_and_the_next_one_is_awarded() -> None:
    nbo = rig()
    first = await nbo.decide("vip", max_offers=1)
    assert [o.offer_id for o in first.offers] == ["o_adhoc"]
    report = OutcomeReport(first.decision_id, "o_adhoc", Outcome.DECLINED)
    assert (await nbo.service.report_outcome(report)).recorded
    assert (await nbo.service.report_outcome(report)).duplicate  # same event: idempotent
    second = await nbo.decide("vip", max_offers=1, explain=True)
    assert [o.offer_id for o in second.offers] == ["o_life"]
    assert {s.offer_id: s.reason for s in second.suppressed}["o_adhoc"] == (
        "contact policy: declined recently; cooldown ends in 30.0 days"
    )
    assert [(o.offer_id, o.outcome, o.channel) for o in nbo.log.outcomes] == [("o_adhoc", "declined", "web")]


# -- replay, control group --------------------------------------------------------------------------
@pytest.mark.parametrize(("customer", "offers"), [("vip", ["o_adhoc", "o_life"]), ("no_web", []), ("nobody", [])])
async def test_a_repeated_request_id_returns_the_same_decision(customer: str, offers: list[str]) -> None:
    nbo = rig()
    first = await nbo.decide(customer, max_offers=3, request_id="req-7")
    again = await nbo.decide(customer, max_offers=3, request_id="req-7")
    assert [o.offer_id for o in first.offers] == offers
    assert again == dataclasses.replace(first, replayed=True)
    assert len(nbo.log.decisions) == 1  # the repeat is not a new decision
    sent = nbo.store.sent.get(nbo.store.keys.channel_contacts(customer, "web"), {})
    assert sorted(sent) == sorted(f"{first.decision_id[:26]}:{o}" for o in offers)


async def test_a_control_group_customer_gets_nothing_but_what_it_would_get_is_logged() -> None:
    nbo = rig(
        BASE.replace("min_expected_value: 0.5", "min_expected_value: 0.5\ncontrol_group: {fraction: 0.3, salt: ctl}"),
        {f"c{i}": VIP for i in range(20)},
    )
    held = [f"c{i}" for i in range(20) if in_holdout("ctl", f"c{i}", 0.3)]
    customer = held[0]
    d = await nbo.decide(customer, max_offers=3)
    assert (d.offers, d.no_offer_reason) == ((), NoOfferReason.CONTROL_GROUP)
    record = nbo.record()
    assert (record.control_group, record.would_offer) == (True, ["o_adhoc", "o_life"])  # the web cap is 2
    assert record.candidates.status == ["ranked below the offers returned"] * 2
    assert nbo.store.sent == {} and nbo.store.hashes == {}


# -- exploration ----------------------------------------------------------------------------------
def exploring(section: str) -> str:
    return BASE.replace("  max_per_window: {web: 2}\n", "").replace("campaigns:\n", f"bandit:\n{section}campaigns:\n")


async def test_epsilon_stays_inside_the_best_tier_by_default() -> None:
    nbo = rig(exploring("  seed: 5\n  exploration: 0\n  epsilon: 0.2\n"))
    for _ in range(40):
        d = await nbo.decide("vip", max_offers=2)
        # the lifecycle offer never comes first while the ad-hoc one is there: alone in its tier,
        # o_adhoc has the whole first slot, and o_life the whole second
        assert [(o.offer_id, o.selection_probability) for o in d.offers] == [("o_adhoc", 1.0), ("o_life", 1.0)]
        record = nbo.log.decisions[-1]
        assert dict(zip(record.candidates.offer_id, record.candidates.selection_probability, strict=True)) == {
            "o_adhoc": 1.0,
            "o_life": 1.0,
        }


async def test_epsilon_greedy_across_tiers_logs_its_exact_selection_probabilities() -> None:
    nbo = rig(exploring("  seed: 5\n  exploration: 0\n  epsilon: 0.2\n  cross_tier: true\n"))
    firsts = []
    for _ in range(40):
        d = await nbo.decide("vip", max_offers=2)
        record = nbo.log.decisions[-1]
        # greedy o_adhoc gets 1 - 0.2 + 0.2 / 2 of the first slot; the second slot is what is left
        first, second = d.offers
        assert {first.offer_id: first.selection_probability, second.offer_id: second.selection_probability} == (
            {"o_adhoc": 0.9, "o_life": 1.0} if first.offer_id == "o_adhoc" else {"o_life": 0.1, "o_adhoc": 1.0}
        )
        logged = dict(zip(record.candidates.offer_id, record.candidates.selection_probability, strict=True))
        assert logged == {first.offer_id: first.selection_probability, second.offer_id: second.selection_probability}
        firsts.append(first.offer_id)
    # the seeded draws (decision ids fixed by call order): o_life first 3 times in 40
    assert firsts.count("o_life") == 3


async def test_thompson_sampling_probabilities_are_exact_under_a_fixed_seed() -> None:
    nbo = rig(exploring("  seed: 5\n  samples: 512\n"))
    d = await nbo.decide("vip", max_offers=1)
    record = nbo.record()
    probabilities = dict(zip(record.candidates.offer_id, record.candidates.selection_probability, strict=True))
    assert probabilities == {"o_adhoc": 1.0, "o_life": 0.0}  # tiers rank first: ad hoc beats lifecycle
    assert [o.offer_id for o in d.offers] == ["o_adhoc"]
    nbo = rig(exploring("  seed: 5\n  samples: 512\n").replace("    type: ad_hoc\n", "    type: lifecycle\n"))
    d = await nbo.decide("vip", max_offers=1)
    record = nbo.record()
    probabilities = dict(zip(record.candidates.offer_id, record.candidates.selection_probability, strict=True))
    # 512 draws seeded by the decision id (numbered_ids) from the posteriors (no outcomes yet:
    # prior sd 0.5 around the priors)
    assert probabilities == {"o_adhoc": 326 / 512, "o_life": 186 / 512}
    (chosen,) = d.offers
    assert chosen.selection_probability == probabilities[chosen.offer_id]


# -- deadlines, the circuit breaker, delivery -------------------------------------------------------
async def test_too_little_time_left_answers_deadline_without_touching_state() -> None:
    nbo = rig(budgeted("{total_awards: 10}"))
    steps: list[str] = []
    for step in ("read", "reserve", "commit"):
        nbo.store.before[step] = lambda step=step: steps.append(step)  # type: ignore[misc]
    loop = asyncio.get_running_loop()
    d = await nbo.service.decide(DecideRequest("vip", Channel.WEB), deadline=loop.time() + 0.001)

    assert (d.offers, d.no_offer_reason, d.degraded) == ((), NoOfferReason.DEADLINE, False)
    assert steps == []
    assert nbo.record().no_offer_reason == "deadline"

    # time runs out during the read: the award is never started, so nothing is spent
    nbo.store.before["read"] = lambda: time.sleep(0.01)
    d = await nbo.service.decide(DecideRequest("vip", Channel.WEB), deadline=loop.time() + 0.012)
    assert d.no_offer_reason is NoOfferReason.DEADLINE
    assert steps == []
    assert all(v == "0" for h in counters(nbo.store) for v in h.values())


async def test_the_circuit_opens_after_consecutive_failures_and_a_probe_closes_it() -> None:
    nbo = rig()
    nbo.service.services.breaker._probe_seconds = 0.05  # a short probe interval keeps the test fast
    reads: list[int] = []
    down = True

    def read() -> None:
        reads.append(1)
        if down:
            raise StateUnavailable("connection refused")

    nbo.store.before["read"] = read
    answers = [await nbo.decide("vip") for _ in range(5)]
    assert [a.no_offer_reason for a in answers] == [NoOfferReason.DEGRADED] * 5
    assert len(reads) == 3  # Settings().breaker_failures; the last two never waited on Redis
    assert nbo.metric("nbo_redis_circuit_open") == 1.0
    assert nbo.metric("nbo_redis_errors_total", op="circuit_open") == 2.0

    down = False
    await asyncio.sleep(0.06)
    probe, after = await nbo.decide("vip"), await nbo.decide("vip")
    assert [probe.no_offer_reason, after.no_offer_reason] == [NoOfferReason.NONE, NoOfferReason.NONE]
    assert len(reads) == 5
    assert nbo.metric("nbo_redis_circuit_open") == 0.0


@pytest.mark.parametrize("delivered", [True, False])
async def test_the_record_waits_for_delivery_and_an_undelivered_award_is_flagged(delivered: bool) -> None:
    nbo = rig()
    delivery = Delivery()
    d = await nbo.service.decide(DecideRequest("vip", Channel.WEB), delivery=delivery)
    assert [o.offer_id for o in d.offers] == ["o_adhoc"]
    assert nbo.log.decisions == []  # not before the transport knows

    delivery.settle(delivered)
    delivery.settle(not delivered)  # the first word stands
    record = nbo.record()
    assert (record.chosen, record.undelivered) == (["o_adhoc"], not delivered)
    assert ("undelivered" in record_data(record.to_fields())) is (not delivered)
    assert nbo.metric("nbo_undelivered_decisions_total") == (0.0 if delivered else 1.0)


# -- arbitration by margin ------------------------------------------------------------------------
TWO_LIFECYCLE = BASE + (
    "  - {id: o_dear, campaign: life, title: Dear, value: 50, cost: 4, channels: [web], prior_propensity: 0.3}\n"
    "  - {id: o_free, campaign: life, title: Free, value: 48, channels: [web], prior_propensity: 0.3}\n"
)


async def test_margin_ranking_counts_the_cost_and_value_ranking_does_not() -> None:
    # equal propensity 0.3: by value 50 beats 48; by margin 0.3 x 48 - 0 = 14.4 beats 0.3 x 50 - 4 = 11
    by_value = rig(TWO_LIFECYCLE)
    d = await by_value.decide("regular", max_offers=2)  # the web cap
    assert [o.offer_id for o in d.offers] == ["o_dear", "o_free"]
    by_margin = rig(TWO_LIFECYCLE.replace("campaigns:\n", "arbitration: {value: margin}\ncampaigns:\n", 1))
    d = await by_margin.decide("regular", max_offers=2)
    assert [o.offer_id for o in d.offers] == ["o_free", "o_dear"]
    scores = dict(zip(by_margin.record().candidates.offer_id, by_margin.record().candidates.score, strict=True))
    # o_life: channel weight 1.5 and lever 2 scale its margin 0.2 x 10 - 0
    assert scores == pytest.approx({"o_free": 14.4, "o_dear": 11.0, "o_life": 6.0})
