"""How each policy would have done on the decisions of a closed-loop run (`nbo simulate`).

Each logged decision's candidate set is what the server could have awarded (status "chosen"
or "ranked below"); every policy is scored by its *expected* reward under the world's true
response (P(accept) x value, at the decision's own timestamp). See training/closed_loop.py.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from server.catalog.compiled import Catalog
from server.state.records import DecisionRecord
from training.scenarios import NEW_OFFER_ID
from training.world import World

POLICIES = ("server", "oracle", "random", "model_greedy", "rules_only")
PICKING = ("server", "oracle", "model_greedy", "rules_only")  # random is a mean, it picks nothing
NEW_OFFER_WINDOW = 2_000
NEW_OFFER_HORIZON = 10_000  # the new offer should reach half its oracle share within this


@dataclass(frozen=True)
class Request:
    index: int
    customer: int
    channel: str
    context: dict[str, float]


@dataclass
class Sent:
    request: Request
    decision_id: str = ""
    offer: str = ""
    world_index: int = 0  # which truth answered: 0 before the change, 1 after (drift / new offer)
    ts: float = 0.0
    report_retries: int = 0  # ReportOutcome calls retried after UNAVAILABLE


@dataclass(frozen=True)
class Terms:
    """What the server ranks with, per offer, as the published catalog says."""

    tier: dict[str, int]  # arbitration tier: ad hoc 0 > high-priority trigger 1 > lifecycle 2 > trigger 3
    weight: dict[tuple[str, str], float]  # (offer, channel) -> C
    lever: dict[str, float]  # L
    priority: dict[str, int]  # the campaign's: breaks ties inside a tier


def catalog_terms(catalog: Catalog) -> Terms:
    """Tiers, channel weights, levers and priorities as the server compiled them (server/catalog.py)."""
    tier: dict[str, int] = {}
    weight: dict[tuple[str, str], float] = {}
    lever: dict[str, float] = {}
    priority: dict[str, int] = {}
    for channel, view in catalog.views.items():
        for pos, offer in enumerate(view.offer_ids):
            tier[offer] = int(view.tier[pos])
            weight[(offer, channel.value)] = float(view.weight[pos])
            lever[offer] = float(view.lever[pos])
            priority[offer] = int(view.priority[pos])
    return Terms(tier, weight, lever, priority)


def _best(top: npt.NDArray[np.intp], key: npt.NDArray[np.float64], priority: npt.NDArray[np.int64]) -> int:
    """The top-tier candidate with the highest key; ties go to campaign priority, then catalog
    order (the log lists candidates in catalog order), as server/arbitration.py breaks them."""
    return int(top[np.lexsort((top, -priority[top], -key[top]))[0]])


@dataclass
class Scores:
    """Per evaluated decision (in request order), what each policy would have earned."""

    ev: dict[str, list[float]]  # per policy, expected value
    p: dict[str, list[float]]  # per policy, expected acceptance
    pick: dict[str, list[str]]  # per picking policy, the offer ("" = nothing)
    index: list[int] = field(default_factory=list)  # request index
    decision_id: list[str] = field(default_factory=list)
    world_index: list[int] = field(default_factory=list)
    candidates: list[int] = field(default_factory=list)  # size of the candidate set
    top_tier: list[int] = field(default_factory=list)  # candidates in the best tier present
    server_in_top_tier: list[bool] = field(default_factory=list)
    new_in_set: list[bool] = field(default_factory=list)  # the new offer is a candidate
    new_contested: list[bool] = field(default_factory=list)  # ... with another top-tier candidate

    @classmethod
    def empty(cls) -> Scores:
        return cls({k: [] for k in POLICIES}, {k: [] for k in POLICIES}, {k: [] for k in PICKING})


@dataclass(frozen=True)
class Skipped:
    control_group: int
    degraded: int
    missing: int


def score_decisions(
    sent: list[Sent], records: dict[str, DecisionRecord], truths: tuple[World, World], terms: Terms
) -> tuple[Scores, Skipped]:
    scores = Scores.empty()
    control = degraded = missing = 0
    for s in sorted(sent, key=lambda x: x.request.index):
        rec = records.get(s.decision_id)
        if rec is None:
            missing += 1
            continue
        if rec.control_group:
            control += 1
            continue
        if rec.degraded:
            degraded += 1
            continue
        world = truths[s.world_index]
        cand = rec.candidates
        rows = [
            (o, float(p))
            for o, p, st in zip(cand.offer_id, cand.propensity, cand.status, strict=True)
            if st == "chosen" or st.startswith("ranked below")
        ]
        scores.index.append(s.request.index)
        scores.decision_id.append(s.decision_id)
        scores.world_index.append(s.world_index)
        scores.candidates.append(len(rows))
        if not rows:
            for k in POLICIES:
                scores.ev[k].append(0.0)
                scores.p[k].append(0.0)
            for k in PICKING:
                scores.pick[k].append("")
            scores.top_tier.append(0)
            scores.server_in_top_tier.append(True)
            scores.new_in_set.append(False)
            scores.new_contested.append(False)
            continue
        offers = [o for o, _ in rows]
        j = np.array([world.offer_ids.index(o) for o in offers])
        r = s.request
        ctx = {k: np.full(len(j), v) for k, v in r.context.items()}
        true_p = world.oracle(np.full(len(j), r.customer), j, r.channel, ctx, np.full(len(j), rec.ts))
        value = world.offer_value[j]
        ev = true_p * value
        tier = np.array([terms.tier[o] for o in offers])
        top = np.flatnonzero(tier == tier.min())
        model_p = np.array([p for _, p in rows])
        cvl = np.array([terms.weight.get((o, r.channel), 1.0) * terms.lever[o] for o in offers]) * value
        priority = np.array([terms.priority[o] for o in offers])
        pick = {
            "server": offers.index(s.offer) if s.offer in offers else -1,
            "oracle": _best(top, ev, priority),
            "model_greedy": _best(top, model_p * cvl, priority),
            "rules_only": _best(top, value, priority),
        }
        for k, i in pick.items():
            scores.ev[k].append(float(ev[i]) if i >= 0 else 0.0)
            scores.p[k].append(float(true_p[i]) if i >= 0 else 0.0)
            scores.pick[k].append(offers[i] if i >= 0 else "")
        scores.ev["random"].append(float(ev[top].mean()))
        scores.p["random"].append(float(true_p[top].mean()))
        scores.top_tier.append(int(top.size))
        scores.server_in_top_tier.append(pick["server"] < 0 or pick["server"] in top)
        scores.new_in_set.append(NEW_OFFER_ID in offers)
        scores.new_contested.append(NEW_OFFER_ID in [offers[i] for i in top] and top.size > 1)
    return scores, Skipped(control, degraded, missing)


def diff_ci(a: npt.ArrayLike, b: npt.ArrayLike) -> dict[str, float]:
    """Mean paired difference with its 95% interval (normal approximation)."""
    d = np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)
    if d.size < 2:
        return {"mean": float(d.mean()) if d.size else 0.0, "low": math.nan, "high": math.nan, "n": float(d.size)}
    half = 1.96 * float(d.std(ddof=1)) / math.sqrt(d.size)
    return {"mean": float(d.mean()), "low": float(d.mean()) - half, "high": float(d.mean()) + half, "n": float(d.size)}


def ratio_ci(num: npt.ArrayLike, den: npt.ArrayLike) -> dict[str, float]:
    """sum(num) / sum(den) over paired per-decision values, with its 95% interval (delta method:
    the denominator varies with the decisions too)."""
    a, b = np.asarray(num, dtype=np.float64), np.asarray(den, dtype=np.float64)
    n = a.size
    if n < 2 or b.mean() == 0:
        return {
            "mean": float(a.sum() / b.sum()) if n and b.sum() else 0.0,
            "low": math.nan,
            "high": math.nan,
            "n": float(n),
        }
    r = float(a.mean() / b.mean())
    cov = np.cov(a, b, ddof=1)
    var = (cov[0, 0] - 2 * r * cov[0, 1] + r * r * cov[1, 1]) / (n * b.mean() ** 2)
    half = 1.96 * math.sqrt(max(float(var), 0.0))
    return {"mean": r, "low": r - half, "high": r + half, "n": float(n)}


def new_offer_progress(scores: Scores, change_at: int) -> dict[str, Any]:
    """Share of decisions awarding the new offer, among those whose candidate set held it.
    "contested": it shared the best tier present with another candidate, so awarding it took a
    judgement of its worth (alone in the best tier, every policy that keeps the tiers awards it)."""
    idx = np.asarray(scores.index)
    after = idx >= change_at
    in_set = np.asarray(scores.new_in_set, dtype=bool) & after
    contested = np.asarray(scores.new_contested, dtype=bool) & after
    chose = {k: np.asarray(scores.pick[k]) == NEW_OFFER_ID for k in ("server", "oracle", "model_greedy")}

    def shares(sel: npt.NDArray[np.bool_]) -> dict[str, float]:
        out: dict[str, float] = {"n": float(sel.sum())}
        for k, c in chose.items():
            out[f"{k}_share"] = float(c[sel].mean()) if sel.any() else math.nan
        return out

    windows: list[dict[str, Any]] = []
    for start in range(change_at, int(idx.max()) + 1 if idx.size else change_at, NEW_OFFER_WINDOW):
        in_window = (idx >= start) & (idx < start + NEW_OFFER_WINDOW)
        if (in_set & in_window).any():
            windows.append(
                {
                    "from": start - change_at,
                    **shares(in_set & in_window),
                    "contested": shares(contested & in_window),
                }
            )
    half_at = next(
        (w["from"] for w in windows if w["server_share"] >= 0.5 * w["oracle_share"] and w["oracle_share"] > 0), None
    )
    horizon = idx < change_at + NEW_OFFER_HORIZON
    late = idx >= change_at + NEW_OFFER_HORIZON - NEW_OFFER_WINDOW
    return {
        "introduced_at": change_at,
        "first_10000": shares(in_set & horizon),
        "first_10000_contested": shares(contested & horizon),
        "decisions_8000_to_10000": shares(in_set & horizon & late),
        "decisions_8000_to_10000_contested": shares(contested & horizon & late),
        "half_of_oracle_share_from": half_at,  # first window (decisions since) at >= half the oracle's share
        "windows": windows,
    }
