"""The catalog compiler: a validated spec, checked against the feature schema, becomes the
immutable Catalog the pipeline reads. Each section has its own function; every problem is added
to one checker, so a publish reports all of them at once, each with its line and column.
"""

from __future__ import annotations

from datetime import UTC, date, datetime, time, timedelta
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
from pydantic import ValidationError

from server.catalog.bandit_section import compile_bandit
from server.catalog.budgets import Limits, PaceOver, Pacing, cents
from server.catalog.checker import Checker
from server.catalog.compiled import Campaign, Catalog, ChannelView, ContactPolicy, Offer, Segment, content_hash
from server.catalog.rules import Rule
from server.catalog.spec import (
    TYPE_NAMES,
    BudgetSpec,
    CampaignSpec,
    CatalogError,
    CatalogInvalid,
    CatalogSpec,
    ContactPolicySpec,
    OfferSpec,
    did_you_mean,
    pydantic_message,
)
from server.catalog.yaml_positions import Path_, YamlSyntaxError, load_with_positions
from server.domain import CampaignType, Channel
from server.features.schema import FeatureSchema
from server.ids import id_problem


def _tier(kind: CampaignType, priority: int, high: int) -> int:
    if kind is CampaignType.AD_HOC:
        return 0
    if kind is CampaignType.TRIGGER:
        return 1 if priority >= high else 3
    return 2


def _timestamp(value: datetime | date | None, tz: ZoneInfo, *, end: bool) -> float | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        # a bare date covers the whole day: start at its midnight, end after it
        value = datetime.combine(value + timedelta(days=1) if end else value, time(), tzinfo=tz)
    elif value.tzinfo is None:
        value = value.replace(tzinfo=tz)
    return value.astimezone(UTC).timestamp()


def parse_catalog(text: str, schema: FeatureSchema, *, version: str = "draft") -> Catalog:
    """Validate catalog YAML against a feature schema; raise CatalogInvalid with every error."""
    try:
        data, positions = load_with_positions(text)
    except YamlSyntaxError as err:
        raise CatalogInvalid([CatalogError("(yaml)", err.line, err.column, err.message)]) from err
    if not isinstance(data, dict):
        raise CatalogInvalid([CatalogError("(top level)", 1, 1, "catalog must be a mapping")])
    check = Checker(positions)
    try:
        spec = CatalogSpec.model_validate(data)
    except ValidationError as err:
        for e in err.errors():
            check.add(tuple(e["loc"]), pydantic_message(e))
        raise CatalogInvalid(check.errors) from None
    catalog = _compile(spec, schema, version, content_hash(text), check)
    if check.errors or catalog is None:
        raise CatalogInvalid(check.errors)
    return catalog


def _compile(spec: CatalogSpec, schema: FeatureSchema, version: str, digest: str, check: Checker) -> Catalog | None:
    tz = _timezone(check, spec.timezone)
    context_keys = _context_keys(check, spec.context_keys)
    consent = _consent(check, spec, schema)
    policy = _contact_policy(check, spec.contact_policy)
    segments, segment_index = _segments(check, spec, schema, context_keys)
    campaigns: list[Campaign] = []
    campaign_index: dict[str, int] = {}
    for i, c in enumerate(spec.campaigns):
        campaign = _campaign(check, ("campaigns", i), c, spec, tz, segment_index, campaign_index)
        campaign_index.setdefault(c.id, len(campaigns))
        campaigns.append(campaign)
    offers = _offers(check, spec, schema, context_keys, campaigns, campaign_index)
    capacity = _capacity(check, spec)
    if not offers and not check.errors:
        check.add(("offers",), "the catalog has no offers")
    if check.errors:
        return None
    return Catalog(
        version=version,
        content_hash=digest,
        name=spec.name,
        schema_version=schema.version,
        timezone=tz,
        context_keys=context_keys,
        consent=consent,
        consent_missing_allows=spec.consent_missing == "allow",
        min_expected_value=spec.min_expected_value,
        contact_policy=policy,
        control_fraction=spec.control_group.fraction,
        control_salt=spec.control_group.salt,
        channel_capacity=capacity,
        bandit=compile_bandit(check, spec.bandit, schema, context_keys),
        segments=tuple(segments),
        campaigns=tuple(campaigns),
        offers=tuple(offers),
        views={ch: _view(ch, campaigns, offers, spec.arbitration.value == "margin") for ch in Channel},
        offer_index={o.id: i for i, o in enumerate(offers)},
    )


