"""The catalog of a synthetic world (`World.catalog_yaml`): its spec's campaigns, offers,
segments and rules, with the contact policy and control group every world shares."""

from __future__ import annotations

from typing import Any

import yaml

from training.world_default import DEFAULT
from training.world_spec import CONTEXT_KEYS, WorldLike


def catalog_yaml(world: WorldLike) -> str:
    """A catalog for this world's offers, valid against its feature schema."""
    spec = world.spec
    used = {c for c in world.offer_campaign}
    campaigns = []
    for c in spec.campaigns:
        if c.id not in used:
            continue
        camp: dict[str, Any] = {"id": c.id, "name": c.name, "type": c.type, "priority": c.priority}
        camp["channels"] = list(c.channels)
        if c.events:
            camp["events"] = list(c.events)
        if c.id in spec.targets:
            camp["target"] = spec.targets[c.id]
        if c.id in spec.holdouts:
            camp["holdout"] = spec.holdouts[c.id]
        campaigns.append(camp)
    offers = []
    for j, oid in enumerate(world.offer_ids):
        kind = world.offer_kind[j]
        title = spec.titles[kind].format(pct=10 + 5 * (j % 5), months=3 + 3 * (j % 2), points=250 * (1 + j % 4))
        offer: dict[str, Any] = {
            "id": oid,
            "campaign": world.offer_campaign[j],
            "title": title,
            "script": spec.scripts[kind],
            "value": float(world.offer_value[j]),
            "cost": float(world.offer_cost[j]),
            "channels": list(world.offer_channels[j]),
        }
        if kind in spec.eligibility:
            offer["eligibility"] = spec.eligibility[kind]
        offer["prior_propensity"] = float(world.prior_propensity[j])
        offers.append(offer)
    doc: dict[str, Any] = {
        "name": f"{spec.catalog_name}-{world.seed}",
        "timezone": "UTC",
        "context_keys": list(CONTEXT_KEYS),
        "consent": {"call_centre": "consent_call", "web": "consent_web", "email": "consent_email"},
        "consent_missing": "deny",
        "min_expected_value": 0.1,
        "contact_policy": {
            "window_hours": 24,
            "max_per_window": {"call_centre": 3, "web": 6, "email": 1},
            "decline_cooldown_days": 30,
            "max_presented_without_response": 3,
            "suppression_days": 14,
        },
        "control_group": {"fraction": 0.05, "salt": f"world-{world.seed}"},
        "segments": {name: {"rule": rule, "description": desc} for name, (rule, desc) in spec.segments.items()},
        "campaigns": campaigns,
        "offers": offers,
    }
    header = (
        f"# Synthetic world catalog (training.world, seed {world.seed}): {world.n_offers} offers.\n"
        "# Generated; see training/world.py for the hidden response model behind it.\n"
        if spec is DEFAULT
        else f"# Synthetic world catalog (training.world, world {spec.name}, seed {world.seed}): "
        f"{world.n_offers} offers.\n# Generated; see training/world_{spec.name}.py for the hidden response.\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, width=120, default_flow_style=None)
