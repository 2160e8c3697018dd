"""Generate docs/openapi.json, the OpenAPI 3 document of the HTTP/JSON front, from the proto.

Schemas come from the message and enum descriptors of the generated code the server runs, under
their JSON names (the proto's JSON mapping); descriptions are the .proto comments; paths, error
codes and limits come from server.api, the code that serves them. `--check` (run by `make test`)
fails when docs/openapi.json differs from what this script would write.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import Descriptor, EnumDescriptor, FieldDescriptor, FileDescriptor
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from server.api.http import JSON_TYPE, MAX_BODY_BYTES, RPC_PATHS, TRANSPORT_CODES  # noqa: E402
from server.api.status import HTTP_STATUS, Code  # noqa: E402
from server.gen.nbo.v1 import decisioning_pb2 as pb  # noqa: E402

PROTO_DIR = ROOT / "proto"
OUT = ROOT / "docs" / "openapi.json"
REF = "#/components/schemas/"
# FileDescriptorProto field numbers of source-location paths
_MESSAGE, _ENUM, _SERVICE, _FIELD, _VALUE, _METHOD = 4, 5, 6, 2, 2, 2

_SCALARS: dict[int, dict[str, Any]] = {
    FieldDescriptor.TYPE_STRING: {"type": "string"},
    FieldDescriptor.TYPE_BOOL: {"type": "boolean"},
    FieldDescriptor.TYPE_INT32: {"type": "integer", "format": "int32"},
    FieldDescriptor.TYPE_DOUBLE: {"type": "number", "format": "double"},
}
_STATUS_TEXT = {
    400: "INVALID_ARGUMENT: a field is wrong (`field` names it), or the body is not a JSON object of this message",
    401: "UNAUTHENTICATED: no, a malformed or an unknown API token (servers with callers and roles)",
    403: "PERMISSION_DENIED: the token's client lacks the role this call needs",
    404: "NOT_FOUND: an id the caller named does not exist (or no such path)",
    405: "METHOD_NOT_ALLOWED: only POST",
    409: "ALREADY_EXISTS: a request_id or event_id reused for a different request or outcome (`field` names it)",
    413: f"PAYLOAD_TOO_LARGE: the body is over {MAX_BODY_BYTES} bytes",
    415: f"UNSUPPORTED_MEDIA_TYPE: Content-Type must be {JSON_TYPE} (UTF-8)",
    429: "RESOURCE_EXHAUSTED: the server is shedding load, or the client's rate limit is used up; retry later",
    500: "INTERNAL: a server bug; see the server log",
    503: "UNAVAILABLE: shared state cannot be reached; retry",
    504: "DEADLINE_EXCEEDED: no answer within the deadline",
}


def _comments() -> dict[tuple[int, ...], str]:
    """The .proto comments by source-location path (protoc keeps them only with source info)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "set.pb"
        args = ["protoc", f"-I{PROTO_DIR}", f"--descriptor_set_out={out}", "--include_source_info", pb.DESCRIPTOR.name]
        if protoc.main(args) != 0:
            raise SystemExit("protoc failed")
        files = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    return {
        tuple(loc.path): " ".join((loc.leading_comments + " " + loc.trailing_comments).split())
        for loc in files.file[0].source_code_info.location
        if loc.leading_comments or loc.trailing_comments
    }


def _field_schema(field: FieldDescriptor) -> dict[str, Any]:
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        return {"type": "object", "additionalProperties": _field_schema(field.message_type.fields_by_name["value"])}
    if field.message_type is not None:
        item: dict[str, Any] = {"$ref": REF + field.message_type.name}
    elif field.enum_type is not None:
        item = {"$ref": REF + field.enum_type.name}
    else:
        item = dict(_SCALARS[field.type])
    return {"type": "array", "items": item} if field.is_repeated else item


def _message_schema(
    msg: Descriptor, index: int, comments: dict[tuple[int, ...], str], *, answer: bool
) -> dict[str, Any]:
    properties = {}
    for i, field in enumerate(msg.fields):
        schema = _field_schema(field)
        text = comments.get((_MESSAGE, index, _FIELD, i))
        if text:
            schema = (
                {**schema, "description": text} if "$ref" not in schema else {"allOf": [schema], "description": text}
            )
        properties[field.json_name] = schema
    schema: dict[str, Any] = {"type": "object", "properties": properties, "additionalProperties": False}
    if answer:  # the server prints every field of what it answers, defaults included
        schema["required"] = list(properties)
    if text := comments.get((_MESSAGE, index)):
        schema["description"] = text
    return schema