def _timezone(check: Checker, name: str) -> ZoneInfo:
    try:
        return ZoneInfo(name)
    except (ZoneInfoNotFoundError, ValueError):
        check.add(("timezone",), f'unknown time zone "{name}"')
        return ZoneInfo("UTC")


def _context_keys(check: Checker, keys: list[str]) -> frozenset[str]:
    for i, key in enumerate(keys):
        if not key.isidentifier() or not key.islower():
            check.add(("context_keys", i), f'context key "{key}" must be lower_snake_case')
    return frozenset(keys)


def _consent(check: Checker, spec: CatalogSpec, schema: FeatureSchema) -> dict[Channel, int]:
    consent: dict[Channel, int] = {}
    for ch_name, feature in spec.consent.items():
        ch = check.channel(("consent", ch_name), ch_name)
        idx = schema.index(feature)
        if idx is None:
            check.add(("consent", ch_name), f'unknown feature "{feature}"' + did_you_mean(feature, schema.names))
        elif ch is not None:
            consent[ch] = idx
    if spec.consent_missing not in {"allow", "deny"}:
        check.add(("consent_missing",), f'must be "allow" or "deny", got "{spec.consent_missing}"')
    return consent


def _contact_policy(check: Checker, cp: ContactPolicySpec) -> ContactPolicy:
    caps: dict[Channel, int] = {}
    for ch_name, cap in cp.max_per_window.items():
        ch = check.channel(("contact_policy", "max_per_window", ch_name), ch_name)
        if cap < 0:
            check.add(("contact_policy", "max_per_window", ch_name), f"must be >= 0, got {cap}")
        elif ch is not None:
            caps[ch] = cap
    return ContactPolicy(
        window_seconds=cp.window_hours * 3600,
        max_per_window=caps,
        decline_cooldown_seconds=cp.decline_cooldown_days * 86400,
        max_presented_without_response=cp.max_presented_without_response,
        suppression_seconds=cp.suppression_days * 86400,
    )


def _segments(
    check: Checker, spec: CatalogSpec, schema: FeatureSchema, context_keys: frozenset[str]
) -> tuple[list[Segment], dict[str, int]]:
    segments: list[Segment] = []
    index: dict[str, int] = {}  # -1: named but its rule did not compile
    for name, seg in spec.segments.items():
        if problem := id_problem(name):
            check.add(("segments", name), f"segment name {problem}")
        rule = check.rule(("segments", name, "rule"), seg.rule, schema, context_keys)
        if rule is not None:
            index[name] = len(segments)
            segments.append(Segment(name, seg.description or name.replace("_", " "), rule))
        else:
            index[name] = -1
    return segments, index


