"""The decision record's encodings: version 2 (compressed, numbers packed) reads back bit for bit,
and a version 1 record written by an earlier release (decision_record_v1.json: the load-test
catalog's, one feature missing) still reads."""

from __future__ import annotations

import dataclasses
import json
import math
import zlib
from pathlib import Path

import numpy as np
import pytest

from server.state.records import (
    DECISION_RECORD_VERSION,
    Candidates,
    DecisionRecord,
    Packer,
    RecordError,
    decode_decision_record,
    record_data,
)

V1_TEXT = (Path(__file__).parent / "decision_record_v1.json").read_text().strip()


def _bits(values: list[float] | None, dtype: str = "<f8") -> bytes:
    assert values is not None
    return np.asarray(values, dtype=dtype).tobytes()


def _random_record(rng: np.random.Generator, n: int) -> DecisionRecord:
    features = rng.standard_normal(40).astype(np.float32) * np.float32(100)
    features[rng.choice(40, 5, replace=False)] = np.nan
    raw = rng.random((4, n))  # float64: none of them is a float32
    raw[3, rng.choice(n, n // 2, replace=False)] = 0.0
    raw[2, 0], raw[1, 1] = math.nan, -0.0
    base = decode_decision_record({"v": "1", "r": V1_TEXT})
    return dataclasses.replace(
        base,
        features=features.tolist(),
        candidates=Candidates(
            offer_id=[f"o{i}" for i in range(n)],
            campaign_id=[f"c{i % 3}" for i in range(n)],
            propensity=raw[0].tolist(),
            expected_value=raw[1].tolist(),
            score=raw[2].tolist(),
            selection_probability=raw[3].tolist(),
            status=["chosen" if i == 0 else "ranked below the offers returned" for i in range(n)],
        ),
    )


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_version_2_reads_back_bit_for_bit(seed: int) -> None:
    rng = np.random.default_rng(seed)
    record = _random_record(rng, 37)
    fields = record.to_fields()
    assert fields["v"] == DECISION_RECORD_VERSION == "2" and isinstance(fields["r"], bytes)
    assert len(fields["n"]) == 40 * 4 + 4 * 37 * 8  # float32 features, float64 candidate columns
    # as redis-py hands the entry back: bytes names and values
    back = decode_decision_record({b"v": fields["v"].encode(), b"r": fields["r"], b"n": fields["n"]})
    assert _bits(back.features, "<f4") == _bits(record.features, "<f4")
    assert _bits(back.features) == _bits(record.features)  # NaN where NaN, nothing rounded
    for name in ("propensity", "expected_value", "score", "selection_probability"):
        assert _bits(getattr(back.candidates, name)) == _bits(getattr(record.candidates, name)), name
    assert dataclasses.replace(back, features=None, candidates=record.candidates) == dataclasses.replace(
        record, features=None
    )
    assert back.candidates.status == record.candidates.status
    assert back.candidates.campaign_id == record.candidates.campaign_id
    assert back.to_fields() == fields  # a re-encoded record is the same bytes


def test_features_that_are_not_float32_are_kept_as_float64() -> None:
    values = [0.1, math.nan, 1e300, -0.0, 5e-324]
    packer = Packer()
    assert packer.add(values, narrow=True) == "f8:5" and packer.add([0.5, math.nan], narrow=True) == "f4:2"
    assert packer.bytes() == _bits(values) + _bits([0.5, math.nan], "<f4")
    record = dataclasses.replace(decode_decision_record({"v": "1", "r": V1_TEXT}), features=values)
    assert _bits(decode_decision_record(record.to_fields()).features) == _bits(values)


def test_a_version_1_record_still_reads_and_version_2_is_under_half_its_size() -> None:
    v1 = decode_decision_record({b"v": b"1", b"r": V1_TEXT.encode()})
    data = json.loads(V1_TEXT)
    assert v1.decision_id == data["decision_id"] and v1.chosen == ["lt_offer_000"] and len(v1.candidates.offer_id) == 37
    assert v1.features is not None and math.isnan(v1.features[3]) and v1.features[12] == data["features"][12]
    assert v1.candidates.selection_probability == data["candidates"]["selection_probability"]
    assert v1.candidates.score == data["candidates"]["score"]
    v2 = v1.to_fields()
    assert (len(v2["r"]) + len(v2["n"])) * 2 <= len(V1_TEXT)
    again = decode_decision_record(v2)
    assert _bits(again.features) == _bits(v1.features) and again.candidates.status == v1.candidates.status
    assert again.candidates.selection_probability == v1.candidates.selection_probability
    # readers of a field or two see the version 1 shape whichever version they read
    shaped = record_data(v2)
    assert shaped["candidates"]["status"] == data["candidates"]["status"]
    assert shaped["candidates"]["expected_value"] == data["candidates"]["expected_value"]
    assert shaped["features"][:3] == data["features"][:3]


def test_a_damaged_version_2_record_is_a_record_error() -> None:
    fields = decode_decision_record({"v": "1", "r": V1_TEXT}).to_fields()
    with pytest.raises(RecordError, match="not zlib data"):
        decode_decision_record({**fields, "r": fields["r"][:-9]})
    with pytest.raises(RecordError, match="read as text"):
        decode_decision_record({"v": "2", "r": "{}"})
    with pytest.raises(RecordError, match="bytes of packed numbers"):
        decode_decision_record({**fields, "n": fields["n"] + b"\0" * 8})
    with pytest.raises(RecordError, match="malformed"):
        decode_decision_record({**fields, "n": fields["n"][:-8]})
    broken = json.loads(zlib.decompress(fields["r"]))
    broken["candidates"]["score"] = "f2:37"
    with pytest.raises(RecordError, match="unknown kind"):
        decode_decision_record({**fields, "r": zlib.compress(json.dumps(broken).encode())})
