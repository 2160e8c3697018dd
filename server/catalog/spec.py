"""The offer catalog: its YAML specification, validation with precise errors, and the compiled
form the decision pipeline reads.

Validation runs in two passes: pydantic checks structure and types; then cross-references,
channels, date ranges and rule expressions (compiled against the live feature schema) are
checked. Every error names its path, line and column.
"""

from __future__ import annotations

import difflib
import hashlib
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

import numpy as np
import numpy.typing as npt
import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from server.catalog.budgets import Limits, PaceOver, Pacing, cents
from server.catalog.exploration import BanditPolicy, ChannelExploration
from server.catalog.rules import Rule, RuleError, compile_rule
from server.catalog.yaml_positions import Path_, YamlSyntaxError, format_path, load_with_positions, position_of
from server.domain import CampaignType, Channel
from server.features.schema import FeatureSchema
from server.ids import id_problem

CHANNEL_NAMES = tuple(c.value for c in Channel)
TYPE_NAMES = tuple(t.value for t in CampaignType)


# -- the YAML specification ------------------------------------------------------------------
class _Spec(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SegmentSpec(_Spec):
    rule: str
    description: str = ""


class CampaignSpec(_Spec):
    id: str
    type: str
    name: str = ""
    priority: int = Field(50, ge=0, le=100)
    start: datetime | date | None = None
    end: datetime | date | None = None
    channels: list[str]
    target: list[str] = []
    events: list[str] = []
    holdout: float = Field(0.0, ge=0.0, lt=1.0)
    holdout_salt: str | None = None
    budget: BudgetSpec | None = None


class PacingSpec(_Spec):
    over: str = "day"
    slack: float = Field(0.02, ge=0.0, le=1.0)


class BudgetSpec(_Spec):
    total_awards: int | None = Field(None, ge=0)
    daily_awards: int | None = Field(None, ge=0)
    total_spend: float | None = Field(None, ge=0)
    per_customer: int | None = Field(None, ge=0)
    pacing: PacingSpec | None = None


class ExplorationSpec(_Spec):
    exploration: float = Field(1.0, ge=0.0, le=5.0)
    epsilon: float = Field(0.0, ge=0.0, le=1.0)


class BanditSpec(_Spec):
    enabled: bool = True
    seed: int = 0
    samples: int = Field(256, ge=16, le=100_000)
    prior_sd: float = Field(0.5, gt=0.0, le=10.0)
    new_offer_sd: float = Field(1.5, gt=0.0, le=10.0)
    decay: float = Field(0.999, gt=0.0, le=1.0)
    exploration: float = Field(1.0, ge=0.0, le=5.0)
    epsilon: float = Field(0.0, ge=0.0, le=1.0)
    channels: dict[str, ExplorationSpec] = {}


class ChannelSpec(_Spec):
    capacity_per_hour: int | None = Field(None, ge=0)


class OfferSpec(_Spec):
    id: str
    campaign: str
    title: str
    script: str = ""
    value: float = Field(ge=0)
    cost: float = Field(0.0, ge=0)
    channels: list[str] | None = None
    eligibility: str | None = None
    channel_weight: dict[str, float] = {}
    lever: float = Field(1.0, ge=0)
    prior_propensity: float = Field(ge=0, le=1)
    budget: BudgetSpec | None = None


class ContactPolicySpec(_Spec):
    window_hours: float = Field(24.0, gt=0)
    max_per_window: dict[str, int] = {}
    decline_cooldown_days: float = Field(30.0, ge=0)
    max_presented_without_response: int = Field(3, ge=1)
    suppression_days: float = Field(30.0, ge=0)


class ControlGroupSpec(_Spec):
    fraction: float = Field(0.0, ge=0.0, lt=1.0)
    salt: str = "nbo"


class ArbitrationSpec(_Spec):
    high_priority_trigger: int = Field(50, ge=0, le=100)


class CatalogSpec(_Spec):
    name: str = "catalog"
    timezone: str = "UTC"
    context_keys: list[str] = []
    consent: dict[str, str] = {}
    consent_missing: str = "deny"
    min_expected_value: float = 0.0
    contact_policy: ContactPolicySpec = ContactPolicySpec()
    control_group: ControlGroupSpec = ControlGroupSpec()
    arbitration: ArbitrationSpec = ArbitrationSpec()
    channels: dict[str, ChannelSpec] = {}
    bandit: BanditSpec | None = None
    segments: dict[str, SegmentSpec] = {}
    campaigns: list[CampaignSpec]
    offers: list[OfferSpec]


# -- errors ------------------------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class CatalogError:
    path: str
    line: int
    column: int
    message: str

    def format(self, source: str) -> str:
        return f"{source}:{self.line}:{self.column}: {self.path}: {self.message}"

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


class CatalogInvalid(ValueError):
    def __init__(self, errors: list[CatalogError], source: str = "catalog") -> None:
        self.errors = errors
        self.source = source
        super().__init__(self.format_all(source))

    def format_all(self, source: str) -> str:
        return "\n".join(e.format(source) for e in self.errors)


def _pydantic_message(err: Mapping[str, Any]) -> str:
    kind, given, ctx = err["type"], err.get("input"), err.get("ctx") or {}
    if kind == "missing":
        return "required field is missing"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind in {"float_parsing", "float_type"}:
        return f"must be a number, got {given!r}"
    if kind in {"int_parsing", "int_type", "int_from_float"}:
        return f"must be a whole number, got {given!r}"
    if kind in {"string_type"}:
        return f"must be a string, got {given!r}"
    if kind in {"list_type"}:
        return f"must be a list, got {given!r}"
    if kind in {"dict_type", "model_type", "model_attributes_type"}:
        return f"must be a mapping, got {given!r}"
    if kind in {"bool_type", "bool_parsing"}:
        return f"must be true or false, got {given!r}"
    for op, word in (("ge", ">="), ("gt", ">"), ("le", "<="), ("lt", "<")):
        if (
            kind.startswith(
                {
                    "ge": "greater_than_equal",
                    "gt": "greater_than",
                    "le": "less_than_equal",
                    "lt": "less_than",
                }[op]
            )
            and op in ctx
        ):
            return f"must be {word} {ctx[op]}, got {given!r}"
    if "datetime" in kind or "date" in kind:
        return f"must be a date (2026-11-20) or date-time (2026-11-20T08:00:00Z), got {given!r}"
    return str(err["msg"])


def _did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f'; did you mean "{close[0]}"?' if close else ""


# -- the compiled catalog ---------------------------------------------------------------------
@dataclass(frozen=True, slots=True)
class Segment:
    name: str
    description: str
    rule: Rule


@dataclass(frozen=True, slots=True)
class Campaign:
    id: str
    name: str
    type: CampaignType
    priority: int
    tier: int
    start: float | None
    end: float | None
    channels: frozenset[Channel]
    target: tuple[int, ...]
    events: frozenset[str]
    holdout: float
    holdout_salt: str
    limits: Limits | None

    def live(self, now: float) -> bool:
        return (self.start is None or now >= self.start) and (self.end is None or now < self.end)


@dataclass(frozen=True, slots=True)
class Offer:
    id: str
    campaign: int
    campaign_id: str
    title: str
    script: str
    value: float
    cost: float
    channels: frozenset[Channel]
    eligibility: Rule | None
    channel_weight: Mapping[Channel, float]
    lever: float
    prior_propensity: float
    limits: Limits | None


@dataclass(frozen=True)
class ChannelView:
    """Everything about the offers on one channel, as arrays the pipeline can vectorise over."""

    offers: tuple[int, ...]
    offer_ids: tuple[str, ...]
    campaign_types: tuple[str, ...]
    offer_campaign: npt.NDArray[np.intp]  # position in `campaigns` of each offer's campaign
    campaigns: tuple[int, ...]
    prior: npt.NDArray[np.float64]
    value: npt.NDArray[np.float64]
    cost: npt.NDArray[np.float64]
    weight: npt.NDArray[np.float64]
    lever: npt.NDArray[np.float64]
    tier: npt.NDArray[np.int64]
    priority: npt.NDArray[np.int64]
    rules: tuple[tuple[int, Rule], ...]  # (position, eligibility rule) of offers that have one


@dataclass(frozen=True, slots=True)
class ContactPolicy:
    window_seconds: float
    max_per_window: Mapping[Channel, int]
    decline_cooldown_seconds: float
    max_presented_without_response: int
    suppression_seconds: float


# Arbitration tiers, best first: ad hoc > high-priority trigger > lifecycle > other trigger.
TIER_NAMES = ("ad hoc", "high-priority trigger", "lifecycle", "trigger")


@dataclass(frozen=True)
class Catalog:
    version: str
    content_hash: str
    name: str
    schema_version: int
    timezone: ZoneInfo
    context_keys: frozenset[str]
    consent: Mapping[Channel, int]  # feature index of the consent flag per channel
    consent_missing_allows: bool
    min_expected_value: float
    contact_policy: ContactPolicy
    control_fraction: float
    control_salt: str
    channel_capacity: Mapping[Channel, int]  # awards per hour
    bandit: BanditPolicy
    segments: tuple[Segment, ...]
    campaigns: tuple[Campaign, ...]
    offers: tuple[Offer, ...]
    views: Mapping[Channel, ChannelView]
    offer_index: Mapping[str, int] = field(default_factory=dict)


def content_hash(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


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


class _Checker:
    def __init__(self, positions: dict[Path_, tuple[int, int]]) -> None:
        self.positions = positions
        self.errors: list[CatalogError] = []

    def add(self, path: Path_, message: str, column_offset: int = 0) -> None:
        line, col = position_of(path, self.positions)
        self.errors.append(CatalogError(format_path(path), line, col + column_offset, message))

    def channel(self, path: Path_, name: str) -> Channel | None:
        if name in CHANNEL_NAMES:
            return Channel(name)
        self.add(path, f'unknown channel "{name}" (channels: {", ".join(CHANNEL_NAMES)})')
        return None

    def rule(self, path: Path_, source: str, schema: FeatureSchema, ctx: frozenset[str]) -> Rule | None:
        try:
            return compile_rule(source, schema, ctx)
        except RuleError as err:
            # column of the rule text in the YAML, when the rule is written plainly on its line
            self.add(path, f"col {err.column}: {err.message}")
            return None


def parse_catalog(text: str, schema: FeatureSchema, *, version: str = "draft") -> Catalog:
    """Validate catalog YAML against a feature schema; raise CatalogInvalid with every error."""
    try:
        data, positions = load_with_positions(text)
    except YamlSyntaxError as err:
        raise CatalogInvalid([CatalogError("(yaml)", err.line, err.column, err.message)]) from err
    if not isinstance(data, dict):
        raise CatalogInvalid([CatalogError("(top level)", 1, 1, "catalog must be a mapping")])
    check = _Checker(positions)
    try:
        spec = CatalogSpec.model_validate(data)
    except ValidationError as err:
        for e in err.errors():
            check.add(tuple(e["loc"]), _pydantic_message(e))
        raise CatalogInvalid(check.errors) from None
    catalog = _compile(spec, schema, version, content_hash(text), check)
    if check.errors or catalog is None:
        raise CatalogInvalid(check.errors)
    return catalog


def _compile(spec: CatalogSpec, schema: FeatureSchema, version: str, digest: str, check: _Checker) -> Catalog | None:
    try:
        tz = ZoneInfo(spec.timezone)
    except (ZoneInfoNotFoundError, ValueError):
        check.add(("timezone",), f'unknown time zone "{spec.timezone}"')
        tz = ZoneInfo("UTC")
    ctx_keys: set[str] = set()
    for i, key in enumerate(spec.context_keys):
        if not key.isidentifier() or not key.islower():
            check.add(("context_keys", i), f'context key "{key}" must be lower_snake_case')
        ctx_keys.add(key)
    context_keys = frozenset(ctx_keys)

    consent: dict[Channel, int] = {}
    for ch_name, feature in spec.consent.items():
        ch = check.channel(("consent", ch_name), ch_name)
        idx = schema.index(feature)
        if idx is None:
            check.add(("consent", ch_name), f'unknown feature "{feature}"' + _did_you_mean(feature, schema.names))
        elif ch is not None:
            consent[ch] = idx
    if spec.consent_missing not in {"allow", "deny"}:
        check.add(("consent_missing",), f'must be "allow" or "deny", got "{spec.consent_missing}"')

    cp = spec.contact_policy
    caps: dict[Channel, int] = {}
    for ch_name, cap in cp.max_per_window.items():
        ch = check.channel(("contact_policy", "max_per_window", ch_name), ch_name)
        if cap < 0:
            check.add(("contact_policy", "max_per_window", ch_name), f"must be >= 0, got {cap}")
        elif ch is not None:
            caps[ch] = cap
    policy = ContactPolicy(
        window_seconds=cp.window_hours * 3600,
        max_per_window=caps,
        decline_cooldown_seconds=cp.decline_cooldown_days * 86400,
        max_presented_without_response=cp.max_presented_without_response,
        suppression_seconds=cp.suppression_days * 86400,
    )

    segments: list[Segment] = []
    segment_index: dict[str, int] = {}
    for name, seg in spec.segments.items():
        if problem := id_problem(name):
            check.add(("segments", name), f"segment name {problem}")
        rule = check.rule(("segments", name, "rule"), seg.rule, schema, context_keys)
        if rule is not None:
            segment_index[name] = len(segments)
            segments.append(Segment(name, seg.description or name.replace("_", " "), rule))
        else:
            segment_index[name] = -1

    campaigns: list[Campaign] = []
    campaign_index: dict[str, int] = {}
    for i, c in enumerate(spec.campaigns):
        base: Path_ = ("campaigns", i)
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
                check.add(
                    (*base, "target", j),
                    f'unknown segment "{seg_name}"' + _did_you_mean(seg_name, segment_index),
                )
            else:
                targets.append(segment_index[seg_name])
        if kind is CampaignType.TRIGGER and not c.events:
            check.add((*base, "events"), "a trigger campaign must list the events that fire it")
        if kind is not None and kind is not CampaignType.TRIGGER and c.events:
            check.add((*base, "events"), f"only trigger campaigns have events; this one is {kind.value}")
        for j, ev in enumerate(c.events):
            if problem := id_problem(ev):
                check.add((*base, "events", j), f"event name {problem}")
        start, end = _timestamp(c.start, tz, end=False), _timestamp(c.end, tz, end=True)
        if start is not None and end is not None and end <= start:
            check.add((*base, "end"), "end must be after start")
        campaign_index.setdefault(c.id, len(campaigns))
        campaigns.append(
            Campaign(
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
        )

    offers: list[Offer] = []
    offer_ids: set[str] = set()
    for i, o in enumerate(spec.offers):
        base = ("offers", i)
        if problem := id_problem(o.id):
            check.add((*base, "id"), f"offer id {problem}")
        if o.id in offer_ids:
            check.add((*base, "id"), f'duplicate offer id "{o.id}"')
        offer_ids.add(o.id)
        ci = campaign_index.get(o.campaign)
        if ci is None:
            check.add(
                (*base, "campaign"),
                f'unknown campaign "{o.campaign}"' + _did_you_mean(o.campaign, campaign_index),
            )
            continue
        camp = campaigns[ci]
        if o.channels is None:
            channels = set(camp.channels)
        else:
            channels = set()
            for j, n in enumerate(o.channels):
                ch = check.channel((*base, "channels", j), n)
                if ch is not None and ch not in camp.channels:
                    check.add((*base, "channels", j), f'channel "{n}" is not a channel of campaign "{camp.id}"')
                elif ch is not None:
                    channels.add(ch)
        weights: dict[Channel, float] = {}
        for n, w in o.channel_weight.items():
            ch = check.channel((*base, "channel_weight", n), n)
            if w < 0:
                check.add((*base, "channel_weight", n), f"must be >= 0, got {w}")
            elif ch is not None:
                weights[ch] = w
        rule = None
        if o.eligibility is not None:
            rule = check.rule((*base, "eligibility"), o.eligibility, schema, context_keys)
        offers.append(
            Offer(
                id=o.id,
                campaign=ci,
                campaign_id=camp.id,
                title=o.title,
                script=o.script,
                value=o.value,
                cost=o.cost,
                channels=frozenset(channels),
                eligibility=rule,
                channel_weight=weights,
                lever=o.lever,
                prior_propensity=o.prior_propensity,
                limits=_limits(check, (*base, "budget"), o.budget, camp.start, camp.end),
            )
        )
    capacity: dict[Channel, int] = {}
    for ch_name, ch_spec in spec.channels.items():
        ch = check.channel(("channels", ch_name), ch_name)
        if ch is not None and ch_spec.capacity_per_hour is not None:
            capacity[ch] = ch_spec.capacity_per_hour
    if not offers and not check.errors:
        check.add(("offers",), "the catalog has no offers")
    if check.errors:
        return None
    views = {ch: _view(ch, campaigns, offers) for ch in Channel}
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
        bandit=_bandit(check, spec.bandit),
        segments=tuple(segments),
        campaigns=tuple(campaigns),
        offers=tuple(offers),
        views=views,
        offer_index={o.id: i for i, o in enumerate(offers)},
    )


def bandit_policy(text: str) -> BanditPolicy:
    """The `bandit` section of a catalog that was validated when it was published."""
    data = yaml.safe_load(text) or {}
    raw = data.get("bandit") if isinstance(data, dict) else None
    spec = BanditSpec.model_validate(raw) if raw is not None else None
    return _bandit(_Checker({}), spec)


def _bandit(check: _Checker, spec: BanditSpec | None) -> BanditPolicy:
    if spec is None:
        return BanditPolicy()
    channels: dict[Channel, ChannelExploration] = {}
    for name, ex in spec.channels.items():
        ch = check.channel(("bandit", "channels", name), name)
        if ch is not None:
            channels[ch] = ChannelExploration(ex.exploration, ex.epsilon)
    return BanditPolicy(
        enabled=spec.enabled,
        seed=spec.seed,
        samples=spec.samples,
        prior_sd=spec.prior_sd,
        new_offer_sd=spec.new_offer_sd,
        decay=spec.decay,
        channels=channels,
        default=ChannelExploration(spec.exploration, spec.epsilon),
    )


def _limits(
    check: _Checker, path: Path_, spec: BudgetSpec | None, start: float | None, end: float | None
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


def _view(channel: Channel, campaigns: list[Campaign], offers: list[Offer]) -> ChannelView:
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
    )