def _campaign(
    check: Checker,
    base: Path_,
    c: CampaignSpec,
    spec: CatalogSpec,
    tz: ZoneInfo,
    segment_index: dict[str, int],
    campaign_index: dict[str, int],
) -> Campaign:
    if problem := id_problem(c.id):
        check.add((*base, "id"), f"campaign id {problem}")
    if c.id in campaign_index:
        check.add((*base, "id"), f'duplicate campaign id "{c.id}"')
    kind = CampaignType(c.type) if c.type in TYPE_NAMES else None
    if kind is None:
        check.add((*base, "type"), f'unknown campaign type "{c.type}" (types: {", ".join(TYPE_NAMES)})')
    if not c.channels:
        check.add((*base, "channels"), "must name at least one channel")
    channels = {ch for j, n in enumerate(c.channels) if (ch := check.channel((*base, "channels", j), n))}
    targets: list[int] = []
    for j, seg_name in enumerate(c.target):
        if seg_name not in segment_index:
            check.add((*base, "target", j), f'unknown segment "{seg_name}"' + did_you_mean(seg_name, segment_index))
        else:
            targets.append(segment_index[seg_name])
    _check_events(check, base, c, kind)
    start, end = _timestamp(c.start, tz, end=False), _timestamp(c.end, tz, end=True)
    if start is not None and end is not None and end <= start:
        check.add((*base, "end"), "end must be after start")
    return Campaign(
        id=c.id,
        name=c.name or c.id.replace("_", " "),
        type=kind or CampaignType.LIFECYCLE,
        priority=c.priority,
        tier=_tier(kind or CampaignType.LIFECYCLE, c.priority, spec.arbitration.high_priority_trigger),
        start=start,
        end=end,
        channels=frozenset(channels),
        target=tuple(targets),
        events=frozenset(c.events),
        holdout=c.holdout,
        holdout_salt=c.holdout_salt or c.id,
        limits=_limits(check, (*base, "budget"), c.budget, start, end),
    )


def _check_events(check: Checker, base: Path_, c: CampaignSpec, kind: CampaignType | None) -> None:
    if kind is CampaignType.TRIGGER and not c.events:
        check.add((*base, "events"), "a trigger campaign must list the events that fire it")
    if kind is not None and kind is not CampaignType.TRIGGER and c.events:
        check.add((*base, "events"), f"only trigger campaigns have events; this one is {kind.value}")
    for j, ev in enumerate(c.events):
        if problem := id_problem(ev):
            check.add((*base, "events", j), f"event name {problem}")


def _offers(
    check: Checker,
    spec: CatalogSpec,
    schema: FeatureSchema,
    context_keys: frozenset[str],
    campaigns: list[Campaign],
    campaign_index: dict[str, int],
) -> list[Offer]:
    offers: list[Offer] = []
    offer_ids: set[str] = set()
    for i, o in enumerate(spec.offers):
        base: Path_ = ("offers", i)
        if problem := id_problem(o.id):
            check.add((*base, "id"), f"offer id {problem}")
        if o.id in offer_ids:
            check.add((*base, "id"), f'duplicate offer id "{o.id}"')
        offer_ids.add(o.id)
        ci = campaign_index.get(o.campaign)
        if ci is None:
            check.add(
                (*base, "campaign"), f'unknown campaign "{o.campaign}"' + did_you_mean(o.campaign, campaign_index)
            )
            continue
        offers.append(_offer(check, base, o, ci, campaigns[ci], schema, context_keys))
    return offers


def _offer(
    check: Checker,
    base: Path_,
    o: OfferSpec,
    ci: int,
    camp: Campaign,
    schema: FeatureSchema,
    context_keys: frozenset[str],
) -> Offer:
    channels = _offer_channels(check, base, o, camp)
    weights: dict[Channel, float] = {}
    for n, w in o.channel_weight.items():
        ch = check.channel((*base, "channel_weight", n), n)
        if w < 0:
            check.add((*base, "channel_weight", n), f"must be >= 0, got {w}")
        elif ch is not None:
            weights[ch] = w
    rule: Rule | None = None
    if o.eligibility is not None:
        rule = check.rule((*base, "eligibility"), o.eligibility, schema, context_keys)
    return Offer(
        id=o.id,
        campaign=ci,
        campaign_id=camp.id,
        title=o.title,
        script=o.script,
        value=o.value,
        max_value=_max_value(check, base, o),
        cost=o.cost,
        channels=frozenset(channels),
        eligibility=rule,
        channel_weight=weights,
        lever=o.lever,
        prior_propensity=o.prior_propensity,
        limits=_limits(check, (*base, "budget"), o.budget, camp.start, camp.end),
    )


