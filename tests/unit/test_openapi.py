"""docs/openapi.json against the proto: every message, field and enum value, under its JSON name."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

from google.protobuf.descriptor import FieldDescriptor

from server.api.http import RPC_PATHS
from server.api.status import HTTP_STATUS
from server.gen.nbo.v1 import decisioning_pb2 as pb

ROOT = Path(__file__).resolve().parents[2]
DOC = json.loads((ROOT / "docs" / "openapi.json").read_text())
SCHEMAS = DOC["components"]["schemas"]
REF = "#/components/schemas/"


def _refs(schema: dict[str, Any]) -> set[str]:
    found = {schema["$ref"].removeprefix(REF)} if "$ref" in schema else set()
    for key in ("items", "additionalProperties"):
        if isinstance(schema.get(key), dict):
            found |= _refs(schema[key])
    for sub in schema.get("allOf", []):
        found |= _refs(sub)
    return found


def test_every_message_and_field_is_in_the_document_under_its_json_name() -> None:
    messages = pb.DESCRIPTOR.message_types_by_name
    assert messages, "the proto has messages"
    for name, msg in messages.items():
        properties = SCHEMAS[name]["properties"]
        assert list(properties) == [f.json_name for f in msg.fields], name
        assert SCHEMAS[name]["additionalProperties"] is False
        for field in msg.fields:
            schema = properties[field.json_name]
            is_map = field.message_type is not None and field.message_type.GetOptions().map_entry
            kind = None if is_map else field.message_type or field.enum_type
            if is_map:
                assert schema["type"] == "object", field.full_name
            elif field.is_repeated:
                assert schema["type"] == "array", field.full_name
            if kind is not None:
                assert _refs(schema) == {kind.name}, field.full_name
            elif field.type == FieldDescriptor.TYPE_STRING:
                assert (schema.get("items") or schema)["type"] == "string", field.full_name


def test_every_enum_value_is_in_the_document() -> None:
    for name, enum in pb.DESCRIPTOR.enum_types_by_name.items():
        assert SCHEMAS[name]["enum"] == [v.name for v in enum.values]


def test_every_path_takes_and_returns_its_rpc_messages_and_names_every_status() -> None:
    service = pb.DESCRIPTOR.services_by_name["Decisioning"]
    assert sorted(DOC["paths"]) == sorted(RPC_PATHS.values()) == ["/v1/conversions", "/v1/decide", "/v1/outcomes"]
    for method in service.methods:
        post = DOC["paths"][RPC_PATHS[method.name]]["post"]
        assert _refs(post["requestBody"]["content"]["application/json"]["schema"]) == {method.input_type.name}
        assert _refs(post["responses"]["200"]["content"]["application/json"]["schema"]) == {method.output_type.name}
        statuses = {int(s) for s in post["responses"]} - {200}
        assert statuses == set(HTTP_STATUS.values()) | {405, 413, 415}
    assert SCHEMAS["Error"]["properties"]["error"]["required"] == ["code", "message"]


def test_the_document_is_what_the_generator_writes() -> None:
    result = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen_openapi.py"), "--check"],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
