"""The arms' learned posteriors, as the learner publishes them, and each candidate's posterior
over its offset on the model's log-odds.

An arm (offer x channel) has a Gaussian posterior over an intercept delta_0 and, when the catalog's
`bandit.inputs` declares inputs x_1..x_k, over one weight per input: the offset added to the
model's logit is delta_0 + sum_i delta_i x_i. The posterior is diagonal (a Laplace approximation,
Chapelle & Li 2011), so for given inputs the offset is itself Gaussian, with mean
m_0 + sum m_i x_i and variance 1/q_0 + sum x_i^2 / q_i: drawing the offset from that normal is
exactly drawing the weights and summing, and the bandit's draws stay one normal per candidate.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from server.catalog.exploration import BanditPolicy

F64 = npt.NDArray[np.float64]


@dataclass(frozen=True, slots=True)
class Arm:
    mean: float
    precision: float
    n: int
    signature: str = ""  # the input declaration the weights were learned under ("": no weights)
    weights: tuple[float, ...] = ()  # posterior means of the input weights
    weight_precisions: tuple[float, ...] = ()


@dataclass(frozen=True)
class Arms:
    """The learned posteriors, as published by the learner (one version at a time)."""

    version: int = 0
    arms: Mapping[str, Arm] = field(default_factory=dict)


NO_ARMS = Arms()


def arm_key(offer_id: str, channel: str) -> str:
    return f"{offer_id}|{channel}"


def decode_arm(raw: bytes | str) -> Arm:
    """`mean,precision,n`, then, for an arm with input weights, `,signature` and a
    `,mean,precision` pair per weight (the layout learn.lua writes)."""
    text = raw.decode() if isinstance(raw, bytes) else raw
    parts = text.split(",")
    if len(parts) == 3:
        return Arm(float(parts[0]), float(parts[1]), int(parts[2]))
    if len(parts) < 4 or len(parts) % 2:
        raise ValueError(f"not an arm: {text!r}")
    pairs = [float(x) for x in parts[4:]]
    return Arm(float(parts[0]), float(parts[1]), int(parts[2]), parts[3], tuple(pairs[0::2]), tuple(pairs[1::2]))


def encode_arm(arm: Arm) -> str:
    text = f"{arm.mean!r},{arm.precision!r},{arm.n}"
    if not arm.signature:
        return text
    pairs = ",".join(f"{m!r},{q!r}" for m, q in zip(arm.weights, arm.weight_precisions, strict=True))
    return f"{text},{arm.signature}" + (f",{pairs}" if pairs else "")


def posterior(
    policy: BanditPolicy, arms: Arms, channel: str, offer_ids: list[str], known: npt.NDArray[np.bool_]
) -> tuple[F64, F64, F64]:
    """(mean, sd, prior sd) of each offer's intercept on the channel."""
    n = len(offer_ids)
    mean, sd = np.zeros(n), np.empty(n)
    prior = np.where(known, policy.prior_sd, policy.new_offer_sd)
    for i, offer_id in enumerate(offer_ids):
        arm = arms.arms.get(arm_key(offer_id, channel))
        if arm is None:
            sd[i] = prior[i]
        else:
            mean[i], sd[i] = arm.mean, 1.0 / math.sqrt(arm.precision)
    return mean, sd, prior


@dataclass(frozen=True, slots=True)
class _ArmTable:
    """The learned arms of one channel over a fixed offer list, as arrays by position."""

    arms: Arms
    offer_ids: Sequence[str]
    learned: npt.NDArray[np.bool_]
    mean: F64
    sd: F64
    empty: bool  # no offer of the list has a learned arm on the channel
    broken: bool  # an arm whose precision gives no sd: `posterior` raises for it, as it always has
    # per offer and input, the weight's posterior mean and variance (the prior where not learned
    # under the policy's input declaration); empty without inputs
    weight_mean: F64
    weight_var: F64


_TABLES: dict[tuple[int, int, str, str], _ArmTable] = {}


def posterior_at(
    policy: BanditPolicy,
    arms: Arms,
    channel: str,
    offer_ids: Sequence[str],
    positions: npt.NDArray[np.intp],
    known: npt.NDArray[np.bool_],
    inputs: F64 | None = None,
) -> tuple[F64, F64, F64]:
    """(mean, sd, prior sd) of the offset of the offers at `positions` of `offer_ids` (a catalog's
    fixed list), from a table built once per published arms version and offer list. `inputs`
    (one row per position, one column per declared input) adds the weights' part."""
    key = (id(arms), id(offer_ids), channel, policy.signature)
    table = _TABLES.get(key)
    if table is None or table.arms is not arms or table.offer_ids is not offer_ids:
        table = _arm_table(policy, arms, channel, offer_ids)
    prior = np.where(known, policy.prior_sd, policy.new_offer_sd)
    if table.broken:
        mean, sd, prior = posterior(policy, arms, channel, [offer_ids[p] for p in positions.tolist()], known)
    elif table.empty:
        mean, sd = np.zeros(positions.size), prior.copy()
    else:
        mean, sd = table.mean[positions], np.where(table.learned[positions], table.sd[positions], prior)
    if inputs is None or not policy.inputs:
        return mean, sd, prior
    mean = mean + (table.weight_mean[positions] * inputs).sum(axis=1)
    sd = np.sqrt(sd * sd + (table.weight_var[positions] * (inputs * inputs)).sum(axis=1))
    return mean, sd, prior


def _arm_table(policy: BanditPolicy, arms: Arms, channel: str, offer_ids: Sequence[str]) -> _ArmTable:
    n, k = len(offer_ids), len(policy.inputs)
    learned, mean, sd, broken = np.zeros(n, dtype=np.bool_), np.zeros(n), np.ones(n), False
    weight_mean, weight_var = np.zeros((n, k)), np.full((n, k), policy.input_prior_sd**2)
    for i, offer_id in enumerate(offer_ids):
        arm = arms.arms.get(arm_key(offer_id, channel))
        if arm is None:
            continue
        learned[i], mean[i] = True, arm.mean
        try:
            sd[i] = 1.0 / math.sqrt(arm.precision)
        except (ValueError, ZeroDivisionError):
            broken = True
        if k and arm.signature == policy.signature and len(arm.weights) == k:
            weight_mean[i] = arm.weights
            weight_var[i] = [1.0 / q if q > 0 else math.inf for q in arm.weight_precisions]
    table = _ArmTable(arms, offer_ids, learned, mean, sd, not learned.any(), broken, weight_mean, weight_var)
    if len(_TABLES) >= 32:  # old arms versions and catalogs: dropped, rebuilt if ever used again
        _TABLES.clear()
    _TABLES[(id(arms), id(offer_ids), channel, policy.signature)] = table
    return table
