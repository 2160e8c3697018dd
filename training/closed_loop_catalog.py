"""The catalog a closed-loop run (`nbo simulate`) publishes: the world's, with a bandit section
(the simulation's settings or the caller's) and, optionally, standardised arm inputs."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import yaml

from training.population import CATEGORICAL
from training.world import World

BANDIT_YAML = """
bandit:
  seed: {seed}
  samples: 256
  prior_sd: 0.4
  new_offer_sd: 1.5
  decay: 0.998
  channels:
    web: {{exploration: 1.0, epsilon: 0.02}}
    call_centre: {{exploration: 0.6, epsilon: 0.0}}
"""


def catalog_text(
    world: World, seed: int, *, bandit: bool = True, arm_inputs: Sequence[str] = (), bandit_yaml: str | None = None
) -> str:
    """The world's catalog with the simulation's bandit section (unless `bandit` is off), or with
    `bandit_yaml` instead (YAML text whose one key is `bandit`). Each of `arm_inputs` (numeric
    customer features) becomes a standardised input of every arm: `{feature, center, scale}`
    with the feature's mean and sd over the world's customers."""
    text = world.catalog_yaml()
    if not bandit:
        if arm_inputs or bandit_yaml is not None:
            raise ValueError("arm inputs and bandit settings need the bandit")
        return text
    if bandit_yaml is not None:
        doc = yaml.safe_load(bandit_yaml)
        if not isinstance(doc, dict) or list(doc) != ["bandit"] or not isinstance(doc["bandit"], dict):
            raise ValueError("bandit settings: expected a YAML mapping whose one key is `bandit`")
        section = dict(doc["bandit"])
        if arm_inputs:
            section["inputs"] = arm_input_stats(world, arm_inputs)
        return text + "\n" + yaml.safe_dump({"bandit": section}, sort_keys=False, default_flow_style=None)
    text += BANDIT_YAML.format(seed=seed)
    if arm_inputs:
        text += "  inputs:\n" + "".join(
            f"    - {{feature: {i['feature']}, center: {i['center']}, scale: {i['scale']}}}\n"
            for i in arm_input_stats(world, arm_inputs)
        )
    return text


def arm_input_stats(world: World, names: Sequence[str]) -> list[dict[str, Any]]:
    """{feature, center, scale} per name: the feature's mean and sd over the world's customers."""
    out: list[dict[str, Any]] = []
    numeric = [c for c in world.population.columns if c not in CATEGORICAL]
    for name in names:
        if name not in numeric:
            raise ValueError(
                f"arm input {name!r} is not a numeric customer feature of this world ({', '.join(numeric)})"
            )
        center, scale = world.feature_stats(name)
        out.append({"feature": name, "center": round(center, 4), "scale": round(scale, 4)})
    return out