def _max_value(check: Checker, base: Path_, o: OfferSpec) -> float:
    """The largest outcome value accepted for the offer: by default 10 x its value, and at least
    10, so that an offer valued 0 still takes small reported amounts."""
    if o.max_value is None:
        return 10.0 * max(o.value, 1.0)
    if o.max_value < o.value:
        check.add((*base, "max_value"), f"must be >= the offer's value ({o.value:g}), got {o.max_value:g}")
    return o.max_value


def _offer_channels(check: Checker, base: Path_, o: OfferSpec, camp: Campaign) -> set[Channel]:
    if o.channels is None:
        return set(camp.channels)
    channels: set[Channel] = set()
    for j, n in enumerate(o.channels):
        ch = check.channel((*base, "channels", j), n)
        if ch is not None and ch not in camp.channels:
            check.add((*base, "channels", j), f'channel "{n}" is not a channel of campaign "{camp.id}"')
        elif ch is not None:
            channels.add(ch)
    return channels


def _capacity(check: Checker, spec: CatalogSpec) -> dict[Channel, int]:
    capacity: dict[Channel, int] = {}
    for ch_name, ch_spec in spec.channels.items():
        ch = check.channel(("channels", ch_name), ch_name)
        if ch is not None and ch_spec.capacity_per_hour is not None:
            capacity[ch] = ch_spec.capacity_per_hour
    return capacity


def _limits(
    check: Checker, path: Path_, spec: BudgetSpec | None, start: float | None, end: float | None
) -> Limits | None:
    if spec is None:
        return None
    pacing = None
    if spec.pacing is not None:
        over = PaceOver(spec.pacing.over) if spec.pacing.over in {p.value for p in PaceOver} else None
        if over is None:
            check.add((*path, "pacing", "over"), f'must be "day" or "window", got "{spec.pacing.over}"')
        elif over is PaceOver.DAY and spec.daily_awards is None:
            check.add((*path, "pacing"), "pacing over the day needs daily_awards")
        elif over is PaceOver.WINDOW and (start is None or end is None):
            check.add((*path, "pacing"), "pacing over the window needs the campaign's start and end")
        elif over is PaceOver.WINDOW and spec.total_awards is None and spec.total_spend is None:
            check.add((*path, "pacing"), "pacing over the window needs total_awards or total_spend")
        else:
            pacing = Pacing(over, spec.pacing.slack)
    return Limits(
        total_awards=spec.total_awards,
        daily_awards=spec.daily_awards,
        total_spend_cents=None if spec.total_spend is None else cents(spec.total_spend),
        per_customer=spec.per_customer,
        pacing=pacing,
    )


def _view(channel: Channel, campaigns: list[Campaign], offers: list[Offer], margin: bool) -> ChannelView:
    on = [i for i, o in enumerate(offers) if channel in o.channels]
    camp_ids = sorted({offers[i].campaign for i in on})
    camp_pos = {c: p for p, c in enumerate(camp_ids)}
    rules = tuple((p, offers[i].eligibility) for p, i in enumerate(on) if offers[i].eligibility is not None)
    return ChannelView(
        offers=tuple(on),
        offer_ids=tuple(offers[i].id for i in on),
        campaign_types=tuple(campaigns[offers[i].campaign].type.value for i in on),
        offer_campaign=np.array([camp_pos[offers[i].campaign] for i in on], dtype=np.intp),
        campaigns=tuple(camp_ids),
        prior=np.array([offers[i].prior_propensity for i in on], dtype=np.float64),
        value=np.array([offers[i].value for i in on], dtype=np.float64),
        cost=np.array([offers[i].cost for i in on], dtype=np.float64),
        weight=np.array([offers[i].channel_weight.get(channel, 1.0) for i in on], dtype=np.float64),
        lever=np.array([offers[i].lever for i in on], dtype=np.float64),
        tier=np.array([campaigns[offers[i].campaign].tier for i in on], dtype=np.int64),
        priority=np.array([campaigns[offers[i].campaign].priority for i in on], dtype=np.int64),
        rules=rules,  # type: ignore[arg-type]
        margin=margin,
    )