def _enum_schema(enum: EnumDescriptor, index: int, comments: dict[tuple[int, ...], str]) -> dict[str, Any]:
    notes = [f"{v.name}: {c}" for i, v in enumerate(enum.values) if (c := comments.get((_ENUM, index, _VALUE, i)))]
    text = " ".join([comments.get((_ENUM, index), ""), "Input also accepts the number.", *notes]).strip()
    return {"type": "string", "enum": [v.name for v in enum.values], "description": text}


def _error_schema() -> dict[str, Any]:
    codes = [c.value for c in Code] + sorted(set(TRANSPORT_CODES.values()) - {c.value for c in Code})
    return {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {
                "type": "object",
                "required": ["code", "message"],
                "properties": {
                    "code": {"type": "string", "enum": codes, "description": "gRPC status name, or an HTTP-only one"},
                    "message": {"type": "string", "description": "the gRPC status detail, word for word"},
                    "field": {"type": "string", "description": "the request field at fault (its proto name)"},
                },
            }
        },
    }


def _operation(method: Any, index: int, comments: dict[tuple[int, ...], str]) -> dict[str, Any]:
    def body(name: str) -> dict[str, Any]:
        return {"content": {JSON_TYPE: {"schema": {"$ref": REF + name}}}}

    error = {"content": {JSON_TYPE: {"schema": {"$ref": REF + "Error"}}}}
    statuses = sorted(set(HTTP_STATUS.values()) | set(TRANSPORT_CODES))
    return {
        "operationId": method.name,
        "summary": comments.get((_SERVICE, 0, _METHOD, index), method.name),
        "requestBody": {"required": True, **body(method.input_type.name)},
        "responses": {
            "200": {"description": "OK", **body(method.output_type.name)},
            **{str(s): {"description": _STATUS_TEXT[s], **error} for s in statuses},
        },
    }


def build(file: FileDescriptor = pb.DESCRIPTOR) -> dict[str, Any]:
    comments = _comments()
    service = file.services_by_name["Decisioning"]
    schemas: dict[str, Any] = {}
    for i, enum in enumerate(file.enum_types_by_name.values()):
        schemas[enum.name] = _enum_schema(enum, i, comments)
    requests = {m.input_type.name for m in service.methods}
    for i, msg in enumerate(file.message_types_by_name.values()):
        schemas[msg.name] = _message_schema(msg, i, comments, answer=msg.name not in requests)
    schemas["Error"] = _error_schema()
    return {
        "openapi": "3.0.3",
        "info": {
            "title": "NBO decisioning, HTTP/JSON",
            "version": file.package,
            "description": (
                f"The {service.full_name} gRPC service for web callers: the proto's JSON mapping "
                "(lowerCamelCase names; input also takes the proto names; unknown fields are rejected). "
                f"Generated from proto/{file.name} by scripts/gen_openapi.py."
            ),
        },
        "paths": {RPC_PATHS[m.name]: {"post": _operation(m, i, comments)} for i, m in enumerate(service.methods)},
        "components": {
            "schemas": schemas,
            "securitySchemes": {
                "bearer": {
                    "type": "http",
                    "scheme": "bearer",
                    "description": "an API token of `nbo tokens add`; needed only by servers with callers and roles",
                }
            },
        },
        # no credential, or a bearer token: servers without a tokens file take calls without one
        "security": [{}, {"bearer": []}],
    }


def render() -> str:
    return json.dumps(build(), indent=2) + "\n"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--check", action="store_true", help="fail if docs/openapi.json is stale")
    opts = parser.parse_args()
    text = render()
    if not opts.check:
        OUT.write_text(text)
        print(f"wrote {OUT.relative_to(ROOT)}")
        return 0
    if not OUT.exists() or OUT.read_text() != text:
        print("docs/openapi.json is stale; run `python scripts/gen_openapi.py`", file=sys.stderr)
        return 1
    print("docs/openapi.json matches proto/")
    return 0


if __name__ == "__main__":
    sys.exit(main())
