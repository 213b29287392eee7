"""The ``x-kubernetes-validations`` CEL rules of a CRD's schema, evaluated as the API
server's ``apiextensions-apiserver/pkg/apiserver/schema/cel`` validator does, with
cel-python (``celpy``) as the CEL runtime.

Each rule sees its node as ``self`` (and, in a transition rule on update, the node's old
value as ``oldSelf``); fields are reached by their escaped names (``namespace`` is
``__namespace__``). A rule is checked at every non-null value of its node, parents before
children; a rule that is not true adds a field error worded like the server's
(``Invalid value: "object": <message>``, or by the rule's ``reason``), a rule that fails to
evaluate adds ``<error> evaluating rule: <message>``.

Not modelled: the CEL cost budget and per-call limit (rules here run to completion),
``optionalOldSelf`` (needs CEL optionals, which celpy lacks: such rules run only when an
old value exists), ratcheting of unchanged fields, and rules under ``allOf``.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import celpy
from celpy import celtypes
from celpy.adapter import json_to_cel
from celpy.celparser import CELParseError
from celpy.evaluation import CELEvalError

from tests.fakes.kube_api import gofmt
from tests.fakes.kube_api.errors import FieldError
from tests.fakes.kube_api.structural import Schema, additional, items, join, properties

RESERVED = frozenset(
    {
        *("true", "false", "null", "in", "as", "break", "const", "continue", "else", "for"),
        *("function", "if", "import", "let", "loop", "package", "namespace", "return"),
        *("var", "void", "while"),
    }
)
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_ESCAPABLE = re.compile(r"[A-Za-z_][A-Za-z0-9_./-]*")
_STRINGS = re.compile(
    r"""[rRbB]*('''.*?'''|\"\"\".*?\"\"\"|'(?:\\.|[^'\\])*'|"(?:\\.|[^"\\])*")""", re.S
)
_FIELD_PATH = re.compile(r"\.([^.\[\]]+)|\['((?:\\.|[^'\\])*)'\]")
MAX_MESSAGE_BYTES = 5000


def escape(name: str) -> str | None:
    """The CEL name of a property (``cel.Escape``), or None if it cannot be written."""
    if name in RESERVED:
        return f"__{name}__"
    if _IDENTIFIER.fullmatch(name) and "__" not in name:
        return name
    if not _ESCAPABLE.fullmatch(name):
        return None
    escaped = name.replace("__", "__underscores__")
    for char, word in ((".", "__dot__"), ("-", "__dash__"), ("/", "__slash__")):
        escaped = escaped.replace(char, word)
    return escaped


@dataclass(frozen=True)
class Rule:
    """One ``x-kubernetes-validations`` entry."""

    rule: str
    message: str = ""
    message_expression: str = ""
    field_path: str = ""
    reason: str = ""

    @classmethod
    def of(cls, raw: Mapping[str, Any]) -> Rule:
        return cls(
            raw["rule"],
            raw.get("message") or "",
            raw.get("messageExpression") or "",
            raw.get("fieldPath") or "",
            raw.get("reason") or "",
        )

    @property
    def error_string(self) -> str:
        """``ruleErrorString``: how messages about the rule itself name it."""
        return self.message.strip() or self.rule.strip()

    @property
    def default_message(self) -> str:
        return self.message.strip() or f"failed rule: {self.rule.strip()}"

    @property
    def uses_old_self(self) -> bool:
        return re.search(r"\boldSelf\b", _STRINGS.sub("''", self.rule)) is not None


@functools.cache
def _environment() -> celpy.Environment:
    # building the CEL parser takes a while: only servers that evaluate rules pay for it
    return celpy.Environment()


@functools.cache
def program(expression: str) -> celpy.Runner:
    """The compiled expression; ``CELParseError`` if it does not parse."""
    environment = _environment()
    return environment.program(environment.compile(expression))


def to_cel(value: Any, schema: Schema | None) -> Any:
    """A JSON value as CEL sees it through its schema: properties by escaped name,
    ``date-time`` strings as timestamps, ``duration`` as durations, ``byte`` as bytes."""
    if value is None:
        return None
    if isinstance(value, bool):
        return celtypes.BoolType(value)
    if isinstance(value, int):
        return celtypes.IntType(value)
    if isinstance(value, float):
        return celtypes.DoubleType(value)
    if isinstance(value, str):
        return _string(value, (schema or {}).get("format", ""))
    if isinstance(value, list):
        element = items(schema) if schema is not None else None
        return celtypes.ListType([to_cel(item, element) for item in value])
    if isinstance(value, dict):
        return _map(value, schema)
    return json_to_cel(value)


def _string(value: str, name: str) -> Any:
    try:
        if name in {"date-time", "datetime"}:
            return celtypes.TimestampType(value)
        if name == "duration":
            return celtypes.DurationType(value)
        if name == "byte":
            return celtypes.BytesType(base64.b64decode(value))
    except ValueError:
        pass
    return celtypes.StringType(value)


def _map(value: dict[str, Any], schema: Schema | None) -> celtypes.MapType:
    known = properties(schema) if schema is not None else {}
    if not known:
        others = additional(schema) if schema is not None else None
        return celtypes.MapType(
            {celtypes.StringType(k): to_cel(v, others) for k, v in value.items()}
        )
    converted: dict[Any, Any] = {}
    for key, item in value.items():
        name = escape(key)
        if key in known and name is not None:
            converted[celtypes.StringType(name)] = to_cel(item, known[key])
    return celtypes.MapType(converted)


def describe(error: BaseException) -> str:
    """A celpy evaluation error in cel-go's words (``no such key: x``)."""
    args = error.args
    text = str(args[0]) if args else str(error)
    kind = args[1] if len(args) > 1 else None
    if kind is KeyError:
        found = re.search(r"'([^']*)'", text)
        return f"no such key: {found.group(1) if found else text}"
    if kind is IndexError:
        return "index out of bounds"
    if kind is ZeroDivisionError:
        return "division by zero"
    if "overflow" in text:
        return "integer overflow"
    if kind is TypeError or "overload" in text:
        return "no such overload"
    return text


def _run(runner: celpy.Runner, activation: dict[str, Any]) -> tuple[Any, str | None]:
    try:
        result = runner.evaluate(activation)
    except CELEvalError as error:
        return None, describe(error)
    if isinstance(result, CELEvalError):
        return None, describe(result)
    return result, None


class CelValidator:
    """The rules of one schema (a CRD version's ``openAPIV3Schema``)."""

    def __init__(self, schema: Schema) -> None:
        self.schema = schema
        self._has_rules: dict[int, bool] = {}

    def validate(self, value: Any, old: Any = None) -> list[FieldError]:
        """Every rule's errors for ``value`` (a whole resource), ``old`` its stored form on
        update (None on create)."""
        errors: list[FieldError] = []
        self._walk(value, old, self.schema, "", errors, root=True)
        return errors

    def has_rules(self, schema: Schema) -> bool:
        key = id(schema)
        if key not in self._has_rules:
            children = [*properties(schema).values(), items(schema), additional(schema)]
            self._has_rules[key] = bool(schema.get("x-kubernetes-validations")) or any(
                self.has_rules(sub) for sub in children if sub is not None
            )
        return self._has_rules[key]

    def _walk(
        self,
        value: Any,
        old: Any,
        schema: Schema,
        path: str,
        errors: list[FieldError],
        *,
        root: bool = False,
    ) -> None:
        if value is None or not self.has_rules(schema):
            return
        errors += self._node(value, old, schema, path, root)
        if isinstance(value, dict):
            old_map = old if isinstance(old, dict) else {}
            known = properties(schema)
            for key, sub in known.items():
                if key in value:
                    self._walk(value[key], old_map.get(key), sub, join(path, key), errors)
            others = additional(schema)
            if others is not None:
                for key, item in value.items():
                    if key not in known:
                        self._walk(item, old_map.get(key), others, f"{path}[{key}]", errors)
        elif isinstance(value, list):
            element = items(schema)
            if element is not None:
                olds = _correlated(value, old, schema)
                for index, item in enumerate(value):
                    self._walk(item, olds[index], element, f"{path}[{index}]", errors)

    def _node(
        self, value: Any, old: Any, schema: Schema, path: str, root: bool
    ) -> list[FieldError]:
        rules = [Rule.of(raw) for raw in schema.get("x-kubernetes-validations") or []]
        if not rules:
            return []
        type_name = str(schema.get("type", ""))
        shown = value if not root else _root_view(value)
        activation = {"self": to_cel(shown, schema)}
        if old is not None:
            activation["oldSelf"] = to_cel(old if not root else _root_view(old), schema)
        field = path or "<nil>"
        errors: list[FieldError] = []
        for rule in rules:
            try:
                runner = program(rule.rule)
            except CELParseError as error:
                errors.append(_invalid(field, type_name, f"rule compile error: {error}"))
                continue
            if rule.uses_old_self and old is None:
                continue
            result, failure = _run(runner, activation)
            if failure == "no such overload":
                errors.append(
                    _invalid(
                        field,
                        type_name,
                        f"'{failure}': call arguments did not match a supported operator, "
                        f"function or macro signature for rule: {rule.error_string}",
                    )
                )
            elif failure is not None:
                errors.append(
                    _invalid(field, type_name, f"{failure} evaluating rule: {rule.error_string}")
                )
            elif not (isinstance(result, celtypes.BoolType) and bool(result)):
                target = _with_field_path(field if path else "", rule.field_path, schema)
                detail = _message(rule, activation)
                errors.append(_failed(target or "<nil>", type_name, detail, rule.reason))
        return errors


def _root_view(value: Any) -> Any:
    """The root as its rules see it: of the metadata, only ``name`` and ``generateName``."""
    if not isinstance(value, dict):
        return value
    meta = value.get("metadata") or {}
    shown = {k: v for k, v in meta.items() if k in {"name", "generateName"}}
    return {**value, "metadata": shown}


def _correlated(value: list[Any], old: Any, schema: Schema) -> list[Any]:
    """The old element of each new one: only a ``map`` list's elements have one (by key)."""
    keys: list[str] = schema.get("x-kubernetes-list-map-keys") or []
    if schema.get("x-kubernetes-list-type") != "map" or not isinstance(old, list) or not keys:
        return [None] * len(value)

    def key(item: Any) -> tuple[str, ...] | None:
        if not isinstance(item, dict):
            return None
        return tuple(repr(item.get(name)) for name in keys)

    by_key = {key(item): item for item in old if key(item) is not None}
    return [by_key.get(key(item)) for item in value]


def _message(rule: Rule, activation: dict[str, Any]) -> str:
    if rule.message_expression:
        try:
            result, failure = _run(program(rule.message_expression), activation)
        except CELParseError:
            result, failure = None, "does not compile"
        text = str(result).strip() if failure is None and isinstance(result, str) else ""
        if text and "\n" not in text and len(text.encode()) <= MAX_MESSAGE_BYTES:
            return text
    return rule.default_message


def _with_field_path(path: str, field_path: str, schema: Schema) -> str:
    """``path`` extended by a rule's ``fieldPath`` (``.a.b`` or ``['a']``)."""
    for match in _FIELD_PATH.finditer(field_path):
        name = match.group(1) if match.group(1) is not None else match.group(2)
        if name in properties(schema):
            schema = properties(schema)[name]
            path = join(path, name)
        else:
            schema = additional(schema) or {}
            path = f"{path}[{name}]"
    return path


def _invalid(path: str, type_name: str, detail: str) -> FieldError:
    return FieldError(
        "FieldValueInvalid", path, f"Invalid value: {gofmt.quote(type_name)}: {detail}"
    )


def _failed(path: str, type_name: str, detail: str, reason: str) -> FieldError:
    """``fieldErrorForReason``."""
    if reason == "FieldValueForbidden":
        return FieldError(reason, path, f"Forbidden: {detail}")
    if reason == "FieldValueRequired":
        return FieldError(reason, path, f"Required value: {detail}")
    if reason == "FieldValueDuplicate":
        return FieldError(reason, path, f"Duplicate value: {gofmt.quote(type_name)}")
    return _invalid(path, type_name, detail)
