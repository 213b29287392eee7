"""OpenAPI v3 validation of a custom resource against its CRD's structural schema, with
the messages of the real server: kube-openapi's ``validate.SchemaValidator`` (type, enum,
pattern, lengths, bounds, item counts, required, ``allOf``/``anyOf``/``oneOf``/``not``,
string formats) as ``apiservervalidation.ValidateCustomResource`` turns its errors into
field errors, then the ``x-kubernetes-list-type`` set and map uniqueness of
``schema/listtype``.

The validators of one node run in kube-openapi's order (type, the combinators, string,
format, number, array, enum, object); the fields of an object in the schema's order.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import json
import re
from collections.abc import Callable, Mapping
from datetime import datetime
from typing import Any

import re2  # type: ignore[import-untyped]

from tests.fakes.kube_api import gofmt
from tests.fakes.kube_api.errors import FieldError
from tests.fakes.kube_api.structural import Schema, additional, items, join, properties

BLOCKING = frozenset(
    {
        "FieldValueNotSupported",
        "FieldValueRequired",
        "FieldValueTooLong",
        "FieldValueTooMany",
        "FieldValueTypeInvalid",
    }
)
"""Error types after which the server does not evaluate the CEL rules (``hasBlockingErr``)."""

_PATTERNS: dict[str, Any] = {}


def invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError("FieldValueInvalid", path, f"Invalid value: {gofmt.value(value)}: {detail}")


def type_invalid(path: str, value: Any, detail: str) -> FieldError:
    return FieldError(
        "FieldValueTypeInvalid", path, f"Invalid value: {gofmt.value(value)}: {detail}"
    )


def required(path: str) -> FieldError:
    return FieldError("FieldValueRequired", path, "Required value")


def not_supported(path: str, value: Any, allowed: list[Any]) -> FieldError:
    listed = ", ".join(
        gofmt.quote(v if isinstance(v, str) else json.dumps(v, separators=(",", ":")))
        for v in allowed
    )
    return FieldError(
        "FieldValueNotSupported",
        path,
        f"Unsupported value: {gofmt.value(value)}: supported values: {listed}",
    )


def too_long(path: str, limit: int) -> FieldError:
    unit = "byte" if limit == 1 else "bytes"
    return FieldError("FieldValueTooLong", path, f"Too long: may not be more than {limit} {unit}")


def too_many(path: str, actual: int, limit: int) -> FieldError:
    unit = "item" if limit == 1 else "items"
    return FieldError(
        "FieldValueTooMany", path, f"Too many: {actual}: must have at most {limit} {unit}"
    )


def duplicate(path: str, value: Any) -> FieldError:
    return FieldError("FieldValueDuplicate", path, f"Duplicate value: {gofmt.value(value)}")


# -- types and formats --------------------------------------------------------------------


def json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "integer"
    if isinstance(value, float):
        return "number"
    if isinstance(value, str):
        return "string"
    return "array" if isinstance(value, list) else "object"


def _type_matches(expected: str, value: Any) -> bool:
    actual = json_type(value)
    if actual == expected:
        return True
    if expected == "number":
        return actual == "integer"
    return expected == "integer" and actual == "number" and float(value).is_integer()


_DATE_TIME = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def _date_time(text: str) -> bool:
    if not _DATE_TIME.fullmatch(text):
        return False
    try:
        datetime.fromisoformat(text.replace("z", "Z").replace("t", "T"))
    except ValueError:
        return False
    return True


def _parses(parse: Callable[[str], object]) -> Callable[[str], bool]:
    def check(text: str) -> bool:
        try:
            parse(text)
        except ValueError:
            return False
        return True

    return check


def _base64(text: str) -> bool:
    try:
        base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        return False
    return True


FORMATS: Mapping[str, Callable[[str], bool]] = {
    "date-time": _date_time,
    "datetime": _date_time,
    "date": _parses(lambda text: datetime.strptime(text, "%Y-%m-%d")),
    "byte": _base64,
    "ipv4": _parses(ipaddress.IPv4Address),
    "ipv6": _parses(ipaddress.IPv6Address),
    "cidr": _parses(lambda text: ipaddress.ip_network(text, strict=False)),
    "uuid": lambda text: (
        re.fullmatch(r"(?i)[0-9a-f]{8}(-?[0-9a-f]{4}){3}-?[0-9a-f]{12}", text) is not None
    ),
}
"""The string formats checked here; the server knows more, and skips the ones it does not."""


# -- one node -----------------------------------------------------------------------------


class _Validator:
    def __init__(self) -> None:
        self.errors: list[FieldError] = []

    def add(self, error: FieldError) -> None:
        self.errors.append(error)

    def node(self, value: Any, schema: Schema, path: str) -> None:
        if value is None:
            self.null(schema, path)
            self.enum(value, schema, path)
            return
        expected = schema.get("type")
        if expected and not _type_matches(expected, value):
            kind = json_type(value)
            self.add(
                type_invalid(path, kind, f'{path} in body must be of type {expected}: "{kind}"')
            )
        self.combinators(value, schema, path)
        if isinstance(value, str):
            self.string(value, schema, path)
            self.format(value, schema, path)
        if isinstance(value, int | float) and not isinstance(value, bool):
            self.number(value, schema, path)
        if isinstance(value, list):
            self.array(value, schema, path)
        self.enum(value, schema, path)
        if isinstance(value, dict):
            self.object(value, schema, path)

    def null(self, schema: Schema, path: str) -> None:
        expected = schema.get("type")
        if expected and not schema.get("nullable"):
            self.add(
                type_invalid(path, "null", f'{path} in body must be of type {expected}: "null"')
            )

    def combinators(self, value: Any, schema: Schema, path: str) -> None:
        def run(sub: Schema) -> list[FieldError]:
            inner = _Validator()
            inner.node(value, {**sub, "type": sub.get("type", "")}, path)
            return inner.errors

        alternatives = [run(sub) for sub in schema.get("anyOf") or []]
        if alternatives and all(alternatives):
            self.add(invalid("<nil>", "", f'"{path}" must validate at least one schema (anyOf)'))
            self.errors += _fewest(alternatives)
        alternatives = [run(sub) for sub in schema.get("oneOf") or []]
        valid = sum(1 for found in alternatives if not found)
        if alternatives and valid != 1:
            extra = "Found none valid" if valid == 0 else f"Found {valid} valid alternatives"
            self.add(
                invalid(
                    "<nil>", "", f'"{path}" must validate one and only one schema (oneOf). {extra}'
                )
            )
            if valid == 0:
                self.errors += _fewest(alternatives)
        alternatives = [run(sub) for sub in schema.get("allOf") or []]
        for found in alternatives:
            self.errors += found
        failed = sum(1 for found in alternatives if found)
        if failed:
            extra = ". None validated" if failed == len(alternatives) else ""
            self.add(invalid("<nil>", "", f'"{path}" must validate all the schemas (allOf){extra}'))
        negated = schema.get("not")
        if isinstance(negated, Mapping) and not run(negated):
            self.add(invalid("<nil>", "", f'"{path}" must not validate the schema (not)'))

    def string(self, value: str, schema: Schema, path: str) -> None:
        # kube-openapi reports at most one of these, in this order
        if "maxLength" in schema and len(value) > schema["maxLength"]:
            self.add(too_long(path, schema["maxLength"]))
        elif "minLength" in schema and len(value) < schema["minLength"]:
            minimum = schema["minLength"]
            self.add(
                invalid(path, value, f"{path} in body should be at least {minimum} chars long")
            )
        elif "pattern" in schema and not _pattern(schema["pattern"]).search(value):
            self.add(invalid(path, value, f"{path} in body should match '{schema['pattern']}'"))

    def format(self, value: str, schema: Schema, path: str) -> None:
        name = schema.get("format", "")
        check = FORMATS.get(name)
        if check is not None and not check(value):
            self.add(
                type_invalid(
                    path, value, f"{path} in body must be of type {name}: {gofmt.quote(value)}"
                )
            )

    def number(self, value: float, schema: Schema, path: str) -> None:
        def bound(limit: float) -> str:
            return str(int(limit)) if isinstance(value, int) else gofmt.number(float(limit))

        factor = schema.get("multipleOf")
        if factor and not (value / factor).is_integer():
            self.add(
                invalid(path, value, f"{path} in body should be a multiple of {bound(factor)}")
            )
        maximum = schema.get("maximum")
        if maximum is not None:
            exclusive = bool(schema.get("exclusiveMaximum"))
            if value > maximum or (exclusive and value == maximum):
                relation = "less than" if exclusive else "less than or equal to"
                self.add(
                    invalid(path, value, f"{path} in body should be {relation} {bound(maximum)}")
                )
        minimum = schema.get("minimum")
        if minimum is not None:
            exclusive = bool(schema.get("exclusiveMinimum"))
            if value < minimum or (exclusive and value == minimum):
                relation = "greater than" if exclusive else "greater than or equal to"
                self.add(
                    invalid(path, value, f"{path} in body should be {relation} {bound(minimum)}")
                )

    def array(self, value: list[Any], schema: Schema, path: str) -> None:
        element = items(schema)
        if element is not None:
            for index, item in enumerate(value):
                self.node(item, element, f"{path}[{index}]")
        size = len(value)
        if "minItems" in schema and size < schema["minItems"]:
            minimum = schema["minItems"]
            self.add(invalid(path, size, f"{path} in body should have at least {minimum} items"))
        if "maxItems" in schema and size > schema["maxItems"]:
            self.add(too_many(path, size, schema["maxItems"]))

    def enum(self, value: Any, schema: Schema, path: str) -> None:
        allowed = schema.get("enum")
        if allowed and not any(_same(value, option) for option in allowed):
            self.add(not_supported(path, value, list(allowed)))

    def object(self, value: dict[str, Any], schema: Schema, path: str) -> None:
        count = len(value)
        if "minProperties" in schema and count < schema["minProperties"]:
            minimum = schema["minProperties"]
            self.add(
                invalid(path, count, f"{path} in body should have at least {minimum} properties")
            )
            return
        if "maxProperties" in schema and count > schema["maxProperties"]:
            self.add(too_many(path, count, schema["maxProperties"]))
            return
        known = properties(schema)
        others = additional(schema)
        if others is not None:
            for key, item in value.items():
                if key not in known:
                    self.node(item, others, f"{path}.{key}")
        for key, sub in known.items():
            if key in value:
                self.node(value[key], sub, join(path, key))
        for key in schema.get("required") or []:
            if key not in value:
                self.add(required(join(path, key)))


def _fewest(alternatives: list[list[FieldError]]) -> list[FieldError]:
    """The errors of the alternative that came closest (kube-openapi keeps the best one)."""
    return sorted(alternatives, key=len)[0]


def _same(value: Any, option: Any) -> bool:
    if isinstance(value, bool) or isinstance(option, bool):
        return value is option
    return bool(value == option)


def _pattern(pattern: str) -> Any:
    compiled = _PATTERNS.get(pattern)
    if compiled is None:
        compiled = _PATTERNS[pattern] = re2.compile(pattern)
    return compiled


def validate(value: Any, schema: Schema) -> list[FieldError]:
    """The schema errors of a whole custom resource, as ``ValidateCustomResource`` has them."""
    validator = _Validator()
    validator.node(value, schema, "")
    return validator.errors


# -- list types ---------------------------------------------------------------------------


def validate_list_types(value: Any, schema: Schema, path: str = "") -> list[FieldError]:
    """``ValidateListSetsAndMaps``: no repeated element in a ``set``, no repeated key in a
    ``map`` list."""
    errors: list[FieldError] = []
    if isinstance(value, dict):
        known = properties(schema)
        others = additional(schema)
        for key, item in value.items():
            if key in known:
                errors += validate_list_types(item, known[key], join(path, key))
            elif others is not None:
                errors += validate_list_types(item, others, f"{path}[{key}]")
    elif isinstance(value, list):
        errors += _list_uniqueness(value, schema, path)
        element = items(schema)
        if element is not None:
            for index, item in enumerate(value):
                errors += validate_list_types(item, element, f"{path}[{index}]")
    return errors


def _list_uniqueness(value: list[Any], schema: Schema, path: str) -> list[FieldError]:
    kind = schema.get("x-kubernetes-list-type")
    if kind == "set":
        return [duplicate(f"{path}[{i}]", value[i]) for i in _repeated(value)]
    if kind != "map":
        return []
    for index, item in enumerate(value):
        if item is not None and not isinstance(item, dict):
            return [
                invalid(f"{path}[{index}]", item, "must be an object for an array of list-type map")
            ]
    names: list[str] = schema.get("x-kubernetes-list-map-keys") or []
    keys = [{n: item[n] for n in names if n in item} if item else {} for item in value]
    return [duplicate(f"{path}[{i}]", keys[i]) for i in _repeated(keys)]


def _repeated(values: list[Any]) -> list[int]:
    """The indexes at which a value appears for the second time."""
    seen: dict[str, int] = {}
    second: list[int] = []
    for index, item in enumerate(values):
        token = json.dumps(item, sort_keys=True)
        seen[token] = seen.get(token, 0) + 1
        if seen[token] == 2:
            second.append(index)
    return second
