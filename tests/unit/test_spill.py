"""The spill file's hand-over rules: a file a live writer holds is never replayed by another,
a released one is claimed by exactly one, and records round-trip exactly."""

from __future__ import annotations

import zlib
from pathlib import Path

from server.state.spill import SpillDir, decode_item, encode_item


def test_a_held_file_is_not_claimed_and_a_released_one_is_claimed_once(tmp_path: Path) -> None:
    writer, other, third = SpillDir(tmp_path), SpillDir(tmp_path), SpillDir(tmp_path)
    writer.append(["a", "b"])
    assert other.claim() == []
    writer.release()
    claimed = other.claim()
    assert len(claimed) == 1 and claimed[0].name.endswith(".replaying")
    f = other.open_claimed(claimed[0])
    assert f is not None
    try:
        assert third.claim() == []  # being replayed: locked
        assert SpillDir.read_lines(f, 10) == ["a", "b"]
    finally:
        f.close()


def test_a_cut_off_last_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "x.spill"
    path.write_text('{"whole":1}\n{"cut')
    d = SpillDir(tmp_path)
    [claimed] = d.claim()
    f = d.open_claimed(claimed)
    assert f is not None
    with f:
        assert SpillDir.read_lines(f, 10) == ['{"whole":1}']


def test_items_round_trip() -> None:
    replay = ("nbo:{c:1}:d:x", b"\x00\xffpayload", "nbo:{c:1}:r:q", "x", 60, 120)
    line = encode_item("nbo:log:decisions", {b"v": b"1", "r": '{"a":1}'}, replay)
    assert decode_item(line) == ("nbo:log:decisions", {"v": "1", "r": '{"a":1}'}, replay)
    assert decode_item(encode_item("s", {"v": "1"}, None)) == ("s", {"v": "1"}, None)


def test_a_version_2_decision_record_spills_and_reads_back_as_the_same_bytes() -> None:
    fields = {"v": "2", "r": zlib.compress(b'{"decision_id":"d"}', 1), "n": b"\x00\x00\xc0\x7f\xff"}
    stream, back, replay = decode_item(encode_item("nbo:log:decisions", fields, None))
    assert (stream, back, replay) == ("nbo:log:decisions", fields, None)
