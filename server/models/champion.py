"""Champion and challenger: a share of customers scored by a second published model.

The setting lives in Redis beside `model:current` (`model:challenger`, a JSON {version, share,
salt}); every worker's model reloader polls both and swaps the pair in by reference. Which model
decides for a customer is a salted hash of the customer id (server.pipeline.scoring), so a
customer meets the same model on every replica and after restarts, and another salt draws an
independent split. `promote` makes the challenger (or any stored version) the live model and
clears the split.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import redis

from server.models.registry import ModelRejected, Split, read_split, text
from server.models.scorers import Scorer
from server.state.keys import Keys

CHAMPION = "champion"
CHALLENGER = "challenger"


@dataclass(frozen=True, slots=True)
class Challenger:
    """What the hot path holds while a split is on: the challenger's scorer and its share."""

    scorer: Scorer
    share: float
    salt: str


def set_challenger(client: redis.Redis, keys: Keys, version: str, share: float, salt: str | None) -> Split:
    """Send `share` of customers to the stored model `version`; ModelRejected on a bad input."""
    if not (math.isfinite(share) and 0.0 < share < 1.0):
        raise ModelRejected(f"share must be between 0 and 1 (exclusive), not {share:g}")
    if client.get(keys.model(version)) is None:
        raise ModelRejected(f"unknown model version {version!r}: publish it first (nbo model list shows those known)")
    live = client.get(keys.model_current)
    if live is None:
        raise ModelRejected("no live model: publish a champion before adding a challenger")
    if text(live) == version:
        raise ModelRejected(f"{version} is the live model; a challenger must be another version")
    # by default the salt is the version: each new challenger draws a split of its own
    split = Split(version, share, salt if salt else f"challenger:{version}")
    client.set(keys.model_challenger, split.to_json())
    return split


def clear_challenger(client: redis.Redis, keys: Keys) -> Split | None:
    """End the split (every customer back to the live model); the split that was on, if any."""
    pipe = client.pipeline(transaction=True)
    pipe.get(keys.model_challenger)
    pipe.delete(keys.model_challenger)
    raw, _ = pipe.execute()
    return None if raw is None else Split.from_json(raw)


def promote(client: redis.Redis, keys: Keys, version: str | None = None) -> str:
    """Make the challenger (or the stored `version`) the live model and clear the split."""
    split = read_split(client, keys)
    if version is None:
        if split is None:
            raise ModelRejected("no challenger to promote; name a version (nbo model promote VERSION)")
        version = split.version
    if client.get(keys.model(version)) is None:
        raise ModelRejected(f"unknown model version {version!r}")
    pipe = client.pipeline(transaction=True)
    pipe.lrem(keys.model_history, 0, version)
    pipe.rpush(keys.model_history, version)
    pipe.hdel(keys.model_retired, version)
    pipe.set(keys.model_current, version)
    pipe.delete(keys.model_challenger)
    pipe.execute()
    return version
