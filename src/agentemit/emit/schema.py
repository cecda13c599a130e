"""Schema adapters for custom event types: one interface over pydantic models, dataclasses and JSON Schema.

An adapter turns user data into the *payload*: a JSON-ready dict holding exactly the validated
values, which is what gets stored. Reading back parses that JSON with the same schema, so anything
:meth:`SchemaAdapter.validate` accepted, :meth:`SchemaAdapter.load` can read.

JSON Schema is checked by a small built-in validator (``jsonschema`` is not a dependency) that
supports the keywords in :data:`JSON_SCHEMA_KEYWORDS`; any other validation keyword is refused at
registration, so a schema never silently checks less than it says.
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Mapping, Sequence
from typing import Any, Final, Literal, TypeAlias

import orjson
import pydantic

SchemaKind: TypeAlias = Literal["pydantic", "dataclass", "jsonschema"]

JSON_SCHEMA_KEYWORDS: Final = frozenset(
    {
        "type",
        "properties",
        "required",
        "items",
        "enum",
        "minimum",
        "maximum",
        "minLength",
        "maxLength",
        "additionalProperties",
    }
)
# Keywords that carry no validation; accepted and ignored.
JSON_SCHEMA_ANNOTATIONS: Final = frozenset(
    {"$schema", "$id", "$comment", "title", "description", "default", "examples", "deprecated", "readOnly", "writeOnly"}
)
JSON_TYPES: Final = ("object", "array", "string", "number", "integer", "boolean", "null")

_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*\Z")
_INT_MIN, _INT_MAX = -(2**63), 2**64 - 1  # what orjson encodes


class SchemaViolation(Exception):
    """Data does not fit a schema; ``path`` is a JSONPath-like location such as ``$.items[2].score``."""

    def __init__(self, path: str, reason: str, more: int = 0) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = path
        self.reason = reason
        self.more = more  # further violations not reported


def child_path(path: str, key: str | int) -> str:
    """``$.a`` + ``b`` -> ``$.a.b``; ints become ``[i]``; keys that are not identifiers are quoted."""
    if isinstance(key, int):
        return f"{path}[{key}]"
    if _IDENTIFIER.match(key):
        return f"{path}.{key}"
    return f"{path}[{orjson.dumps(key).decode()}]"


def got(value: Any) -> str:
    """The name of a value's type as error messages show it."""
    return "null" if value is None else type(value).__name__


# --- JSON values ------------------------------------------------------------------------------


def check_json(value: Any, path: str = "$") -> None:
    """Raise :class:`SchemaViolation` unless ``value`` is JSON that stores losslessly.

    JSON has no NaN or infinity, and objects need string keys; anything else (a datetime, a set)
    would be changed by encoding, so it is refused rather than stored differently from what was given.
    """
    if value is None or isinstance(value, str):  # str enums encode as their value
        return
    if isinstance(value, int):  # bool, int enums
        if not _INT_MIN <= value <= _INT_MAX:
            raise SchemaViolation(path, f"expected an integer that fits in 64 bits, got {value}")
        return
    if isinstance(value, float):
        if not math.isfinite(value):
            raise SchemaViolation(path, f"expected a finite number, got {value!r}")
        return
    if isinstance(value, dict):
        for key, item in value.items():
            if not isinstance(key, str):
                raise SchemaViolation(path, f"expected string keys, got {got(key)} key {key!r}")
            check_json(item, child_path(path, key))
        return
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_json(item, child_path(path, index))
        return
    raise SchemaViolation(path, f"expected a JSON value, got {got(value)}")


# --- JSON Schema ------------------------------------------------------------------------------


