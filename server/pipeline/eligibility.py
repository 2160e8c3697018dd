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

from server.catalog.budgets import per_customer_caps
from server.catalog.compiled import Catalog, ChannelView
from server.catalog.rules import Now
from server.domain import CampaignType, Channel
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
    view = catalog.views[channel]
    status = CandidateStatus(_campaign_stage(catalog, view, features, context, now, events, customer_id, segments))
    if history is None:
        return Eligible(status, None)
    _contact_history(catalog, view, status, history, now)
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
    view: ChannelView,
    feats: Sequence[float],
    context: Mapping[str, float],
    now: float,
    events: AbstractSet[str] | None,
    customer_id: str | None,
    segments: dict[int, bool],
) -> npt.NDArray[np.int8]:
    """Stage of each offer after its campaign's checks (live, fired, targeted, held out) and its
    own eligibility rule."""
    now_parts = Now.from_datetime(datetime.fromtimestamp(now, catalog.timezone))

    def in_segment(s: int) -> bool:
        hit = segments.get(s)
        if hit is None:
            hit = segments[s] = catalog.segments[s].rule(feats, context, now_parts)
        return hit

    camp_stage = np.zeros(len(view.campaigns), dtype=np.int8)
    held_camp = np.zeros(len(view.campaigns), dtype=np.bool_)
    for cpos, ci in enumerate(view.campaigns):
        camp = catalog.campaigns[ci]
        if not camp.live(now):
            camp_stage[cpos] = Stage.NOT_LIVE
        elif events is not None and camp.type is CampaignType.TRIGGER and not (camp.events & events):
            camp_stage[cpos] = Stage.NOT_FIRED
        elif camp.target and not any(in_segment(s) for s in camp.target):
            camp_stage[cpos] = Stage.NOT_TARGETED
        elif customer_id is not None and in_holdout(camp.holdout_salt, customer_id, camp.holdout):
            held_camp[cpos] = True
    stage = camp_stage[view.offer_campaign]
    for pos, rule in view.rules:
        if stage[pos] == Stage.ALIVE and not rule(feats, context, now_parts):
            stage[pos] = Stage.INELIGIBLE
    if held_camp.any():
        # held out only where the offer was eligible: the control group of a lift measurement
        stage[(stage == Stage.ALIVE) & held_camp[view.offer_campaign]] = Stage.HELD_OUT
    return stage


def _contact_history(
    catalog: Catalog, view: ChannelView, status: CandidateStatus, history: ContactHistory, now: float
) -> None:
    """Rule out offers the customer declined lately, was shown too often, or got as often as a
    per-customer cap allows."""
    if not (history.declined_at or history.suppressed_until or history.awards):
        return
    alive = status.alive()
    offers = [catalog.offers[view.offers[p]] for p in alive.tolist()]
    ids = [o.id for o in offers]
    caps = [(o.campaign_id, *per_customer_caps(catalog, o)) for o in offers] if history.awards else []
    for i, why in blocked_offers(catalog.contact_policy, history, ids, now, caps).items():
        status.drop_one(int(alive[i]), Stage.CONTACT, why)
