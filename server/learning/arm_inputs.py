"""The inputs an arm learns weights for (the catalog's `bandit.inputs`), as numbers: computed per
candidate at decision time, kept with each award, and handed to the learner with the outcome."""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt

from server.catalog.exploration import INPUT_CLIP, BanditPolicy
from server.learning.bandit import logit

F64 = npt.NDArray[np.float64]


def input_rows(
    policy: BanditPolicy, vector: npt.NDArray[np.float32] | None, context: Mapping[str, float], base_p: F64
) -> F64:
    """One row per candidate (base propensities `base_p`), one column per declared input:
    (raw - center) / scale, clipped to +-INPUT_CLIP; a missing value (no vector, NaN, a context
    key the caller did not send) counts as the center, i.e. 0, so it moves no weight."""
    out = np.zeros((base_p.size, len(policy.inputs)))
    for j, spec in enumerate(policy.inputs):
        if spec.kind == "model":
            out[:, j] = logit(base_p)
        elif spec.kind == "feature":
            ok = vector is not None and 0 <= spec.index < vector.size
            out[:, j] = float(vector[spec.index]) if ok and vector is not None else math.nan
        else:
            out[:, j] = context.get(spec.name, math.nan)
        out[:, j] -= spec.center
        out[:, j] /= spec.scale
    np.nan_to_num(out, copy=False, nan=0.0, posinf=INPUT_CLIP, neginf=-INPUT_CLIP)
    np.clip(out, -INPUT_CLIP, INPUT_CLIP, out=out)
    return out


def encode_inputs(signature: str, row: F64) -> str:
    """What an award keeps of its inputs: the declaration's signature, then the values."""
    return " ".join([signature, *(repr(float(x)) for x in row)])


def decode_inputs(text: str) -> tuple[str, tuple[float, ...]]:
    """(signature, values) of `encode_inputs`; ("", ()) for an award kept without inputs."""
    if not text:
        return "", ()
    signature, *values = text.split(" ")
    return signature, tuple(float(x) for x in values)