def check_json_schema(schema: Any, path: str = "$") -> None:
    """Raise ``ValueError`` naming the location when ``schema`` uses an unsupported or malformed keyword."""
    if not isinstance(schema, Mapping):
        raise ValueError(f"JSON Schema at {path} must be an object, got {got(schema)}")
    for keyword, value in schema.items():
        where = f"JSON Schema keyword {keyword!r} at {path}"
        if keyword in JSON_SCHEMA_ANNOTATIONS:
            continue
        if keyword not in JSON_SCHEMA_KEYWORDS:
            supported = ", ".join(sorted(JSON_SCHEMA_KEYWORDS))
            raise ValueError(f"{where} is not supported (supported: {supported})")
        if keyword == "type":
            names = [value] if isinstance(value, str) else value
            if not isinstance(names, list) or not names or any(n not in JSON_TYPES for n in names):
                raise ValueError(f"{where} must be one of {', '.join(JSON_TYPES)} or a list of them, got {value!r}")
        elif keyword == "properties":
            if not isinstance(value, Mapping):
                raise ValueError(f"{where} must be an object of schemas, got {got(value)}")
            for name, sub in value.items():
                check_json_schema(sub, child_path(f"{path}.properties", name))
        elif keyword == "required":
            if not isinstance(value, list) or any(not isinstance(n, str) for n in value):
                raise ValueError(f"{where} must be a list of property names, got {value!r}")
        elif keyword == "items":
            check_json_schema(value, f"{path}.items")  # the tuple (list) form is not supported
        elif keyword == "enum":
            if not isinstance(value, list) or not value:
                raise ValueError(f"{where} must be a non-empty list, got {value!r}")
        elif keyword in ("minimum", "maximum"):
            if type(value) not in (int, float):
                raise ValueError(f"{where} must be a number, got {value!r}")
        elif keyword in ("minLength", "maxLength"):
            if type(value) is not int or value < 0:
                raise ValueError(f"{where} must be an integer >= 0, got {value!r}")
        elif keyword == "additionalProperties" and not isinstance(value, bool):
            check_json_schema(value, f"{path}.additionalProperties")


def _matches_type(value: Any, name: str) -> bool:
    if name == "object":
        return isinstance(value, dict)
    if name == "array":
        return isinstance(value, (list, tuple))
    if name == "string":
        return isinstance(value, str)
    if name == "boolean":
        return isinstance(value, bool)
    if name == "null":
        return value is None
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return name == "number" or isinstance(value, int) or value.is_integer()  # integer: no fraction (1.0 too)


