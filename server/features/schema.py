"""The customer feature schema and the binary layout of a customer's feature vector.

A vector is stored as one Redis string: a 4-byte little-endian schema version followed by one
little-endian float32 per feature. Categorical features hold the index of their level in
`FeatureSpec.levels`; a missing value is NaN.
"""

from __future__ import annotations

import hashlib
import json
import struct
from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import numpy.typing as npt

FeatureKind = Literal["numeric", "categorical"]
_HEADER = struct.Struct("<I")
VECTOR_DTYPE = np.dtype("<f4")


@dataclass(frozen=True, slots=True)
class FeatureSpec:
    name: str
    kind: FeatureKind
    levels: tuple[str, ...] = ()

    def level_index(self, level: str) -> int | None:
        try:
            return self.levels.index(level)
        except ValueError:
            return None


@dataclass(frozen=True, slots=True)
class FeatureSchema:
    version: int
    features: tuple[FeatureSpec, ...]
    _index: dict[str, int] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "_index", {f.name: i for i, f in enumerate(self.features)})

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.features)

    def index(self, name: str) -> int | None:
        return self._index.get(name)

    def spec(self, name: str) -> FeatureSpec | None:
        i = self._index.get(name)
        return None if i is None else self.features[i]

    @property
    def layout_hash(self) -> str:
        """Hash of names and kinds: equal layouts read each other's vectors."""
        text = "|".join(f"{f.name}:{f.kind}" for f in self.features)
        return hashlib.sha256(text.encode()).hexdigest()[:16]

    @property
    def content_hash(self) -> str:
        """Hash of the full schema including categorical levels (not the version)."""
        return hashlib.sha256(self._body().encode()).hexdigest()[:16]

    def extends(self, older: FeatureSchema) -> bool:
        """True when vectors written under `older` decode identically under self."""
        if self.layout_hash != older.layout_hash:
            return False
        return all(
            new.levels[: len(old.levels)] == old.levels for new, old in zip(self.features, older.features, strict=True)
        )

    def _body(self) -> str:
        return json.dumps(
            [{"name": f.name, "kind": f.kind, "levels": list(f.levels)} for f in self.features],
            separators=(",", ":"),
        )

    def to_json(self) -> str:
        return json.dumps({"version": self.version, "features": json.loads(self._body())})

    @classmethod
    def from_json(cls, text: str | bytes) -> FeatureSchema:
        data = json.loads(text)
        return cls(
            version=int(data["version"]),
            features=tuple(FeatureSpec(f["name"], f["kind"], tuple(f.get("levels", ()))) for f in data["features"]),
        )


def encode_vector(version: int, values: npt.NDArray[np.floating]) -> bytes:
    return _HEADER.pack(version) + np.ascontiguousarray(values, dtype=VECTOR_DTYPE).tobytes()


def encode_matrix(version: int, matrix: npt.NDArray[np.floating]) -> list[bytes]:
    """Encode each row of `matrix`; one bytes object per row."""
    header = _HEADER.pack(version)
    m = np.ascontiguousarray(matrix, dtype=VECTOR_DTYPE)
    width = m.shape[1] * VECTOR_DTYPE.itemsize
    raw = m.tobytes()
    return [header + raw[i : i + width] for i in range(0, len(raw), width)] if width else [header] * len(m)


def decode_vector(blob: bytes) -> tuple[int, npt.NDArray[np.float32]]:
    """Return (schema version, float32 vector). Raises ValueError on a malformed blob."""
    if len(blob) < _HEADER.size or (len(blob) - _HEADER.size) % VECTOR_DTYPE.itemsize:
        raise ValueError(f"malformed feature vector of {len(blob)} bytes")
    (version,) = _HEADER.unpack_from(blob)
    return version, np.frombuffer(blob, dtype=VECTOR_DTYPE, offset=_HEADER.size)
