"""The catalog's `bandit:` section, checked and compiled into a BanditPolicy."""

from __future__ import annotations

import yaml

from server.catalog.checker import Checker
from server.catalog.exploration import ArmInput, BanditPolicy, ChannelExploration
from server.catalog.spec import ArmInputSpec, BanditSpec, did_you_mean
from server.domain import Channel
from server.features.schema import FeatureSchema


def bandit_policy(text: str) -> BanditPolicy:
    """The `bandit` section of a catalog that was validated when it was published. Feature inputs
    are not resolved to vector positions (no schema here): enough for the learner, which needs
    the priors, the decay and the inputs' signature, not the customers' vectors."""
    data = yaml.safe_load(text) or {}
    raw = data.get("bandit") if isinstance(data, dict) else None
    spec = BanditSpec.model_validate(raw) if raw is not None else None
    return compile_bandit(Checker({}), spec, None, frozenset())


def compile_bandit(
    check: Checker, spec: BanditSpec | None, schema: FeatureSchema | None, context_keys: frozenset[str]
) -> BanditPolicy:
    if spec is None:
        return BanditPolicy()
    channels: dict[Channel, ChannelExploration] = {}
    for name, ex in spec.channels.items():
        ch = check.channel(("bandit", "channels", name), name)
        if ch is not None:
            channels[ch] = ChannelExploration(ex.exploration, ex.epsilon)
    inputs = [_input(check, ("bandit", "inputs", i), s, schema, context_keys) for i, s in enumerate(spec.inputs)]
    labels = [i.label for i in inputs if i is not None]
    for i, label in enumerate(labels):
        if label in labels[:i]:
            check.add(("bandit", "inputs", i), f"{label} is declared twice")
    return BanditPolicy(
        enabled=spec.enabled,
        seed=spec.seed,
        samples=spec.samples,
        prior_sd=spec.prior_sd,
        new_offer_sd=spec.new_offer_sd,
        decay=spec.decay,
        cross_tier=spec.cross_tier,
        channels=channels,
        default=ChannelExploration(spec.exploration, spec.epsilon),
        inputs=tuple(i for i in inputs if i is not None),
        input_prior_sd=spec.input_prior_sd,
    )


def _input(
    check: Checker,
    path: tuple[str | int, ...],
    spec: ArmInputSpec,
    schema: FeatureSchema | None,
    context_keys: frozenset[str],
) -> ArmInput | None:
    given = [(k, v) for k, v in (("feature", spec.feature), ("context", spec.context), ("model", spec.model)) if v]
    if len(given) != 1:
        check.add(path, "an input names exactly one of feature, context or model (model: logit)")
        return None
    kind, name = given[0]
    index = -1
    if kind == "feature" and schema is not None:
        found = schema.index(name)
        if found is None:
            check.add((*path, "feature"), f'unknown feature "{name}"{did_you_mean(name, schema.names)}')
            return None
        if schema.features[found].kind != "numeric":
            check.add((*path, "feature"), f'feature "{name}" is categorical; an arm input must be numeric')
            return None
        index = found
    if kind == "context" and schema is not None and name not in context_keys:
        check.add(
            (*path, "context"), f'"{name}" is not one of the catalog\'s context_keys{did_you_mean(name, context_keys)}'
        )
        return None
    return ArmInput(kind, name, spec.center, spec.scale, index)  # type: ignore[arg-type]
