"""Contact policy: which offers a customer's contact history rules out right now.

The history lives in Redis (see server.state.redis_store): a hash with, per offer, the time of the last
decline (`d:<offer>`), the count of presentations without a response (`p:<offer>`), the end
of a suppression (`s:<offer>`) and, for offers and campaigns with a per-customer cap, the
awards so far (`a:o:<offer>`, `a:c:<campaign>`); and a per-channel sorted set of recent awards for frequency caps.
"""

from __future__ import annotations

from collections.abc import Sequence

from server.catalog.compiled import ContactPolicy
from server.domain import Channel
from server.state.contacts import ContactHistory


def channel_room(policy: ContactPolicy, channel: Channel, history: ContactHistory) -> int | None:
    """How many more offers the channel cap allows in the window; None when uncapped."""
    cap = policy.max_per_window.get(channel)
    return None if cap is None else max(cap - history.sent_in_window, 0)


def blocked_offers(
    policy: ContactPolicy,
    history: ContactHistory,
    offer_ids: Sequence[str],
    now: float,
    caps: Sequence[tuple[str, int, int]] = (),
) -> dict[int, str]:
    """Positions in `offer_ids` that the history rules out, with a readable reason.

    `caps` gives, per offer, (campaign id, offer's per-customer cap, campaign's per-customer
    cap), -1 meaning none; empty when no offer has such a cap.
    """
    out: dict[int, str] = {}
    if not history.declined_at and not history.suppressed_until and not history.awards:
        return out
    # a history names a few offers, a decision has a hundred candidates: only the candidates
    # the history names are looked at, in position order as before
    for pos in _named(history, offer_ids, caps):
        why = _blocked(policy, history, offer_ids[pos], caps[pos] if caps else None, now)
        if why is not None:
            out[pos] = why
    return out


def _named(history: ContactHistory, offer_ids: Sequence[str], caps: Sequence[tuple[str, int, int]]) -> list[int]:
    """The positions of the offers a history entry is about, sorted."""
    where = {offer_id: pos for pos, offer_id in enumerate(offer_ids)}
    named = {where[o] for o in (*history.declined_at, *history.suppressed_until) if o in where}
    if caps and history.awards:
        campaigns = set()
        for key in history.awards:
            kind, _, name = key.partition(":")
            if kind == "o" and name in where:
                named.add(where[name])
            elif kind == "c":
                campaigns.add(name)
        # a cap of 0 holds even for an offer the history does not name
        named.update(
            pos
            for pos, (campaign, own, shared) in enumerate(caps)
            if own == 0 or shared == 0 or (shared > 0 and campaign in campaigns)
        )
    return sorted(named)


def _blocked(
    policy: ContactPolicy, history: ContactHistory, offer_id: str, cap: tuple[str, int, int] | None, now: float
) -> str | None:
    if cap is not None and history.awards:
        campaign_id, own, shared = cap
        if own >= 0 and (n := history.awards.get(f"o:{offer_id}", 0)) >= own:
            return f"awarded {n} times; at most {own} per customer"
        if shared >= 0 and (n := history.awards.get(f"c:{campaign_id}", 0)) >= shared:
            return f"campaign {campaign_id} awarded {n} times; at most {shared} per customer"
    declined = history.declined_at.get(offer_id)
    if declined is not None and now - declined < policy.decline_cooldown_seconds:
        days = (policy.decline_cooldown_seconds - (now - declined)) / 86400
        return f"declined recently; cooldown ends in {days:.1f} days"
    until = history.suppressed_until.get(offer_id)
    if until is not None and now < until:
        return (
            f"presented {policy.max_presented_without_response} times without a response; "
            f"suppressed for {(until - now) / 86400:.1f} more days"
        )
    return None