def _json_equal(a: Any, b: Any) -> bool:
    """JSON equality: ``True`` is not ``1`` (Python's ``==`` says it is); ``1`` equals ``1.0``."""
    if isinstance(a, bool) or isinstance(b, bool):
        return isinstance(a, bool) and isinstance(b, bool) and a == b
    if isinstance(a, Mapping) and isinstance(b, Mapping):
        return a.keys() == b.keys() and all(_json_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(_json_equal(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, (int, float)) and isinstance(b, (int, float)):
        return a == b
    return type(a) is type(b) and a == b


def validate_json_schema(value: Any, schema: Mapping[str, Any], path: str = "$") -> None:
    """Raise :class:`SchemaViolation` at the first place ``value`` breaks ``schema`` (or is not JSON)."""
    expected = schema.get("type")
    if expected is not None:
        names = [expected] if isinstance(expected, str) else expected
        if not any(_matches_type(value, n) for n in names):
            raise SchemaViolation(path, f"expected {' or '.join(names)}, got {got(value)}")
    if "enum" in schema and not any(_json_equal(value, option) for option in schema["enum"]):
        raise SchemaViolation(path, f"expected one of {orjson.dumps(schema['enum']).decode()}, got {value!r}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0):
            raise SchemaViolation(path, f"expected at least {schema['minLength']} characters, got {len(value)}")
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            raise SchemaViolation(path, f"expected at most {schema['maxLength']} characters, got {len(value)}")
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        check_json(value, path)
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaViolation(path, f"expected >= {schema['minimum']}, got {value!r}")
        if "maximum" in schema and value > schema["maximum"]:
            raise SchemaViolation(path, f"expected <= {schema['maximum']}, got {value!r}")
    elif isinstance(value, dict):
        _validate_object(value, schema, path)
    elif isinstance(value, (list, tuple)):
        items: Mapping[str, Any] = schema.get("items", {})
        for index, item in enumerate(value):
            validate_json_schema(item, items, child_path(path, index))
    else:
        check_json(value, path)


def _validate_object(value: Mapping[Any, Any], schema: Mapping[str, Any], path: str) -> None:
    for name in schema.get("required", ()):
        if name not in value:
            raise SchemaViolation(child_path(path, name), "missing required property")
    properties: Mapping[str, Any] = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if not isinstance(key, str):
            raise SchemaViolation(path, f"expected string keys, got {got(key)} key {key!r}")
        where = child_path(path, key)
        if key in properties:
            validate_json_schema(item, properties[key], where)
        elif extra is False:
            raise SchemaViolation(where, "additional property is not allowed")
        else:
            validate_json_schema(item, extra if isinstance(extra, Mapping) else {}, where)


# --- adapters ---------------------------------------------------------------------------------


class SchemaAdapter:
    """Validation and loading for one registered schema.

    Subclasses implement :meth:`validate` (user data -> JSON-ready payload dict) and :meth:`load`
    (stored JSON text -> the user's type); :attr:`fingerprint` decides whether two registrations
    describe the same schema.
    """

    kind: SchemaKind
    fingerprint: bytes

    def validate(self, data: Any) -> dict[str, Any]:
        raise NotImplementedError

    def load(self, text: str | bytes) -> Any:
        raise NotImplementedError

    def load_payload(self, text: str | bytes) -> dict[str, Any]:
        """Stored JSON text, validated, as a payload dict (defaults filled in, values normalized)."""
        raise NotImplementedError

    def same_type(self, other: SchemaAdapter) -> bool:
        """True when ``other`` describes the same schema (so re-registering it is a no-op)."""
        return self.kind == other.kind and self.fingerprint == other.fingerprint


class JsonSchemaAdapter(SchemaAdapter):
    """A JSON Schema dict; payloads and loaded values are plain dicts."""

    kind: SchemaKind = "jsonschema"

    def __init__(self, schema: Mapping[str, Any]) -> None:
        check_json_schema(schema)
        expected = schema.get("type", "object")
        if expected != "object" and expected != ["object"]:
            raise ValueError(f"JSON Schema of an event must have type 'object', got {expected!r}")
        try:
            self.fingerprint = orjson.dumps(schema, option=orjson.OPT_SORT_KEYS)
        except TypeError as exc:
            raise ValueError(f"JSON Schema is not JSON: {exc}") from exc
        self.schema: dict[str, Any] = orjson.loads(self.fingerprint)  # a private copy: later edits do not leak in

    def validate(self, data: Any) -> dict[str, Any]:
        if not isinstance(data, Mapping):
            raise SchemaViolation("$", f"expected object, got {got(data)}")
        validate_json_schema(data, self.schema)
        return dict(data)

    def load(self, text: str | bytes) -> dict[str, Any]:
        return self.validate(_loads_object(text))

    def load_payload(self, text: str | bytes) -> dict[str, Any]:
        return self.load(text)


class _PydanticBacked(SchemaAdapter):
    """Shared logic of pydantic models and dataclasses: validation through a pydantic TypeAdapter."""

    def __init__(self, cls: type, adapter: pydantic.TypeAdapter[Any]) -> None:
        self.cls = cls
        self.adapter = adapter
        try:
            described = orjson.dumps(adapter.json_schema(), option=orjson.OPT_SORT_KEYS)
        except Exception:  # types with no JSON Schema: only the class itself is the same schema
            described = orjson.dumps(id(cls))
        self.fingerprint = f"{cls.__module__}.{cls.__qualname__}".encode() + b"\x00" + described

    def same_type(self, other: SchemaAdapter) -> bool:
        # The same class, or one redefined with the same shape (a re-run notebook cell or reloaded module).
        return isinstance(other, _PydanticBacked) and (other.cls is self.cls or super().same_type(other))

    def validate(self, data: Any) -> dict[str, Any]:
        if isinstance(data, self.cls):
            # An instance may have been built without validation or mutated since: re-check it by
            # reading its JSON form back, the same path a reader takes.
            payload = self._dump(data)
            check_json(payload)
            self.load(orjson.dumps(payload))
            return payload
        if not isinstance(data, Mapping):
            raise SchemaViolation("$", f"expected {self.cls.__name__} or a dict, got {got(data)}")
        try:
            instance = self.adapter.validate_python(data)
        except pydantic.ValidationError as exc:
            raise violation_from_pydantic(exc) from None
        payload = self._dump(instance)
        check_json(payload)
        return payload

    def _dump(self, instance: Any) -> dict[str, Any]:
        dumped = self.adapter.dump_python(instance, mode="json", by_alias=True, round_trip=True, warnings=False)
        if not isinstance(dumped, dict):
            raise SchemaViolation(
                "$", f"{self.cls.__name__} dumps to {got(dumped)}; an event payload must be an object"
            )
        return dumped

    def load(self, text: str | bytes) -> Any:
        try:
            return self.adapter.validate_json(text)
        except pydantic.ValidationError as exc:
            raise violation_from_pydantic(exc) from None

    def load_payload(self, text: str | bytes) -> dict[str, Any]:
        return self._dump(self.load(text))


class PydanticAdapter(_PydanticBacked):
    """A pydantic model class; payloads are ``model_dump(mode="json", by_alias=True)``."""

    kind: SchemaKind = "pydantic"


class DataclassAdapter(_PydanticBacked):
    """A dataclass, validated through pydantic (so field types are checked and coerced as pydantic does)."""

    kind: SchemaKind = "dataclass"


def adapter_for(schema: Any) -> SchemaAdapter:
    """The adapter for a pydantic model class, a dataclass, or a JSON Schema dict.

    Raises:
        TypeError: ``schema`` is none of these (for example a model *instance*).
        ValueError: a JSON Schema uses an unsupported keyword or is malformed.
    """
    if isinstance(schema, type) and issubclass(schema, pydantic.RootModel):
        raise TypeError(
            f"schema {schema.__qualname__} is a RootModel; an event payload must be an object (a BaseModel)"
        )
    if isinstance(schema, type) and issubclass(schema, pydantic.BaseModel):
        return PydanticAdapter(schema, pydantic.TypeAdapter(schema))
    if isinstance(schema, type) and dataclasses.is_dataclass(schema):
        try:
            adapter: pydantic.TypeAdapter[Any] = pydantic.TypeAdapter(schema)
        except pydantic.PydanticUserError as exc:
            raise TypeError(f"dataclass {schema.__qualname__} cannot be validated: {exc}") from exc
        return DataclassAdapter(schema, adapter)
    if isinstance(schema, Mapping):
        return JsonSchemaAdapter(schema)
    raise TypeError(
        f"schema must be a pydantic model class, a dataclass or a JSON Schema dict, got {got(schema)} {schema!r:.80}"
    )


def _loads_object(text: str | bytes) -> Any:
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise SchemaViolation("$", f"payload is not valid JSON ({exc})") from None


# --- pydantic errors --------------------------------------------------------------------------

_EXPECTED: Final = {
    "int_type": "integer",
    "int_parsing": "integer",
    "int_from_float": "integer",
    "float_type": "number",
    "float_parsing": "number",
    "string_type": "string",
    "bool_type": "boolean",
    "bool_parsing": "boolean",
    "list_type": "array",
    "tuple_type": "array",
    "dict_type": "object",
    "model_type": "object",
    "model_attributes_type": "object",
    "dataclass_type": "object",
    "finite_number": "a finite number",
}


def loc_path(loc: Sequence[str | int]) -> str:
    """A pydantic error location as a path: ``("items", 2, "score")`` -> ``$.items[2].score``."""
    path = "$"
    for part in loc:
        path = child_path(path, part)
    return path


def violation_from_pydantic(exc: pydantic.ValidationError) -> SchemaViolation:
    """The first error of a pydantic ValidationError, with a path and a short reason."""
    errors = exc.errors(include_url=False)
    first = errors[0]
    kind, value = first["type"], first.get("input")
    if kind == "missing":
        reason = "missing required field"
    elif kind == "extra_forbidden":
        reason = "unexpected field"
    elif kind in _EXPECTED:
        reason = f"expected {_EXPECTED[kind]}, got {got(value) if kind != 'finite_number' else repr(value)}"
    elif value is None or isinstance(value, (str, int, float)):
        reason = f"{first['msg']}, got {value!r:.80}"
    else:
        reason = first["msg"]
    return SchemaViolation(loc_path(first["loc"]), reason, more=len(errors) - 1)
