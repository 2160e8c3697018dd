"""The budget reservation of one decision, split into one-slot calls.

A campaign's counters and its offers' live in the campaign's slot, a channel's hourly capacity in
the channel's (server.catalog.budgets), so a ranked walk over several campaigns cannot be one
script. It is walked here in rank order instead, one reserve.lua call per run of consecutive
candidates of one campaign, each call awarding the first of its run that fit, until k are
awarded. The channel's capacity is reserved beside the first run, in the same round trip: k
units, of which those the campaigns did not use are given back, and awards beyond what the
channel granted are given back to their campaigns and refused with the channel's reason.

Every increment is checked against its limit inside a script, so no counter ever exceeds a
limit; whatever a walk reserved and did not award is released before it returns, so the
counters end equal to the awards. What the split costs is that a reservation being given back
holds its units for a moment: a concurrent decision may be refused the last unit of a budget
that is free again a millisecond later (fail closed, never over). With k = 1 and the top
candidate within budget — most decisions — nothing is given back.

Both stores run this walk over their own one-slot primitive (`BudgetSlots`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Coroutine, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from server.catalog.budgets import DAY, DAY_KEY_TTL_SECONDS, HOUR, HOUR_KEY_TTL_SECONDS, TOTAL, Period, Reservation
from server.state.keys import Keys
from server.state.store import Reserved, StateUnavailable

SlotCheck = tuple[int, str, int, int]  # key number in the slot's keys (from 1), field, limit, incr


@dataclass(frozen=True, slots=True)
class SlotCandidate:
    offer_id: str
    checks: tuple[SlotCheck, ...]
    check_nos: tuple[int, ...]  # each check's number in its Reservation (from 1), for reasons


@dataclass(frozen=True, slots=True)
class Slot:
    """The counter hashes of one slot, as reserve.lua's KEYS, with the TTL each is written with."""

    keys: tuple[str, ...]
    ttls: tuple[int, ...]


class BudgetSlots(Protocol):
    """One-slot budget primitives: reserve.lua and release.lua, or their in-memory twins."""

    async def reserve_in_slot(self, slot: Slot, k: int, walk: Sequence[SlotCandidate]) -> Reserved:
        """Award the first k of `walk` that fit; refused ones carry the slot-local check number."""
        ...

    async def release_in_slot(self, slot: Slot, items: Sequence[tuple[int, str, int]]) -> None: ...


def campaign_slot(keys: Keys, campaign: str, period: Period) -> Slot:
    return Slot((keys.budget_total(campaign), keys.budget_day(campaign, period.day)), (0, DAY_KEY_TTL_SECONDS))


def channel_slot(keys: Keys, channel: str, period: Period) -> Slot:
    return Slot((keys.budget_hour(channel, period.hour),), (HOUR_KEY_TTL_SECONDS,))


_KEY_NO = {TOTAL: 1, DAY: 2, HOUR: 1}


def _part(r: Reservation, hour: bool) -> SlotCandidate:
    """The checks of `r` counted in its campaign's slot (hour=False) or its channel's (True)."""
    picked = [(no, c) for no, c in enumerate(r.checks, 1) if (c.key == HOUR) == hour]
    return SlotCandidate(
        r.offer_id, tuple((_KEY_NO[c.key], c.field, c.limit, c.incr) for _, c in picked), tuple(n for n, _ in picked)
    )


def _runs(walk: Sequence[Reservation]) -> list[tuple[str, list[Reservation]]]:
    """Consecutive candidates of one campaign slot ("": no campaign counter to check)."""
    runs: list[tuple[str, list[Reservation]]] = []
    for r in walk:
        camp = r.campaign if any(c.key != HOUR for c in r.checks) else ""
        if runs and runs[-1][0] == camp:
            runs[-1][1].append(r)
        else:
            runs.append((camp, [r]))
    return runs


class _Walk:
    """One decision's walk: what is awarded and refused so far, and what to give back."""

    def __init__(self, slots: BudgetSlots, keys: Keys, period: Period, k: int) -> None:
        self.slots, self.keys, self.period, self.k = slots, keys, period, k
        self.awarded: list[Reservation] = []
        self.refused: list[tuple[str, int, int]] = []

    async def campaign_run(self, camp: str, run: list[Reservation], need: int) -> None:
        if not camp:
            self.awarded += run[:need]
            return
        parts = [_part(r, hour=False) for r in run]
        got = await self.slots.reserve_in_slot(campaign_slot(self.keys, camp, self.period), need, parts)
        by_id = {r.offer_id: (r, p) for r, p in zip(run, parts, strict=True)}
        self.awarded += [by_id[o][0] for o in got.awarded]
        self.refused += [(o, by_id[o][1].check_nos[no - 1], used) for o, no, used in got.refused]

    async def channel(self, r: Reservation, units: int) -> tuple[int, int]:
        """(units granted, the count the first refused unit saw)."""
        part = _part(r, hour=True)
        asked = [SlotCandidate(f"{r.offer_id}#{i}", part.checks, part.check_nos) for i in range(units)]
        got = await self.slots.reserve_in_slot(channel_slot(self.keys, r.channel, self.period), units, asked)
        return len(got.awarded), (got.refused[0][2] if got.refused else 0)


