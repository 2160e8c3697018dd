"""Conversions in a closed-loop run (`nbo simulate`), and the lift they truly have.

A real programme never knows its true lift; a simulation does, which is how `nbo report`'s lift
interval is checked. Every customer the server decided for may buy on their own ("organic": with
a customer-level probability p0 drawn once from the world's seed, worth ORGANIC_VALUE), and a
customer who accepts an offer buys it (worth the offer's value). Both are reported through
RecordConversion, so the report sees what a shop's order feed would send.

The true programme lift (customer level, intent-to-treat, against the universal control group):
per customer, the expected conversion with offers, 1 - (1 - p0) x prod(1 - p_d) over the offers d
awarded to them (for a control-group customer: the offers it would have been awarded, logged as
`would_offer`), minus p0 without; and likewise for value, sum p_d x value_d. Averaged over every
customer decided for, that is what the difference between the groups estimates.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

import grpc
import numpy as np
import numpy.typing as npt

from server.api.aio_client import AsyncNboClient
from server.reporting.model import Report
from server.state.records import DecisionRecord
from training.closed_loop_scoring import Sent
from training.world import World

ORGANIC_LOGIT = -2.4  # about 9 % of customers buy on their own within the window
ORGANIC_SD = 0.6  # customer to customer, in log-odds
ORGANIC_VALUE = 40.0
KIND = "purchase"
ATTEMPTS = 8  # of a report the server answers UNAVAILABLE (an overloaded machine)


def organic_propensity(world: World, seed: int) -> npt.NDArray[np.float64]:
    """Each customer's probability of buying on their own within the attribution window."""
    rng = np.random.default_rng([world.seed, seed, 303])
    z = ORGANIC_LOGIT + ORGANIC_SD * rng.standard_normal(world.n_customers)
    out: npt.NDArray[np.float64] = 1.0 / (1.0 + np.exp(-z))
    return out


@dataclass(frozen=True)
class Conversion:
    customer_id: str
    value: float
    event_id: str
    occurred_at: float


def organic_conversions(
    world: World, first_seen: Mapping[int, float], p0: npt.NDArray[np.float64], seed: int
) -> list[Conversion]:
    """The organic purchases of the customers decided for (customer index -> first decision time),
    a second after their first decision, drawn in customer order under the seed."""
    rng = np.random.default_rng([world.seed, seed, 304])
    customers = sorted(first_seen)
    draws = rng.random(len(customers))
    ids = world.population.customer_ids
    return [
        Conversion(ids[c], ORGANIC_VALUE, f"organic-{ids[c]}", first_seen[c] + 1.0)
        for c, u in zip(customers, draws, strict=True)
        if u < p0[c]
    ]


@dataclass(frozen=True)
class TrueLift:
    customers: int
    control_customers: int
    conversion_rate_treated: float  # expected, had every customer been treated
    conversion_rate_untreated: float  # expected, had none been (the organic rate)
    conversion_rate_diff: float  # the true lift in conversion rate, treated - untreated
    value_per_customer_diff: float  # the true lift in conversion value per customer


def true_lift(
    records: Iterable[DecisionRecord],
    truths: Mapping[str, World],
    p0: npt.NDArray[np.float64],
    index: Mapping[str, int],
) -> TrueLift:
    """`truths`: the world that answered each decision (by decision id); `index`: customer id ->
    the world's customer index. Degraded and undelivered decisions award nothing and count as such."""
    miss: dict[int, float] = {}  # customer -> prod(1 - p_d)
    value: dict[int, float] = {}
    control: set[int] = set()
    for rec in records:
        c = index[rec.customer_id]
        miss.setdefault(c, 1.0)
        value.setdefault(c, 0.0)
        if rec.control_group:
            control.add(c)
        offers = rec.would_offer if rec.control_group else rec.chosen
        if not offers or rec.degraded:
            continue
        world = truths[rec.decision_id]
        j = world.offer_ids.index(offers[0])  # the simulation asks for one offer per decision
        ctx = {k: np.array([v]) for k, v in rec.context.items()}
        p = float(world.oracle(np.array([c]), np.array([j]), rec.channel, ctx, np.array([rec.ts]))[0])
        miss[c] *= 1.0 - p
        value[c] += p * float(world.offer_value[j])
    customers = np.array(sorted(miss))
    base = p0[customers]
    treated = 1.0 - (1.0 - base) * np.array([miss[c] for c in customers])
    return TrueLift(
        customers=int(customers.size),
        control_customers=len(control),
        conversion_rate_treated=float(treated.mean()),
        conversion_rate_untreated=float(base.mean()),
        conversion_rate_diff=float((treated - base).mean()),
        value_per_customer_diff=float(np.mean([value[c] for c in customers])),
    )


def reported_lift(report: Report, truth: Mapping[str, float]) -> dict[str, Any]:
    """The report's programme lift beside the truth: each interval, and whether it covers it."""
    row = next((r for r in report.lift if r.scope == "programme"), None)
    if row is None:
        return {"enough_data": False, "note": "no programme lift in the report"}
    out: dict[str, Any] = {"enough_data": row.enough_data, "note": row.note}
    out["customers"] = row.treatment.customers + row.control.customers
    out["control_customers"] = row.control.customers
    pairs = (("conversion_rate_diff", row.rate_difference), ("value_per_customer_diff", row.revenue_difference))
    for name, estimate in pairs:
        if estimate is None:
            continue
        true = truth[name]
        out[name] = {"reported": estimate.value, "low": estimate.low, "high": estimate.high, "true": true}
        out[name]["covered"] = estimate.low <= true <= estimate.high
    return out


# -- sending them (`nbo simulate` drives a real server) ------------------------------------
async def retried(call: Callable[[], Awaitable[Any]]) -> int:
    """ReportOutcome or RecordConversion, retried while the server answers UNAVAILABLE (Redis
    slower than its time budget, e.g. on an overloaded machine), as docs/api.md advises: a
    retried report counts once. Returns the number of retries."""
    for attempt in range(ATTEMPTS):
        try:
            await call()
            return attempt
        except grpc.aio.AioRpcError as e:
            if e.code() != grpc.StatusCode.UNAVAILABLE or attempt == ATTEMPTS - 1:
                raise
            await asyncio.sleep(0.25 * (attempt + 1))
    raise AssertionError("unreachable")


async def convert(client: AsyncNboClient, c: Conversion) -> Any:
    return await client.convert(c.customer_id, KIND, c.value, c.event_id, c.occurred_at)


async def send_organic(target: str, conversions: list[Conversion], concurrency: int) -> int:
    """RecordConversion for each organic purchase; the retries it took."""
    queue = list(reversed(conversions))
    retries = 0

    async def worker(client: AsyncNboClient) -> None:
        nonlocal retries
        while queue:
            c = queue.pop()
            retries += await retried(partial(convert, client, c))

    clients = [AsyncNboClient(target, own_connection=True) for _ in range(concurrency)]
    try:
        await asyncio.gather(*(worker(c) for c in clients))
    finally:
        for c in clients:
            await c.close()
    return retries


def first_seen(sent: Sequence[Sent]) -> dict[int, float]:
    """Customer index -> the time of their first decision."""
    first: dict[int, float] = {}
    for x in sent:
        c = x.request.customer
        first[c] = min(first.get(c, x.ts), x.ts)
    return first
