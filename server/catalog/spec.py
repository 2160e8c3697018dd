"""The offer catalog's YAML specification (pydantic) and its errors.

Validation runs in two passes: pydantic checks structure and types here; then the compiler
(server.catalog.compiler) checks cross-references, channels, date ranges and rule expressions
against the live feature schema and builds the compiled form (server.catalog.compiled). Every
error names its path, line and column.
"""

from __future__ import annotations

import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import date, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from server.domain import CampaignType, Channel

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


class ArmInputSpec(_Spec):
    feature: str | None = None
    context: str | None = None
    model: Literal["logit"] | None = None
    center: float = 0.0
    scale: float = Field(1.0, gt=0.0)


class BanditSpec(_Spec):
    enabled: bool = True
    seed: int = 0
    samples: int = Field(256, ge=16, le=100_000)
    prior_sd: float = Field(0.5, gt=0.0, le=10.0)
    new_offer_sd: float = Field(1.5, gt=0.0, le=10.0)
    decay: float = Field(0.999, gt=0.0, le=1.0)
    exploration: float = Field(1.0, ge=0.0, le=5.0)
    epsilon: float = Field(0.0, ge=0.0, le=1.0)
    cross_tier: bool = False
    channels: dict[str, ExplorationSpec] = {}
    inputs: list[ArmInputSpec] = Field([], max_length=8)
    input_prior_sd: float = Field(0.05, gt=0.0, le=10.0)


class ChannelSpec(_Spec):
    capacity_per_hour: int | None = Field(None, ge=0)


class OfferSpec(_Spec):
    id: str
    campaign: str
    title: str
    script: str = ""
    value: float = Field(ge=0)
    max_value: float | None = Field(None, ge=0)  # None: 10 x value, at least 10 (the compiler)
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
    value: Literal["value", "margin"] = "value"


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


def pydantic_message(err: Mapping[str, Any]) -> str:
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
    if kind == "literal_error":
        return f"must be {ctx.get('expected', 'one of the allowed values')}, got {given!r}"
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


def did_you_mean(word: str, options: Any) -> str:
    close = difflib.get_close_matches(word, list(options), n=1)
    return f'; did you mean "{close[0]}"?' if close else ""