async def reserve(slots: BudgetSlots, keys: Keys, period: Period, k: int, walk: Sequence[Reservation]) -> Reserved:
    """Award the first k of the ranked `walk` that fit every limit, counting exactly those."""
    w = _Walk(slots, keys, period, k)
    hourly = next((r for r in walk if any(c.key == HOUR for c in r.checks)), None)
    asked = min(k, len(walk))
    channel_call = asyncio.ensure_future(w.channel(hourly, asked)) if hourly is not None else None
    granted: tuple[int, int] | None = None
    try:
        for i, (camp, run) in enumerate(_runs(walk)):
            if i == 1 and channel_call is not None:
                granted = await channel_call
            cap = k if granted is None else min(k, granted[0])
            if len(w.awarded) >= cap:
                break
            await w.campaign_run(camp, run, cap - len(w.awarded))
        if channel_call is not None and granted is None:
            granted = await channel_call
    except StateUnavailable:
        await _undo(w, hourly, channel_call)
        raise
    except BaseException:
        # cancelled (the decision's Redis budget ran out): what was sent may have run; the
        # counters stay high, fail closed, until `nbo budgets reconcile`
        if channel_call is not None:
            channel_call.cancel()
        raise
    if hourly is not None and granted is not None:
        await _fit_channel(w, walk, hourly, asked, granted)
    return Reserved(tuple(r.offer_id for r in w.awarded), tuple(w.refused))


async def _fit_channel(
    w: _Walk, walk: Sequence[Reservation], hourly: Reservation, asked: int, granted: tuple[int, int]
) -> None:
    """Give back the channel units not awarded, or the awards the channel had no room for."""
    units, used = granted
    over = w.awarded[units:]
    w.awarded = w.awarded[:units]
    if units < asked:
        # the channel is full: every candidate not yet decided is refused for it, as one
        # script walking them all would have
        decided = {r.offer_id for r in w.awarded} | {o for o, _, _ in w.refused}
        for r in walk:
            hour_no = next((no for no, c in enumerate(r.checks, 1) if c.key == HOUR), None)
            if r.offer_id not in decided and hour_no is not None:
                w.refused.append((r.offer_id, hour_no, used))
    # most walks give nothing back: no call, and no task for one (a loop turn each)
    giveback: list[Coroutine[Any, Any, None]] = []
    if over:
        giveback.append(release(w.slots, w.keys, w.period, over, hour=False))
    if units > len(w.awarded):
        giveback.append(_release_units(w, hourly, units - len(w.awarded)))
    if len(giveback) == 1:
        await giveback[0]
    elif giveback:
        await asyncio.gather(*giveback)


async def _release_units(w: _Walk, hourly: Reservation, units: int) -> None:
    if units > 0:
        await release(w.slots, w.keys, w.period, [hourly] * units, campaign=False)


async def _undo(w: _Walk, hourly: Reservation | None, channel_call: asyncio.Future[tuple[int, int]] | None) -> None:
    """A call failed: give back what the others reserved (best effort; reconcile fixes the rest)."""
    with contextlib.suppress(StateUnavailable):
        await release(w.slots, w.keys, w.period, w.awarded, hour=False)
    if channel_call is not None and hourly is not None:
        with contextlib.suppress(StateUnavailable):
            units, _ = await channel_call
            await _release_units(w, hourly, units)


async def release(
    slots: BudgetSlots,
    keys: Keys,
    period: Period,
    reservations: Sequence[Reservation],
    *,
    campaign: bool = True,
    hour: bool = True,
) -> None:
    """Give back `reservations`: one release.lua call per slot, all at once."""
    items: dict[tuple[str, str], list[tuple[int, str, int]]] = {}
    for r in reservations:
        for c in r.checks:
            if c.incr == 0 or (c.key == HOUR and not hour) or (c.key != HOUR and not campaign):
                continue
            where = ("ch", r.channel) if c.key == HOUR else ("b", r.campaign)
            items.setdefault(where, []).append((_KEY_NO[c.key], c.field, c.incr))
    calls = [
        slots.release_in_slot(
            channel_slot(keys, name, period) if kind == "ch" else campaign_slot(keys, name, period), part
        )
        for (kind, name), part in items.items()
    ]
    if len(calls) == 1:
        await calls[0]
        return
    failed = [r for r in await asyncio.gather(*calls, return_exceptions=True) if isinstance(r, BaseException)]
    if failed:
        raise StateUnavailable(str(failed[0])) from failed[0]
