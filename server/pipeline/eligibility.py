"""Stage 3: which of the channel's offers a customer may get now, and why the others not.

One pure function over the catalog, the customer's features, the request's context and events,
the time and (where known) the contact history. The server calls it for every decision and
`nbo ope` (training/ope_data.py) for every logged row, so a stage added here is applied by both;
what the offline side cannot know (events, control-group membership, contact history) it passes
as None, and the function documents what None means.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from collections.abc import Set as AbstractSet
from dataclasses import dataclass
from datetime import datetime

import numpy as np
import numpy.typing as npt

from server.catalog.compiled import CampaignChecks, Catalog, ChannelView
from server.catalog.rules import Now
from server.domain import Channel
from server.pipeline.contact_policy import blocked_offers, channel_room
from server.pipeline.context import CandidateStatus, Stage
from server.pipeline.control_groups import in_holdout
from server.state.contacts import ContactHistory


# not frozen: one is made per request, and a frozen dataclass's __init__ costs a microsecond
@dataclass(slots=True)
class Eligible:
    status: CandidateStatus  # per offer position on the channel
    room: int | None  # offers the channel cap still allows in the window; None: uncapped or unknown


def eligibility(
    catalog: Catalog,
    channel: Channel,
    features: Sequence[float],
    context: Mapping[str, float],
    now: float,
    *,
    events: AbstractSet[str] | None,
    customer_id: str | None,
    history: ContactHistory | None,
    segments: dict[int, bool],
) -> Eligible | None:
    """The candidates of a customer on `channel`; None when the customer has not consented to it.

    `events` None: every trigger campaign counts as fired. `customer_id` None: campaign control
    groups are not applied. `history` None: contact policy is not applied. `segments` is filled
    with each target segment evaluated (each rule at most once), for explain.
    """
    consent_at = catalog.consent.get(channel)
    if consent_at is not None:
        flag = features[consent_at]
        if (catalog.consent_missing_allows if math.isnan(flag) else flag > 0) is False:
            return None
    status = CandidateStatus(_campaign_stage(catalog, channel, features, context, now, events, customer_id, segments))
    if history is None:
        return Eligible(status, None)
    _contact_history(catalog, channel, status, history, now)
    room = channel_room(catalog.contact_policy, channel, history)
    if room == 0:
        alive = status.alive()
        if alive.size:
            note = f"channel limit of {catalog.contact_policy.max_per_window[channel]} offers reached"
            for pos in alive.tolist():
                status.drop_one(pos, Stage.CONTACT, note)
    return Eligible(status, room)


def _campaign_stage(
    catalog: Catalog,
    channel: Channel,
    feats: Sequence[float],
    context: Mapping[str, float],
    now: float,
    events: AbstractSet[str] | None,
    customer_id: str | None,
    segments: dict[int, bool],
) -> npt.NDArray[np.int8]:
    """Stage of each offer after its campaign's checks (live, fired, targeted, held out) and its
    own eligibility rule. Campaigns are bit masks (catalog.checks); a rule shared by several
    offers is evaluated once, and only when one of its offers' campaigns passed its checks."""
    checks = catalog.checks[channel]
    now_parts = Now.from_datetime(datetime.fromtimestamp(now, catalog.timezone))
    not_live = checks.not_live_at(now)
    not_fired = 0
    if events is not None and checks.triggers:
        fired = 0
        for event in events:
            fired |= checks.fired_by.get(event, 0)
        not_fired = checks.triggers & ~fired & ~not_live
    out = not_live | not_fired
    not_targeted = _not_targeted(checks, out, feats, context, now_parts, segments)
    out |= not_targeted
    held = 0
    if customer_id is not None:
        for cpos, salt, fraction in checks.holdouts:
            if not out >> cpos & 1 and in_holdout(salt, customer_id, fraction):
                held |= 1 << cpos
    alive = checks.everything & ~out
    failed = 0
    for bit, campaigns, rule in checks.rules:
        if campaigns & alive and not rule(feats, context, now_parts):
            failed |= bit
    # the stages follow from these five masks alone: decisions with the same outcome share them
    key = (not_live, not_fired, not_targeted, failed, held)
    stage = checks.memo.get(key)
    if stage is None:
        stage = _offer_stage(catalog.views[channel], checks, *key)
        if len(checks.memo) < _MEMO_SIZE:
            checks.memo[key] = stage
    return stage.copy()  # the caller's to change


_MEMO_SIZE = 4096  # outcomes remembered per channel; beyond, a decision computes its own


def _not_targeted(
    checks: CampaignChecks,
    out: int,
    feats: Sequence[float],
    context: Mapping[str, float],
    now: Now,
    segments: dict[int, bool],
) -> int:
    """The campaigns (not in `out`) whose target segments all miss the customer. In campaign
    order, each segment evaluated at most once and kept in `segments`, which explain shows."""
    missed = 0
    rules = checks.segment_rules
    for cpos, target in checks.targeted:
        if out >> cpos & 1:
            continue
        for s in target:
            hit = segments.get(s)
            if hit is None:
                hit = segments[s] = rules[s](feats, context, now)
            if hit:
                break
        else:
            missed |= 1 << cpos
    return missed


def _offer_stage(
    view: ChannelView, checks: CampaignChecks, not_live: int, not_fired: int, not_targeted: int, failed: int, held: int
) -> npt.NDArray[np.int8]:
    n_camps = len(view.campaigns)
    camp_stage = np.zeros(n_camps, dtype=np.int8)
    for bits, why in ((not_live, Stage.NOT_LIVE), (not_fired, Stage.NOT_FIRED), (not_targeted, Stage.NOT_TARGETED)):
        if bits:
            camp_stage[_mask(bits, n_camps)] = why
    stage = camp_stage[view.offer_campaign]
    if failed:  # the group after the last one, of offers without a rule, never fails
        stage[_mask(failed, len(checks.rules) + 1)[checks.offer_group] & (stage == Stage.ALIVE)] = Stage.INELIGIBLE
    if held:
        # held out only where the offer was eligible: the control group of a lift measurement
        stage[(stage == Stage.ALIVE) & _mask(held, n_camps)[view.offer_campaign]] = Stage.HELD_OUT
    return stage


def _mask(bits: int, n: int) -> npt.NDArray[np.bool_]:
    """Bit i of `bits` as element i of a bool array of length n."""
    raw = np.frombuffer(bits.to_bytes((n + 7) // 8, "little"), dtype=np.uint8)
    return np.unpackbits(raw, count=n, bitorder="little").view(np.bool_)


def _contact_history(
    catalog: Catalog, channel: Channel, status: CandidateStatus, history: ContactHistory, now: float
) -> None:
    """Rule out offers the customer declined lately, was shown too often, or got as often as a
    per-customer cap allows."""
    if not (history.declined_at or history.suppressed_until or history.awards):
        return
    alive = status.alive()
    positions = alive.tolist()
    ids = catalog.views[channel].offer_ids
    caps = catalog.checks[channel].caps
    blocked = blocked_offers(
        catalog.contact_policy,
        history,
        [ids[p] for p in positions],
        now,
        [caps[p] for p in positions] if history.awards else [],
    )
    for i, why in blocked.items():
        status.drop_one(positions[i], Stage.CONTACT, why)
