"""Request and response bodies of the HTTP/JSON front: the proto's canonical JSON mapping.

Input accepts each field under its lowerCamelCase JSON name or its original proto name, and
rejects a field the message does not have (naming it), a field given under both names, text
that is not JSON (with its position) and JSON that is not an object. Output uses the JSON names
and prints every field, so a web caller always finds `offers`, `degraded` and `replayed`.
Errors are `domain.RequestError`, the same type the converters and the service raise, so both
transports answer a bad field the same way.
"""

from __future__ import annotations

import functools
import json
from typing import Any

from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor
from google.protobuf.message import Message

from server.domain import RequestError

_LONGEST_NAME_SHOWN = 64
_JSON_TYPES = {list: "an array", str: "a string", int: "a number", float: "a number", bool: "a boolean"}


def _reject_constant(name: str) -> float:
    # Python's json reads NaN/Infinity, which JSON has not; the mapping spells them as strings
    raise RequestError("body", f'invalid JSON: {name} is not a JSON value (send "{name}" as a string)')


def message_from_json(body: bytes, cls: Any) -> Any:
    """Parse a request body into a new `cls` message, or raise RequestError naming the field."""
    try:
        data = json.loads(body.decode("utf-8"), parse_constant=_reject_constant)
    except UnicodeDecodeError as err:
        raise RequestError("body", f"not UTF-8: {err.reason} at byte {err.start}") from None
    except json.JSONDecodeError as err:
        raise RequestError(
            "body", f"invalid JSON at line {err.lineno} column {err.colno} (char {err.pos}): {err.msg}"
        ) from None
    if not isinstance(data, dict):
        raise RequestError("body", f"must be a JSON object, got {_JSON_TYPES.get(type(data), 'null')}")
    _check_names(data, cls.DESCRIPTOR)
    msg = cls()
    try:
        json_format.ParseDict(data, msg)
    except json_format.ParseError:
        raise _locate(data, cls) from None
    return msg


def message_to_json(msg: Message) -> bytes:
    data = json_format.MessageToDict(msg, always_print_fields_with_no_presence=True)
    return json.dumps(data, separators=(",", ":"), allow_nan=False).encode()


def _shown(name: str) -> str:
    return name if len(name) <= _LONGEST_NAME_SHOWN else name[:_LONGEST_NAME_SHOWN] + "..."


@functools.cache
def _fields(descriptor: Descriptor) -> dict[str, FieldDescriptor]:
    """A message's fields by JSON name and by proto name, the two names input may use."""
    return {**{f.name: f for f in descriptor.fields}, **{f.json_name: f for f in descriptor.fields}}


def _check_names(data: dict[str, Any], descriptor: Descriptor, path: str = "") -> None:
    """Unknown and doubly given fields, named as the caller wrote them; nested messages too."""
    seen: dict[str, str] = {}
    for key, value in data.items():
        field = _fields(descriptor).get(key)
        if field is None:
            known = ", ".join(f.json_name for f in descriptor.fields)
            raise RequestError(path + _shown(key), f"unknown field; {descriptor.name} has {known}")
        if field.name in seen:
            raise RequestError(path + field.name, f"given twice, as {seen[field.name]} and {key}")
        seen[field.name] = key
        if field.message_type is None or field.message_type.GetOptions().map_entry:
            continue
        items = value if field.is_repeated and isinstance(value, list) else [value]
        for i, item in enumerate(items):
            if isinstance(item, dict):
                index = f"[{i}]" if field.is_repeated else ""
                _check_names(item, field.message_type, f"{path}{field.name}{index}.")


def _locate(data: dict[str, Any], cls: Any) -> RequestError:
    """The first field json_format cannot parse, as a RequestError with json_format's reason."""
    for key, value in data.items():
        try:
            json_format.ParseDict({key: value}, cls())
        except json_format.ParseError as err:
            field = _fields(cls.DESCRIPTOR)[key]
            reason = str(err).removesuffix(".")
            _, sep, rest = reason.partition(" field: ")
            return RequestError(field.name, rest if sep else reason)
    return RequestError("body", "does not match the message")  # not reached: some field failed
